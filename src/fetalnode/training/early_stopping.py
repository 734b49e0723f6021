"""Early stopping on a validation score, shared by every training command."""

from __future__ import annotations

import logging
import math
import time

import torch

log = logging.getLogger(__name__)


class EarlyStopping:
    """Keeps the weights of the epoch with the lowest validation score and says when to stop: after
    ``patience`` epochs without a lower score, or once ``max_minutes`` have passed since ``start``
    (default: now). ``reason`` says which ended the training ("the last epoch" if neither did)."""

    def __init__(self, patience: int, max_minutes: float, start: float | None = None) -> None:
        self.patience = patience
        self.max_seconds = max_minutes * 60
        self.start = time.monotonic() if start is None else start
        self.score = math.inf
        self.epoch = 0
        self.stale = 0
        self.reason = "the last epoch"
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, score: float, epoch: int, net: torch.nn.Module) -> None:
        """The validation score of ``epoch``: keep ``net``'s weights if it is the lowest so far."""
        if self._state is None or score < self.score:
            self.score, self.epoch, self.stale = score, epoch, 0
            self._state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            self.stale += 1

    @property
    def seen(self) -> bool:
        """Whether any epoch was scored."""
        return self._state is not None

    def stop(self) -> bool:
        """Whether to end the training now (patience used up, or the time budget)."""
        if self.stale >= self.patience:
            log.info("early stop: no validation improvement for %d epochs", self.stale)
            self.reason = "early stopping"
            return True
        if time.monotonic() - self.start > self.max_seconds:
            log.info("stopping: time budget of %.0f minutes reached", self.max_seconds / 60)
            self.reason = "the time budget"
            return True
        return False

    def restore(self, net: torch.nn.Module) -> None:
        """Load the kept weights into ``net`` (if any epoch was scored) and put it in eval mode."""
        if self._state is not None:
            net.load_state_dict(self._state)
        net.eval()
