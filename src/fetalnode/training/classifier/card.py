"""The classifier's model card, rendered from its metadata."""

from __future__ import annotations

import math
from typing import Any

from fetalnode.inference.bundle import history_section
from fetalnode.training.metadata import ClsMetadata, ClsMetrics
from fetalnode.training.reference import no_reference_line


def base_init_line(meta: ClsMetadata) -> str:
    """Where the base network's weights started: the segmentation encoder (transfer) or random."""
    if meta["training"]["recipe"].get("base_init") == "segmentation":
        return (
            f"The base stages were initialised from the encoder of `{meta['input']['segmentation_bundle']}` "
            "(transfer from our own segmentation model, tensor by tensor where shapes agree), then fine-tuned."
        )
    if meta["training"]["recipe"].get("base_init") == "contrastive":
        info = meta["training"].get("base_init", {})
        return (
            f"The base stages were pretrained self-supervised (contrastive, SimCLR-style) on {info.get('images')} "
            f"unlabelled ROI crops of {info.get('folders')} ({info.get('minutes')} min), then fine-tuned."
        )
    return "The base network was trained from random initialisation."


def recipe_time(meta: ClsMetadata) -> str:
    total = meta["training"].get("recipe_minutes")
    return f"; the whole recipe (ROI crops, fitting, baselines, cross-validation) took {total} minutes" if total else ""


def extra_data_line(meta: ClsMetadata) -> str:
    """The extra 'normal' heads from another source, when used."""
    extra = meta["training_data"][1:] if len(meta["training_data"]) > 1 else []
    return "".join(
        f"Extra normals: {e['train']} training and {e['val']} validation images from the training/validation split of "
        f"{e['name']} ({e['citation']}; {e['licence']}); its test split is kept for the source-shift check below; "
        "the grouped cross-validation pools them with the shared images.\n"
        for e in extra
    )


def cv_side_by_side(cv: dict[str, Any]) -> str:
    """Model-card lines for the baselines, TTA and type limits measured on the same folds (when present)."""
    if "baseline_abnormal_auroc" not in cv:
        return ""
    base, tta, lim = cv["baseline_abnormal_auroc"], cv["tta_hflip"], cv["type_limits"]
    per_class = ", ".join(f"{k} {n}" for k, n in lim["case_groups_per_class"].items())
    return f"""
On the same folds: trivial baselines (logistic regression on intensity statistics) reach normal-vs-abnormal
AUROC {_r(base["intensity"])} (whole images) and {_r(base["equalised_crop"])} (equalised ROI crops); the
classifier with horizontal-flip test-time augmentation: balanced accuracy {_r(tta["balanced_accuracy"])},
AUROC {_r(tta["abnormal_auroc"])}. What limits the type figure: case groups per class:
{per_class}; a class with one group is never in training when it is tested, so the
reachable balanced accuracy is at most {_r(lim["balanced_accuracy_ceiling"])}; over the
{lim["classes_with_3plus_groups"]} classes with at least three groups it is
{_r(lim["balanced_accuracy_classes_with_3plus_groups"])}."""


def fitting_line(meta: ClsMetadata) -> str:
    """The loss (when it has the normal-vs-abnormal term) and whether fitting used only the images with a head."""
    recipe = meta["training"].get("recipe", {})
    weight = recipe.get("abnormal_weight") or 0
    loss = f"loss: 16-class cross-entropy + {weight:g} × normal-vs-abnormal cross-entropy; " if weight else ""
    if recipe.get("heads_only"):
        return f"{loss}fitted (and cross-validated) only on the images where a head was found, "
    return f"{loss}fitted on the ROI crops, and on the whole image where no head was found, "


