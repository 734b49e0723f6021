"""What ``node.plugins`` names: the application, its writer and its reader register on import."""

from tests.plugins.image_quality import application, findings, report

__all__ = ["application", "findings", "report"]
