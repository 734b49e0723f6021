"""Routing a view model's probabilities: the abstain thresholds, the head claim rule, metrics, robustness."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fetalnode.config import ModelSettings
from fetalnode.inference.bundle import load_bundle, read_metadata
from fetalnode.inference.view import ViewInputSpec
from fetalnode.training.data import bootstrap_ci
from fetalnode.training.metadata import ViewMetrics, checked
from fetalnode.training.metrics import balanced_accuracy, confusion, per_class
from fetalnode.training.scanner import draw_callipers_and_text, jpeg_round_trip
from fetalnode.training.view.data import CLASSES, ORIGINS, ViewImage, ViewSet
from fetalnode.training.view.fitting import ViewRecipe
from fetalnode.vocab import View


def class_thresholds(threshold: float, strict: dict[str, float] | None = None) -> np.ndarray:
    """The probability each class needs to be routed: ``threshold``, or a stricter one of ``strict``."""
    return np.array([max(threshold, (strict or {}).get(str(c), 0.0)) for c in CLASSES])


def routed(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class index of each image, or -1 (unknown) where the top probability is below its class's threshold."""
    top = probs.argmax(1)
    return np.where(probs.max(1) >= thresholds[top], top, -1)


def correct_route(route: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Routed to its own view; for an image that is not fetal, "unknown" is right too (no application
    either way)."""
    return (route == y) | ((route == -1) & (y == CLASSES.index(View.NOT_FETAL)))


# Views whose application has no check of its own for the view: no validation image of another view may reach
# them. The head application measures any skull; labour-progress has its own view check (a pubic symphysis and
# a head passing its gate). A strict intrapartum threshold (tried) left 36 of 180 validation images unrouted.
STRICT_VIEWS = (View.AXIAL_FETAL_HEAD,)


def choose_threshold(probs: np.ndarray, y: np.ndarray, recipe: ViewRecipe) -> dict[str, Any]:
    """The abstain threshold minimising, on validation, wrong routings + ``abstain_cost`` x abstentions on
    images the model had right (each image weighing the same, or 1 / (images of its class) with
    ``threshold_weighting = "class"``), ties to the lowest; then each view of :data:`STRICT_VIEWS` (the head)
    needs more than the highest probability of that view on any validation image of another view."""
    if recipe.threshold_weighting == "class":
        weight = 1.0 / np.bincount(y, minlength=len(CLASSES))[y]
    else:
        weight = np.full(len(y), 1.0 / max(len(y), 1))
    best: tuple[float, float] | None = None
    not_fetal = CLASSES.index(View.NOT_FETAL)
    for t in np.round(np.arange(recipe.min_threshold, 0.991, 0.01), 2):
        route = routed(probs, class_thresholds(float(t)))
        wrong = (route != -1) & (route != y)
        lost = (route == -1) & (probs.argmax(1) == y) & (y != not_fetal)
        cost = float((weight * (wrong + recipe.abstain_cost * lost)).sum())
        if best is None or cost < best[1] - 1e-12:
            best = (float(t), cost)
    assert best is not None
    t = best[0]
    # An application measures: no validation image of another view may reach it.
    strict: dict[str, float] = {}
    worst: dict[str, float] = {}
    for view in STRICT_VIEWS:
        c = CLASSES.index(view)
        others = probs[y != c, c]
        worst[str(view)] = round(float(others.max()) if len(others) else 0.0, 4)
        t_view = min(0.99, max(t, math.floor(worst[str(view)] * 100 + 1) / 100))
        if t_view > t:
            strict[str(view)] = t_view
    route = routed(probs, class_thresholds(t, strict))
    weighting = "each image the same" if recipe.threshold_weighting == "image" else "class-balanced"
    return {
        "abstain_threshold": t,
        "class_thresholds": strict,
        "rule": f"minimises wrong routings + {recipe.abstain_cost} x abstentions on images the model had right "
        f"({weighting}), on the validation split, searched {recipe.min_threshold}-0.99; "
        f"{' and '.join(v.words for v in STRICT_VIEWS)} needs more than the highest probability of that view on "
        "any validation image of another view",
        "val_highest_head_probability_of_other_views": worst[str(View.AXIAL_FETAL_HEAD)],
        "val_highest_probability_of_other_views": worst,
        "val_cost": round(best[1], 4),
        "val_coverage": float((route != -1).mean()),
        "val_routed_accuracy": float(correct_route(route, y).mean()),
    }


def view_metrics(
    probs: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: np.ndarray, thresholds: np.ndarray
) -> ViewMetrics:
    """Accuracy (argmax), routed accuracy (with the abstention), coverage, per class and per source,
    each headline with a 95% CI from a bootstrap of whole groups."""
    k = len(CLASSES)
    pred = probs.argmax(1)
    route = routed(probs, thresholds)
    ok = correct_route(route, y)
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    cm = confusion(y, pred, k)
    routed_cm = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(routed_cm, (y, np.where(route == -1, k, route)), 1)
    precision, recall, _ = per_class(cm)
    present = np.unique(y)
    out: dict[str, Any] = {
        "n": len(y),
        "n_groups": len(np.unique(groups)),
        "accuracy": float((pred == y).mean()),
        "accuracy_ci95": bootstrap_ci(pred == y, groups, lambda i: (pred[i] == y[i]).mean()),
        "routed_accuracy": float(ok.mean()),
        "routed_accuracy_ci95": bootstrap_ci(ok, groups, lambda i: ok[i].mean()),
        "coverage": float((route != -1).mean()),
        "abstained": int((route == -1).sum()),
        "other_views_routed_to_head": int(((route == head) & (y != head)).sum()),
        "per_class": {
            str(CLASSES[c]): {
                "support": int(cm[c].sum()),
                "groups": len(np.unique(groups[y == c])),
                "recall": _num(recall[c]),
                "precision": _num(precision[c]),
                "routed_correct": int(ok[y == c].sum()),
                "abstained": int((route[y == c] == -1).sum()),
            }
            for c in range(k)
            if cm[c].sum() or cm[:, c].sum()
        },
        "per_source": {
            str(s): {
                "n": int((sources == s).sum()),
                "accuracy": float((pred == y)[sources == s].mean()),
                "routed_accuracy": float(ok[sources == s].mean()),
            }
            for s in np.unique(sources)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_labels": [str(c) for c in CLASSES],
        "routed_confusion_matrix": routed_cm.tolist(),
        "routed_confusion_columns": [*(str(c) for c in CLASSES), str(View.UNKNOWN)],
    }
    if len(present) > 1:
        out["balanced_accuracy"] = balanced_accuracy(y, pred, k)
        out["balanced_accuracy_ci95"] = bootstrap_ci(y, groups, lambda i: balanced_accuracy(y[i], pred[i], k))
    return checked(ViewMetrics, out, "metrics")


# What the robustness check does to each held-out image (training.scanner; in fonts training never drew).
PERTURBATIONS = ("callipers_and_text", "jpeg_q75", "jpeg_q40", "callipers_text_jpeg_q75")


def perturbed(gray: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "callipers_and_text":
        return draw_callipers_and_text(gray, rng)
    if kind.startswith("jpeg_q"):
        return jpeg_round_trip(gray, int(kind[len("jpeg_q") :]))
    return jpeg_round_trip(draw_callipers_and_text(gray, rng), 75)


def robustness(
    probabilities: Callable[[np.ndarray], np.ndarray],
    images: list[ViewImage],
    spec: ViewInputSpec,
    thresholds: np.ndarray,
    seed: int = 20261207,
    claim: tuple[dict[str, Any], Path] | None = None,
    draws: int = 3,
) -> dict[str, Any]:
    """How often the routed view of an image stays the same when a scanner's callipers and banner text are
    drawn on it at its own resolution, or it goes through a JPEG round trip (quality 75 or 40), or both;
    each as a fraction with a 95% CI by group, and the changes by true view. A perturbation that draws is drawn
    ``draws`` times per image, afresh each time (one drawing is a noisy sample of what callipers do): the
    fraction is over image-drawings, the CI resamples whole groups. ``claim``: (the head claim rule, the folder
    of the head segmentation bundle): routing as the router does it, the claim included."""
    rng = np.random.default_rng(seed)
    grays = [im.gray() for im in tqdm(images, desc="robustness", leave=False)]
    groups = np.array([im.group for im in images])

    def route(frames: list[np.ndarray]) -> np.ndarray:
        probs = probabilities(np.stack([spec(g) for g in frames]))
        out = routed(probs, thresholds)
        if claim is not None:
            rule, models_dir = claim
            which = claimable(probs, thresholds) & (
                probs[:, CLASSES.index(View.AXIAL_FETAL_HEAD)] >= rule["min_probability"]
            )
            scores = gate_scores(frames, models_dir, which)
            take = claimed(probs, scores, thresholds, rule["min_probability"], rule["min_score"])
            out = np.where(take, CLASSES.index(View.AXIAL_FETAL_HEAD), out)
        return out

    base = route(grays)
    out: dict[str, Any] = {
        "n": len(images),
        "n_groups": len(np.unique(groups)),
        "seed": seed,
        "with_claims": bool(claim),
    }
    for kind in PERTURBATIONS:
        times = draws if "callipers" in kind else 1  # a JPEG round trip is the same every time
        same = np.stack([route([perturbed(g, kind, rng) for g in grays]) == base for _ in range(times)])
        share = same.mean(axis=0)  # per image: the fraction of its drawings left unchanged
        changed = Counter(str(im.view) for im, s in zip(images, same.T, strict=True) for _ in range(int((~s).sum())))
        out[kind] = {
            "unchanged": float(share.mean()),
            "unchanged_ci95": bootstrap_ci(share, groups, lambda i, share=share: share[i].mean()),
            "draws": times,
            "changed": int((~same).sum()),
            "changed_by_true_view": dict(changed),
        }
    return out


# The claim rule's grid (training: the head application may claim a frame the view model abstained on).
CLAIM_PROBABILITIES = tuple(round(v, 2) for v in np.arange(0.0, 0.51, 0.05))


CLAIM_SCORES = tuple(round(v, 2) for v in np.arange(0.70, 0.991, 0.01))


def head_claim_scores(images: list[ViewImage], models_dir: Path, which: np.ndarray) -> np.ndarray:
    """The head application's claim score (its gate's plausibility of the fitted skull, 0 when refused) of the
    images where ``which`` is true (0 elsewhere): the segmentation bundle of ``models_dir``, as the node runs it."""
    return gate_scores([im.gray() if w else None for im, w in zip(images, which, strict=True)], models_dir, which)


def gate_scores(grays: Sequence[np.ndarray | None], models_dir: Path, which: np.ndarray) -> np.ndarray:
    """:func:`head_claim_scores` of frames (those where ``which`` is false are not looked at)."""
    from fetalnode.inference.analyzer import find_head, seg_settings
    from fetalnode.inference.preprocess import to_unit_range

    seg = load_bundle(models_dir / ModelSettings().segmentation, "segmentation")
    settings = seg_settings(seg)
    out = np.zeros(len(grays), dtype=np.float64)
    for i in tqdm(np.nonzero(which)[0], desc="head claims", leave=False):
        gray = grays[i]
        assert gray is not None
        head = find_head(seg.infer, settings, to_unit_range(gray))
        out[i] = 0.0 if head.reason else head.score
    return out


def claimable(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Images the view model abstained on with no view at its routing threshold (a claim may take them)."""
    return (routed(probs, thresholds) == -1) & ~(probs >= thresholds[None]).any(1)


