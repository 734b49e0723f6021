"""The development harness's typed config writer, and its separation from the runtime package."""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetalnode.config import Settings, load_settings
from harness.config import node_settings, override, to_toml, toml_string, write_settings
from harness.node import ROOT

pytestmark = pytest.mark.unit


def non_default_settings() -> Settings:
    s = Settings()
    s.node.port = 11999
    s.node.data_dir = "/tmp/node data/ü"
    s.scp.allowed_calling_aets = ["US-ROOM3", 'QUOTE"AE', "BACK\\SLASH"]
    s.scp.allowed_sources = ["US-ROOM3=10.1.2.0/24"]
    s.scp.station_names = ["US-ROOM3=Voluson\troom 3\n(east)"]
    s.scp.check_called_aet = False
    s.scp.acse_timeout = 12.5
    s.scp.min_free_bytes = 10**12
    s.print.enabled = False
    s.worker.poll_interval = 1e-3
    s.orthanc.retry_initial = 0.5
    s.orthanc.retry_max = 2.0
    s.orthanc.password_file = "/run/secrets/orthanc"
    s.broker.url = "amqps://site-a@broker.example.org:5671/fetalnode"
    s.broker.password_file = "/run/secrets/broker"
    s.broker.ca_certificates = "/etc/fetalnode/broker-ca.crt"
    s.broker.sites = ["site-a", "site-b"]
    s.output.institution_name = "Clinic \u00e9 \U0001f476 \x7f\x00"
    s.router.applications = {"axial_fetal_head": "fetal-head", "not_fetal": "", "other view": 'x"y'}
    return s


def test_written_settings_load_back_equal(tmp_path: Path) -> None:
    s = non_default_settings()
    assert s != Settings()
    assert load_settings(write_settings(s, tmp_path / "node.toml"), env={}) == s


def test_node_settings_are_the_usual_loopback_node(tmp_path: Path) -> None:
    s = node_settings(
        port=12000,
        data_dir=tmp_path / "data",
        orthanc_url="http://127.0.0.1:8999",
        orthanc_username="fetalnode",
        password_file=tmp_path / "pw",
        models_dir=tmp_path / "models",
        calling_aets=["TEST-US", "ECHOSCU"],
    )
    assert (s.node.host, s.node.port, s.node.ae_title) == ("127.0.0.1", 12000, "FETALNODE")
    assert s.scp.allowed_calling_aets == ["TEST-US", "ECHOSCU"]
    assert s.orthanc.password_file == str(tmp_path / "pw") and s.orthanc.password == ""
    assert load_settings(write_settings(s, tmp_path / "node.toml"), env={}) == s


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_any_string_survives_toml(text: str) -> None:
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


@dataclass
class Destination:
    name: str
    url: str
    kinds: list[str] = field(default_factory=list)


@dataclass
class Section:
    enabled: bool = True


@dataclass
class Document:
    version: int = 1
    section: Section = field(default_factory=Section)
    destinations: list[Destination] = field(default_factory=list)
    ratio: float = 1


def test_lists_of_dataclasses_are_arrays_of_tables() -> None:
    doc = Document(
        destinations=[Destination("pacs", "http://a", ["sr", "sc"]), Destination("research", 'http://"b"')],
    )
    text = to_toml(doc)
    assert "[[destinations]]" in text
    assert tomllib.loads(text) == {
        "version": 1,
        "ratio": 1.0,
        "section": {"enabled": True},
        "destinations": [
            {"name": "pacs", "url": "http://a", "kinds": ["sr", "sc"]},
            {"name": "research", "url": 'http://"b"', "kinds": []},
        ],
    }


def test_override_is_typed() -> None:
    s = override(Settings(), orthanc__retry_max=2, scp__allowed_sources=["A=127.0.0.1"], node__role="terminal")
    assert s.orthanc.retry_max == 2 and s.scp.allowed_sources == ["A=127.0.0.1"] and s.node.role == "terminal"
    with pytest.raises(TypeError, match=r"node\.port: expected int"):
        override(Settings(), node__port="11112")
    with pytest.raises(TypeError, match=r"scp\.allowed_calling_aets"):
        override(Settings(), scp__allowed_calling_aets="A,B")
    with pytest.raises(TypeError, match=r"print\.enabled: expected bool"):
        override(Settings(), print__enabled=1)
    with pytest.raises(KeyError, match=r"no setting node\.prot"):
        override(Settings(), node__prot=1)


def test_runtime_package_never_imports_the_harness() -> None:
    imported = []
    for path in (ROOT / "src" / "fetalnode").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.append((path, node.module))
    assert [(str(p), m) for p, m in imported if m.split(".")[0] == "harness"] == []
