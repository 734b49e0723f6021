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
class ObjectUids:
    """Series and SOP Instance UID of one output object."""

    series: str
    instance: str


def object_uids(
    kind: str,
    source_sop_uid: str,
    source_series_uid: str,
    model_version: str,
    revision: int = 0,
) -> ObjectUids:
    """UIDs of the output ``kind`` (``sr``, ``sc``, ...) of one source instance.

    The series UID depends on the source series, the instance UID on the source instance, both on the
    model versions: an object that replaces another under the same SOP Instance UID (``scp.uid_conflict =
    "replace"``) gets the same output UIDs, so its outputs replace the first one's too. ``revision`` is the
    writer's content revision: a writer whose object changes for the same input and models (a corrected
    code) raises it, so the corrected object gets a new SOP Instance UID (a PACS that keeps the first
    copy of a UID would otherwise keep the wrong one); revision 0 derives the UIDs of the releases before
    revisions existed.
    """
    parts = [kind, source_sop_uid, model_version] + ([f"revision {revision}"] if revision else [])
    return ObjectUids(
        series=derive_uid(f"{kind}-series", source_series_uid, model_version),
        instance=derive_uid(*parts),
    )
