"""Per-stage CPU latency of one head image: the node's earlier inference path and its path now, side by side.

.venv/bin/python -m benchmarks.inference [--rounds 20] [--threads 1,2] [--throughput]

Before (the earlier path, rebuilt here from its pieces; CHANGELOG.md says what changed): view model in torch,
on its own copy of the segmentation's encoder; ellipse agreement on every pixel; classifier forward under
``no_grad`` then MONAI ``GradCAM`` (its own forward and a full backward) on the most probable type or normal;
the overlay blended on every pixel. After (the node now): the view model and the segmentation run their shared
encoder levels once (``router.share_encoder``: the segmentation's ONNX graph cut in two, the view model pooling
the first part's outputs, the segmentation running the rest); agreement on the ellipse's box; one classifier
forward for the probabilities and Grad-CAM, backward from the reported target to the CAM layer only; the
overlay blended where the saliency is positive; the percentile scaling computed once per image for the view
model and the analyser. Every thread count runs in a fresh process
(torch and onnxruntime take it at start); within it, before and after alternate image by image so that
load from other processes on the machine falls on both. ``--throughput`` also runs the after path in
1 process x 2 threads and 2 processes x 1 thread at once, and prints images/s.
Input: the decoded ``samples/*.dcm`` (decoding is not timed).

The router: its per-image cost (``ViewRouter.classify``: the percentile scaling, the view model, the
cross-check where the view model gives the intrapartum view at least ``router.cross_check_probability``, the
head application's claim where the view model abstains) on the samples and on the images of other views in
``tests/data/view_mini`` (wrapped as US DICOM), and the cost of each extra frame the router looks at in a cine
(``router.cine_frames`` 5 against 1 on a 5-frame cine of the head samples: the whole analysis, decoding included).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import dcmread

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("view", "segmentation", "classification", "gradcam")


def agreement_every_pixel(prob: np.ndarray, e: Any) -> tuple[float, float, float]:
    """``analyzer.ellipse_agreement`` before: the ellipse test on every pixel of the image."""
    h, w = prob.shape
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.radians(e.angle_deg)
    dx, dy = xx - e.cx, yy - e.cy
    u = (dx * np.cos(t) + dy * np.sin(t)) / e.a
    v = (-dx * np.sin(t) + dy * np.cos(t)) / max(e.b, 1e-6)
    inside = u * u + v * v <= 1.0
    mask = prob >= 0.5
    union = float((inside | mask).sum())
    iou = float((inside & mask).sum()) / union if union else 0.0
    confidence = float(prob[inside].mean()) if inside.any() else 0.0
    return iou, confidence, float(inside.sum()) / (h * w)


def fuse_every_pixel(display_rgb: np.ndarray, heatmap: np.ndarray, alpha: float) -> np.ndarray:
    """``saliency.fuse`` before: blended on every pixel."""
    from fetalnode.inference.saliency import pseudo_colour

    weight = (alpha * np.clip(heatmap, 0.0, 1.0) ** 2)[..., None]
    out = display_rgb.astype(np.float32) * (1 - weight) + pseudo_colour(heatmap).astype(np.float32) * weight
    return np.clip(out, 0, 255).round().astype(np.uint8)


@dataclass
class Image:
    gray: np.ndarray
    spacing_mm: tuple[float, float] | None
    display_rgb: np.ndarray


def load_images() -> list[Image]:
    from fetalnode.intake import decode_for_analysis

    out = []
    for path in sorted((ROOT / "samples").glob("*.dcm")):
        d = decode_for_analysis(dcmread(path), 10**8, 10)
        out.append(Image(d.gray, d.spacing_mm, d.display_rgb))
    return out


def pipelines() -> tuple[Callable[[Image], dict[str, float]], Callable[[Image], dict[str, float]]]:
    """The before and after paths, each returning its stage times in ms."""
    from monai.visualize import GradCAM

    from fetalnode.inference import Analyzer
    from fetalnode.inference import analyzer as analyzer_module
    from fetalnode.inference.analyzer import find_head, seg_settings
    from fetalnode.inference.bundle import load_bundle
    from fetalnode.inference.calibration import calibrated
    from fetalnode.inference.preprocess import roi_crop, to_unit_range
    from fetalnode.inference.saliency import draw_roi
    from fetalnode.inference.view import ViewModel, share_segmentation_encoder

    models = ROOT / "models"
    view_bundle = load_bundle(models / "fetal-view", "view")
    view_after = ViewModel(view_bundle)
    view_before = ViewModel(replace(view_bundle, infer=view_bundle.net))  # torch
    analyzer = Analyzer.from_dir(models, "hc18-headseg", "fba-classifier")
    seg = analyzer.seg
    whole_segmentation = seg.infer  # before: the segmentation's whole graph after the view model's own encoder
    # after: the view model and the segmentation run the encoder once (as the router sets them up)
    assert share_segmentation_encoder(view_after, [seg]) is not None, "the view model stands on the segmentation"
    settings = seg_settings(seg)
    cls_net = copy.deepcopy(analyzer.cls.net)  # MONAI GradCAM adds hooks on every call: not on the node's copy
    params = analyzer.cls.metadata["input"]
    agreement_now = analyzer_module.ellipse_agreement

    def before(img: Image) -> dict[str, float]:
        t = [time.perf_counter()]
        view_before.predict(img.gray)
        t.append(time.perf_counter())
        img01 = to_unit_range(img.gray)
        analyzer_module.ellipse_agreement = agreement_every_pixel  # type: ignore[assignment]
        try:
            head = find_head(whole_segmentation, settings, img01)
        finally:
            analyzer_module.ellipse_agreement = agreement_now  # type: ignore[assignment]
        assert head.ellipse is not None, "benchmark images are heads"
        t.append(time.perf_counter())
        crop, box = roi_crop(img01, head.ellipse.box(), int(params["roi_size"]), float(params["roi_margin"]))
        x = torch.from_numpy(crop)[None, None]
        with torch.no_grad():
            logits = cls_net(x)[0].numpy().astype(np.float64)
        p_abnormal, type_probs = calibrated(logits[None], analyzer.normal_index, analyzer.calibration)
        abnormal = [i for i in range(len(analyzer.labels)) if i != analyzer.normal_index]
        target = abnormal[int(type_probs[0].argmax())] if p_abnormal[0] >= analyzer.threshold else analyzer.normal_index
        t.append(time.perf_counter())
        with torch.enable_grad():
            cam = GradCAM(nn_module=cls_net, target_layers=cls_net.cam_layer)(x=x, class_idx=target)  # type: ignore[arg-type]
        heat = box.to_source(np.asarray(cam.detach()[0, 0].numpy(), np.float32), img01.shape)
        draw_roi(fuse_every_pixel(img.display_rgb, heat, analyzer.alpha), head.ellipse)
        t.append(time.perf_counter())
        return {s: (b - a) * 1000 for s, a, b in zip(STAGES, t[:-1], t[1:], strict=True)}

    def after(img: Image) -> dict[str, float]:
        t0 = time.perf_counter()
        img01 = to_unit_range(img.gray)  # once per image for both models (DecodedImage.gray01); timed as "view"
        view_after.predict(img.gray, img01)
        view_ms = (time.perf_counter() - t0) * 1000
        result = analyzer.analyze(img.gray, img.spacing_mm, img.display_rgb, img01=img01)
        assert result.analysed, "benchmark images are heads"
        return {"view": view_ms, **result.timings_ms}

    return before, after


def child(rounds: int, mode: str) -> dict[str, Any]:
    images = load_images()
    before, after = pipelines()
    for img in images:  # warm-up
        before(img)
        after(img)
    if mode == "throughput":
        t0 = time.perf_counter()
        for _ in range(rounds):
            for img in images:
                after(img)
        return {"images": rounds * len(images), "seconds": time.perf_counter() - t0}
    rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(rounds):
        for i, img in enumerate(images):
            order = ("before", "after") if (r + i) % 2 == 0 else ("after", "before")
            for name in order:
                rows[name].append((before if name == "before" else after)(img))
    out: dict[str, Any] = {}
    for name, runs in rows.items():
        stage = {s: float(np.median([r[s] for r in runs])) for s in STAGES}
        totals = [sum(r[s] for s in STAGES) for r in runs]
        out[name] = {**stage, "total_p50": float(np.median(totals)), "total_p95": float(np.percentile(totals, 95))}
    return out


def router_child(rounds: int) -> dict[str, Any]:
    """The router's per-image cost (p50 ms) on heads and on other views, and its cost per extra cine frame."""
    from fetalnode.applications.registry import build_application
    from fetalnode.applications.view_router.application import ViewRouter
    from fetalnode.config import load_settings
    from fetalnode.intake import US_MULTIFRAME, decode_for_analysis
    from fetalnode.wrap import wrap_png

    settings = load_settings(None, env={}, overrides={"models.dir": str(ROOT / "models")})
    router = build_application(settings)
    assert isinstance(router, ViewRouter)
    encoder = router.view_model.encoder

    def forget() -> None:
        if encoder is not None:
            encoder.forget()

    heads = [dcmread(p) for p in sorted((ROOT / "samples").glob("*.dcm"))]
    others = [wrap_png(p, pixel_size_mm=0.1) for p in sorted((ROOT / "tests/data/view_mini").glob("*/images/*.png"))]
    out: dict[str, Any] = {}
    for name, sets in (("heads", heads), ("other_views", others)):
        times = []
        for _ in range(rounds):
            for ds in sets:
                decoded = decode_for_analysis(ds, 10**8, 10)  # fresh: gray01 and the claim are computed per image
                forget()  # and the shared encoder's outputs: no image is seen twice
                t0 = time.perf_counter()
                router.classify(decoded)
                times.append((time.perf_counter() - t0) * 1000)
        out[f"router_{name}_ms_p50"] = float(np.median(times))
        out[f"router_{name}_images"] = len(sets)
    cine = copy.deepcopy(heads[2])  # a calibrated HC18 sample, 640 x 432, as a 5-frame cine of the HC18 samples
    frames = [np.asarray(decode_for_analysis(h, 10**8, 10).gray, np.uint8) for h in heads[2:]]
    frames = [f for f in frames if f.shape == frames[0].shape]
    stack = [frames[i % len(frames)] for i in range(5)]
    cine.SOPClassUID = cine.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    cine.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    cine.NumberOfFrames, cine.FrameIncrementPointer, cine.FrameTime = 5, (0x0018, 0x1063), 40.0
    cine.PixelData = np.stack(stack).tobytes()
    per: dict[int, float] = {}
    for k in (1, 5):
        looking = replace(router, cine_frames=k)
        looking.analyse(cine)
        times = []
        for _ in range(rounds):
            forget()
            t0 = time.perf_counter()
            looking.analyse(cine)
            times.append((time.perf_counter() - t0) * 1000)
        per[k] = float(np.median(times))
    out["cine_5_frames_1_looked_ms_p50"] = per[1]
    out["cine_5_frames_5_looked_ms_p50"] = per[5]
    out["per_extra_frame_ms"] = (per[5] - per[1]) / 4
    return out


