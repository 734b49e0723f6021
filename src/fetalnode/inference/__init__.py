"""The worker's analysis: arrays in, :class:`AnalysisResult` out. No pydicom in here."""

from fetalnode.inference.analyzer import AnalysisResult, Analyzer

__all__ = ["AnalysisResult", "Analyzer"]
