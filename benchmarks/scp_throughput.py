"""Receive-only throughput of fetalnode's SCP versus DCMTK storescp, same files, same run.

Both receivers get the same storescu (TCP_NODELAY=1) sending the same files in one association.
fetalnode fsyncs every object and records its job in SQLite before answering; storescp
(TCP_NODELAY=1, its fastest setting) writes files without fsync.

.venv/bin/python benchmarks/scp_throughput.py [--n 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

from benchmarks.common import Stack, make_images, scratch, storescu
from harness.node import wait_echo
from harness.ports import free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = scratch("fetalnode-scp-")
    files = make_images(args.n, work / "images")
    mb = sum(f.stat().st_size for f in files) / 1e6
    ours, theirs = [], []
    for r in range(args.rounds):
        with Stack("--no-worker") as stack:
            ours.append(storescu(stack.port, files))
        port = free_port()
        out = work / f"storescp{r}"
        out.mkdir()
        proc = subprocess.Popen(
            ["storescp", "-aet", "FETALNODE", "-od", str(out), str(port)], env={**os.environ, "TCP_NODELAY": "1"}
        )
        try:
            wait_echo(port, 30)
            theirs.append(storescu(port, files))
        finally:
            proc.terminate()
            proc.wait()
    best_ours, best_theirs = min(ours), min(theirs)
    print(
        json.dumps(
            {
                "files": args.n,
                "megabytes": round(mb, 1),
                "rounds": args.rounds,
                "fetalnode_s": [round(x, 2) for x in ours],
                "storescp_s": [round(x, 2) for x in theirs],
                "fetalnode_images_per_s": round(args.n / best_ours, 1),
                "storescp_images_per_s": round(args.n / best_theirs, 1),
                "ratio_fetalnode_to_storescp": round(best_theirs / best_ours, 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
