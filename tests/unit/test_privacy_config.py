"""``[privacy]`` and its nested ``[[privacy.masks]]``: typed loading, clear errors, and the harness's TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalnode.config import MaskSettings, Settings, load_settings
from fetalnode.errors import ConfigError
from harness.config import override, to_toml, write_settings

pytestmark = pytest.mark.unit

CONFIG = """
[node]
role = "terminal"

[privacy]
secret_file = "/etc/fetalnode/privacy-secret"
pixels = "regions"

[[privacy.masks]]
name = "room 3 printer"
station = "Voluson room 3"
rectangles = [[0, 64, 639, 495]]

[[privacy.masks]]
manufacturer = "Acme Ultrasound"
model = "AcmeScan 5"
rectangles = [[10, 60, 629, 469], [640, 60, 799, 200]]
"""


def test_privacy_tables_load_typed(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(CONFIG)
    s = load_settings(path, env={})
    assert s.privacy.pseudonymise is None and s.privacy.enabled_for(s.node.role)
    assert s.privacy.secret_file == "/etc/fetalnode/privacy-secret"
    assert s.privacy.masks == [
        MaskSettings(name="room 3 printer", station="Voluson room 3", rectangles=[[0, 64, 639, 495]]),
        MaskSettings(
            manufacturer="Acme Ultrasound", model="AcmeScan 5", rectangles=[[10, 60, 629, 469], [640, 60, 799, 200]]
        ),
    ]
    off = load_settings(path, env={"FETALNODE__PRIVACY__PSEUDONYMISE": "false"})
    assert off.privacy.pseudonymise is False and not off.privacy.enabled_for("terminal")
    assert load_settings(path, env={"FETALNODE__PRIVACY__PSEUDONYMISE": "auto"}).privacy.pseudonymise is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[privacy]\npixels = "everything"\n', "privacy.pixels must be one of regions, masks"),
        ('[[privacy.masks]]\nstation = "A"\nrectangles = [[0, 0, 10]]\n', r"rectangle \[0, 0, 10\] must be"),
        ("[[privacy.masks]]\nrectangles = [[10, 0, 5, 5]]\n", "0 <= x0 <= x1"),
        ('[[privacy.masks]]\nname = "x"\nrectangles = []\n', r"item 1 \(x\): rectangles is empty"),
        ('[[privacy.masks]]\nstaton = "A"\nrectangles = [[0, 0, 1, 1]]\n', "unknown key 'staton'"),
        ('[[privacy.masks]]\nrectangles = [[0, "a", 1, 1]]\n', "expected an integer"),
        ("[[privacy.masks]]\nrectangles = [0, 0, 1, 1]\n", "expected a list of lists of integers"),
        ("[privacy]\nmasks = 3\n", "expected an array of tables"),
        ('[privacy]\npseudonymise = "perhaps"\n', "expected a boolean"),
    ],
)
def test_bad_privacy_settings_are_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_masks_cannot_come_from_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.masks: expected an array of tables"):
        load_settings(None, env={"FETALNODE__PRIVACY__MASKS": "0,0,1,1"})


def test_privacy_settings_round_trip_through_the_harness_writer(tmp_path: Path) -> None:
    s = override(
        Settings(),
        privacy__pseudonymise=True,
        privacy__secret_file="/run/secrets/privacy",
        privacy__pixels="masks",
        privacy__masks=[
            MaskSettings(name='printer "3"', station="Voluson room 3", rectangles=[[0, 64, 639, 495]]),
            MaskSettings(manufacturer="Acme", rectangles=[[1, 2, 3, 4], [5, 6, 7, 8]]),
        ],
    )
    assert "[[privacy.masks]]" in to_toml(s)
    assert load_settings(write_settings(s, tmp_path / "node.toml"), env={}) == s
    unset = Settings()
    assert "pseudonymise" not in to_toml(unset)  # None is "unset": TOML has no null
    assert load_settings(write_settings(unset, tmp_path / "unset.toml"), env={}) == unset
    with pytest.raises(TypeError, match=r"privacy\.masks\[0\]: expected MaskSettings"):
        override(Settings(), privacy__masks=[{"station": "A"}])
    with pytest.raises(TypeError, match=r"privacy\.pseudonymise: expected bool"):
        override(Settings(), privacy__pseudonymise="yes")
