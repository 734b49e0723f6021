"""Routing rules at receipt: first match wins, every criterion given must match, the default otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from fetalnode.config import load_settings
from fetalnode.errors import ConfigError
from fetalnode.routing import Route, Router
from fetalnode.vocab import RouteAction

pytestmark = pytest.mark.unit
RULES = """
[routing]
default = "ignore"

[[routes]]
name = "ob-us"
action = "analyse"
modality = ["US"]
study_description = ["obstetric", "fetal"]

[[routes]]
name = "ct-from-er"
action = "forward"
modality = ["CT"]
calling_ae = ["ER-CT"]

[[routes]]
name = "any-us"
action = "forward"
modality = ["us"]
"""


def header(**tags: str) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def test_first_matching_rule_wins_and_the_default_takes_the_rest(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(RULES)
    router = Router.from_settings(load_settings(tmp_path / "node.toml", env={}))
    ob = header(Modality="US", StudyDescription="OB Fetal anatomy scan")
    assert router.route(ob, "US-1") == Route("ob-us", RouteAction.ANALYSE)
    assert router.route(header(Modality="US", StudyDescription="Renal"), "US-1") == Route("any-us", RouteAction.FORWARD)
    assert router.route(header(Modality="CT"), "ER-CT") == Route("ct-from-er", RouteAction.FORWARD)
    assert router.route(header(Modality="CT"), "OTHER") == Route("default", RouteAction.IGNORE)
    assert router.route(header(), "US-1") == Route("default", RouteAction.IGNORE)


def test_no_rules_analyse_everything_and_bad_rules_stop_start_up(tmp_path: Path) -> None:
    assert (
        Router.from_settings(load_settings(None, env={})).route(header(Modality="CT"), "X").action
        is RouteAction.ANALYSE
    )
    (tmp_path / "bad.toml").write_text('[[routes]]\nname = "x"\naction = "delete"\n')
    with pytest.raises(ConfigError, match="action must be one of analyse, forward, ignore"):
        Router.from_settings(load_settings(tmp_path / "bad.toml", env={}))
    (tmp_path / "dup.toml").write_text('[[routes]]\nname = "x"\n[[routes]]\nname = "x"\n')
    with pytest.raises(ConfigError, match="unique name"):
        Router.from_settings(load_settings(tmp_path / "dup.toml", env={}))
    (tmp_path / "typo.toml").write_text('[[routes]]\nname = "x"\nmodalty = ["US"]\n')
    with pytest.raises(ConfigError, match="unknown key 'modalty'"):
        load_settings(tmp_path / "typo.toml", env={})
