"""The data terminal's one way in: every received object (a C-STORE, a printed film) is spooled durably, its
pre-notification recorded and its job queued here, before the SCP answers.

The DICOM services (:mod:`fetalnode.scp.storage`, :mod:`fetalnode.scp.printer`) hand their objects to a
:class:`Terminal`; :mod:`fetalnode.scp.server` composes them into one Application Entity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.dicom_status import Status
from fetalnode.errors import IntakeRejected, SpoolFull
from fetalnode.jobs import JobStore, PreNotification, Printed
from fetalnode.routing import Route, Router
from fetalnode.scp.spool import Spool
from fetalnode.vocab import RouteAction, UidConflict


@dataclass
class Terminal:
    """The spool, the job store and the audit log of the node's SCP, with its routing rules."""

    settings: Settings
    spool: Spool
    jobs: JobStore
    audit: AuditLog
    on_queued: Callable[[], None] | None = None  # called once a job is queued (wakes the worker)
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.router = Router.from_settings(self.settings)

    def station_for(self, calling_ae: str) -> str:
        """Station name of a calling AE from ``scp.station_names`` ("AE=Name" items), else the AE title."""
        for item in self.settings.scp.station_names:
            ae, _, name = item.partition("=")
            if ae.strip() == calling_ae.strip() and name.strip():
                return name.strip()
        return calling_ae.strip()

    def accept_instance(
        self,
        data: bytes,
        *,
        calling: str,
        peer: str,
        called: str,
        sop_uid: str,
        sop_class: str,
        study_uid: str,
        series_uid: str,
        transfer_syntax: str,
        source: str,
        route: Route,
        printed: Printed | None = None,
    ) -> int | None:
        """Spool an encoded object and record its pre-notification: the one way in for C-STORE and print.

        Returns the job id (``None`` for an identical re-send, answered but not recorded again); raises
        :class:`IntakeRejected` with the status to answer when the spool is full (0xA700) or the SOP Instance
        UID holds another object already and ``scp.uid_conflict`` is ``refuse`` (0x0111).
        """
        digest = hashlib.sha256(data).hexdigest()
        if self.jobs.find_duplicate(sop_uid, digest, calling, peer) is not None:
            return None  # an identical re-send: answered, not recorded again
        policy = UidConflict(self.settings.scp.uid_conflict)
        if policy is UidConflict.REFUSE:
            self._refuse_conflict(self.jobs.conflicting(sop_uid, digest))
        try:
            path, digest, already = self.spool.store(data, sop_uid, digest)
        except SpoolFull as exc:
            raise IntakeRejected(str(exc), Status.OUT_OF_RESOURCES) from exc
        note = PreNotification(
            source=source,
            spool_path=str(path),
            sha256=digest,
            size=len(data),
            calling_ae=calling,
            called_ae=called,
            peer=peer,
            station_name=self.station_for(calling),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax=transfer_syntax,
            route=route.name,
            action=route.action,
            printed=printed,
        )
        fields: dict[str, Any] = {"calling_ae": calling, "address": peer, "sop_uid": sop_uid}
        if route.action is RouteAction.IGNORE:
            fields["route"] = route.name
        else:
            fields.update(source=source, sop_class=sop_class, transfer_syntax=transfer_syntax, bytes=len(data))
            fields.update(sha256=digest, route=route.name, action=str(route.action))
        # One transaction: the duplicate check again (a concurrent identical send), the pre-notification and
        # received -> queued (or ignored) with its audit event, durable at its commit.
        receipt = self.jobs.receive(note, policy, **fields)
        if receipt.conflicts:  # another object under this UID came in concurrently: this one is refused
            if not already:
                path.unlink(missing_ok=True)
            self._refuse_conflict(receipt.conflicts)
        if receipt.job_id is not None and route.action is not RouteAction.IGNORE and self.on_queued is not None:
            self.on_queued()
        return receipt.job_id

    @staticmethod
    def _refuse_conflict(conflicts: int) -> None:
        if conflicts:
            raise IntakeRejected(
                f"SOP Instance UID already used by {conflicts} other object(s); scp.uid_conflict = refuse",
                Status.DUPLICATE_INSTANCE,
            )
