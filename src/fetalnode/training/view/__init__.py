"""Train the view classifier (``fetalnode train view``) on the dataset folders as they are.

Each folder's format tells the view of its images (:func:`folder_rows`): HC18 and
fetal_brain_abnormalities are axial fetal heads (HC18: about 12 to 40 weeks), PSFHS intrapartum transperineal,
first_trimester_sagittal first-trimester mid-sagittal, FETAL_PLANES_DB its brain planes heads and every
other plane "other fetal plane", a folder of DICOM files (no ``labels.csv``) ultrasound that is not
fetal. Every folder is split by its grouping column (never by image), HC18 and the brain abnormalities
exactly as the head bundles split them (same seed), so their test heads stay unseen by every model.
Classes are balanced by sampling; the abstain threshold is chosen on the validation split.

Modules: :mod:`.data` (dataset formats, views, splits, network inputs), :mod:`.fitting` (the recipe and the
network's fitting), :mod:`.measure` (routing, thresholds, the head claim rule, metrics, robustness),
:mod:`.check` (the whole node on a view bundle's images; ``fetalnode evaluate``), :mod:`.train`
(``fetalnode train view`` and the bundle's finalize steps), :mod:`.card` (the model card).
"""

from __future__ import annotations

from fetalnode.training.view.card import view_model_card
from fetalnode.training.view.check import evaluate_view, remeasure_node_check
from fetalnode.training.view.data import CLASSES, folder_images, folder_rows, stratum
from fetalnode.training.view.fitting import ViewRecipe
from fetalnode.training.view.train import add_history, finalize_view_bundle, record_source_holdout, train_view

__all__ = [
    "CLASSES",
    "ViewRecipe",
    "add_history",
    "evaluate_view",
    "finalize_view_bundle",
    "folder_images",
    "folder_rows",
    "record_source_holdout",
    "remeasure_node_check",
    "stratum",
    "train_view",
    "view_model_card",
]
