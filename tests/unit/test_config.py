from pathlib import Path

import pytest

from fetalnode.config import load_settings
from fetalnode.destinations.base import build_destinations, configured
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
    [implicit] = configured(s)
    assert implicit.resolved_password() == "s3cret"
    s2 = load_settings(None, env={"FETALNODE__ORTHANC__PASSWORD": "s3cret"})
    assert "s3cret" not in repr(s2.masked())


def test_orthanc_section_is_the_one_destination_until_tables_name_others(tmp_path: Path) -> None:
    [implicit] = configured(load_settings(None, env={"FETALNODE__OUTPUT__ENABLED": "sr"}))
    assert (implicit.name, implicit.kind, implicit.send, implicit.url) == (
        "orthanc",
        "orthanc",
        ["sr"],
        "http://127.0.0.1:8042",
    )
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[[destinations]]\nname = "pacs"\nkind = "dicom"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
        'send = ["source", "sr"]\n\n[[destinations]]\nname = "vna"\nkind = "dicomweb"\nurl = "http://v/dicom-web"\n'
        'password = "s3cret"\n'
    )
    s = load_settings(cfg, env={})
    assert [(d.name, d.kind, d.send) for d in configured(s)] == [
        ("pacs", "dicom", ["source", "sr"]),
        ("vna", "dicomweb", ["outputs"]),
    ]
    assert "s3cret" not in repr(s.masked())
    assert [d.name for d in build_destinations(s)] == ["pacs", "vna"]
    s.destinations[0].send = ["source", "ko"]  # not an enabled output
    with pytest.raises(ConfigError, match="destination pacs: send"):
        build_destinations(s)
    s.destinations[0].send, s.destinations[1].kind = ["sr"], "ftp"
    with pytest.raises(ConfigError, match="unknown destination kind 'ftp'"):
        build_destinations(s)


def test_shipped_config_loads() -> None:
    s = load_settings(Path(__file__).resolve().parents[2] / "configs" / "node.toml", env={})
    assert s.node.host == "127.0.0.1"
    assert s.orthanc.password == ""


def test_output_uids_are_deterministic_and_distinct_per_kind() -> None:
    from pydicom.uid import UID

    from fetalnode.outputs.uids import derive_uid, object_uids

    a = object_uids("sr", "1.2.3", "1.2", "0.1.0+0.1.0")
    assert a == object_uids("sr", "1.2.3", "1.2", "0.1.0+0.1.0")
    assert a.instance != object_uids("sr", "1.2.3", "1.2", "0.2.0+0.1.0").instance
    assert a.instance != object_uids("sr", "1.2.4", "1.2", "0.1.0+0.1.0").instance
    revised = object_uids("sr", "1.2.3", "1.2", "0.1.0+0.1.0", revision=1)
    assert revised.instance != a.instance and revised.series == a.series, "a revised object is a new instance"
    sc = object_uids("sc", "1.2.3", "1.2", "0.1.0+0.1.0")
    assert len({a.series, a.instance, sc.series, sc.instance}) == 4
    assert all(UID(u).is_valid and len(u) <= 64 for u in (a.instance, sc.series))
    # the derivation of the releases before output kinds had a registry: an upgrade re-sends the same UIDs
    assert (a.series, a.instance) == (
        derive_uid("sr-series", "1.2", "0.1.0+0.1.0"),
        derive_uid("sr", "1.2.3", "0.1.0+0.1.0"),
    )


def test_role_output_and_application_names_are_checked() -> None:
    from fetalnode.outputs.registry import enabled_writers

    with pytest.raises(ConfigError, match=r"node\.role"):
        load_settings(None, env={"FETALNODE__NODE__ROLE": "boss"})
    with pytest.raises(ConfigError, match=r"output\.enabled: unknown output 'no-such-output'"):
        enabled_writers(["sr", "no-such-output"], ["fetal-head"])
    with pytest.raises(ConfigError, match="cannot be written for application 'other'"):
        enabled_writers(["sr"], ["other"])
    assert [w.name for w in enabled_writers(load_settings(None, env={}).output.enabled, ["fetal-head"])] == [
        "sr",
        "sc",
        "gsps",
        "seg",
        "obsr",
    ]
