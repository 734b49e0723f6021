"""Output writers of the ``labour-progress`` application (issue 19): ``sr`` (TID 1500 with the angle of
progression and the head-symphysis distance), ``sc`` (the angle drawn), ``seg`` (pubic symphysis and fetal
head) and ``gsps`` (the lines as a Presentation State). They register on import, beside the head writers
of the same names (:mod:`fetalnode.outputs.registry`: one builder per application)."""

from fetalnode.outputs.labour import capture, presentation, report, segmentation

__all__ = ["capture", "presentation", "report", "segmentation"]
