"""The Orthanc Python plugin that shows fetalnode's findings in Orthanc Explorer, and nothing else.

- ``plugin.py``: loaded by Orthanc's Python plugin (Debian ``orthanc-python``); indexes fetalnode's
  SR and SC (recognised by Device UID) and serves ``/fetalnode/findings`` and ``/fetalnode/triage``;
- ``findings.py``: recognises our objects and reads an SR into a finding, by code (pydicom only);
- ``explorer.js``, ``triage.html``: the Orthanc Explorer panel and the triage page.

Delivery to Orthanc is ``fetalnode.destinations.orthanc_rest``; the Orthanc process of the demo and
the tests is ``harness.orthanc`` (outside the installed package).

Named ``fetalnode.orthanc``: never a top-level ``orthanc`` module (Orthanc's Python plugin owns it).
Nothing is imported here: the plugin runs inside Orthanc's embedded Python, without torch or
highdicom, and loads only ``fetalnode.outputs.findings`` (with ``fetalnode.outputs.codes`` and
``fetalnode.outputs.uids``).
"""
