"""The view model's card and claim curve, rendered from its metadata."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fetalnode.training.metadata import ViewMetadata, ViewMetrics
from fetalnode.training.reference import no_reference_line
from fetalnode.training.segmentation import runtime_line
from fetalnode.training.view.fitting import ViewRecipe
from fetalnode.training.view.measure import PERTURBATIONS
from fetalnode.vocab import View


def _ci(v: Any) -> str:
    return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def confusion_table(m: ViewMetrics) -> str:
    cols = m["routed_confusion_columns"]
    lines = ["| truth \\ routed | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, row in zip(m["confusion_labels"], m["routed_confusion_matrix"], strict=True):
        if sum(row):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def node_check_lines(m: ViewMetrics) -> str:
    nc = m.get("node_check")
    if not nc:
        return "Not measured (the head bundles were not in the models folder at training time)."
    by = ", ".join(
        f"{v}: {c.get('images', 0)} images, {c.get('routed_to_fetal-head', 0)} routed to fetal-head, "
        f"{c.get('head_finding', 0)} head findings, {c.get('aop_reported', 0)} AoP, "
        f"{c.get('cross_check_view_uncertain', 0)} made uncertain by the cross-check"
        for v, c in nc["by_true_view"].items()
    )
    cross = nc.get("cross_check_probability")
    router = (
        f"the default view router (cross-check at probability {cross}) -> its applications"
        if cross is not None
        else "view router -> fetal-head with its plausibility gate"
    )
    aop = nc.get("non_transperineal_aop_reported")
    aop_words = f"; images of views other than the transperineal one with an AoP: **{aop}**" if aop is not None else ""
    when = f" (re-measured {nc['remeasured']} with this build's router)" if nc.get("remeasured") else ""
    earlier = "".join(
        f" Earlier{' (' + old['remeasured'] + ')' if old.get('remeasured') else ' (at training)'}: "
        f"{old['other_views_head_findings']} head findings, {old['other_views_hc_reported']} HC."
        for old in m.get("node_check_history", [])
    )
    if earlier:
        earlier += (
            " A re-measured figure comes after the earlier one on the same test images was seen (and, here, acted"
            " on): it is not a blind held-out measurement."
        )
    heads = ""
    if nc.get("calibrated_heads"):
        heads = (
            f" On the {nc['calibrated_heads']} calibrated test heads (HC18, wrapped with their pixel size): "
            f"**{nc['calibrated_heads_hc']} with an HC ({nc['calibrated_heads_hc_rate']:.3f}, 95% CI "
            f"{_ci(nc['calibrated_heads_hc_rate_ci95'])})**."
        )
    return (
        f"The whole node analysis ({router}){when} on the {nc['other_view_images']} test images of views other "
        f"than the head, each wrapped as US DICOM: **{nc['other_views_head_findings']} head findings, "
        f"{nc['other_views_hc_reported']} HC**{aop_words} ({by}).{heads}{earlier}"
    )


def robustness_lines(m: ViewMetrics) -> str:
    rb = m.get("robustness")
    if not rb:
        return "Not measured."
    words = {
        "callipers_and_text": "callipers (crosses, dotted lines, traced ellipses, numbered) and banner text drawn",
        "jpeg_q75": "JPEG round trip, quality 75",
        "jpeg_q40": "JPEG round trip, quality 40",
        "callipers_text_jpeg_q75": "callipers and text, then JPEG quality 75",
    }

    def of(k: str) -> str:
        times = int(rb[k].get("draws", 1))
        return f" of {times * rb['n']}" if times > 1 else ""

    rows = "\n".join(
        f"| {words[k]} | {rb[k]['unchanged']:.3f} ({_ci(rb[k]['unchanged_ci95'])}) | {rb[k]['changed']}{of(k)} "
        f"| {', '.join(f'{v}: {n}' for v, n in rb[k]['changed_by_true_view'].items()) or '-'} |"
        for k in PERTURBATIONS
        if k in rb
    )
    draws = max(int(rb[k].get("draws", 1)) for k in PERTURBATIONS if k in rb)
    drawn = (
        f". Callipers and text are drawn {draws} times on each image, afresh each time: the fraction unchanged is "
        "over those drawings"
        if draws > 1
        else ""
    )
    how = (
        " as the router routes it (the view model, then the head application's claim)" if rb.get("with_claims") else ""
    )
    return (
        f"Each of the {rb['n']} test images ({rb['n_groups']} groups) routed{how} as it is and again after (drawn at its own "
        "resolution, by the same drawing code as the training augmentation but in fonts it never used, seed "
        f"{rb['seed']}){drawn}:\n\n| perturbation | routing unchanged (95% CI by group) | changed | by true view |\n"
        f"|---|---|---|---|\n{rows}"
    )


def claim_lines(meta: ViewMetadata) -> str:
    sel = meta.get("claim_selection")
    if not sel:
        return "No claim rule (the head bundles were not in the models folder at training time)."
    rule = meta["claims"][str(View.AXIAL_FETAL_HEAD)]
    curve = "\n".join(
        f"| {c['min_score']:.2f} | {c['head_coverage']:.3f} | {c['heads_claimed']} | {c['other_views_claimed']} |"
        for c in sel["curve"]
    )
    test = meta["metrics"].get("claims")
    test_line = ""
    if test:
        test_line = (
            f"\n\nTest split: of {test['heads']} heads ({test['head_groups']} groups) the view model routes "
            f"{test['heads_routed_by_view_model']} to the head application and the claim adds {test['heads_claimed']}: "
            f"**{test['head_routing']:.3f} routed (95% CI {_ci(test['head_routing_ci95'])})**; images of other views "
            f"claimed: **{test['other_views_claimed']} of {test['other_views']}**."
        )
    return (
        f"When the view model abstains, the head application may claim the image if the head probability is at least "
        f"**{rule['min_probability']:.2f}**, no other view reaches its routing threshold, and its gate fits a skull "
        f"with a score of at least **{rule['min_score']:.2f}** (the lowest of ellipse IoU, segmentation confidence "
        f"and the part inside the frame; segmentation {rule['segmentation']}). Rule: {sel['rule']}. On validation "
        f"({sel['val_heads']} heads, {sel['val_claimable']} images abstained on): head coverage "
        f"{sel['val_head_coverage_without']:.3f} without claims, {sel['val_head_coverage']:.3f} with them.\n\n"
        f"Coverage against off-view claims on validation (head probability at least {rule['min_probability']:.2f}; every "
        "claimed image of another view would reach the head application, which finds its skull):\n\n"
        f"| skull score at least | validation heads routed | heads claimed | other views claimed |\n|---|---|---|---|\n"
        f"{curve}\n\n![coverage against off-view claims on validation]({CLAIM_CURVE}){test_line}"
    )


CLAIM_CURVE = "claim_curve.svg"


def claim_curve_svg(sel: dict[str, Any]) -> str:
    """The validation curve of the claim rule as an SVG: head coverage (y) against the images of other views
    claimed (x), one point per skull score, the chosen one ringed."""
    points = [(c["other_views_claimed"], c["head_coverage"], c["min_score"]) for c in sel["curve"]]
    x_max = max(2, *(p[0] for p in points))
    y_lo = min(sel["val_head_coverage_without"], *(p[1] for p in points)) - 0.01
    w, h, left, bottom = 520, 320, 70, 50

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (w - left - 20) * x / x_max, 20 + (h - bottom - 20) * (1 - (y - y_lo) / (1.0 - y_lo))

    marks = [
        f'<circle cx="{xy(x, y)[0]:.1f}" cy="{xy(x, y)[1]:.1f}" r="3" fill="#1f77b4"><title>skull score ≥ {score:.2f}: '
        f"coverage {y:.3f}, other views claimed {x}</title></circle>"
        for x, y, score in points
    ]
    chosen = xy(0, sel["val_head_coverage"])  # the rule claims no validation image of another view
    marks.append(
        f'<circle cx="{chosen[0]:.1f}" cy="{chosen[1]:.1f}" r="6" fill="none" stroke="#d62728" stroke-width="2"/>'
    )
    base = xy(0, sel["val_head_coverage_without"])
    ticks = "".join(
        f'<text x="{xy(i, y_lo)[0]:.0f}" y="{h - bottom + 18}" font-size="11" text-anchor="middle">{i}</text>'
        for i in range(int(x_max) + 1)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
        f'<rect width="{w}" height="{h}" fill="white"/>'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="black"/>'
        f'<line x1="{left}" y1="15" x2="{left}" y2="{h - bottom}" stroke="black"/>{ticks}'
        f'<text x="{(w + left) / 2:.0f}" y="{h - 12}" font-size="12" text-anchor="middle">images of other views '
        "claimed (validation)</text>"
        f'<text x="16" y="{h / 2:.0f}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {h / 2:.0f})">'
        "validation heads routed</text>"
        f'<text x="{left - 6}" y="{xy(0, 1.0)[1] + 4:.0f}" font-size="11" text-anchor="end">1.00</text>'
        f'<text x="{left - 6}" y="{xy(0, y_lo)[1]:.0f}" font-size="11" text-anchor="end">{y_lo:.2f}</text>'
        f'<line x1="{left}" y1="{base[1]:.1f}" x2="{w - 10}" y2="{base[1]:.1f}" stroke="#999" stroke-dasharray="4 3"/>'
        f'<text x="{w - 12}" y="{base[1] - 4:.1f}" font-size="11" text-anchor="end">without claims '
        f"{sel['val_head_coverage_without']:.3f}</text>"
        f'<text x="{chosen[0] + 10:.1f}" y="{chosen[1] + 18:.1f}" font-size="11">chosen: skull score ≥ '
        f"{sel['min_score']:.2f}, head probability ≥ {sel['min_probability']:.2f}</text>"
        + "".join(marks)
        + f'<text x="{w / 2:.0f}" y="14" font-size="11" text-anchor="middle">research use only, not for diagnosis'
        "</text></svg>\n"
    )


def write_claim_curve(bundle: Path, meta: ViewMetadata) -> None:
    """The claim curve beside the model card (docs/claim_curve.svg), when the bundle has a claim rule."""
    if meta.get("claim_selection"):
        (bundle / "docs" / CLAIM_CURVE).write_text(claim_curve_svg(meta["claim_selection"]), encoding="utf-8")


def holdout_lines(m: ViewMetrics) -> str:
    runs = m.get("source_holdout")
    if not runs:
        return "Not measured for this bundle."
    rows = []
    for run in runs:
        lo = run["left_out_source"]
        routed_words = ", ".join(f"{k}: {v}" for k, v in sorted(lo["routed"].items(), key=lambda kv: -kv[1]))
        claims = lo.get("with_claims")
        with_claims = f"{claims['head_routing']:.3f} ({_ci(claims['head_routing_ci95'])})" if claims else "n/a"
        rows.append(
            f"| {lo['origin']} | {run['recipe']} | {lo['n']} / {lo['n_groups']} | **{lo['routed_to_head']:.3f}** "
            f"({_ci(lo['routed_to_head_ci95'])}) | {with_claims} | {lo['top_class_head']:.3f} | {routed_words} |"
        )
    commands = "\n".join(f"    {run['command']}" for run in runs)
    return (
        "Each run trains the same recipe without the axial heads of one source (its images of other views stay), "
        "chooses its thresholds on the remaining validation groups, and routes every image of the left-out source:\n\n"
        "| left-out head source | recipe | images / groups | routed to the head application (95% CI by group) | "
        "with the claim rule | top class head | routed (all answers) |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nCommands:\n\n{commands}"
    )


def recipe_words(recipe: dict[str, Any]) -> str:
    if recipe.get("encoder"):
        copies = int(recipe.get("overlay_copies", 1))
        canvas = " on a {}x{} canvas".format(*recipe["encoder_canvas"]) if recipe.get("encoder_canvas") else ""
        if recipe.get("encoder_levels"):
            canvas += f", its first {recipe['encoder_levels']} levels"
        return (
            f"frozen encoder of {Path(str(recipe['encoder'])).name}{canvas}, linear layer, {copies} overlaid "
            f"cop{'y' if copies == 1 else 'ies'} per image"
        )
    aug = "scanner augmentation" if recipe.get("scanner_augment") else "0.1.0 augmentation"
    if recipe.get("scanner_augment") and recipe.get("geometry", "strong") != "strong":
        aug += f", {recipe['geometry']} geometry"
    if recipe.get("scanner_augment") and recipe.get("consistency", 0.0):
        aug += f", overlay consistency {recipe['consistency']:g}"
    return f"{recipe['size']} px, {aug}, by {recipe.get('balance', 'folder')}"


def command_of(recipe: dict[str, Any]) -> str:
    """The ``train view`` command line of a recipe (the dataset folders as the shipped bundles are trained)."""
    defaults = ViewRecipe()
    words = ["fetalnode train view --data-root ../shared/datasets --data pydicom-testdata"]
    if recipe.get("leave_out"):
        words.append(f"--leave-out {recipe['leave_out']}")
    if recipe.get("encoder"):
        words.append(f"--encoder {recipe['encoder']}")
        if int(recipe.get("overlay_copies", 1)) != defaults.overlay_copies:
            words.append(f"--overlay-copies {recipe['overlay_copies']}")
        if recipe.get("encoder_canvas"):
            words.append("--encoder-canvas {}x{}".format(*recipe["encoder_canvas"]))
        if recipe.get("encoder_levels"):
            words.append(f"--encoder-levels {recipe['encoder_levels']}")
    if recipe["size"] != defaults.size:
        words.append(f"--size {recipe['size']}")
    if not recipe.get("scanner_augment", False):
        words.append("--no-scanner-augment")
    if recipe.get("balance", "folder") != defaults.balance:
        words.append(f"--balance {recipe.get('balance', 'folder')}")
    if recipe.get("threshold_weighting", "class") != defaults.threshold_weighting:
        words.append(f"--threshold-weighting {recipe.get('threshold_weighting', 'class')}")
    if recipe.get("scanner_augment", False) and recipe.get("geometry", "strong") != defaults.geometry:
        words.append(f"--geometry {recipe['geometry']}")
    if recipe.get("scanner_augment", False) and recipe.get("consistency", 0.0) != defaults.consistency:
        words.append(f"--consistency {recipe['consistency']:g}")
    if recipe.get("median", 0) != defaults.median:
        words.append(f"--median {recipe.get('median', 0)}")
    for key in ("epochs", "patience"):
        if recipe[key] != getattr(defaults, key):
            words.append(f"--{key} {recipe[key]}")
    return " ".join([*words, "--out OUT"])


def head_threshold_line(meta: ViewMetadata) -> str:
    t = meta.get("class_thresholds", {}).get(str(View.AXIAL_FETAL_HEAD))
    if t is None:
        return ""
    worst = meta["abstention"].get("val_highest_head_probability_of_other_views")
    return (
        f"; an image goes to the head application only with a head probability of at least **{t:.2f}** (the "
        f"highest head probability of a validation image of another view was {worst})"
    )


def view_model_card(meta: ViewMetadata) -> str:
    m = meta["metrics"]
    p = meta["network"]["params"]
    rows = []
    for s in meta["training_data"]:
        sp = s["splits"]
        views = ", ".join(sorted({v for part in sp.values() for v in part["views"]}))
        rows.append(
            f"| {s['format']} | {views} | "
            + " | ".join(f"{sp[k]['images']} / {sp[k]['groups']}" for k in ("train", "val", "test"))
            + f" | {s['split_by']} | {s['licence']} |"
        )
    per_class = "\n".join(
        f"| {label} | {c['support']} / {c['groups']} | {_f(c['recall'])} | {_f(c['precision'])} | "
        f"{c['routed_correct']} | {c['abstained']} |"
        for label, c in m["per_class"].items()
    )
    ab = meta["abstention"]
    tr = meta["training"]
    recipe = tr["recipe"]
    geometry = (
        "random rotation (±20°), zoom (0.75–1.4, and 1.4–1.8 into the content for one draw in seven)"
        if recipe.get("geometry", "strong") == "strong"
        else "random rotation (±15°), zoom (0.8–1.25)"
    )
    augmentation = (
        f"{geometry}, aspect, shift, mirroring, gamma, contrast and noise, and what scanners add (training.scanner): burned-in banner "
        "text and numbered callipers with their values, sector masks of other depths and widths, grey maps and "
        "tints, Doppler colour boxes, gain, speckle, blur and JPEG round trips"
        + (
            f"; each image also seen with text and callipers burned in, the two predictions held together "
            f"(Jensen-Shannon consistency, weight {recipe['consistency']:g})"
            if recipe.get("consistency")
            else ""
        )
        if recipe.get("scanner_augment")
        else "random rotation, zoom, aspect, shift, mirroring, gamma, contrast and noise"
    )
    balance = (
        "each acquisition source weighs the same (FETAL_PLANES_DB images are one source wherever they sit)"
        if recipe.get("balance") == "origin"
        else "each source folder weighs the same"
    )
    command = f"\n\nCommand:\n\n    {tr['command']}\n" if tr.get("command") else ""
    history = "\n".join(f"- {line}" for line in meta.get("history", [])) or "- First version."
    heads = m.get("heads_by_origin")
    heads_table = ""
    if heads:
        heads_table = (
            "\n\nAxial heads of the test split by acquisition source (routed by the view model alone):\n\n"
            + (
                "| source | images / groups | routed to the head application (95% CI by group) | abstained | elsewhere |\n"
                "|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {o} | {h['n']} / {h['n_groups']} | {h['routed_to_head']:.3f} ({_ci(h['routed_to_head_ci95'])}) "
                    f"| {h['abstained']} | {h['elsewhere']} |"
                    for o, h in heads.items()
                )
            )
        )
    median_words = f", a {p['median']}×{p['median']} median filter" if p.get("median") else ""
    levels_words = (
        f", its first {p['levels']} levels only (the deepest, {p['channels'][-1]} channels, is not run)"
        if p.get("levels")
        else ""
    )
    network = (
        f"""The whole frame (0.5–99.5 percentile scaling, letterboxed, as the head segmentation sees it, into a
{meta["input"].get("canvas_hw")} canvas) goes through the frozen encoder of `{p["encoder"]}` (the down path of its MONAI UNet:
residual units {p["channels"]}, strides {p["strides"]}; weights SHA-256 {str(p.get("encoder_weights_sha256"))[:12]}…){levels_words};
the mean and the maximum of every channel of every level used ({2 * sum(p["channels"][: p.get("levels") or None])} features),
standardised, go through one linear layer with"""
        if p.get("encoder")
        else f"""The whole frame (0.5–99.5 percentile scaling, centred on a square, {p.get("size")}×{p.get("size")}{median_words}) goes through a
