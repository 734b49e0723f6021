"""Deterministic output UIDs: the same source instance and model version always give the same UIDs,
so a retry re-sends the same objects instead of creating duplicates."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def derive_uid(*parts: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) from a name-based UUID: SHA-256 of the parts, version bits set.

    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy sources and
    returns a random UUID, so it cannot be used for this.)
    """
    digest = hashlib.sha256("\x1f".join(["fetalnode", *parts]).encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


# Device UID of this software (stable across versions).
DEVICE_UID = derive_uid("device")


# The UIDs a writer derives from its object's SOP Instance UID (:meth:`ObjectUids.derived`), by kind: SR
# tracking identifiers, a SEG's dimension organisation. A terminal that re-identifies a cloud worker's
# objects maps each of them as well (:func:`output_uid_map`), so the objects equal the embedded mode's.
DERIVED_KINDS = (
    "tracking",
    "tracking-ellipse",
    "tracking-bpd",
    "tracking-ofd",
    "labour-tracking",
    "labour-aop",
    "labour-hsd",
    "labour-ps",
    "labour-fh",
    "seg-dimension-organization",
)


@dataclass(frozen=True)
class ObjectUids:
    """Series and SOP Instance UID of one output object."""

    series: str
    instance: str

    def derived(self, kind: str) -> str:
        """A UID of the object derived from its SOP Instance UID; ``kind`` is one of :data:`DERIVED_KINDS`."""
        return instance_derived(kind, self.instance)


def instance_derived(kind: str, instance: str) -> str:
    """The UID of ``kind`` (one of :data:`DERIVED_KINDS`) derived from an object's SOP Instance UID."""
    if kind not in DERIVED_KINDS:
        raise ValueError(f"{kind!r} is not in DERIVED_KINDS: a UID derived from an output's instance UID is declared there")
    return derive_uid(kind, instance)


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


def output_uid_map(
    kinds: Iterable[str], sop: tuple[str, str], series: tuple[str, str], derivation: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """The outputs ``kinds`` of a source known under two UIDs (``sop`` and ``series``: (pseudonym, real)),
    built with ``derivation`` (the runner's: ``model_version``, the writers' ``revisions``): each one's SOP
    Instance UID from the real source, and pseudonym -> real for every UID derived from the source (series,
    instance and each :data:`DERIVED_KINDS` UID)."""
    instances: dict[str, str] = {}
    mapping: dict[str, str] = {}
    for kind in kinds:
        version, revision = str(derivation["model_version"]), int(derivation["revisions"][kind])
        pseudo = object_uids(kind, sop[0], series[0], version, revision)
        real = object_uids(kind, sop[1], series[1], version, revision)
        mapping |= {pseudo.series: real.series, pseudo.instance: real.instance}
        mapping |= {pseudo.derived(k): real.derived(k) for k in DERIVED_KINDS}
        instances[kind] = real.instance
    return instances, mapping
