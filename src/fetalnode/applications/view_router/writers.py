"""The output writers of the view router's own answer (each module registers its writer on import)."""

from fetalnode.applications.view_router import capture, presentation, report

__all__ = ["capture", "presentation", "report"]
