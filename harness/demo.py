"""``make demo``: Orthanc + a node on loopback, the samples (and an image of two other views) sent by DCMTK,
a table of findings.

Run as ``python -m harness.demo [--exit] [--samples DIR] [--run-dir DIR]`` from the repository root.
``--cloud``: the cloud path instead, on loopback: a RabbitMQ broker with a TLS listener, two site terminals
each with its own Orthanc, one cloud worker; the samples go to site A, the two other views to site B.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread

from fetalnode import RESEARCH_NOTICE
from fetalnode.jobs import JobStore
from harness.node import FINAL, ROOT, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess
from harness.processes import HarnessError, wait_for

# Dataset images of the other views the view router tells apart (tests/data/README.md gives their sources and
# licences), wrapped as US DICOM by the demo: an intrapartum transperineal image (labour-progress: AoP) and a
# femur plane (no application for its view).
OTHER_VIEWS = (
    ROOT / "tests" / "data" / "view_mini" / "psfhs" / "images" / "psfhs_03920.png",
    ROOT / "tests" / "data" / "view_mini" / "fetal_planes_db" / "images" / "Patient01672_Plane5_2_of_2.png",
)


def wrap_other_views(folder: Path) -> list[Path]:
    """The OTHER_VIEWS images as US DICOM files in ``folder`` (uncalibrated, as the datasets give them)."""
    from fetalnode.wrap import wrap_png

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for png in OTHER_VIEWS:
        if png.is_file():
            path = folder / f"{png.stem}.dcm"
            wrap_png(png, pixel_size_mm=None).save_as(path, enforce_file_format=True)
            out.append(path)
    return out


def run_demo(samples: Path, run_dir: Path | None, exit_after: bool, other_views: bool = True) -> int:
    for tool in ("dcmsend", "echoscu"):
        if shutil.which(tool) is None:
            raise HarnessError(f"DCMTK's {tool} is missing (Debian package dcmtk); run `make deps`")
    files = sorted(samples.glob("*.dcm"))
    if not files:
        raise HarnessError(f"no sample DICOM files in {samples}")
    run_dir = (run_dir or ROOT / ".run" / datetime.now().strftime("demo-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if other_views:
        files += wrap_other_views(run_dir / "other-views")
    orthanc = OrthancProcess(run_dir / "orthanc", ohif=True).start()
    try:
        node = prepare_node(run_dir, orthanc, node__station_name="fetalnode-demo", source_to_orthanc=True)
        try:
            node.start()
            return send_and_report(node, orthanc, files, exit_after)
        finally:
            node.stop()
    finally:
        orthanc.stop()


# The demo's own images (the samples, the other views) are dataset images wrapped by fetalnode, with no
# burned-in text; those without an ultrasound region would not leave a site without a mask (--cloud).
WRAPPED_MASK = {"name": "dataset images wrapped by fetalnode", "manufacturer": "fetalnode wrap", "rectangles": [[0, 0, 4095, 4095]]}


def run_cloud_demo(samples: Path, run_dir: Path | None, exit_after: bool) -> int:
    """Two sites and one cloud worker on loopback; the samples to site A, the other views to site B."""
    from fetalnode.config import MaskSettings
    from harness.cloud import prepare_terminal, prepare_worker
    from harness.rabbitmq import RabbitMQProcess

    files = sorted(samples.glob("*.dcm"))
    if not files:
        raise HarnessError(f"no sample DICOM files in {samples}")
    run_dir = (run_dir or ROOT / ".run" / datetime.now().strftime("demo-cloud-%Y%m%d-%H%M%S")).resolve()
    sent = {"site-a": files, "site-b": wrap_other_views(run_dir / "other-views")}
    broker = RabbitMQProcess(run_dir / "rabbitmq", tls=True, sites=tuple(sent)).start()
    orthancs = {site: OrthancProcess(run_dir / f"orthanc-{site}", ohif=site == "site-a").start() for site in sent}
    nodes: list[NodeProcess] = []
    try:
        masks = [MaskSettings(**WRAPPED_MASK)]  # type: ignore[arg-type]
        for site, orthanc in orthancs.items():
            nodes.append(prepare_terminal(run_dir / site, orthanc, broker, site, masks=masks).start())
        worker = prepare_worker(run_dir / "worker", broker)
        worker.start_broker_worker()
        nodes.append(worker)
        print(f"broker amqps://127.0.0.1:{broker.port} (TLS only; users {', '.join(broker.users())}); one cloud worker")
        ok = True
        for site, node in zip(sent, nodes, strict=False):
            print(f"\n== {site}: terminal {node.ae_title}@127.0.0.1:{node.port}, Orthanc {orthancs[site].url}")
            ok &= send_and_report(node, orthancs[site], sent[site], exit_after=True) == 0
        print(
            "\nWhat left each site: pseudonymised images (audit event 'published': how the pixels were cleaned); "
            "what came back was re-identified and delivered by the site's terminal."
        )
        if exit_after:
            return 0 if ok else 1
        print("Servers keep running for browsing; press Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        return 0 if ok else 1
    finally:
        for node in nodes:
            node.stop()
        for orthanc in orthancs.values():
            orthanc.stop()
        broker.stop()


def send_and_report(node: NodeProcess, orthanc: OrthancProcess, files: list[Path], exit_after: bool) -> int:
    """Send ``files`` with dcmsend, wait for their jobs, print the table; serve until Ctrl-C unless ``exit_after``."""
    print(
        f"fetalnode listening as {node.ae_title}@127.0.0.1:{node.port}; sending {len(files)} sample(s) with dcmsend",
        flush=True,
    )
    subprocess.run(
        ["dcmsend", "-aet", node.echo_aet, "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)],
        check=False,
    )
    expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.name for f in files}

    def finished() -> bool:
        current = node.jobs.jobs()
        return {j.sop_uid for j in current} >= set(expected) and all(j.state in FINAL for j in current)

    with contextlib.suppress(TimeoutError):  # the table shows what did not finish
        wait_for(finished, 600, "the samples' jobs", interval=0.5)
    print_table(node.jobs, expected, orthanc)
    if orthanc.ohif:
        print_ohif_links(node.jobs, expected, orthanc)
    ok = {j.sop_uid for j in node.jobs.jobs() if j.state == "delivered"} >= set(expected)
    print(
        f"\nOrthanc Explorer: {orthanc.url}/app/explorer.html  (user {orthanc.username}, password in "
        f"{node.settings.orthanc.password_file})\nTriage list: {orthanc.url}/fetalnode/triage   findings JSON: "
        f"{orthanc.url}/fetalnode/findings\nOHIF study list: {orthanc.url}/ohif/\nNode log: {node.log}   audit: {node.data_dir / 'audit.jsonl'}"
    )
    print(f"{RESEARCH_NOTICE}.")
    if exit_after:
        return 0 if ok else 1
    print("Servers keep running for browsing; press Ctrl-C to stop.", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    return 0 if ok else 1


def describe_result(r: dict[str, Any], error: str) -> tuple[str, str, str, str]:
    """A job summary as the table shows it: the application, the finding, its confidence, the measurement."""
    if not r:
        return "-", error[:40], "-", "-"
    application = r.get("application", "-")
    if r.get("aop_deg") is not None:  # labour-progress
        hsd = (
            f", HSD {r['hsd_mm']:.1f} mm"
            if r.get("hsd_mm") is not None
            else (f", HSD {r['hsd_px']:.1f} px" if r.get("hsd_px") is not None else "")
        )
        return application, "angle of progression", "-", f"AoP {r['aop_deg']:.1f} deg{hsd}"
    finding = r.get("finding") or r.get("reason") or "not analysed"
    if r.get("malformation_type") or r.get("type_note"):
        finding += f": {r.get('malformation_type') or r['type_note']}"
    conf = f"{r['confidence']:.2f}" if r.get("confidence") is not None else "-"
    hc = f"HC {r['hc_mm']:.1f} mm" if r.get("hc_mm") is not None else "-"
    return application, finding, conf, hc


def print_table(jobs: JobStore, expected: dict[str, str], orthanc: OrthancProcess) -> None:
    rows = [("source", "state", "application", "finding", "conf.", "measurement", "source / SR / heatmap in Orthanc")]
    for job in jobs.jobs():
        held = job.receipts.get("orthanc", {})  # the Orthanc destination's receipts: output -> instance ID
        links = " ".join(f"{orthanc.url}/app/explorer.html#instance?uuid={i}" for i in held.values()) or "-"
        name = expected.get(job.sop_uid, job.sop_uid[-12:])
        rows.append((name, job.state, *describe_result(job.result, job.error), links))
    widths = [max(len(str(row[i])) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:6], widths, strict=True)) + "  " + row[6])


def print_ohif_links(jobs: JobStore, expected: dict[str, str], orthanc: OrthancProcess) -> None:
    """One OHIF link per study, opened on fetalnode's report (SR) series: OHIF's SR viewport draws the
    head contour and callipers over the ultrasound image; the image and heatmap series are in its list."""
    print("\nOHIF viewer, one link per study (opens fetalnode's report over the image):")
    for job in jobs.jobs():
        sr = job.receipts.get("orthanc", {}).get("sr")
        if job.sop_uid not in expected or not sr:
            continue
        tags = orthanc.instance_tags(sr)
        url = orthanc.ohif_study_url(tags["StudyInstanceUID"], tags["SeriesInstanceUID"])
        print(f"  {expected[job.sop_uid]}: {url}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.demo",
        description="start Orthanc and a node on loopback, send the samples, print findings",
    )
    ap.add_argument("--samples", default=str(ROOT / "samples"), help="folder of sample DICOM files")
    ap.add_argument("--run-dir", help="working folder (default: a new folder under .run/)")
    ap.add_argument("--exit", action="store_true", help="exit after the table instead of serving until Ctrl-C")
    ap.add_argument(
        "--cloud",
        action="store_true",
        help="the cloud path: a TLS broker, two site terminals with their own Orthanc, one cloud worker",
    )
    ap.add_argument(
        "--no-other-views",
        action="store_true",
        help="send only the samples (not also a transperineal image and a femur plane, wrapped as US DICOM)",
    )
    args = ap.parse_args(argv)
    try:
        if args.cloud:
            return run_cloud_demo(Path(args.samples), Path(args.run_dir) if args.run_dir else None, args.exit)
        return run_demo(
            Path(args.samples),
            Path(args.run_dir) if args.run_dir else None,
            exit_after=args.exit,
            other_views=not args.no_other_views,
        )
    except HarnessError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