MONAI `Classifier` (residual units {p["channels"]}, strides {p["strides"]}, dropout {p.get("dropout")}) with"""
    )
    if recipe.get("encoder"):
        chosen = next((h for h in tr["history"] if h.get("kept")), {})
        copies = int(recipe.get("overlay_copies", 1))
        fitting = f"""The encoder is not trained: its weights are the segmentation bundle's. The linear layer is fitted
by L-BFGS on the training images and {copies} cop{"y" if copies == 1 else "ies"} of each with a scanner's numbered
callipers, their values and banner text burned in at the image's own resolution (training.scanner), each
class weighing the same; weight decay {chosen.get("weight_decay")} of {list(recipe.get("weight_decays", []))}, the
one with the lowest validation NLL ({_f(chosen.get("val_nll"))}). {tr["minutes"]} minutes of fitting on
{tr["device"]} ({tr["threads"]} threads){f"; the whole recipe took {tr['recipe_minutes']} minutes" if tr.get("recipe_minutes") else ""}.{command}"""
    else:
        fitting = f"""Classes are balanced by sampling ({recipe["per_class_per_epoch"]} draws of each class per epoch; within
a class {balance}, within a source each group), with {augmentation}. Training: {tr["epochs_run"]} epochs (early
stopping on the validation NLL), {tr["minutes"]} minutes of fitting on {tr["device"]} ({tr["threads"]} threads)
{f"; the whole recipe took {tr['recipe_minutes']} minutes" if tr.get("recipe_minutes") else ""}.{command}"""
    return f"""# {meta["name"]} {meta["version"]} — ultrasound view classifier (the view router's model)

