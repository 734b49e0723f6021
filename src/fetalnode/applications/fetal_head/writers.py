"""The output writers of the fetal head application (each module registers its writer on import)."""

from fetalnode.applications.fetal_head import capture, obgyn, presentation, report, segmentation

__all__ = ["capture", "obgyn", "presentation", "report", "segmentation"]
