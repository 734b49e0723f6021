"""Where a job's objects go: the :class:`~fetalnode.destinations.base.Destination` seam.

One module per kind, each registered with ``@destination_kind``: ``dicom`` (C-STORE SCU, optionally over
DICOM TLS), ``dicomweb`` (STOW-RS), ``orthanc`` (Orthanc's REST API; module ``orthanc_rest``) and
``folder`` (Part 10 files written atomically; what ``fetalnode analyze`` uses).
"""