def spawn(threads: int, rounds: int, mode: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.inference", "--child", mode, "--threads", str(threads)]
    return subprocess.Popen([*cmd, "--rounds", str(rounds)], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.returncode})")
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="passes over the samples (default 20)")
    ap.add_argument("--threads", default="1,2", help="torch / onnxruntime threads per process, comma-separated")
    ap.add_argument("--throughput", action="store_true", help="also images/s of 1x2 and 2x1 processes x threads")
    ap.add_argument("--child", choices=["latency", "throughput", "router"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(int(args.threads))
        result = router_child(args.rounds) if args.child == "router" else child(args.rounds, args.child)
        print(json.dumps(result))
        return 0
    report: dict[str, Any] = {"images": len(load_images()), "rounds": args.rounds, "latency_ms_p50": {}}
    print(
        f"{'stage (ms, p50)':<22}"
        + "".join(f"{f'{t} thr before':>16}{f'{t} thr after':>15}" for t in args.threads.split(","))
    )
    results = {int(t): collect(spawn(int(t), args.rounds, "latency")) for t in args.threads.split(",")}
    for stage in (*STAGES, "total_p50", "total_p95"):
        cells = "".join(f"{r['before'][stage]:>16.1f}{r['after'][stage]:>15.1f}" for r in results.values())
        print(f"{stage:<22}{cells}")
    report["latency_ms_p50"] = {
        t: {k: {s: round(v, 1) for s, v in r[k].items()} for k in r} for t, r in results.items()
    }
    report["router"] = {}
    for t in args.threads.split(","):
        r = collect(spawn(int(t), max(3, args.rounds // 4), "router"))
        report["router"][int(t)] = {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
        print(
            f"router, {t} thread(s): {r['router_heads_ms_p50']:.1f} ms per head image, "
            f"{r['router_other_views_ms_p50']:.1f} ms per image of another view (p50; view model, cross-check, claim); "
            f"cine of 5 frames: {r['cine_5_frames_1_looked_ms_p50']:.0f} ms looking at 1, "
            f"{r['cine_5_frames_5_looked_ms_p50']:.0f} ms at 5: {r['per_extra_frame_ms']:.1f} ms per extra frame"
        )
    if args.throughput:
        rate = {}
        for processes, threads in ((1, 2), (2, 1)):
            procs = [spawn(threads, args.rounds, "throughput") for _ in range(processes)]
            t0 = time.perf_counter()
            done = [collect(p) for p in procs]
            wall = time.perf_counter() - t0  # includes start-up and warm-up: per-process rates below do not
            per_process = [d["images"] / d["seconds"] for d in done]
            rate[f"{processes}x{threads}"] = {"images_per_s": round(sum(per_process), 1), "wall_s": round(wall, 1)}
            print(f"after, {processes} process(es) x {threads} thread(s): {sum(per_process):.1f} images/s")
        report["throughput"] = rate
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
