"""The DICOM objects a job writes (formerly ``sr_writer``: it holds more than the SR).

- ``registry.py``: output writers by name (``sr``, ``sc``, ...); config enables them (``output.enabled``).
- ``report.py``: TID 1500 measurement report (Comprehensive 3D SR); ``capture.py``: Secondary Capture heatmap.
- ``uids.py``: deterministic UIDs per output kind; ``codes.py``: the coded concepts.

Nothing is imported here: ``uids`` and ``codes`` are read by the Orthanc plugin, which has neither
torch nor highdicom.
"""
