"""The schema of a bundle's ``configs/metadata.json`` for each task, as written by ``fetalnode train``, read by
the model cards and by ``fetalnode evaluate``.

TypedDicts: the JSON on disk is the plain object it always was, and mypy checks every key the trainers
write and the cards read. A key a bundle may lack (older bundles, optional steps) is ``NotRequired``.
Blocks whose keys vary with the recipe stay ``dict[str, Any]`` (the recipe, the per-epoch history, the
classifier's calibration, type rule and cross-validation, the view model's claims, robustness and node checks).

:func:`checked` is how a metadata object read from disk (``read_metadata``) becomes typed: it refuses one
missing a required key, at every level the schema types. The node itself (``fetalnode.inference``) reads
the few keys it needs from the plain dict and does not depend on this module.

No ``from __future__ import annotations`` here: ``typing`` must see ``NotRequired`` to tell the optional keys.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict, TypeVar, cast, get_args, get_origin, get_type_hints, is_typeddict

T = TypeVar("T")

# A 95% confidence interval (low, high): a tuple when measured, a list once read back from JSON.
Interval = Sequence[float]

Network = TypedDict("Network", {"class": str, "params": dict[str, Any]})


class Split(TypedDict):
    images: int
    groups: int


class RuntimeComparison(TypedDict):
    """torch against onnxruntime on one input, measured at export (``export_onnx``)."""

    runtime: str
    threads: int
    input_shape: list[int]
    torch_ms_p50: float
    onnxruntime_ms_p50: float
    max_abs_diff: float
    reference_max_abs_diff: NotRequired[float]


class Common(TypedDict):
    """The keys every bundle has (``weights_sha256`` and the runtime keys once written by ``save_bundle``)."""

    name: str
    version: str
    task: str
    description: str
    intended_use: str
    network: Network
    weights_sha256: NotRequired[str]
    runtime: NotRequired[str]
    runtime_comparison: NotRequired[RuntimeComparison]
    onnx_sha256: NotRequired[str]
    history: NotRequired[list[str]]


class TrainingSource(TypedDict):
    """One dataset a segmentation bundle was trained on."""

    name: str
    citation: str
    licence: str
    splits: dict[str, Split]
    split_by: str
    seed: int


class CanvasInput(TypedDict):
    canvas_hw: list[int]
    channels: int
    intensity: str
    resize: str


# Segmentation (hc18-headseg)


class SegPostprocess(TypedDict):
    threshold: float
    ellipse_fit: str
    axis_scale: float
    gate: dict[str, Any]


class SegTraining(TypedDict):
    epochs_run: int
    minutes: float
    device: str
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    stages: NotRequired[list[dict[str, Any]]]
    weight_average: NotRequired[dict[str, Any]]


class SegMetrics(TypedDict):
    """Dice and HC error of a segmentation bundle on some images (``evaluate_segmentation_net``)."""

    n: int
    n_groups: int
    dice_mean: float
    dice_mean_ci95: Interval
    head_found_rate: float
    hc_abs_diff_mm_mean: float | None
    hc_abs_diff_mm_mean_ci95: Interval
    hc_abs_diff_mm_median: float | None
    hc_diff_mm_mean_signed: float | None
    split: NotRequired[str]


class SegReference(TypedDict):
    image: str
    head_score: float
    ellipse: list[float] | None


class SegMetadata(Common):
    input: CanvasInput
    postprocess: SegPostprocess
    training_data: list[TrainingSource]
    training: SegTraining
    metrics: SegMetrics
    reference_outputs: NotRequired[list[SegReference]]


# Labour progress (psfhs-seg)


class LabourPostprocess(TypedDict):
    labels: str
    measurement: str
    gate: dict[str, Any]


class LabourTraining(TypedDict):
    epochs_run: int
    best_epoch: int
    stopped: NotRequired[str]
    minutes: float
    device: str
    threads: int
    early_stopping: str
    recipe: dict[str, Any]
    history: list[dict[str, Any]]


class LabourMetrics(TypedDict):
    """Dice, AoP and HSD differences of a labour bundle (``summarise``; the intervals only with ``ci``)."""

    n: int
    n_groups: int
    dice_fh_mean: float | None
    dice_fh_mean_ci95: NotRequired[Interval | None]
    dice_ps_mean: float | None
    dice_ps_mean_ci95: NotRequired[Interval | None]
    analysed_rate: float | None
    analysed_rate_ci95: NotRequired[Interval | None]
    aop_abs_diff_deg_mean: float | None
    aop_abs_diff_deg_mean_ci95: NotRequired[Interval | None]
    aop_abs_diff_deg_median: float | None
    aop_abs_diff_deg_median_ci95: NotRequired[Interval | None]
    aop_diff_deg_mean_signed: float | None
    aop_diff_deg_mean_signed_ci95: NotRequired[Interval | None]
    aop_abs_diff_deg_mean_ungated: float | None
    aop_abs_diff_deg_mean_ungated_ci95: NotRequired[Interval | None]
    hsd_abs_diff_px_mean: float | None
    hsd_abs_diff_px_mean_ci95: NotRequired[Interval | None]
    hsd_abs_diff_px_median: float | None
    hsd_abs_diff_px_median_ci95: NotRequired[Interval | None]
    n_aop_measured: int
    n_aop_measured_ungated: int
    aop_within_5deg_rate: float | None
    not_analysed_reasons: dict[str, int]
    split: NotRequired[str]


class LabourReference(TypedDict):
    image: str
    reason: str
    aop_deg: float | None
    hsd_px: float | None


class LabourMetadata(Common):
    labels: list[str]
    input: CanvasInput
    postprocess: LabourPostprocess
    training_data: list[TrainingSource]
    training: LabourTraining
    metrics: LabourMetrics
    reference_outputs: NotRequired[list[LabourReference]]


# Malformation classifier (fba-classifier)


class ClsInput(TypedDict):
    roi_size: int
    roi_margin: float
    roi: str
    segmentation_bundle: str


class ClsSource(TypedDict):
    """A dataset of the classifier: the labelled one (first), or the extra normals of another source."""

    name: str
    citation: str
    licence: str
    splits: NotRequired[dict[str, Split]]
    split_by: NotRequired[str]
    seed: NotRequired[int]
    label_conflict_rows_dropped: NotRequired[int]
    test_classes: NotRequired[list[str]]
    extra_normals: NotRequired[str]
    train: NotRequired[int]
    val: NotRequired[int]


class ClsTraining(TypedDict):
    epochs_run: int
    minutes: float
    device: str
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    base_init: NotRequired[dict[str, Any]]
    fitted_images: NotRequired[dict[str, int]]
    recipe_minutes: NotRequired[float]


class ProbabilityReference(TypedDict):
    image: str
    probabilities: list[float]


class ClsReference(TypedDict):
    segmentation_bundle: str
    images: list[ProbabilityReference]


class ClsMetrics(TypedDict):
    """The classifier's figures on some images (``classification_metrics``), the figures the trainer adds
    (test split) and those ``fetalnode evaluate`` adds (calibration, type precision, dropped rows)."""

    n: int
    n_groups: int
    accuracy: float
    accuracy_ci95: Interval
    balanced_accuracy: float
    balanced_accuracy_ci95: Interval
    macro_f1: float
    macro_f1_ci95: Interval
    per_class: dict[str, dict[str, Any]]
    confusion_matrix: list[list[int]]
    abnormal_sensitivity: float | None
    abnormal_specificity: float | None
    abnormal_auroc: float | None
    abnormal_auroc_ci95: NotRequired[Interval]
    split: NotRequired[str]
    head_found_rate: NotRequired[float]
    baseline_intensity_logreg_abnormal_auroc: NotRequired[float | None]
    baseline_equalised_crop_logreg_abnormal_auroc: NotRequired[float | None]
    as_deployed: NotRequired[dict[str, Any]]
    source_shift_hc18_test_heads: NotRequired[dict[str, Any]]
    grouped_cv: NotRequired[dict[str, Any]]
    calibration: NotRequired[dict[str, Any]]
    type_precision: NotRequired[dict[str, Any]]
    label_conflict_rows_dropped: NotRequired[int]


class ClsMetadata(Common):
    input: ClsInput
    labels: list[str]
    normal_label: str
    abnormal_threshold: float
    calibration: NotRequired[dict[str, Any]]
    type_reporting: NotRequired[dict[str, Any]]
    training_data: list[ClsSource]
    training: ClsTraining
    metrics: ClsMetrics
    reference_outputs: NotRequired[ClsReference]


# View model (fetal-view)


class ViewInput(TypedDict):
    size: NotRequired[int]  # the Classifier's square input
    canvas_hw: NotRequired[list[int]]  # a model on a segmentation encoder: that segmentation's canvas
    preprocess: str


class ViewSource(TypedDict):
    folder: str
    format: str
    name: str
    licence: str
    splits: dict[str, dict[str, Any]]
    seed: int
    split_by: str


class ViewTraining(TypedDict):
    epochs_run: int
    minutes: float
    device: str
    threads: int
    command: NotRequired[str]
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    images: dict[str, int]
    recipe_minutes: NotRequired[float]


class ViewMetrics(TypedDict):
    """The view model's figures on some images (``view_metrics``), what the trainer adds (test split: the
    validation split's figures, the claims, robustness, the whole-node check, the left-out source) and what
    ``fetalnode evaluate`` adds (the folder's format, the thresholds, the true views)."""

    n: int
    n_groups: int
    accuracy: float
    accuracy_ci95: Interval
    routed_accuracy: float
    routed_accuracy_ci95: Interval
    coverage: float
    abstained: int
    other_views_routed_to_head: int
    per_class: dict[str, dict[str, Any]]
    per_source: dict[str, dict[str, Any]]
    confusion_matrix: list[list[int]]
    confusion_labels: list[str]
    routed_confusion_matrix: list[list[int]]
    routed_confusion_columns: list[str]
    balanced_accuracy: NotRequired[float]
    balanced_accuracy_ci95: NotRequired[Interval]
    split: NotRequired[str]
    heads_by_origin: NotRequired[dict[str, dict[str, Any]]]
    validation: NotRequired["ViewMetrics"]
    claims: NotRequired[dict[str, Any]]
    robustness: NotRequired[dict[str, Any]]
    left_out_source: NotRequired[dict[str, Any]]
    node_check: NotRequired[dict[str, Any]]
    node_check_history: NotRequired[list[dict[str, Any]]]
    source_holdout: NotRequired[list[dict[str, Any]]]
    format: NotRequired[str]
    abstain_threshold: NotRequired[float]
    class_thresholds: NotRequired[dict[str, float]]
    true_views: NotRequired[dict[str, int]]


class ViewMetadata(Common):
    input: ViewInput
    labels: list[str]
    abstain_threshold: float
    class_thresholds: dict[str, float]
    abstention: dict[str, Any]
    claims: NotRequired[dict[str, dict[str, Any]]]
    claim_selection: NotRequired[dict[str, Any]]
    training_data: list[ViewSource]
    dicom_group_splits: dict[str, str]
    training: ViewTraining
    metrics: ViewMetrics
    reference_outputs: NotRequired[list[ProbabilityReference]]


# The schema of each bundle task (``metadata["task"]``).
SCHEMAS: dict[str, Any] = {
    "segmentation": SegMetadata,
    "multiclass-segmentation": LabourMetadata,
    "classification": ClsMetadata,
    "view": ViewMetadata,
}


def schema_problems(schema: Any, value: Any, where: str = "metadata", unknown: bool = False) -> list[str]:
    """What in ``value`` does not fit the TypedDict ``schema``: each missing required key (and, with
    ``unknown``, each key the schema does not name), at every level the schema types as a TypedDict
    (lists of them included)."""
    if not isinstance(value, Mapping):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    problems = [f"{where}: no {key!r}" for key in sorted(schema.__required_keys__ - set(value))]
    hints = get_type_hints(schema)
    if unknown:
        problems += [f"{where}: unknown key {key!r}" for key in sorted(set(value) - set(hints))]
    for key, hint in hints.items():
        if key not in value:
            continue
        inner = get_args(hint)[0] if get_origin(hint) is NotRequired else hint
        if is_typeddict(inner):
            problems += schema_problems(inner, value[key], f"{where}.{key}", unknown)
        elif get_origin(inner) is list and get_args(inner) and is_typeddict(get_args(inner)[0]):
            for i, item in enumerate(value[key]):
                problems += schema_problems(get_args(inner)[0], item, f"{where}.{key}[{i}]", unknown)
    return problems


def checked(schema: type[T], value: Mapping[str, Any], where: str = "metadata") -> T:
    """``value`` as the TypedDict ``schema``, after checking that it has every required key (ValueError)."""
    problems = schema_problems(schema, value, where)
    if problems:
        raise ValueError("; ".join(problems))
    return cast(T, value)


def renderer(schema: type[T], card: Callable[[T], str]) -> Callable[[Mapping[str, Any]], str]:
    """A model-card renderer of typed metadata as one of metadata read from disk (checked first)."""
    return lambda meta: card(checked(schema, meta))