def deployed_row(d: dict[str, Any] | None, where: str) -> str:
    """A model-card table row: normal vs abnormal on the images where a head is found, with the baseline."""
    if not d:
        return ""
    auc = _r(d["abnormal_auroc"])
    lo, hi = d.get("abnormal_auroc_ci95", (math.nan, math.nan))
    interval = "n/a" if math.isnan(lo) else f"{lo:.3f}–{hi:.3f}"
    return (
        f"| as the node answers ({where}, head found: {d['n']} images, {d['not_analysed']} not analysed): "
        f"AUROC / trivial baseline / sensitivity / specificity | {auc} / {_r(d.get('baseline_intensity_abnormal_auroc'))}"
        f" / {_r(d['abnormal_sensitivity'])} / {_r(d['abnormal_specificity'])} | AUROC {interval} |\n"
    )


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def extra_sections(m: ClsMetrics) -> str:
    """Model-card sections for the source-shift check and grouped cross-validation, when measured."""
    out = []
    shift = m.get("source_shift_hc18_test_heads")
    if shift:
        lo, hi = shift["specificity_ci95"]
        out.append(f"""## Normal vs abnormal when the source changes
On {shift["n"]} HC18 test-split heads ({shift["groups"]} subjects; presumed normal, another centre and scanner,
never seen in training) the model calls {shift["specificity"]:.3f} of them normal (95% CI {lo:.3f}–{hi:.3f}).
Other HC18 subjects' heads are among the training normals (extra normals above), so this measures new subjects
from a source the model was taught as normal, not a source it has never seen.
""")
    cv = m.get("grouped_cv")
    if cv:
        b, f1 = cv["balanced_accuracy_ci95"], cv["macro_f1_ci95"]
        out.append(f"""## Malformation type by grouped cross-validation
{cv["folds"]}-fold cross-validation by case group over all shared images ({cv["n"]} images, {cv["n_groups"]} groups;
{cv["epochs_per_fold"]} epochs per fold, no early stopping): balanced accuracy {cv["balanced_accuracy"]:.3f}
(95% CI {b[0]:.3f}–{b[1]:.3f}), macro F1 {cv["macro_f1"]:.3f} ({f1[0]:.3f}–{f1[1]:.3f}), normal-vs-abnormal AUROC
{cv["abnormal_auroc"] if cv["abnormal_auroc"] is None else round(cv["abnormal_auroc"], 3)}. Per class recall:
{", ".join(f"{k} {v['recall']:.2f} (n={v['support']})" for k, v in cv["per_class"].items() if v["support"])}.
{cv_side_by_side(cv)}
""")
    return "\n".join(out)


def what_type_line(meta: ClsMetadata) -> str:
    """The model card's one line on the malformation type the node names."""
    rule = meta.get("type_reporting") or {}
    types = rule.get("reportable_types") or []
    if types and rule.get("type_probability_threshold") is not None:
        return (
            f"it names a malformation type only for {', '.join(types)}, from a calibrated P(type | abnormal) of "
            f'{rule["type_probability_threshold"]:.2f} (rule below), and otherwise says "type not determined".'
        )
    return (
        'it names **no** malformation type ("abnormal - type not determined"): no type meets the reporting rule below.'
    )


def _ci(v: Any) -> str:
    return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"


def _ece_rows(block: dict[str, Any] | None, where: str) -> str:
    if not block:
        return ""
    rows = []
    for kind, what in (
        ("abnormal", "P(abnormal): the normal/abnormal call"),
        ("type", "P(type \\| abnormal): the most probable type"),
    ):
        before, after = block[kind]["before"], block[kind]["after"]
        n = (
            f"{block['n']} images / {block['n_groups']} groups"
            if kind == "abnormal"
            else (f"{block['n_abnormal']} abnormal images / {block['n_abnormal_groups']} groups")
        )
        rows.append(
            f"| {where} | {what} | {n} | {_r(before['ece'])} ({_ci(before['ece_ci95'])}) | "
            f"{_r(after['ece'])} ({_ci(after['ece_ci95'])}) |"
        )
    return "\n".join(rows) + "\n"


