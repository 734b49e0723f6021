"""A new bundle pushed to a running node is used for the next jobs; none is dropped."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness.node import MODELS, cli
from tests.conftest import SAMPLES, send
from tests.e2e.helpers import download, find

pytestmark = pytest.mark.e2e
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())


def push(node, bundle, models) -> subprocess.CompletedProcess[str]:
    return cli("models", "push", str(bundle), "--config", str(node.config), "--models-dir", str(models))


def test_push_new_classifier_to_running_node(make_node, orthanc, tmp_path) -> None:
    models = tmp_path / "models"
    for name in ("hc18-headseg", "fba-classifier", "fetal-view", "psfhs-seg"):
        shutil.copytree(MODELS / name, models / name)
    node = make_node(models__dir=str(models)).start()
    files = [SAMPLES / n for n in SAMPLE_INFO if SAMPLE_INFO[n]["dataset"] == "hc18"]
    assert send(node.port, files[0]).returncode == 0
    node.wait_all(1, {"delivered"})
    old_version = json.loads((models / "fba-classifier" / "configs" / "metadata.json").read_text())["version"]

    candidate = tmp_path / "candidate"
    shutil.copytree(MODELS / "fba-classifier", candidate)
    meta_path = candidate / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = old_version + "-pushed"
    meta_path.write_text(json.dumps(meta))
    broken = tmp_path / "broken"
    shutil.copytree(candidate, broken)
    (broken / "models" / "model.pt").write_bytes(b"not weights")
    refused = push(node, broken, models)
    assert refused.returncode == 2 and "checksum" in refused.stderr
    accepted = push(node, candidate, models)
    assert accepted.returncode == 0, accepted.stderr
    assert (models / "fba-classifier").is_symlink()

    for f in files[1:]:
        assert send(node.port, f).returncode == 0
    node.wait_all(len(files), {"delivered"})
    versions = [j.result["models"]["classifier"] for j in node.jobs.jobs()]
    assert versions[0] == f"fba-classifier/{old_version}"
    assert versions[1:] == [f"fba-classifier/{old_version}-pushed"] * (len(files) - 1)
    last = node.jobs.jobs()[-1]
    [sr] = [i for i in find(orthanc, SOPInstanceUID=last.result["outputs"]["sr"])]
    text = str(download(orthanc, sr["ID"]))
    assert f"{old_version}-pushed" in text
    audit = [json.loads(x) for x in (node.data_dir / "audit.jsonl").read_text().splitlines()]
    assert any(e["event"] == "models-reloaded" for e in audit)
