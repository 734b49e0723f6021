"""Deterministic output UIDs: the same source instance and model version always give the same UIDs,
so a retry re-sends the same objects instead of creating duplicates."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass


def derive_uid(*parts: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) from a name-based UUID: SHA-256 of the parts, version bits set.

    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy sources and
    returns a random UUID, so it cannot be used for this.)
    """
    digest = hashlib.sha256("\x1f".join(["fetalnode", *parts]).encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


# Device UID of this software (stable across versions).
DEVICE_UID = derive_uid("device")


@dataclass(frozen=True)
class OutputUids:
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str


def output_uids(source_sop_uid: str, source_series_uid: str, model_version: str, variant: str = "") -> OutputUids:
    """UIDs of the SR and SC of one source instance.

    ``variant`` distinguishes a *different* object received under an already used SOP Instance
    UID (its content hash), so its report does not replace the first one's.
    """
    instance_key = f"{source_sop_uid}#{variant}" if variant else source_sop_uid
    return OutputUids(
        sr_series=derive_uid("sr-series", source_series_uid, model_version),
        sr_instance=derive_uid("sr", instance_key, model_version),
        sc_series=derive_uid("sc-series", source_series_uid, model_version),
        sc_instance=derive_uid("sc", instance_key, model_version),
    )