def calibration_section(meta: ClsMetadata) -> str:
    """Model-card section: the temperatures and the ECE before and after on held-out data."""
    cal = meta.get("calibration")
    if not cal:
        return ""
    fitted = cal["fitted_on"]
    return f"""## Calibration
Temperature scaling (Guo et al., ICML 2017), fitted on the validation split ({fitted["images"]} images with a head,
{fitted["abnormal_images"]} abnormal, {fitted["case_groups"]} case groups): P(abnormal) = sigmoid(z / {cal["abnormal_temperature"]:.3f}),
z = the log-odds of abnormal under the softmax; P(type | abnormal) = softmax(malformation logits / {cal["type_temperature"]:.3f}).
The node shows only these calibrated probabilities. A temperature changes no decision (the 0.5 call and the
most probable type stay the same), only the confidences. Expected calibration error ({cal["ece_bins"]} equal-width bins of
the confidence of the answer given), 95% CI by case-group bootstrap, on images with a head:

| data | probability | n | ECE before (T = 1) | ECE after |
|---|---|---|---|---|
{_ece_rows(cal.get("test"), "test split (held out)")}{_ece_rows(cal.get("grouped_cv"), "grouped CV (temperatures cross-fitted: each fold's from the other folds' out-of-fold predictions)")}
{_not_lowered(cal)}"""


def _not_lowered(cal: dict[str, Any]) -> str:
    """A model-card sentence naming where the temperature did not lower the ECE (none: empty)."""
    worse = [
        f"{where} {kind} ({block[kind]['before']['ece']:.3f} -> {block[kind]['after']['ece']:.3f})"
        for where, block in (("test split", cal.get("test")), ("grouped CV", cal.get("grouped_cv")))
        if block
        for kind in ("abnormal", "type")
        if block[kind]["after"]["ece"] is not None and block[kind]["after"]["ece"] >= block[kind]["before"]["ece"]
    ]
    if not worse:
        return ""
    return (
        f"The temperatures did not lower the ECE of: {'; '.join(worse)}. Read the confidences with the intervals "
        "above: they are calibrated on the validation split, not guaranteed on a new case.\n"
    )


def type_rule_section(meta: ClsMetadata) -> str:
    """Model-card section: the type reporting rule, its justification and the per-type evidence."""
    rule = meta.get("type_reporting")
    if not rule:
        return ""
    cv = rule.get("grouped_cv") or {}

    def prec(e: dict[str, Any]) -> str:
        return "n/a" if e.get("precision") is None else f"{e['precision']:.2f} ({_ci(e.get('precision_ci95'))})"

    cv_rows = "\n".join(
        f"| {label} | {e['support']} / {e['case_groups']} | {e['named']} | {prec(e)} | {_r(e['recall'])} | "
        f"{e['correct_case_groups']} | {'**yes**' if e['reportable'] else 'no: ' + e['why']} |"
        for label, e in cv.items()
    )
    test_rows = ", ".join(
        f"{label} {prec(e)} (named {e['named']}, support {e['support']})"
        for label, e in rule.get("test", {}).items()
        if e["named"] or e["support"]
    )
    at = "; ".join(
        f">= {a['threshold']:.1f}: {a['named']} named, precision {_r(a['precision'])}"
        for a in rule.get("validation_precision_at", [])
    )
    types = rule["reportable_types"]
    outcome = (
        f"Reportable: {', '.join(types)}, from a calibrated P(type | abnormal) of {rule['type_probability_threshold']}."
        if types and rule.get("type_probability_threshold") is not None
        else f"**No type is reportable** ({rule.get('why_none', '')}): every abnormal finding says "
        '"abnormal - type not determined" in the SR (Malformation type = (373068000, SCT, "Undetermined")), the '
        "Secondary Capture banner, the Presentation State text, the OB-GYN SR comments, the Orthanc panel and the triage list."
    )
    table = (
        f"""Grouped cross-validation, as the node answers (images with a head; a type is "named" when the image is
called abnormal and the type is the most probable one):

| type | images / case groups | named | precision (95% CI) | recall | case groups of the correct namings | reportable |
|---|---|---|---|---|---|---|
{cv_rows}
"""
        if cv
        else "No grouped cross-validation was run for this bundle: no type has evidence.\n"
    )
    share = rule.get("most_frequent_type_share")
    return f"""## Malformation type: what the node names
Rule (stored in `type_reporting`, applied by the node): {rule["rule"]}

Why this bar: a type name that is wrong more often than right misleads more than it informs, so a type must be
right more often than not, and with 95% confidence, on case groups the model never saw; the bound is on the
lower end of the interval because the per-type evidence is a handful of case groups. Correct namings from
fewer than {rule["min_correct_case_groups"]} case groups are augmented copies of one or two source images, not evidence that the type is
recognised in a new case. {"" if share is None else f"For scale: naming the most frequent malformation type for every abnormal image would be right for {share:.2f} of them."}

{table}
{outcome}

Held-out test split, same definition (information; types present or named): {test_rows or "none"}.
On the validation split, pooled precision of the named types by calibrated P(type | abnormal): {at or "n/a"}.
"""


