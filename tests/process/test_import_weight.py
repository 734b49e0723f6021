"""What a process loads when it imports a role's modules (a fresh interpreter each: the test session has
loaded everything). The static contracts of ``.importlinter`` see every import, lazy ones too; these see
which of them run at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.node import ROOT

pytestmark = pytest.mark.process


def test_scale_out_module_imports_neither_inference_nor_output_writers() -> None:
    probe = (
        "import sys, fetalnode.distributed, fetalnode.runner, fetalnode.jobs\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'highdicom', 'monai'}"
        " or m.startswith(('fetalnode.inference', 'fetalnode.applications', 'fetalnode.applications.fetal_head.report',"
        " 'fetalnode.outputs.capture')))\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
