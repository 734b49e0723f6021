"""The one table of DICOM statuses this node answers or reads (PS3.4 B.2.3, PS3.4 H.4, PS3.7 C, PS3.8 9.3.4,
PS3.18 I.2).

Built on pynetdicom's status tables: :func:`category` and :func:`meaning` look a code up there, so a
status that pynetdicom knows is described in its words. The ``0xC2xx`` intake sub-codes are this node's
own "Cannot understand" refinements (PS3.4 allows ``0xCxxx`` for that).
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import GENERAL_STATUS, PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS, STORAGE_SERVICE_CLASS_STATUS
from pynetdicom.status import code_to_category as _category


class Status(IntEnum):
    """DIMSE statuses of the C-STORE, verification and print management services."""

    SUCCESS = 0x0000
    # general DIMSE (PS3.7 C)
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_INSTANCE = 0x0111
    NO_SUCH_INSTANCE = 0x0112
    NO_SUCH_SOP_CLASS = 0x0118
    MISSING_ATTRIBUTE = 0x0120
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION = 0x0123
    UNRECOGNIZED_OPERATION = 0x0211
    # storage service class (PS3.4 B.2.3)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    BAD_IMAGE_MODULE = 0xC211
    ABOVE_LIMITS = 0xC212
    NOT_ULTRASOUND = 0xC213
    PIXEL_DATA_TOO_SHORT = 0xC214
    INCOMPLETE_REQUEST = 0xC215
    # print management (PS3.4 H.4)
    SESSION_EMPTY_PAGE = 0xB602
    FILM_BOX_EMPTY_PAGE = 0xB603
    SESSION_HAS_NO_FILM_BOX = 0xC600
    IMAGE_LARGER_THAN_BOX = 0xC603


# PS3.18 Table I.2-2: Failure Reason (0008,1197) in a STOW-RS Store Instances Response; first match wins.
STOW_FAILURE_REASONS: tuple[tuple[int, int, str], ...] = (
    (0xA700, 0xA7FF, "Refused out of Resources"),
    (0xA900, 0xA9FF, "Error: Data Set does not match SOP Class"),
    (0xC122, 0xC122, "Referenced Transfer Syntax not supported"),
    (0xC000, 0xCFFF, "Error: Cannot understand"),
    (Status.PROCESSING_FAILURE, Status.PROCESSING_FAILURE, "Processing failure"),
    (Status.SOP_CLASS_NOT_SUPPORTED, Status.SOP_CLASS_NOT_SUPPORTED, "Referenced SOP Class not supported"),
)


def stow_failure_meaning(code: int) -> str:
    """The standard's words for a STOW-RS Failure Reason (PS3.18 Table I.2-2); other codes are the server's own."""
    for low, high, text in STOW_FAILURE_REASONS:
        if low <= code <= high:
            return text
    return "not in PS3.18 Table I.2-2 (the server's own code)"


def category(code: int) -> str:
    """``Success``, ``Warning``, ``Failure``, ``Cancel`` or ``Pending`` (pynetdicom's categories)."""
    return str(_category(code))


def meaning(code: int) -> str:
    """The standard's words for ``code`` where pynetdicom has them, else its category."""
    for table in (STORAGE_SERVICE_CLASS_STATUS, PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS, GENERAL_STATUS):
        if code in table:
            kind, text = table[code]
            return text or kind
    return category(code)


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 9.3.4)."""

    PERMANENT = 0x01
    TRANSIENT = 0x02


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 9.3.4)."""

    SERVICE_USER = 0x01
    SERVICE_PROVIDER_PRESENTATION = 0x03


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. this node sends or reports (PS3.8 9.3.4; the value's meaning depends
    on the source: 3 and 7 are the service user's, 2 the presentation service provider's)."""

    CALLING_AE_NOT_RECOGNISED = 0x03
    CALLED_AE_NOT_RECOGNISED = 0x07
    LOCAL_LIMIT_EXCEEDED = 0x02