def cls_model_card(meta: ClsMetadata) -> str:
    m = meta["metrics"]
    td = meta["training_data"][0]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def ci(v: Any) -> str:
        return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"

    return f"""# {meta["name"]} {meta["version"]} — fetal head malformation classifier

**{meta["intended_use"]}.** A prototype trained on ~{td["splits"]["train"]["groups"]} case groups of a small public
dataset; it must not be used to make or exclude any diagnosis.

## What it does
On the head ROI found by `{meta["input"]["segmentation_bundle"]}` ({meta["input"]["roi"]}, {meta["input"]["roi_size"]} px),
a residual CNN base ({meta["network"]["params"]["channels"]}) extended with {len(meta["network"]["params"]["fc"])}
extra fully-connected layers ({meta["network"]["params"]["fc"]}) outputs {len(meta["labels"])} classes:
{", ".join(meta["labels"])}. The node reports abnormal when its calibrated P(abnormal) >= {meta["abnormal_threshold"]};
{what_type_line(meta)} Grad-CAM on the last base stage gives the heatmap, of what is reported: the named type's logit, the log-odds of abnormal when no type is named, the normal logit for a normal finding.
{base_init_line(meta)}

## Training data
{td["name"]} — {td["citation"]}; licence {td["licence"]}. Split by {td["split_by"]} (seed {td["seed"]}):
{td["splits"]}. {td["label_conflict_rows_dropped"]} rows with conflicting labels were dropped.
Classes in the test split: {", ".join(td["test_classes"])}.
{extra_data_line(meta)}

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by case group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| accuracy (16 classes) | {f(m["accuracy"])} | {ci(m.get("accuracy_ci95"))} |
| balanced accuracy | {f(m["balanced_accuracy"])} | {ci(m.get("balanced_accuracy_ci95"))} |
| macro F1 | {f(m["macro_f1"])} | {ci(m.get("macro_f1_ci95"))} |
| normal vs abnormal AUROC | {f(m.get("abnormal_auroc"))} | {ci(m.get("abnormal_auroc_ci95"))} |
| trivial baseline AUROC (logistic regression on global intensity statistics of the whole image) | {f(m.get("baseline_intensity_logreg_abnormal_auroc"))} | |
| same baseline on the histogram-equalised ROI crops the model sees | {f(m.get("baseline_equalised_crop_logreg_abnormal_auroc"))} | |
| abnormal sensitivity / specificity | {f(m["abnormal_sensitivity"])} / {f(m["abnormal_specificity"])} | |
| head found by the segmentation on these images | {f(m["head_found_rate"])} | |
{deployed_row(m.get("as_deployed"), "test split")}{deployed_row(m.get("grouped_cv", {}).get("as_deployed"), "grouped CV")}
Where no head is found the node answers "not analysed" and never classifies; the rows above the "as the node
answers" ones score the whole image there, those rows keep only the images with a head found.

Training: {fitting_line(meta)}{meta["training"]["epochs_run"]} epochs, {meta["training"]["minutes"]} minutes of fitting on {meta["training"]["device"]} (2 cores){recipe_time(meta)}.

{extra_sections(m)}
{calibration_section(meta)}
{type_rule_section(meta)}
## What it can and cannot claim
- The malformation type: see "Malformation type: what the node names" above; where no type meets the rule the
  node never names one.
- All `normal` images come from FETAL_PLANES_DB, the abnormal ones from another, undocumented source: normal-vs-abnormal
  separation is partly a *source* shortcut. Compare the AUROC with the trivial intensity baseline above.
- Per-type figures rest on 1–6 source images per class; classes with fewer than 3 case groups are only in training.
- Images are Roboflow-stretched squares without physical calibration.
{no_reference_line(meta)}{history_section(meta)}"""
