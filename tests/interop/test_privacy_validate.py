"""Re-identified objects (built in the cloud from pseudonymised images) pass dicom3tools' dciodvfy."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from fetalnode.config import load_settings
from fetalnode.privacy import Pseudonymiser
from fetalnode.runtime import build_runtime
from harness import phi
from harness.node import MODELS
from tests.conftest import need

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def runtime():
    rt = build_runtime(load_settings(None, env={}, overrides={"models.dir": str(MODELS)}), destinations=[])
    return dataclasses.replace(rt, destinations=[])


@pytest.mark.parametrize("case", ["us", "us-jpeg-baseline", "us-multiframe", "sc", "film"])
def test_reidentified_objects_have_no_dciodvfy_error(case: str, runtime, tmp_path: Path) -> None:
    need("dciodvfy")
    trip = phi.round_trip(
        runtime, Pseudonymiser(b"interop secret, at least thirty-two bytes", masks=phi.MASKS), phi.CASES[case]().data
    )
    assert trip.reidentified
    for name, obj in trip.reidentified.items():
        path = tmp_path / f"{name}.dcm"
        obj.save_as(path, enforce_file_format=True)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)
