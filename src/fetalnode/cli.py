"""Command line of fetalnode. Research use only, not for diagnosis.

Logging handlers are configured by :func:`fetalnode.logs.setup_logging`, which ``main`` calls first.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fetalnode import RESEARCH_NOTICE, __version__
from fetalnode.config import Settings, load_settings
from fetalnode.errors import NodeError
from fetalnode.logs import setup_logging, third_party_level
from fetalnode.vocab import JobState, Role

log = logging.getLogger("fetalnode")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("host", "node.host"),
        ("port", "node.port"),
        ("ae_title", "node.ae_title"),
        ("data_dir", "node.data_dir"),
        ("models_dir", "models.dir"),
        ("orthanc_url", "orthanc.url"),
        ("role", "node.role"),
        ("broker_url", "broker.url"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    settings = load_settings(args.config, overrides=overrides)
    third_party_level(settings.logging.third_party)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    log.info("fetalnode %s (%s) effective config: %s", __version__, RESEARCH_NOTICE, json.dumps(settings.masked()))
    if settings.node.role in (Role.TERMINAL, Role.WORKER):
        from fetalnode.broker import check

        check(settings.broker)  # the password and TLS files, before anything starts
    if settings.node.role == Role.WORKER:
        import threading

        from fetalnode.distributed import run_worker
        from fetalnode.runtime import build_runtime

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        return run_worker(settings, build_runtime(settings, destinations=[]), stop)
    from fetalnode.node import Node

    node = Node(settings, with_worker=settings.worker.enabled and not args.no_worker, log_level=args.log_level)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import threading

    from fetalnode.jobs import open_store
    from fetalnode.worker import build_worker

    settings = _settings(args)
    log.info("fetalnode worker %s effective config: %s", __version__, json.dumps(settings.masked()))
    worker = build_worker(settings, open_store(settings))
    done = threading.Event()

    def request_stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    worker.start()
    done.wait()
    worker.stop()
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """The job runner with a folder as the only destination: ``DIR/<output>.dcm`` per enabled output,
    ``DIR/heatmap.png`` (the Secondary Capture's pixels) and ``DIR/summary.json`` (also printed)."""
    import hashlib
    from io import BytesIO

    from PIL import Image
    from pydicom import dcmread

    from fetalnode.destinations.folder import folder_destination
    from fetalnode.outcomes import Received, Verdict
    from fetalnode.runner import run_job
    from fetalnode.runtime import build_runtime

    settings = _settings(args)
    source = Path(args.file)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = folder_destination(out, list(settings.output.enabled))
    runtime = build_runtime(settings, destinations=[folder])
    data = source.read_bytes()
    received = Received(
        job_id=0,
        sop_uid="",
        sha256=hashlib.sha256(data).hexdigest(),
        read=lambda: data,
        station_name=settings.node.station_name,
    )
    outcome = run_job(received, runtime)
    if outcome.verdict is not Verdict.DELIVERED:
        log.error("%s: %s at stage %s: %s", source.name, outcome.verdict, outcome.stage, outcome.reason)
        return 2
    files = [Path(path) for path in outcome.receipts[folder.name].values()]
    if "sc" in outcome.built:
        heatmap = out / "heatmap.png"
        Image.fromarray(dcmread(BytesIO(outcome.built["sc"])).pixel_array).save(heatmap)
        files.append(heatmap)
    summary = dict(outcome.summary)
    summary["notice"] = RESEARCH_NOTICE
    summary["source"] = str(source)
    summary_path = out / "summary.json"
    summary["files"] = sorted(str(p) for p in [*files, summary_path])
    text = json.dumps(summary, indent=2)
    summary_path.write_text(text + "\n")
    print(text)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fetalnode.destinations.base import build_destinations
    from fetalnode.jobs import PENDING, open_store

    settings = _settings(args)
    jobs = open_store(settings, writable=False)
    report: dict[str, Any] = {"counts": jobs.counts(), "oldest_pending_s": jobs.oldest_pending_age()}
    # Pre-notified (announced) but the image is not in the spool: lost before a worker could get it.
    report["announced_not_received"] = [
        {"id": j.id, "sop_uid": j.sop_uid, "state": j.state}
        for state in PENDING
        for j in jobs.jobs(state)
        if not Path(j.spool_path).is_file()
    ]
    destinations = build_destinations(settings)
    counts = jobs.delivery_counts([d.name for d in destinations])
    report["destinations"] = [{**d.probe(), "jobs": counts[d.name]} for d in destinations]
    if settings.broker.url:
        from fetalnode.broker import SiteTopology, site_of
        from fetalnode.distributed import queue_depth

        published = jobs.jobs(JobState.PUBLISHED)
        report["broker"] = {
            "queue": SiteTopology(site_of(settings.broker)).jobs_queue,
            "queue_depth": queue_depth(settings),  # None: broker unreachable
            # sent to the broker, no worker's answer yet (the oldest first)
            "published_unanswered": len(published),
            "published_unanswered_oldest": published[0].received_at if published else None,
        }
    if args.failed:
        report["failed"] = [
            {
                "id": j.id,
                "sop_uid": j.sop_uid,
                "stage": j.stage,
                "error": j.error,
                "permanent": j.permanent,
                "calling_ae": j.calling_ae,
            }
            for j in jobs.jobs(JobState.FAILED)
        ]
        report["rejected"] = [
            {"id": j.id, "sop_uid": j.sop_uid, "error": j.error} for j in jobs.jobs(JobState.REJECTED)
        ]
    print(json.dumps(report, indent=2))
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    from fetalnode.jobs import open_store

    n = open_store(_settings(args)).resend(args.job or None, args.destination, args.permanent)
    print(json.dumps({"requeued": n}))
    return 0


def _override(recipe: Any, args: argparse.Namespace, keys: tuple[str, ...]) -> Any:
    """Recipe fields given on the command line replace the recipe's defaults."""
    for key in keys:
        if getattr(args, key) is not None:
            setattr(recipe, key, getattr(args, key))
    return recipe


def _canvas(text: str) -> tuple[int, int]:
    """'352x512' -> (352, 512); both sides multiples of 16 (the UNet halves the canvas four times)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--canvas: expected HxW such as 352x512, got {text!r}") from None
    if h % 16 or w % 16 or h <= 0 or w <= 0:
        raise SystemExit(f"--canvas: both sides must be positive multiples of 16, got {text!r}")
    return h, w


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    bundle_name = args.name or Path(args.out).name
    reference_data = _reference_data(args)
    meta: Mapping[str, Any]  # the bundle's metadata, typed by its task (fetalnode.training.metadata)
    if args.task == "view":
        from fetalnode.training.view import ViewRecipe, train_view

        folders = _view_folders(args)
        vrecipe = _override(
            ViewRecipe(seed=args.seed),
            args,
            (
                "epochs",
                "max_minutes",
                "limit",
                "lr",
                "patience",
                "scanner_augment",
                "balance",
                "leave_out",
                "threshold_weighting",
                "median",
                "geometry",
                "consistency",
                "encoder",
                "overlay_copies",
                "encoder_canvas",
                "encoder_levels",
            ),
        )
        if args.size:
            vrecipe.size = args.size
        try:
            meta = train_view(
                folders,
                Path(args.out),
                vrecipe,
                bundle_name,
                args.version,
                Path(args.head_models),
                _command_line(),
                reference_data,
            )
        except ValueError as exc:  # a folder in no known format, a view without training images
            log.error("%s", exc)
            return 2
        print(json.dumps(meta["metrics"], indent=2, default=str))
        return 0
    if not args.data or len(args.data) != 1:
        raise SystemExit(f"train {args.task}: give exactly one --data folder")
    args.data = args.data[0]
    if args.task == "segmentation":
        from fetalnode.training.segmentation import SegRecipe, train_segmentation

        recipe = _override(
            SegRecipe(seed=args.seed),
            args,
            (
                "epochs",
                "max_minutes",
                "limit",
                "lr",
                "patience",
                "init_from",
                "swa_from",
                "rotate_deg",
                "scale_jitter",
                "large_head_weight",
            ),
        )
        if args.canvas:
            recipe.canvas_hw = _canvas(args.canvas)
        meta = train_segmentation(Path(args.data), Path(args.out), recipe, bundle_name, args.version, reference_data)
    elif args.task == "labour-segmentation":
        from fetalnode.training.labour import LabourRecipe, train_labour_segmentation

        lrecipe = _override(
            LabourRecipe(seed=args.seed),
            args,
            ("epochs", "max_minutes", "limit", "lr", "patience", "rotate_deg", "scale_jitter"),
        )
        if args.canvas:
            lrecipe.canvas_hw = _canvas(args.canvas)
        meta = train_labour_segmentation(
            Path(args.data), Path(args.out), lrecipe, bundle_name, args.version, reference_data
        )
    else:
        from fetalnode.training.classifier import ClsRecipe, train_classifier

        crecipe = _override(
            ClsRecipe(
                seed=args.seed,
                extra_normals=args.extra_normals or "",
                cv_folds=args.cv_folds,
                pretrain_data=tuple(args.pretrain_data or ()),
            ),
            args,
            ("epochs", "max_minutes", "limit", "lr", "patience", "base_init", "heads_only", "abnormal_weight"),
        )
        meta = train_classifier(
            Path(args.data), Path(args.seg_model), Path(args.out), crecipe, bundle_name, args.version, reference_data
        )
    print(json.dumps(meta["metrics"], indent=2, default=str))
    return 0


def _reference_data(args: argparse.Namespace) -> Path | None:
    """The ``--reference-data`` folder (None when not given; a bundle then stores no reference outputs)."""
    if not args.reference_data:
        log.warning("no --reference-data: the bundle will store no reference outputs")
        return None
    folder = Path(args.reference_data)
    if not folder.is_dir():
        raise SystemExit(f"--reference-data: not a folder: {folder}")
    return folder


def _command_line() -> str:
    """This process's command line as a user types it (``fetalnode ...``), for a model card."""
    return shlex.join(["fetalnode", *sys.argv[1:]])


def _view_folders(args: argparse.Namespace) -> list[Path]:
    """The dataset folders of ``train view``: each ``--data``, and every sub-folder of ``--data-root``
    (``pydicom-testdata``: the ultrasound files of pydicom's local test data)."""
    folders = []
    if args.data_root:
        folders += sorted(p for p in Path(args.data_root).iterdir() if p.is_dir() and not p.name.startswith("."))
    folders += [Path(d) for d in args.data or []]
    if not folders:
        raise SystemExit("view: give dataset folders with --data (repeatable) and/or --data-root")
    missing = [str(f) for f in folders if str(f) != "pydicom-testdata" and not f.is_dir()]
    if missing:
        raise SystemExit(f"view: not a folder: {', '.join(missing)}")
    return folders


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from fetalnode.training.evaluate import evaluate_bundle

    torch.set_num_threads(args.threads)
    try:
        report = evaluate_bundle(
            Path(args.model),
            Path(args.data),
            Path(args.out),
            Path(args.seg_model) if args.seg_model else None,
            args.split,
            Path(args.models_dir),
            args.node_check,
        )
    except ValueError as exc:  # a folder in no known format, labels unknown to the model, an empty split
        log.error("%s", exc)
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_models_push(args: argparse.Namespace) -> int:
    from fetalnode.inference.bundle import install_bundle

    settings = _settings(args)
    target = install_bundle(Path(args.bundle), Path(settings.models.dir), args.name)
    print(
        json.dumps(
            {"installed": str(target), "as": args.name or target.name.split("@")[0], "models_dir": settings.models.dir}
        )
    )
    return 0


def cmd_models_finalize(args: argparse.Namespace) -> int:
    import torch

    from fetalnode.inference.bundle import read_metadata
    from fetalnode.training.segmentation import finalize_segmentation_bundle

    torch.set_num_threads(args.threads)
    task = read_metadata(Path(args.bundle))["task"]
    meta: Mapping[str, Any]  # the bundle's metadata, typed by its task (fetalnode.training.metadata)
    if task == "view":
        if args.gate:
            raise SystemExit("--gate is for segmentation bundles")
        from fetalnode.training.view import (
            add_history,
            finalize_view_bundle,
            record_source_holdout,
            remeasure_node_check,
        )

        if args.source_holdout or args.history:
            try:
                runs = record_source_holdout(Path(args.bundle), [Path(r) for r in args.source_holdout or []])
            except ValueError as exc:
                log.error("%s", exc)
                return 2
            add_history(Path(args.bundle), args.history or [])
            print(json.dumps({"source_holdout": [r["left_out_source"] for r in runs]}, indent=2, default=str))
            return 0
        if args.data or args.data_root:
            try:
                check = remeasure_node_check(Path(args.bundle), _view_folders(args), Path(args.models_dir))
            except ValueError as exc:
                log.error("%s", exc)
                return 2
            print(json.dumps({"node_check": check}, indent=2, default=str))
            return 0
        try:
            meta = finalize_view_bundle(Path(args.bundle), _reference_data(args))
        except ValueError as exc:  # reference outputs stored, but no folder to check them on
            log.error("%s", exc)
            return 2
        print(json.dumps({"runtime": meta["runtime"], "runtime_comparison": meta["runtime_comparison"]}, indent=2))
        return 0
    if args.data_root:
        raise SystemExit("--data-root is for view bundles")
    if args.history:
        from fetalnode.inference.bundle import append_history

        meta = append_history(Path(args.bundle), args.history, _model_card(task))
        print(json.dumps({"history": meta["history"]}, indent=2, ensure_ascii=False))
        return 0
    from fetalnode.training.reference import require_reference_data

    reference_data = _reference_data(args)
    try:
        require_reference_data(Path(args.bundle), read_metadata(Path(args.bundle)), reference_data)
    except ValueError as exc:  # checked before --gate changes anything
        log.error("%s", exc)
        return 2
    if args.gate:
        from fetalnode.training.segmentation import set_gate

        if not args.data or len(args.data) > 1:
            raise SystemExit(
                "--gate needs one --data: the folder the bundle was trained on (its test metrics are re-measured)"
            )
        try:
            iou, conf = (float(v) for v in args.gate.split(","))
        except ValueError:
            raise SystemExit(f"--gate: expected IOU,CONFIDENCE such as 0.896,0.943, got {args.gate!r}") from None
        set_gate(Path(args.bundle), iou, conf, Path(args.data[0]))
    meta = finalize_segmentation_bundle(Path(args.bundle), reference_data)
    print(json.dumps({"runtime": meta["runtime"], "runtime_comparison": meta["runtime_comparison"]}, indent=2))
    return 0


def _model_card(task: str) -> Callable[[Mapping[str, Any]], str]:
    """The model card renderer of a bundle task other than ``view``, for metadata read from disk (checked
    against the task's schema first)."""
    from fetalnode.training import metadata

    if task == "classification":
        from fetalnode.training.classifier import cls_model_card

        return metadata.renderer(metadata.ClsMetadata, cls_model_card)
    if task == "multiclass-segmentation":
        from fetalnode.training.labour import labour_model_card

        return metadata.renderer(metadata.LabourMetadata, labour_model_card)
    from fetalnode.training.segmentation import seg_model_card

    return metadata.renderer(metadata.SegMetadata, seg_model_card)


def cmd_wrap(args: argparse.Namespace) -> int:
    from fetalnode.wrap import wrap_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for png in args.png:
        ds = wrap_png(png, pixel_size_mm=args.pixel_size_mm, compress_rle=args.rle)
        target = out / (Path(png).stem + ".dcm")
        ds.save_as(target, enforce_file_format=True)
        print(target)
    return 0


REFERENCE_DATA_HELP = (
    "folder of the reference images, laid out as the repository's tests/data (hc18_mini/, fba_mini/, "
    "psfhs_mini/, view_mini/): the bundle stores its outputs on them for the tests to re-check (without it: "
    "no reference outputs, and the model card says so; `models finalize` refuses a bundle that stores some)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fetalnode",
        description=f"DICOM-native AI node for fetal ultrasound ({RESEARCH_NOTICE.lower()}).",
    )
    p.add_argument("--version", action="version", version=f"fetalnode {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    def node_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            help="TOML settings file (see configs/node.toml); env FETALNODE__SECTION__KEY "
            "overrides it, these flags override both",
        )
        sp.add_argument("--data-dir", help="spool, outbox, job store and audit log folder (node.data_dir)")
        sp.add_argument("--models-dir", help="folder of model bundles (models.dir)")

    sp = sub.add_parser(
        "serve", help="run the DICOM SCP (C-ECHO, C-STORE, print) and its analysis worker processes (worker.processes)"
    )
    node_opts(sp)
    sp.add_argument("--host", help="listen address (node.host, default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="listen port (node.port)")
    sp.add_argument("--ae-title", help="this node's AE title (node.ae_title)")
    sp.add_argument(
        "--orthanc-url",
        help="Orthanc REST URL (orthanc.url: the destination `orthanc` while no [[destinations]] table exists)",
    )
    sp.add_argument("--no-worker", action="store_true", help="receive only; run `fetalnode worker` separately")
    sp.add_argument(
        "--role",
        choices=[str(r) for r in Role],
        help="node.role: all (SCP + analysis workers on this machine, SQLite queue; default), terminal (a "
        "site: SCP, spool, pseudonymise and publish each image to the broker, re-identify the returned objects "
        "and deliver them to the destinations), worker (the cloud: analyse the pseudonymised jobs of "
        "broker.sites and return the objects to each job's site; it delivers nothing itself)",
    )
    sp.add_argument(
        "--broker-url",
        help="broker.url, e.g. amqps://site-a@broker.example.org:5671/fetalnode (roles terminal, worker; the "
        "password comes from broker.password_file)",
    )
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("worker", help="run only the analysis worker on the node's job store")
    node_opts(sp)
    sp.add_argument(
        "--orthanc-url",
        help="Orthanc REST URL (orthanc.url: the destination `orthanc` while no [[destinations]] table exists)",
    )
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser(
        "analyze",
        help="analyse one DICOM file offline through the job runner: DIR/<output>.dcm per enabled output "
        "(output.enabled), DIR/heatmap.png, the finding as DIR/summary.json (also printed)",
    )
    node_opts(sp)
    sp.add_argument("file", help="DICOM file (US, US multi-frame or Secondary Capture)")
    sp.add_argument(
        "--out",
        required=True,
        help="output folder: <output name>.dcm per enabled output, heatmap.png, summary.json (replaced on each run)",
    )
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser(
        "status",
        help="print job counts by state, and per destination its reachability and jobs delivered / pending / "
        "dead, as JSON",
    )
    node_opts(sp)
    sp.add_argument("--failed", action="store_true", help="also list failed and rejected jobs with reasons")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser(
        "resend", help="queue failed jobs again (all, or --job ID ...), or one destination's dead letters"
    )
    node_opts(sp)
    sp.add_argument("--job", type=int, action="append", help="job id (repeatable); default: every failed job")
    sp.add_argument(
        "--destination",
        help="replay only this destination's dead letters (of every job, or of --job); what other "
        "destinations hold is not sent again",
    )
    sp.add_argument(
        "--permanent",
        action="store_true",
        help="also replay permanent failures (an output that could not be built, bytes that differ from the "
        "pre-notification, a bug), which a replay on the same software can only repeat: after an update",
    )
    sp.set_defaults(func=cmd_resend)

    sp = sub.add_parser(
        "train",
        help="train a model bundle from labelled dataset folders: segmentation (fetal head, HC18 format), "
        "classifier (fetal_brain_abnormalities format), labour-segmentation (pubic symphysis + fetal head, "
        "PSFHS format), view (the view router's model, over several folders)",
    )
    sp.add_argument("task", choices=["segmentation", "classifier", "labour-segmentation", "view"])
    sp.add_argument(
        "--data",
        action="append",
        help="dataset folder (labels.csv + images, as ../shared/datasets/*); view: repeatable, each folder's "
        "format tells its view (HC18, fetal_brain_abnormalities: head; psfhs: intrapartum transperineal; "
        "first_trimester_sagittal; fetal_planes_db: brain planes head, others other fetal plane; a folder of "
        "DICOM files, or pydicom-testdata: not fetal)",
    )
    sp.add_argument("--data-root", help="view only: also every sub-folder of this folder (e.g. ../shared/datasets)")
    sp.add_argument(
        "--head-models",
        default="models",
        help="view only: folder with the applications' bundles (hc18-headseg, fba-classifier, psfhs-seg) for the "
        "whole-node check on the test images of other views (default models)",
    )
    sp.add_argument("--size", type=int, help="view only: network input side in pixels (default 112)")
    sp.add_argument(
        "--encoder",
        help="view only: a head segmentation bundle (e.g. models/hc18-headseg) whose frozen encoder the view "
        "model stands on: the frame letterboxed as that segmentation sees it, the pooled features of each "
        "encoder level, one linear layer (the shipped fetal-view); default: a MONAI Classifier trained end to "
        "end with the scanner augmentation",
    )
    sp.add_argument(
        "--encoder-canvas",
        type=_canvas,
        help="view only, with --encoder: HxW of the letterbox canvas the encoder sees (default: the "
        "segmentation's own)",
    )
    sp.add_argument(
        "--encoder-levels",
        type=int,
        help="view only, with --encoder: pool the features of the first N encoder levels only (default 0: all)",
    )
    sp.add_argument(
        "--overlay-copies",
        type=int,
        help="view only, with --encoder: training copies of each image with callipers and banner text burned in "
        "(default 1)",
    )
    sp.add_argument(
        "--scanner-augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="view only: draw what scanners add to a frame at random (burned-in text, callipers, sector masks, "
        "grey maps, Doppler boxes, gain, speckle, blur, JPEG) with stronger zoom and geometry (default on; "
        "--no-scanner-augment: the augmentation of fetal-view 0.1.0)",
    )
    sp.add_argument(
        "--geometry",
        choices=["strong", "mild"],
        help="view only, with the scanner augmentation: strong geometry (rotation ±20°, zoom 0.75-1.4 and into "
        "the content, default) or mild (fetal-view 0.1.0's rotation ±15°, zoom 0.8-1.25)",
    )
    sp.add_argument(
        "--consistency",
        type=float,
        help="view only, with the scanner augmentation: weight of the Jensen-Shannon consistency between each "
        "training image and the same image with text and callipers burned in (default 0: off)",
    )
    sp.add_argument(
        "--median",
        type=int,
        help="view only: a median filter of this size as the network's first layer (default 0: none)",
    )
    sp.add_argument(
        "--balance",
        choices=["origin", "folder"],
        help="view only: within a class each acquisition source weighs the same (origin, default) or each "
        "folder (folder: fetal-view 0.1.0)",
    )
    sp.add_argument(
        "--threshold-weighting",
        choices=["image", "class"],
        help="view only: how validation images weigh when the abstain threshold is chosen: each the same (image, "
        "default) or 1 / images of its class (class: fetal-view 0.1.0)",
    )
    sp.add_argument(
        "--leave-out",
        help="view only: train without the axial heads of this source (hc18, fba_roboflow, fetal_planes_db) and "
        "report how its images are routed (leave-one-source-out)",
    )
    sp.add_argument("--out", required=True, help="bundle folder to write, e.g. models/hc18-headseg")
    sp.add_argument(
        "--seg-model",
        default="models/hc18-headseg",
        help="classifier only: segmentation bundle used to find the ROI (default models/hc18-headseg)",
    )
    sp.add_argument(
        "--name",
        help="bundle name written into metadata and every SR (default: the --out folder's name; "
        "set it when training a candidate into a scratch folder)",
    )
    sp.add_argument("--version", default="0.1.0", help="bundle version written into metadata and every SR")
    sp.add_argument(
        "--extra-normals",
        help="classifier only: HC18-format folder whose training-split heads are "
        "added as 'normal' images from another source (its test split measures the source shift)",
    )
    sp.add_argument(
        "--cv-folds",
        type=int,
        default=0,
        help="classifier only: also run K-fold cross-validation by case group and report it; its per-type "
        "precision decides which malformation types the node may name (0: off, then none)",
    )
    sp.add_argument(
        "--base-init",
        choices=["segmentation", "contrastive", "random"],
        help="classifier only: start the base network from the segmentation bundle's encoder (default), from "
        "self-supervised contrastive pretraining on --pretrain-data, or at random",
    )
    sp.add_argument(
        "--heads-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="classifier only: fit (and cross-validate) only on the images where the segmentation finds a "
        "head, as the node classifies only those (default); --no-heads-only also fits on the whole image "
        "where none is found",
    )
    sp.add_argument(
        "--abnormal-weight",
        type=float,
        help="classifier only: weight of an extra normal-vs-abnormal term in the loss (cross-entropy of "
        "P(normal), normals and abnormals weighted half each; default 1; 0: off)",
    )
    sp.add_argument(
        "--pretrain-data",
        action="append",
        help="classifier only, --base-init contrastive: folder of unlabelled images (labels.csv + images; "
        "repeatable). An HC18-format folder gives only its train/validation split",
    )
    sp.add_argument(
        "--init-from",
        help="segmentation only: bundle whose network and weights start the training (a fine-tuning stage); "
        "its training minutes are counted into the new bundle's",
    )
    sp.add_argument(
        "--swa-from",
        type=int,
        help="segmentation only: also average the weights of every epoch from this one on; the average "
        "replaces the best epoch if it scores better on validation (default: off)",
    )
    sp.add_argument(
        "--canvas",
        help="segmentation, labour-segmentation: network input HxW, multiples of 16 (default 256x384; "
        "labour-segmentation 256x256)",
    )
    sp.add_argument(
        "--rotate-deg",
        type=float,
        help="segmentation, labour-segmentation: random rotation of each training image and mask by up to this "
        "many degrees (default 10; 0: off)",
    )
    sp.add_argument(
        "--scale-jitter",
        type=float,
        help="segmentation, labour-segmentation: random isotropic zoom of each training image and mask by up "
        "to this fraction (default 0.15; labour-segmentation 0.1; 0: off)",
    )
    sp.add_argument(
        "--large-head-weight",
        type=float,
        help="segmentation only: draw training heads with reference HC >= 200 mm this many times as often "
        "(weighted sampling, same draws per epoch; default 1: off)",
    )
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--max-minutes", type=float)
    sp.add_argument(
        "--limit",
        type=int,
        help="use only this many training images (view: this many per folder and split; smoke runs)",
    )
    sp.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: segmentation and labour-segmentation 2e-3, classifier 3e-4, view 2e-3)",
    )
    sp.add_argument(
        "--patience",
        type=int,
        help="early-stopping patience in epochs (default: segmentation and labour-segmentation 15, classifier 12, "
        "view 12)",
    )
    sp.add_argument("--seed", type=int, default=20261124)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--reference-data", help=REFERENCE_DATA_HELP)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser(
        "evaluate",
        help="evaluate a bundle on a dataset folder; writes report.json and figures (labour-segmentation "
        "bundles: Dice FH / PS, |ΔAoP|, |ΔHSD| with 95%% CIs bootstrapped by id_block, and a per-image CSV)",
    )
    sp.add_argument("--model", required=True, help="bundle folder")
    sp.add_argument(
        "--data",
        required=True,
        help="dataset folder in the same format as the training data (a view bundle: any one folder of the "
        "formats `train view` reads; its format tells the true view)",
    )
    sp.add_argument("--out", required=True, help="report JSON path (figures are written beside it)")
    sp.add_argument("--seg-model", help="classifier only: segmentation bundle (default models/hc18-headseg)")
    sp.add_argument(
        "--models-dir",
        default="models",
        help="view only: folder of the applications' bundles (hc18-headseg, fba-classifier, psfhs-seg) for the "
        "whole-node check (the default view router with its cross-check on every image, wrapped as US DICOM: "
        "head findings, HCs and AoPs on images of other views; default models)",
    )
    sp.add_argument(
        "--node-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="view only: run the whole-node check (default on)",
    )
    sp.add_argument(
        "--split",
        choices=["all", "train", "val", "test"],  # fetalnode.training.evaluate.SPLITS (imported lazily)
        default="all",
        help="evaluate one part of the bundle's own seeded training split (only meaningful on the folder it "
        "was trained on; default: every image)",
    )
    sp.add_argument("--threads", type=int, default=2)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("models", help="manage the model bundles of a node")
    msub = sp.add_subparsers(dest="models_command", required=True)
    mp = msub.add_parser(
        "push",
        help="install a bundle into a node's models folder; a running node picks it "
        "up between two jobs (the version goes into every later SR)",
    )
    node_opts(mp)
    mp.add_argument("bundle", help="bundle folder (configs/metadata.json, models/, docs/)")
    mp.add_argument(
        "--name",
        help="install under this name (default: the bundle's own name); the node loads the names given in [models]",
    )
    mp.set_defaults(func=cmd_models_push)
    mf = msub.add_parser(
        "finalize",
        help="segmentation or view bundle: export ONNX, measure torch vs onnxruntime and "
        "record the faster, store reference outputs (the last step of `train`; weights untouched; a view "
        "bundle keeps its torch reference outputs and takes onnxruntime only if it reproduces them within 1e-4 "
        "and is faster, else the ONNX file is removed)",
    )
    mf.add_argument("bundle")
    mf.add_argument(
        "--gate",
        help="IOU,CONFIDENCE: replace the bundle's learnt gate thresholds (the old ones are kept in the metadata) "
        "and re-measure its test metrics through them; needs --data",
    )
    mf.add_argument(
        "--data",
        action="append",
        help="segmentation bundle with --gate: the dataset folder it was trained on; view bundle (repeatable, "
        "as in `train view`): measure the whole-node check on its test images of other views again with this "
        "build's router (weights and other metrics unchanged; the metadata keeps the earlier figure and the "
        "model card is rewritten)",
    )
    mf.add_argument("--data-root", help="view bundle: also every sub-folder of this folder, as in `train view`")
    mf.add_argument(
        "--source-holdout",
        action="append",
        help="view bundle (repeatable): a leave-one-source-out run's bundle (`train view --leave-out`); its "
        "figures on the left-out source go into this bundle's metadata and model card (weights untouched)",
    )
    mf.add_argument(
        "--history",
        action="append",
        help="any bundle (repeatable): a line for the model card's History (what changed, why); the weights and "
        "every other step are left alone",
    )
    mf.add_argument(
        "--models-dir",
        default="models",
        help="view bundle with --data/--data-root: the applications' bundles (default models; without psfhs-seg "
        "there, the check runs without the labour route and its cross-check)",
    )
    mf.add_argument("--threads", type=int, default=2)
    mf.add_argument("--reference-data", help=REFERENCE_DATA_HELP)
    mf.set_defaults(func=cmd_models_finalize)

    sp = sub.add_parser("wrap", help="wrap PNG images as Ultrasound Image Storage DICOM files")
    sp.add_argument("png", nargs="+", help="PNG images (converted to 8-bit grayscale)")
    sp.add_argument("--out", required=True, help="output folder: <PNG name>.dcm per image")
    sp.add_argument("--pixel-size-mm", type=float, help="calibration written as an ultrasound region")
    sp.add_argument("--rle", action="store_true", help="RLE Lossless transfer syntax")
    sp.set_defaults(func=cmd_wrap)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except NodeError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
