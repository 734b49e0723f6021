"""Where a job's objects go: the :class:`~fetalnode.destinations.base.Destination` seam.

One module per kind, each registered with ``@destination_kind``: ``orthanc_rest`` (Orthanc's REST API),
``folder`` (Part 10 files written atomically; what ``fetalnode analyze`` uses).
"""
