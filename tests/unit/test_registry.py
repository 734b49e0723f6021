"""One registry for writers, destination kinds and applications: built-ins loaded on the first lookup,
the same way for each; a test's registrations forgotten after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fetalnode.applications.registry import APPLICATIONS
from fetalnode.destinations.base import DESTINATION_KINDS
from fetalnode.errors import ConfigError
from fetalnode.outputs.registry import OUTPUTS
from fetalnode.registry import Registry

pytestmark = pytest.mark.unit


PROBE: list[str] = []
REGISTRY: Registry[int] = Registry("number", builtins=("registry_probe_builtin",))


def test_builtins_are_imported_on_the_first_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "registry_probe_builtin.py").write_text(
        f"from {__name__} import PROBE, REGISTRY\nPROBE.append('imported')\nREGISTRY.add('one', 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "registry_probe_builtin", raising=False)
    assert PROBE == [] and REGISTRY.registered("one") is None, "nothing is imported before a lookup"
    assert REGISTRY.get("one", "setting") == 1 and PROBE == ["imported"]
    assert REGISTRY.names() == ["one"] and PROBE == ["imported"], "imported once"
    with pytest.raises(ConfigError, match=r"setting: unknown number 'two' \(known: one\)"):
        REGISTRY.get("two", "setting")


def test_each_seam_loads_its_builtins_the_same_way() -> None:
    for registry, builtin in ((OUTPUTS, "sr"), (DESTINATION_KINDS, "dicomweb"), (APPLICATIONS, "view-router")):
        assert isinstance(registry, Registry) and registry.builtins
        assert registry.find(builtin) is not None, f"{registry.what} {builtin} is a built-in"


def test_what_a_block_registers_is_forgotten_after_it() -> None:
    with DESTINATION_KINDS.scoped():
        DESTINATION_KINDS.add("test-kind", lambda d, s: None)  # type: ignore[arg-type,return-value]
        assert "test-kind" in DESTINATION_KINDS.names()
    assert "test-kind" not in DESTINATION_KINDS.names()
    assert "folder" in DESTINATION_KINDS.names(), "the built-ins stay"
