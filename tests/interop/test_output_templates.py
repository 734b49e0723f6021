"""Objects rendered by the writers' fast path (outputs/template.py) pass the third-party validators, as the
reference path's do: every default output of a head image and of a labour-progress image."""

from __future__ import annotations

import dataclasses
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.outputs.registry import OUTPUTS, enabled_writers
from fetalnode.runner import read_dataset
from fetalnode.runtime import build_runtime
from harness.node import MODELS
from tests.conftest import SAMPLES, need
from tests.labour import HIGH_AOP, LOW_AOP, GroundTruthLabour, wrapped

pytestmark = pytest.mark.interop
NAMES = ["sr", "sc", "gsps", "seg", "obsr"]


def another_instance(ds: Dataset, i: int) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    copy = read_dataset(buffer.getvalue())
    copy.PatientName, copy.PatientID = f"Other^Patient{i}", f"OTHER-{i}"
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return copy


def fast_objects(jobs: list[tuple[Dataset, Analysis]], folder: Path) -> list[Path]:
    """Each writer over the jobs and other instances of them until its templates are active; the objects
    it then renders, written to ``folder``."""
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS)})
    enabled_writers(NAMES, ["fetal-head", "labour-progress"])
    paths: list[Path] = []
    for name in NAMES:
        writer = dataclasses.replace(OUTPUTS.get(name, "test"), templates={})
        warm = [(s, a) for i, (ds, a) in enumerate(jobs) for s in (ds, another_instance(ds, i), ds)]
        if all(writer.builder_for(a.application) is None for _, a in jobs):
            continue
        for ds, analysis in warm:
            writer.encode(ds, analysis, settings.output, "TEST")
        for i, (ds, analysis) in enumerate(jobs):
            before = sum(t.rendered for t in writer.templates.values())
            encoded = writer.encode(ds, analysis, settings.output, "TEST")
            assert encoded is not None
            assert sum(t.rendered for t in writer.templates.values()) == before + 1, f"{name}: not rendered"
            path = folder / f"{name}-{i}.dcm"
            path.write_bytes(encoded[0])
            paths.append(path)
    return paths


def errors_of(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def check(paths: list[Path]) -> None:
    need("dciodvfy")
    need("dsrdump")
    assert paths
    for path in paths:
        assert errors_of(path) == [], path.name
        if path.name.startswith(("sr-", "obsr-")):
            result = subprocess.run(["dsrdump", "-Ee", str(path)], capture_output=True, text=True)
            assert result.returncode == 0 and "E:" not in result.stderr and "W:" not in result.stderr, result.stderr


def test_fast_path_head_objects_pass_dciodvfy_and_dsrdump(tmp_path: Path) -> None:
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS)})
    runtime = build_runtime(settings, destinations=[])
    sources = [read_dataset(p.read_bytes()) for p in sorted(SAMPLES.glob("*.dcm"))]
    check(fast_objects([(ds, runtime.application.analyse(ds)) for ds in sources], tmp_path))


def test_fast_path_labour_objects_pass_dciodvfy_and_dsrdump(tmp_path: Path) -> None:
    jobs = []
    for image_id, size in ((HIGH_AOP, None), (LOW_AOP, 0.1)):
        ds = read_dataset(wrapped(image_id, tmp_path, size).read_bytes())
        jobs.append((ds, GroundTruthLabour(image_id).analyse(ds)))
    check(fast_objects(jobs, tmp_path))
