"""DICOM outputs: TID 1500 measurement report (Comprehensive 3D SR) and Secondary Capture heatmap."""

from fetalnode.sr_writer.capture import build_heatmap_capture
from fetalnode.sr_writer.report import build_report
from fetalnode.sr_writer.uids import output_uids

__all__ = ["build_heatmap_capture", "build_report", "output_uids"]
