"""Pseudonymisation and re-identification time per image, per object class (the terminal's cost of the cloud path).

Pseudonymise: Part 10 bytes in (as spooled) -> Part 10 bytes out (decode every frame, profile, keyed UIDs,
blank, encode), for each PHI corpus class (``harness/phi.py``) and real scanners' files of pydicom-data.
Re-identify: ``reidentify_all`` of every output object the writers build from the pseudonymised image (SR, SC,
GSPS, SEG, OB-GYN SR) as Part 10 bytes, bytes in -> bytes out, per image. p50 / p95 over ``--rounds`` passes; the PHI probe's result of each class
is printed beside it (0 strings, 0 pixels expected).

    nice -n 19 .venv/bin/python -m benchmarks.privacy [--rounds 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import time
from pathlib import Path

import pydicom.data
from pydicom import dcmread

from fetalnode.config import MaskSettings, load_settings
from fetalnode.privacy import Pseudonymiser, reidentify_all
from fetalnode.runner import encode_dataset
from fetalnode.runtime import build_runtime
from harness import phi

SECRET = b"benchmark secret, thirty-two bytes or more"
SCANNERS = {
    "GE RGB, JPEG 2000 (mask)": "US1_J2KR.dcm",
    "Philips palette, RLE, 2 frames": "OBXXXX1A_rle_2frame.dcm",
    "Aloka 16-bit palette, big endian": "gdcm-US-ALOKA-16_big.dcm",
    "Philips JPEG lossless": "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "SonoSite colour JPEG, 120 frames": "color3d_jpeg_baseline.dcm",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    masks = [*phi.MASKS, MaskSettings(name="ge", manufacturer="G.E. Medical Systems", rectangles=[[0, 40, 639, 479]])]
    pseudonymiser = Pseudonymiser(SECRET, masks=masks)
    rt = build_runtime(load_settings(None, env={}), destinations=[])
    runtime = dataclasses.replace(rt, destinations=[])
    print(
        f"{'object class':<36} {'pseudonymise p50/p95 ms':>24} {'re-identify p50/p95 ms':>23}  probe  bytes in -> out"
    )
    inputs: dict[str, tuple[bytes, phi.PhiCase | None]] = {}
    for make in phi.CASES.values():
        case = make()
        inputs[case.name] = (case.data, case)
    for name, file in SCANNERS.items():
        inputs[name] = (Path(pydicom.data.get_testdata_file(file)).read_bytes(), None)
    for name, (data, case) in inputs.items():
        rounds = max(3, args.rounds // 5) if len(data) > 5_000_000 else args.rounds
        result = pseudonymiser.pseudonymise_bytes(data)
        p_ms = timed(lambda data=data: pseudonymiser.pseudonymise_bytes(data), rounds)
        probe = "-"
        if case is not None:
            found = phi.probe(result.data, case.phi + case.original_uids, case.kept)
            probe = f"{len(found.strings)}/{found.nonzero_outside}"
        r_text = "-"
        if case is not None:
            trip = phi.round_trip(runtime, pseudonymiser, data)
            source = dcmread(io.BytesIO(data))
            returned = {name: encode_dataset(obj) for name, obj in trip.cloud.items()}
            r_ms = timed(
                lambda returned=returned, source=source, m=trip.uid_map: reidentify_all(returned, source, m), rounds
            )
            r_text = f"{statistics.median(r_ms):.1f} / {percentile(r_ms, 0.95):.1f} ({len(trip.cloud)} obj)"
        print(
            f"{name:<36} {statistics.median(p_ms):>11.1f} / {percentile(p_ms, 0.95):<10.1f} {r_text:>23}  {probe:>5}"
            f"  {len(data) / 1e6:.2f} -> {len(result.data) / 1e6:.2f} MB"
        )


if __name__ == "__main__":
    main()
