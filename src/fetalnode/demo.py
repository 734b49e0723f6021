"""``make demo``: Orthanc + a node on loopback, the samples sent by DCMTK, a table of findings."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from pydicom import dcmread

from fetalnode import RESEARCH_NOTICE
from fetalnode.config import load_settings
from fetalnode.errors import NodeError
from fetalnode.jobs import JobStore
from fetalnode.orthanc.server import OrthancProcess, free_port
from fetalnode.process import stop_process

MODALITY_AET = "DEMO-US"
NODE_AET = "FETALNODE"
DONE = {"delivered", "failed", "rejected"}


def write_node_config(
    path: Path, *, port: int, data_dir: Path, orthanc: OrthancProcess, password_file: Path, models_dir: Path
) -> None:
    path.write_text(
        f"""[node]
ae_title = "{NODE_AET}"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
station_name = "fetalnode-demo"

[scp]
allowed_calling_aets = ["{MODALITY_AET}", "STORESCU", "ECHOSCU", "PRINTSCU"]

[models]
dir = "{models_dir}"

[orthanc]
url = "{orthanc.url}"
username = "{orthanc.username}"
password_file = "{password_file}"
""",
        encoding="utf-8",
    )


def start_node(config: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fetalnode.cli", "serve", "--config", str(config), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def wait_echo(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, aet: str = MODALITY_AET) -> None:
    """Poll with DCMTK ``echoscu`` until the node answers C-ECHO."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NodeError(f"fetalnode exited with {proc.returncode} before answering C-ECHO")
        r = subprocess.run(["echoscu", "-aet", aet, "-aec", NODE_AET, "127.0.0.1", str(port)], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise NodeError(f"fetalnode did not answer C-ECHO on port {port} within {timeout:.0f} s")


def run_demo(samples: Path, run_dir: Path | None, exit_after: bool) -> int:
    for tool in ("dcmsend", "echoscu"):
        if shutil.which(tool) is None:
            raise NodeError(f"DCMTK's {tool} is missing (Debian package dcmtk); run `make deps`")
    files = sorted(samples.glob("*.dcm"))
    if not files:
        raise NodeError(f"no sample DICOM files in {samples}")
    run_dir = (run_dir or Path(".run") / datetime.now().strftime("demo-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    orthanc = OrthancProcess(run_dir / "orthanc", fetalnode_plugin=True)
    orthanc.start()
    password_file = run_dir / "orthanc-password"
    password_file.write_text(orthanc.password + "\n", encoding="utf-8")
    os.chmod(password_file, 0o600)
    port = free_port()
    config = run_dir / "node.toml"
    write_node_config(
        config,
        port=port,
        data_dir=run_dir / "node",
        orthanc=orthanc,
        password_file=password_file,
        models_dir=Path("models").resolve(),
    )
    node = start_node(config, run_dir / "node.log")
    try:
        wait_echo(port, 120, node)
        print(
            f"fetalnode listening as {NODE_AET}@127.0.0.1:{port}; sending {len(files)} sample(s) with dcmsend",
            flush=True,
        )
        subprocess.run(
            ["dcmsend", "-aet", MODALITY_AET, "-aec", NODE_AET, "127.0.0.1", str(port), *map(str, files)], check=False
        )
        settings = load_settings(config)
        jobs = JobStore(settings.data_path / "jobs.sqlite")
        expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.name for f in files}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            current = jobs.jobs()
            if {j.sop_uid for j in current} >= set(expected) and all(j.state in DONE for j in current):
                break
            time.sleep(0.5)
        print_table(jobs, expected, orthanc)
        ok = all(j.state == "delivered" for j in jobs.jobs())
        print(
            f"\nOrthanc Explorer: {orthanc.url}/app/explorer.html  (user {orthanc.username}, password in "
            f"{password_file})\nTriage list: {orthanc.url}/fetalnode/triage   findings JSON: "
            f"{orthanc.url}/fetalnode/findings\nNode log: {run_dir / 'node.log'}   audit: {settings.data_path / 'audit.jsonl'}"
        )
        print(f"{RESEARCH_NOTICE}.")
        if exit_after:
            return 0 if ok else 1
        print("Servers keep running for browsing; press Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        return 0 if ok else 1
    finally:
        stop_process(node)
        orthanc.stop()


def print_table(jobs: JobStore, expected: dict[str, str], orthanc: OrthancProcess) -> None:
    rows = [("source", "state", "finding", "conf.", "HC mm", "SR / heatmap in Orthanc")]
    for job in jobs.jobs():
        r = job.result
        finding = r.get("finding") or ("not analysed" if r else job.error[:40])
        if r.get("malformation_type"):
            finding += f": {r['malformation_type']}"
        conf = f"{r['confidence']:.2f}" if r.get("confidence") is not None else "-"
        hc = f"{r['hc_mm']:.1f}" if r.get("hc_mm") is not None else "-"
        links = " ".join(f"{orthanc.url}/app/explorer.html#instance?uuid={i}" for i in job.delivered) or "-"
        rows.append((expected.get(job.sop_uid, job.sop_uid[-12:]), job.state, finding, conf, hc, links))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
