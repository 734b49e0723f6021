"""Delivery to Orthanc (the master node), the Orthanc process used by the demo and the tests, and
the Orthanc Python plugin that shows fetalnode's findings in Orthanc Explorer.

Named ``fetalnode.orthanc``: never a top-level ``orthanc`` module (Orthanc's Python plugin owns it).
Nothing is imported here: the plugin runs inside Orthanc's embedded Python and loads only
``fetalnode.orthanc.findings`` (pydicom).
"""
