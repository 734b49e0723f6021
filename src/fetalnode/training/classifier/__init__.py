"""Train the malformation classifier on ROI crops of a fetal_brain_abnormalities-format folder.

The ROI comes from the shipped segmentation bundle through the same code the worker runs
(``locate_head`` -> ``roi_crop``); where no head is found the whole image is used, padded square
(fitted on only with ``heads_only=False``; always scored, and reported apart from the images with a head).

Modules: :mod:`.data` (the recipe, rows and ROI crops), :mod:`.fitting` (the network, its fitting, the
baselines and the grouped cross-validation), :mod:`.measure` (metrics, calibration and the type reporting
rule), :mod:`.train` (``fetalnode train classifier``), :mod:`.card` (the model card).
"""

from __future__ import annotations

from fetalnode.training.classifier.card import cls_model_card
from fetalnode.training.classifier.data import NORMAL, ClsRecipe, CropSet, roi_crops, usable_rows
from fetalnode.training.classifier.fitting import (
    abnormal_nll,
    classifier_params,
    classifier_reference,
    fit,
    initial_base,
    predict,
    predict_logits,
)
from fetalnode.training.classifier.measure import as_deployed, classification_metrics
from fetalnode.training.classifier.train import train_classifier

__all__ = [
    "NORMAL",
    "ClsRecipe",
    "CropSet",
    "abnormal_nll",
    "as_deployed",
    "classification_metrics",
    "classifier_params",
    "classifier_reference",
    "cls_model_card",
    "fit",
    "initial_base",
    "predict",
    "predict_logits",
    "roi_crops",
    "train_classifier",
    "usable_rows",
]
