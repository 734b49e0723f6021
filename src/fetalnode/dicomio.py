"""The one DICOM reader and the one Part 10 encoder of the node (pydicom).

Every received or stored object is parsed by :func:`read` (untrusted bytes: any failure is an
:class:`~fetalnode.errors.IntakeRejected` the SCP answers 0xC210 and a worker records as a rejection) and
every object the node writes is encoded by :func:`encode`. The output templates have their own encoder
(``outputs.template.encode``: sequences of undefined length, so a template's fixed bytes never hold a
length that a job's value changes); it is the fast path's, not another way to write a file.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.dicom_status import Status
from fetalnode.errors import IntakeRejected


def read(data: bytes) -> Dataset:
    """Parse Part 10 bytes (file meta + data set); bytes that are not (or no longer) DICOM are refused."""
    try:
        return dcmread(BytesIO(data))
    except Exception as exc:  # untrusted bytes: pydicom may raise anything
        raise IntakeRejected(f"cannot parse dataset: {exc}", Status.CANNOT_UNDERSTAND) from exc


def encode(ds: Dataset) -> bytes:
    """A dataset as DICOM Part 10 bytes (what the spool, the outbox and the destinations hold)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
