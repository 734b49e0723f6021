"""The SOP classes the data terminal serves, by presentation context, and which requests each context carries.

pynetdicom dispatches a request by its SOP class, whatever context it came on; the node answers only
requests whose service and SOP class belong to their context (:func:`served_on`).
"""

from __future__ import annotations

from typing import Any

from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_ACTION, N_CREATE, N_DELETE, N_GET, N_SET

from fetalnode.dicom_status import Status
from fetalnode.scp.association import Refusal

VERIFICATION = UID("1.2.840.10008.1.1")
META_GRAYSCALE = UID("1.2.840.10008.5.1.1.9")
META_COLOR = UID("1.2.840.10008.5.1.1.18")
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
ANNOTATION_BOX = UID("1.2.840.10008.5.1.1.15")
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRESENTATION_LUT = UID("1.2.840.10008.5.1.1.23")

# The print contexts and the SOP classes each carries (PS3.4 H.3: a Meta SOP Class groups several).
PRINT_CONTEXTS: dict[str, frozenset[str]] = {
    META_GRAYSCALE: frozenset({FILM_SESSION, FILM_BOX, GRAYSCALE_IMAGE_BOX, PRINTER}),
    META_COLOR: frozenset({FILM_SESSION, FILM_BOX, COLOR_IMAGE_BOX, PRINTER}),
    PRESENTATION_LUT: frozenset({PRESENTATION_LUT}),
    ANNOTATION_BOX: frozenset({ANNOTATION_BOX}),
}
N_SERVICES = (N_GET, N_SET, N_ACTION, N_CREATE, N_DELETE)


def served_on(context: UID, sop_class: UID, request: Any) -> Refusal | None:
    """``None`` when ``request`` (a pynetdicom DIMSE primitive) of ``sop_class`` may use ``context``; else how
    it is refused: ``0x0211`` a service the context does not carry, ``0x0122`` / ``0x0118`` another SOP class."""
    if isinstance(request, C_STORE) and context not in PRINT_CONTEXTS and context != VERIFICATION:
        if sop_class == context:
            return None
        return Refusal(Status.SOP_CLASS_NOT_SUPPORTED, f"C-STORE of {sop_class} on the {context.name} context")
    if context == VERIFICATION:
        if not isinstance(request, C_ECHO):
            return Refusal(Status.UNRECOGNIZED_OPERATION, f"{request.msg_type} on the Verification context")
        if sop_class != VERIFICATION:
            return Refusal(Status.SOP_CLASS_NOT_SUPPORTED, f"C-ECHO of {sop_class} on the Verification context")
        return None
    members = PRINT_CONTEXTS.get(context)
    if members is None:
        return Refusal(Status.UNRECOGNIZED_OPERATION, f"{request.msg_type} on the {context.name} storage context")
    if not isinstance(request, N_SERVICES):
        return Refusal(Status.UNRECOGNIZED_OPERATION, f"{request.msg_type} on the {context.name} context")
    if sop_class not in members:
        return Refusal(Status.NO_SUCH_SOP_CLASS, f"{sop_class} is not carried by the {context.name} context")
    return None
