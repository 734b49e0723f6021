from pathlib import Path

import pytest

from fetalnode.config import load_settings
from fetalnode.errors import ConfigError

pytestmark = pytest.mark.unit


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\nport = 2000\nae_title = "FILE"\n[scp]\nallowed_calling_aets = ["A"]\n')
    env = {"FETALNODE__NODE__PORT": "3000", "FETALNODE__SCP__ALLOWED_CALLING_AETS": "X,Y"}
    s = load_settings(cfg, env=env, overrides={"node.ae_title": "FLAG"})
    assert s.node.port == 3000
    assert s.node.ae_title == "FLAG"
    assert s.scp.allowed_calling_aets == ["X", "Y"]
    assert s.node.host == "127.0.0.1"


def test_unknown_key_and_bad_type_are_explained(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("[node]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key node\.prot"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_settings(None, env={"FETALNODE__NODE__PORT": "abc"})


def test_secret_is_masked_and_read_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = load_settings(None, env={"FETALNODE__ORTHANC__PASSWORD_FILE": str(secret)})
    assert s.orthanc.resolved_password() == "s3cret"
    s2 = load_settings(None, env={"FETALNODE__ORTHANC__PASSWORD": "s3cret"})
    assert "s3cret" not in repr(s2.masked())


def test_shipped_config_loads() -> None:
    s = load_settings(Path(__file__).resolve().parents[2] / "configs" / "node.toml", env={})
    assert s.node.host == "127.0.0.1"
    assert s.orthanc.password == ""


def test_output_uids_are_deterministic_and_distinct() -> None:
    from pydicom.uid import UID

    from fetalnode.outputs.uids import output_uids

    a = output_uids("1.2.3", "1.2", "0.1.0+0.1.0")
    assert a == output_uids("1.2.3", "1.2", "0.1.0+0.1.0")
    assert a.sr_instance != output_uids("1.2.3", "1.2", "0.2.0+0.1.0").sr_instance
    assert a.sr_instance != output_uids("1.2.3", "1.2", "0.1.0+0.1.0", variant="abcd").sr_instance
    assert len({a.sr_series, a.sr_instance, a.sc_series, a.sc_instance}) == 4
    assert all(UID(u).is_valid and len(u) <= 64 for u in (a.sr_instance, a.sc_series))
