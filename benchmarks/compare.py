"""The throughput targets on another version of the node and on this one, in one run: ``benchmarks/throughput.py``
on a source tree of the other version (a checkout of another commit, with its own harness and ``src``) and on
this one, one after the other on the same machine, then a table of target, before and after.

    git clone --quiet . ../before && git -C ../before checkout --quiet COMMIT
    .venv/bin/python -m benchmarks.compare --before ../before [--n 200] [--rounds 2] [--load-n 1000]

The other tree runs with this virtual environment's interpreter and packages (``PYTHONPATH`` puts its
``src`` and harness first); this tree's ``throughput.py`` is copied into it, so both run the same benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    ("end-to-end images/s, the first 200 after start", ("end_to_end", "cold", "images_per_s"), ">= 15"),
    ("end-to-end images/s, the next 200 (warm)", ("end_to_end", "warm", "images_per_s"), ">= 15"),
    ("receive-only images/s, 1 sender", ("receive_images_per_s", "fetalnode_1"), ""),
    ("Orthanc, same files, 1 sender", ("receive_images_per_s", "orthanc_1"), ""),
    ("receive ratio to Orthanc, 1 sender", ("receive_ratio_to_orthanc_1_sender",), ">= 1.0"),
    ("receive-only images/s, 4 senders", ("receive_images_per_s", "fetalnode_4"), ""),
    ("Orthanc, same files, 4 senders", ("receive_images_per_s", "orthanc_4"), ""),
    ("receive ratio to Orthanc, 4 senders", ("receive_ratio_to_orthanc_4_senders",), ">= 1.0"),
    ("C-ECHO p50 ms, 4 senders x 1000 images + analysis", ("echo_under_load", "echo_p50_ms"), ""),
    ("C-ECHO p95 ms, same", ("echo_under_load", "echo_p95_ms"), "<= 100"),
    ("images/s received during that load", ("echo_under_load", "images_per_s"), ""),
]


def run(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    if tree != ROOT:  # this version of the benchmark on both trees
        shutil.copy(ROOT / "benchmarks" / "throughput.py", tree / "benchmarks" / "throughput.py")
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--n", str(args.n), "--rounds", str(args.rounds)]
    out = subprocess.run(
        [*cmd, "--load-n", str(args.load_n)], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    start = out.stdout.find("{")
    if start < 0:
        raise SystemExit(f"{tree}: no result\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout[start:]))


def pick(result: dict[str, object], path: tuple[str, ...]) -> object:
    value: object = result
    for key in path:
        value = value.get(key, "—") if isinstance(value, dict) else "—"
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--before", type=Path, required=True, help="source tree of the other version (a checkout of another commit)"
    )
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load-n", type=int, default=1000)
    args = ap.parse_args()
    before, after = run(args.before.resolve(), args), run(ROOT, args)
    for result in (before, after):
        load = result.get("echo_under_load")
        if isinstance(load, dict) and load.get("send_s"):
            load["images_per_s"] = round(float(load["images"]) / float(load["send_s"]), 1)
    print(f"| target | goal | before ({args.before.name}) | after |")
    print("|---|---|---|---|")
    for label, path, goal in ROWS:
        print(f"| {label} | {goal} | {pick(before, path)} | {pick(after, path)} |")
    print(json.dumps({"before": before, "after": after}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
