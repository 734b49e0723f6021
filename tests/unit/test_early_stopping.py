import time

import pytest
import torch

from fetalnode.training.early_stopping import EarlyStopping

pytestmark = pytest.mark.unit


def test_keeps_the_lowest_scoring_weights_and_stops_after_patience() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    stopping = EarlyStopping(patience=2, max_minutes=60)
    stops = []
    for epoch, score in enumerate([3.0, 1.0, 2.0, 1.5, 0.5], start=1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        stopping.update(score, epoch, net)
        stops.append(stopping.stop())
    assert stops == [False, False, False, True, False], "two epochs without a lower score end it"
    assert stopping.epoch == 5 and stopping.score == 0.5 and stopping.reason == "early stopping"
    with torch.no_grad():
        net.weight.fill_(-1.0)
    stopping.restore(net)
    assert float(net.weight) == 5.0 and not net.training


def test_restores_the_best_epoch_not_the_last() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    stopping = EarlyStopping(patience=5, max_minutes=60)
    for epoch, score in ((1, 2.0), (2, 1.0), (3, 4.0)):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        stopping.update(score, epoch, net)
    stopping.restore(net)
    assert float(net.weight) == 2.0 and stopping.epoch == 2


def test_time_budget_ends_training() -> None:
    stopping = EarlyStopping(patience=100, max_minutes=1, start=time.monotonic() - 61)
    assert stopping.stop() and stopping.reason == "the time budget"
    fresh = EarlyStopping(patience=100, max_minutes=1)
    assert not fresh.stop() and fresh.reason == "the last epoch" and not fresh.seen
