"""The seams hold: one module maps exceptions to stages, one status table, every audit event kind documented."""

from __future__ import annotations

import re

import pytest

from fetalnode.vocab import AuditEvent
from harness.node import ROOT

pytestmark = pytest.mark.unit
SRC = ROOT / "src" / "fetalnode"


def test_only_the_runner_maps_exceptions_to_stages() -> None:
    users = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(r"\bStage\.[A-Z]", path.read_text()) and path.name != "vocab.py"
    )
    assert users == ["runner.py"]


def test_dicom_statuses_are_defined_in_one_table() -> None:
    defined = sorted(
        f"{path.relative_to(SRC)}: {m.group(0)}"
        for path in SRC.rglob("*.py")
        for m in re.finditer(r"^[A-Z][A-Z_]+ = 0x[0-9A-Fa-f]{2,4}\b", path.read_text(), re.M)
        if path.name != "dicom_status.py"
    )
    assert defined == []


def test_every_audit_event_kind_is_documented() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Audit events", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.M))
    assert documented == {str(e) for e in AuditEvent}