def claimed(probs: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, p_min: float, s_min: float) -> np.ndarray:
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    return claimable(probs, thresholds) & (probs[:, head] >= p_min) & (scores >= s_min)


def choose_claim(probs: np.ndarray, y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """The head application's claim rule, on validation: among the (head probability, skull score) pairs that
    let no validation image of another view be claimed, the one routing the most validation heads; ties to the
    stricter pair. The curve: head coverage and off-view claims against the score, at the chosen probability."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head = y == head
    routed_heads = routed(probs, thresholds) == head
    coverage = float(routed_heads[is_head].mean())  # no claim at all (the strictest pair claims nothing)
    for p_min in CLAIM_PROBABILITIES:
        for s_min in CLAIM_SCORES:
            take = claimed(probs, scores, thresholds, p_min, s_min)
            if not (take & ~is_head).any():
                coverage = max(coverage, float((routed_heads | take)[is_head].mean()))
    p_min, s_min = _strictest(probs, y, scores, thresholds, coverage)
    curve = []
    for s in sorted({0.5, *CLAIM_SCORES[::2], s_min}):
        take = claimed(probs, scores, thresholds, p_min, s)
        curve.append(
            {
                "min_score": s,
                "head_coverage": float((routed_heads | take)[is_head].mean()),
                "heads_claimed": int((take & is_head).sum()),
                "other_views_claimed": int((take & ~is_head).sum()),
            }
        )
    return {
        "min_probability": p_min,
        "min_score": s_min,
        "val_heads": int(is_head.sum()),
        "val_head_coverage_without": float(routed_heads[is_head].mean()),
        "val_head_coverage": coverage,
        "val_claimable": int(claimable(probs, thresholds).sum()),
        "rule": "on the validation split: the (head probability, skull fit) pair that claims no image of another "
        "view and routes the most heads, the strictest such pair on ties",
        "curve": curve,
    }


def _strictest(
    probs: np.ndarray, y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, coverage: float
) -> tuple[float, float]:
    """The pair reaching ``coverage`` with no off-view claim that is strictest (highest score, then probability)."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head, routed_heads = y == head, routed(probs, thresholds) == head
    for s_min in reversed(CLAIM_SCORES):
        for p_min in reversed(CLAIM_PROBABILITIES):
            take = claimed(probs, scores, thresholds, p_min, s_min)
            if not (take & ~is_head).any() and float((routed_heads | take)[is_head].mean()) >= coverage - 1e-12:
                return p_min, s_min
    return CLAIM_PROBABILITIES[-1], CLAIM_SCORES[-1]


def segmentation_version(models_dir: Path | None) -> str:
    """``name version`` of the head segmentation bundle the claim rule was chosen with."""
    assert models_dir is not None
    meta = read_metadata(models_dir / ModelSettings().segmentation)
    return f"{meta['name']} {meta['version']}"


def claim_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    rule: dict[str, Any],
) -> dict[str, Any]:
    """Heads routed to the head application by the view model alone and with the claim rule (95% CI by group),
    and the images of other views the rule claims."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head = y == head
    alone = routed(probs, thresholds) == head
    take = claimed(probs, scores, thresholds, rule["min_probability"], rule["min_score"])
    both = (alone | take)[is_head]
    hg = groups[is_head]
    return {
        "heads": int(is_head.sum()),
        "head_groups": len(np.unique(hg)),
        "heads_routed_by_view_model": int(alone[is_head].sum()),
        "heads_claimed": int((take & is_head).sum()),
        "head_routing": float(both.mean()) if len(both) else float("nan"),
        "head_routing_ci95": bootstrap_ci(both, hg, lambda i: both[i].mean()),
        "other_views_claimed": int((take & ~is_head).sum()),
        "other_views": int((~is_head).sum()),
    }


def heads_by_origin(probs: np.ndarray, data: ViewSet, thresholds: np.ndarray) -> dict[str, Any]:
    """The axial heads of ``data`` by acquisition source: routed to the head application (95% CI by group),
    abstained on, routed elsewhere (the view model alone)."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    route = routed(probs, thresholds)
    out: dict[str, Any] = {}
    origins = data.origins
    for origin in sorted(set(origins[data.y == head].tolist())):
        idx = np.nonzero((data.y == head) & (origins == origin))[0]
        ok = route[idx] == head
        groups = data.groups[idx]
        out[origin] = {
            "n": len(idx),
            "n_groups": len(np.unique(groups)),
            "routed_to_head": float(ok.mean()),
            "routed_to_head_ci95": bootstrap_ci(ok, groups, lambda i, ok=ok: ok[i].mean()),
            "abstained": int((route[idx] == -1).sum()),
            "elsewhere": int(((route[idx] != -1) & ~ok).sum()),
        }
    return out


def left_out_metrics(probs: np.ndarray, data: ViewSet, thresholds: np.ndarray, origin: str) -> dict[str, Any]:
    """How the axial heads of a source the model never saw are routed: to the head application, elsewhere,
    or ``unknown``, with a 95% CI by group of the head routing rate."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    route = routed(probs, thresholds)
    to_head = route == head
    answers = Counter(str(CLASSES[r]) if r >= 0 else str(View.UNKNOWN) for r in route.tolist())
    return {
        "origin": origin,
        "source": ORIGINS[origin],
        "n": len(route),
        "n_groups": len(np.unique(data.groups)),
        "routed_to_head": float(to_head.mean()),
        "routed_to_head_ci95": bootstrap_ci(to_head, data.groups, lambda i: to_head[i].mean()),
        "top_class_head": float((probs.argmax(1) == head).mean()),
        "routed": dict(answers),
    }


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)
