"""The value types a job's run is described with: what a role hands the runner (:class:`Received`), where a
job stands at each destination (:class:`Delivery`), and what the runner answers (:class:`Outcome` and its
:class:`Verdict`). The job store, the roles and the cloud path share them; none of them runs anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from fetalnode.vocab import DeliveryStatus, RouteAction, Stage


class Verdict(StrEnum):
    """What became of a job on this run."""

    DELIVERED = "delivered"  # every output reached every destination
    RETRY = "retry"  # a destination failed transiently: run again after ``retry_in`` seconds
    FAILED = "failed"  # failed at ``stage``; ``fetalnode resend`` replays it unless ``permanent``
    REJECTED = "rejected"  # the input cannot be analysed (permanent)


@dataclass
class Delivery:
    """One job at one destination: its status, attempts, next attempt (epoch seconds), receipts
    (object name -> the destination's reference) and the destination's last words."""

    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_at: float = 0.0
    receipts: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(
            DeliveryStatus(data.get("status", DeliveryStatus.PENDING)),
            int(data.get("attempts", 0)),
            float(data.get("next_at", 0.0)),
            {str(k): str(v) for k, v in dict(data.get("receipts") or {}).items()},
            str(data.get("error", "")),
        )


def deliveries_to_json(deliveries: Mapping[str, Delivery]) -> dict[str, dict[str, Any]]:
    return {name: d.to_json() for name, d in deliveries.items()}


def deliveries_from_json(data: Mapping[str, Any] | None) -> dict[str, Delivery]:
    return {str(name): Delivery.from_json(d) for name, d in dict(data or {}).items()}


@dataclass(frozen=True)
class Received:
    """A received instance as a role hands it to the runner.

    ``read`` returns the instance's bytes (the spool file, the broker message, the file given to
    ``analyze``); it is called only when the instance must be analysed. ``built`` holds the outputs of
    an earlier run (then nothing is analysed again) and ``deliveries`` where each destination stands.
    ``action`` ``forward``: nothing is analysed, only the source is delivered. ``replaces``: the instance
    replaces another received under its SOP Instance UID (``scp.uid_conflict = "replace"``): every
    destination that gets its outputs gets the source too, first; ``replaced_outputs`` (output name -> SOP
    Instance UID) are the outputs written for the object it replaces: its own outputs of those names take
    those UIDs, so they replace them in the archives even when the analysis answers differently now.
    """

    job_id: int
    sop_uid: str
    sha256: str
    read: Callable[[], bytes]
    station_name: str
    replaces: bool = False
    replaced_outputs: Mapping[str, str] = field(default_factory=dict)
    built: Mapping[str, bytes] | None = None
    deliveries: Mapping[str, Delivery] = field(default_factory=dict)
    action: RouteAction = RouteAction.ANALYSE


@dataclass(frozen=True)
class Outcome:
    """The one result of :func:`run_job`.

    ``summary`` is set when the instance was analysed on this run; ``built`` holds the encoded outputs
    (a role may keep them for the retry); ``deliveries`` says where each destination stands (its
    receipts: object -> the destination's reference). ``retry`` comes back when a destination is still
    pending: ``retry_in`` is the wait until the first one is due. ``permanent``: a failure that replaying
    the job as it is can only repeat (:func:`never_succeeds`); ``fetalnode resend`` leaves it alone.
    ``derivation``: what the outputs' UIDs were derived from besides the source (``model_version``, the
    writers' ``revisions``), so that a terminal can derive them again from the real source.
    """

    verdict: Verdict
    stage: Stage
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    built: dict[str, bytes] = field(default_factory=dict)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    retry_in: float = 0.0
    analysed_ms: float | None = None
    permanent: bool = False
    derivation: dict[str, Any] = field(default_factory=dict)

    @property
    def receipts(self) -> dict[str, dict[str, str]]:
        return {name: dict(d.receipts) for name, d in self.deliveries.items()}

    def to_message(self) -> dict[str, Any]:
        """JSON for the broker's results queue (without the encoded bytes)."""
        return {
            "verdict": str(self.verdict),
            "stage": str(self.stage),
            "reason": self.reason,
            "summary": self.summary,
            "deliveries": deliveries_to_json(self.deliveries),
            "retry_in": self.retry_in,
            "analysed_ms": self.analysed_ms,
            "permanent": self.permanent,
            "derivation": self.derivation,
        }

    @classmethod
    def from_message(cls, body: Mapping[str, Any]) -> Outcome:
        return cls(
            verdict=Verdict(body["verdict"]),
            stage=Stage(body["stage"]),
            reason=str(body.get("reason", "")),
            summary=dict(body.get("summary") or {}),
            deliveries=deliveries_from_json(body.get("deliveries")),
            retry_in=float(body.get("retry_in", 0.0)),
            analysed_ms=body.get("analysed_ms"),
            permanent=bool(body.get("permanent", False)),
            derivation=dict(body.get("derivation") or {}),
        )
