"""Delivery to Orthanc (the master node) and the Orthanc process used by the demo and the tests.

Named ``fetalnode.orthanc``: never a top-level ``orthanc`` module (Orthanc's Python plugin owns it).
"""

from fetalnode.orthanc.client import OrthancClient

__all__ = ["OrthancClient"]