**{meta["intended_use"]}.** It decides which application looks at an image; it makes no finding itself.

## What it does
Views are named by anatomy and plane: an axial fetal head at any gestational age (every brain plane at which a
head is measured), the intrapartum transperineal view, the first-trimester mid-sagittal view, other fetal planes,
not fetal. {network}
{len(meta["labels"])} classes: {", ".join(meta["labels"])}. When the top probability is below the abstain
threshold **{meta["abstain_threshold"]:.2f}** the router answers `unknown` (no application){head_threshold_line(meta)}.
Threshold rule: {ab["rule"]}; on validation it keeps {ab["val_coverage"]:.3f} of the images routed.
{runtime_line(meta)}

## Training data
Each folder's format tells its view; each is split 70/15/15 by its grouping column (seed
{meta["training_data"][0]["seed"]}), HC18 and the brain-abnormality images exactly as the head bundles split
them, so their test heads are unseen by every model. Images / groups:

| format | views | train | val | test | grouped by | licence |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{fitting}

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| accuracy (top class, no abstention) | {_f(m["accuracy"])} | {_ci(m["accuracy_ci95"])} |
| routed accuracy (abstention counted wrong, except on not-fetal images) | {_f(m["routed_accuracy"])} | {_ci(m["routed_accuracy_ci95"])} |
| balanced accuracy | {_f(m.get("balanced_accuracy"))} | {_ci(m.get("balanced_accuracy_ci95"))} |
| coverage (routed, not unknown) | {_f(m["coverage"])} | |
| images of another view the view model routes to the head application (before the router's cross-check) | {m["other_views_routed_to_head"]} | |

| class | test images / groups | recall | precision | routed right | abstained |
|---|---|---|---|---|---|
{per_class}

Routed views (rows: truth; columns: what the router answered, the view model alone):

{confusion_table(m)}{heads_table}

## The head application's claim
{claim_lines(meta)}

## The whole node: head findings on other views, HCs on heads
{node_check_lines(m)}

## Robustness: callipers, banner text, JPEG
{robustness_lines(m)}

## Leave one head source out
{holdout_lines(m)}

## What it can and cannot claim
- Each view other than the head still comes from one or two datasets (intrapartum transperineal: PSFHS only;
  first-trimester mid-sagittal: one hospital's set; other fetal planes: a 33-image FETAL_PLANES_DB sample; not
  fetal: a few DICOM files): for those classes the test split measures the same source it trained on. The
  leave-one-source-out runs measure the head class only. A site's scanner is a new source: expect its figures to
  be lower than the test split's until its own images show otherwise.
- `other_fetal_plane` and `not_fetal` test figures are a few images each: anecdotes more than validation.
- The claim rule and the head threshold were chosen with the head segmentation named above; a new segmentation
  bundle needs them chosen again.
- Not covered at all: coronal and sagittal head views beyond the first trimester, cardiac and Doppler fetal
  views beyond the samples, 3D renderings, screens with several images.
{no_reference_line(meta)}
## History
{history}
"""
