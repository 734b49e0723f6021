"""The output writers of the labour-progress application (each module registers its writer on import):
``sr`` (TID 1500 with the angle of progression and the head-symphysis distance), ``sc`` (the angle drawn),
``seg`` (pubic symphysis and fetal head) and ``gsps`` (the lines as a Presentation State), beside the head
writers of the same names (:mod:`fetalnode.outputs.registry`: one builder per application)."""

from fetalnode.applications.labour_progress import capture, presentation, report, segmentation

__all__ = ["capture", "presentation", "report", "segmentation"]
