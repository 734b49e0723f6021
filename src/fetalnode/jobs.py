"""The durable record of every received instance, and the journal of what became of it.

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash. A state change and its
audit event are one call (:meth:`JobStore.receive`, :meth:`JobStore.apply`, :meth:`JobStore.resend`):
the guarded UPDATE, then the audit line, then COMMIT. :data:`TRANSITIONS` lists the allowed changes::

    received -> queued -> analysing -> delivering -> delivered
                              |             |
                              +-> rejected  +-> failed   (resend: failed -> queued)

With a broker (role terminal), a worker in the cloud analyses the pseudonymised image and returns the
objects; the terminal re-identifies them and delivers them itself::

    received -> queued -> published -> delivering -> delivered | failed     (the cloud's objects)
                   |          +-> failed | rejected                         (the cloud could not)
                   +-> delivering                                           (forwarded, or built here)

The pseudonym -> original UID map of a published job lives in the ``pseudonyms`` table of its job and
nowhere else; it is deleted once the job's objects are re-identified, or the job ends.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import NodeError
from fetalnode.outcomes import Delivery, Outcome, Verdict, deliveries_from_json, deliveries_to_json
from fetalnode.vocab import AuditEvent, DeliveryStatus, JobState, RouteAction, UidConflict

S = JobState
# Allowed state changes. queued -> delivered/failed/rejected: a cloud worker's result can overtake
# the terminal's own "published" mark.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RECEIVED: frozenset({S.QUEUED, S.IGNORED}),
    S.QUEUED: frozenset({S.ANALYSING, S.PUBLISHED, S.DELIVERING, S.DELIVERED, S.FAILED, S.REJECTED}),
    S.PUBLISHED: frozenset({S.DELIVERING, S.FAILED, S.REJECTED}),
    S.ANALYSING: frozenset({S.DELIVERING, S.DELIVERED, S.FAILED, S.REJECTED}),
    S.DELIVERING: frozenset({S.DELIVERING, S.DELIVERED, S.FAILED}),
    S.DELIVERED: frozenset(),
    S.REJECTED: frozenset(),
    S.IGNORED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
}
PENDING = (S.RECEIVED, S.QUEUED, S.PUBLISHED, S.ANALYSING, S.DELIVERING)


def sources_of(target: JobState) -> frozenset[JobState]:
    """The states a job may be in to move to ``target``."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    spool_path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    station_name TEXT NOT NULL DEFAULT '',
    received_at TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    route TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL DEFAULT 'analyse',
    uid_conflict TEXT NOT NULL DEFAULT '',
    printed_json TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    result_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '[]',
    delivered_json TEXT NOT NULL DEFAULT '[]',
    updated_at TEXT NOT NULL,
    permanent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_sop ON jobs(sop_uid, sha256);
CREATE TABLE IF NOT EXISTS pseudonyms (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    pseudonym TEXT NOT NULL,
    original TEXT NOT NULL,
    PRIMARY KEY (job_id, pseudonym)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def worker_identity() -> str:
    """``host:pid`` of this process, recorded as the lease owner of a claimed job."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another host: trust its lease
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Printed:
    """Where a printed image came from: its film session, film box and image box (the print SCP's)."""

    film_session: str
    film_box: str
    image_box_position: int
    film_session_label: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Printed | None:
        return cls(**json.loads(text)) if text else None


@dataclass(frozen=True)
class PreNotification:
    """What the data terminal knows of an instance before the worker sees it, and what it decided: the
    routing rule that matched (``route``, ``default`` when none did) and its ``action``."""

    source: str
    spool_path: str
    sha256: str
    size: int
    calling_ae: str
    called_ae: str
    peer: str
    station_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    route: str = ""
    action: RouteAction = RouteAction.ANALYSE
    printed: Printed | None = None
    # Set by the job store: why it replaces other objects received under its SOP Instance UID.
    uid_conflict: str = ""


@dataclass(frozen=True)
class Receipt:
    """What :meth:`JobStore.receive` recorded: the new job's id, or the job of the identical object already
    received (a duplicate: nothing new recorded), or how many other objects hold its SOP Instance UID when
    the policy refuses them (nothing recorded)."""

    job_id: int | None
    duplicate_of: Job | None
    conflicts: int = 0


@dataclass(frozen=True)
class Job:
    id: int
    state: JobState
    source: str
    spool_path: str
    sha256: str
    calling_ae: str
    peer: str
    station_name: str
    received_at: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    attempts: int
    stage: str
    error: str
    route: str
    action: RouteAction
    printed: Printed | None
    uid_conflict: str
    result: dict[str, Any]
    outputs: list[str]
    deliveries: dict[str, Delivery]
    updated_at: str = ""
    # A failure that replaying the job as it is can only repeat: `fetalnode resend` skips it.
    permanent: bool = False

    @property
    def receipts(self) -> dict[str, dict[str, str]]:
        """Per destination: object name -> the destination's reference (an Orthanc ID, a path...)."""
        return {name: dict(d.receipts) for name, d in self.deliveries.items()}

    @property
    def replaces(self) -> bool:
        """The object replaces another received under its SOP Instance UID (``scp.uid_conflict = "replace"``)."""
        return bool(self.uid_conflict)

    @property
    def latency_s(self) -> float | None:
        """Receipt to delivery in seconds (for a delivered job: its last update is the delivery)."""
        if self.state != JobState.DELIVERED or not self.updated_at:
            return None
        return (datetime.fromisoformat(self.updated_at) - datetime.fromisoformat(self.received_at)).total_seconds()

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            state=JobState(row["state"]),
            source=row["source"],
            spool_path=row["spool_path"],
            sha256=row["sha256"],
            calling_ae=row["calling_ae"],
            peer=row["peer"],
            station_name=row["station_name"],
            received_at=row["received_at"],
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            sop_uid=row["sop_uid"],
            sop_class_uid=row["sop_class_uid"],
            attempts=row["attempts"],
            stage=row["stage"],
            error=row["error"],
            route=row["route"],
            action=RouteAction(row["action"]),
            printed=Printed.from_json(row["printed_json"]),
            uid_conflict=row["uid_conflict"],
            result=json.loads(row["result_json"]),
            outputs=json.loads(row["outputs_json"]),
            deliveries=_deliveries(json.loads(row["delivered_json"])),
            updated_at=row["updated_at"],
            permanent=bool(row["permanent"]),
        )


def _migrate_extra(db: sqlite3.Connection) -> None:
    """Typed columns for what an older store kept in its ``extra_json`` (the route, its action, a print's
    film and image box, the UID conflict flag), filled from it; ``extra_json`` stays, unread."""
    for column, default in (("route", "''"), ("action", "'analyse'"), ("uid_conflict", "''"), ("printed_json", "''")):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT NOT NULL DEFAULT {default}")
    db.execute(
        """UPDATE jobs SET
           route = COALESCE(json_extract(extra_json, '$.route'), ''),
           action = COALESCE(json_extract(extra_json, '$.action'), 'analyse'),
           uid_conflict = COALESCE(json_extract(extra_json, '$.uid_conflict'), ''),
           printed_json = CASE WHEN json_extract(extra_json, '$.film_box') IS NULL THEN '' ELSE json_object(
               'film_session', json_extract(extra_json, '$.film_session'),
               'film_box', json_extract(extra_json, '$.film_box'),
               'image_box_position', json_extract(extra_json, '$.image_box_position'),
               'film_session_label', COALESCE(json_extract(extra_json, '$.film_session_label'), '')) END"""
    )


def _deliveries(value: Any) -> dict[str, Delivery]:
    """Where the job stands per destination; a store written before destinations had names held the
    Orthanc IDs of a delivered job in a list."""
    if isinstance(value, list):
        receipts = {f"#{i}": str(v) for i, v in enumerate(value)}
        return {"orthanc": Delivery(DeliveryStatus.DELIVERED, receipts=receipts)} if value else {}
    return deliveries_from_json(value)


class TransitionRefused(NodeError):
    """A state change that :data:`TRANSITIONS` does not allow from the job's current state."""


def open_store(settings: Settings, writable: bool = True) -> JobStore:
    """The node's job store in ``node.data_dir``; ``writable`` opens it with the audit log (every state change
    is audited), else it only reads (``fetalnode status``)."""
    audit = AuditLog(settings.data_path / "audit.jsonl") if writable else None
    return JobStore(settings.data_path / "jobs.sqlite", audit)


class JobStore:
    """All state transitions of jobs, each in one short transaction with its audit event.

    ``audit`` is required for every method that changes a job's state; a store opened without it
    (``fetalnode status``, tests) only reads.
    """

    def __init__(self, path: Path, audit: AuditLog | None = None) -> None:
        self.path = path
        self._audit_log = audit
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "permanent" not in columns:  # a store written before permanent failures were told apart
                db.execute("ALTER TABLE jobs ADD COLUMN permanent INTEGER NOT NULL DEFAULT 0")
            if "route" not in columns:  # a store that kept the route, the print and the conflict in extra_json
                _migrate_extra(db)
                db.commit()
        finally:
            db.close()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, kept open: opening and closing one per transaction cost more than the
        transaction (closing the last connection of a WAL database checkpoints it). A forked child opens its own."""
        held = getattr(self._local, "db", None)
        if held is not None and held[0] == os.getpid():
            return cast(sqlite3.Connection, held[1])
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # per connection; WAL mode is persistent (set in __init__)
        self._local.db = (os.getpid(), db)
        return db

    def _discard(self, db: sqlite3.Connection) -> None:
        """After a failure inside a transaction (or of its COMMIT: a full disk, an I/O error): roll back and
        close this thread's connection, so the next call starts clean on a new one."""
        with suppress(sqlite3.Error):  # nothing to roll back when BEGIN or COMMIT itself failed
            db.execute("ROLLBACK")
        db.close()
        self._local.db = None

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """``begin`` ... COMMIT on this thread's connection; any failure discards the connection."""
        db = self._connection()
        db.execute(begin)
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            self._discard(db)
            raise

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT): durable when the block ends."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read-only snapshot (deferred transaction: takes no write lock)."""
        return self._transaction("BEGIN")

    @staticmethod
    def _same(db: sqlite3.Connection, sop_uid: str, sha256: str) -> Job | None:
        row = db.execute(
            "SELECT * FROM jobs WHERE sop_uid=? AND sha256=? ORDER BY id LIMIT 1", (sop_uid, sha256)
        ).fetchone()
        return Job.from_row(row) if row else None

    @staticmethod
    def _conflicting(db: sqlite3.Connection, sop_uid: str, sha256: str) -> int:
        return int(
            db.execute("SELECT COUNT(*) FROM jobs WHERE sop_uid=? AND sha256<>?", (sop_uid, sha256)).fetchone()[0]
        )

    def find_same(self, sop_uid: str, sha256: str) -> Job | None:
        """A job for the identical object (same SOP Instance UID and content), if any."""
        with self._read() as db:
            return self._same(db, sop_uid, sha256)

    def find_duplicate(self, sop_uid: str, sha256: str, calling_ae: str, address: str) -> Job | None:
        """The job of the identical object already received, with the ``instance-duplicate`` event (a read:
        no write lock), or ``None``."""
        with self._read() as db:
            return self._duplicate(db, sop_uid, sha256, calling_ae, address)

    def _duplicate(
        self, db: sqlite3.Connection, sop_uid: str, sha256: str, calling_ae: str, address: str
    ) -> Job | None:
        same = self._same(db, sop_uid, sha256)
        if same is not None:
            self.audit.event(
                AuditEvent.INSTANCE_DUPLICATE,
                calling_ae=calling_ae,
                address=address,
                sop_uid=sop_uid,
                job=same.id,
                state=same.state,
            )
        return same

    def conflicting(self, sop_uid: str, sha256: str) -> int:
        """How many jobs hold a *different* object under the same SOP Instance UID."""
        with self._read() as db:
            return self._conflicting(db, sop_uid, sha256)

    def receive(
        self,
        note: PreNotification,
        uid_conflict: UidConflict = UidConflict.REFUSE,
        **fields: Any,
    ) -> Receipt:
        """Record a received instance in one transaction (one commit): the pre-notification, then
        received -> queued with its ``instance-received`` event (``ignored`` with the ``ignored`` event for
        a routing rule's IGNORE). An identical object already recorded is a duplicate (nothing written
        but the ``instance-duplicate`` event). A different object under a used SOP Instance UID is not
        recorded when ``uid_conflict`` refuses it (the caller answers 0x0111 and audits); when it replaces,
        it is flagged (:attr:`Job.replaces`). ``fields``: who sent what, for
        the audit event."""
        with self._tx() as db:
            same = self._duplicate(db, note.sop_uid, note.sha256, note.calling_ae, note.peer)
            if same is not None:
                return Receipt(None, same)
            conflicts = self._conflicting(db, note.sop_uid, note.sha256)
            if conflicts and uid_conflict is UidConflict.REFUSE:
                return Receipt(None, None, conflicts)
            if conflicts:
                flag = f"replaces {conflicts} different object(s) received with this SOP Instance UID"
                note = replace(note, uid_conflict=flag)
                fields["flag"] = flag
            job_id = self._insert(db, note)
            if note.action is RouteAction.IGNORE:
                self._move(db, job_id, S.IGNORED, frozenset({S.RECEIVED}))
                self.audit.event(AuditEvent.IGNORED, job=job_id, **fields)
            else:
                self._move(db, job_id, S.QUEUED, frozenset({S.RECEIVED}))
                self.audit.event(AuditEvent.INSTANCE_RECEIVED, job=job_id, **fields)
        return Receipt(job_id, None)

    def prenotify(self, note: PreNotification) -> int:
        """Record the pre-notification alone (state ``received``); returns the job id."""
        with self._tx() as db:
            return self._insert(db, note)

    @staticmethod
    def _insert(db: sqlite3.Connection, note: PreNotification) -> int:
        cur = db.execute(
            """INSERT INTO jobs (state, source, spool_path, sha256, size, calling_ae, called_ae, peer,
               station_name, received_at, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
               route, action, uid_conflict, printed_json, updated_at)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                str(S.RECEIVED),
                note.source,
                note.spool_path,
                note.sha256,
                note.size,
                note.calling_ae,
                note.called_ae,
                note.peer,
                note.station_name,
                _now(),
                note.study_uid,
                note.series_uid,
                note.sop_uid,
                note.sop_class_uid,
                note.transfer_syntax,
                note.route,
                str(note.action),
                note.uid_conflict,
                note.printed.to_json() if note.printed else "",
                _now(),
            ),
        )
        return int(cur.lastrowid or 0)

    # -- the journal: every state change with its audit event ------------------------------------
    @property
    def audit(self) -> AuditLog:
        if self._audit_log is None:
            raise NodeError(f"job store {self.path} was opened read-only (no audit log)")
        return self._audit_log

    def _move(
        self, db: sqlite3.Connection, job_id: int, target: JobState, expect: frozenset[JobState], **cols: Any
    ) -> bool:
        """Guarded UPDATE: only from a state in ``expect`` that may move to ``target``; True if it moved."""
        allowed = sorted(sources_of(target) & expect)
        if not allowed:
            raise TransitionRefused(f"job {job_id}: no allowed change from {sorted(expect)} to {target}")
        sets = ", ".join([f"{k}=?" for k in cols] + ["state=?", "updated_at=?"])
        marks = ",".join("?" * len(allowed))
        cur = db.execute(
            f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({marks})",
            [*cols.values(), str(target), _now(), job_id, *map(str, allowed)],
        )
        return cur.rowcount == 1

    def apply(
        self,
        job: Job,
        outcome: Outcome,
        expect: frozenset[JobState],
        *,
        outputs: list[str] | None = None,
        **fields: Any,
    ) -> JobState | None:
        """Record a runner outcome: the job's new state and its audit events, in one transaction.

        ``expect``: the states the caller holds the job in (a claimed job: analysing or delivering; a
        broker result: queued or published). ``outputs``: paths of the outputs kept for a retry.
        ``fields``: extra audit fields (e.g. the scale-out worker). Returns the new state, or ``None``
        when the job had already moved on (a redelivered broker result): then nothing is written.
        """
        cols: dict[str, Any] = {"lease_until": 0, "lease_owner": None, "stage": str(outcome.stage)}
        if outcome.summary:
            cols["result_json"] = json.dumps(outcome.summary)
        if outputs is not None:
            cols["outputs_json"] = json.dumps(outputs)
        if outcome.deliveries:
            cols["delivered_json"] = json.dumps(deliveries_to_json(outcome.deliveries))
        base = {"job": job.id, "sop_uid": job.sop_uid, **fields}
        events: list[tuple[AuditEvent, dict[str, Any]]] = []
        if outcome.summary:
            s = outcome.summary
            events.append(
                (
                    AuditEvent.ANALYSED,
                    {
                        **base,
                        "application": s.get("application"),
                        "analysed": s.get("analysed"),
                        "finding": s.get("finding") or None,
                        "models": s.get("models"),
                        "duration_ms": outcome.analysed_ms,
                    },
                )
            )
        for name, d in outcome.deliveries.items():
            before = job.deliveries.get(name)
            if d.status is DeliveryStatus.DEAD and (before is None or before.status is not DeliveryStatus.DEAD):
                events.append(
                    (AuditEvent.DEAD_LETTER, {**base, "destination": name, "attempts": d.attempts, "reason": d.error})
                )
        if outcome.verdict is Verdict.DELIVERED:
            target, cols["error"] = S.DELIVERED, ""
            events.append((AuditEvent.DELIVERED, {**base, "receipts": outcome.receipts}))
        elif outcome.verdict is Verdict.RETRY:
            target, cols["error"] = S.DELIVERING, outcome.reason
            cols["next_attempt_at"] = time.time() + outcome.retry_in
            waiting = {
                name: {"attempts": d.attempts, "reason": d.error}
                for name, d in outcome.deliveries.items()
                if d.status is DeliveryStatus.PENDING
            }
            events.append(
                (
                    AuditEvent.DELIVERY_RETRY,
                    {**base, "attempt": job.attempts + 1, "delay_s": round(outcome.retry_in, 3), "pending": waiting},
                )
            )
        elif outcome.verdict is Verdict.REJECTED:
            target, cols["error"] = S.REJECTED, outcome.reason
            events.append((AuditEvent.REJECTED, {**base, "stage": str(outcome.stage), "reason": outcome.reason}))
        else:
            target, cols["error"], cols["permanent"] = S.FAILED, outcome.reason, int(outcome.permanent)
            events.append(
                (
                    AuditEvent.FAILED,
                    {**base, "stage": str(outcome.stage), "reason": outcome.reason, "permanent": outcome.permanent},
                )
            )
        with self._tx() as db:
            if not self._move(db, job.id, target, expect, **cols):
                return None
            if outcome.verdict is Verdict.RETRY:
                db.execute("UPDATE jobs SET attempts=attempts+1 WHERE id=?", (job.id,))
            if target.final:
                db.execute("DELETE FROM pseudonyms WHERE job_id=?", (job.id,))
            for kind, event_fields in events:
                self.audit.event(kind, **event_fields)
        return target

    def resend(self, job_ids: list[int] | None = None, destination: str | None = None, permanent: bool = False) -> int:
        """Queue jobs again, with one ``resend`` event; returns how many.

        Without ``destination``: every failed job (or the given ids) -> queued, its dead letters pending
        again. With ``destination``: the jobs whose delivery to it is a dead letter; that delivery is
        pending again (a failed job -> queued). A job is analysed again with the same UIDs; what a
        destination already holds is not sent again (its receipts are kept). A permanent failure (one a
        replay can only repeat) is skipped unless ``permanent`` (after a software update).
        """
        with self._tx() as db:
            # a delivering job under a worker's lease is skipped: that worker's outcome would overwrite the reset
            query = "SELECT id, state, delivered_json FROM jobs WHERE (state=? OR (state=? AND lease_until<?))"
            args: list[Any] = [str(S.FAILED), str(S.DELIVERING), time.time()]
            if not permanent:
                query += " AND permanent=0"
            if job_ids:
                query += f" AND id IN ({','.join('?' * len(job_ids))})"
                args += job_ids
            ids = []
            for row in db.execute(query, args).fetchall():
                deliveries = _deliveries(json.loads(row["delivered_json"]))
                dead = [n for n, d in deliveries.items() if d.status is DeliveryStatus.DEAD]
                if destination is not None:
                    if destination not in dead:
                        continue
                    dead = [destination]
                elif row["state"] != S.FAILED:
                    continue
                for name in dead:
                    deliveries[name] = Delivery(receipts=deliveries[name].receipts)
                cols = {"delivered_json": json.dumps(deliveries_to_json(deliveries)), "error": ""}
                if row["state"] == S.FAILED:
                    self._move(
                        db,
                        row["id"],
                        S.QUEUED,
                        frozenset({S.FAILED}),
                        attempts=0,
                        next_attempt_at=0,
                        permanent=0,
                        **cols,
                    )
                else:
                    db.execute("UPDATE jobs SET delivered_json=? WHERE id=?", (cols["delivered_json"], row["id"]))
                ids.append(int(row["id"]))
            self.audit.event(
                AuditEvent.RESEND,
                jobs=ids,
                requested=job_ids or "all",
                destination=destination,
                permanent=permanent,
                count=len(ids),
            )
        return len(ids)

    def delivery_counts(self, destinations: list[str]) -> dict[str, dict[str, int]]:
        """Per destination: how many jobs are delivered, pending (or not yet analysed) and dead letters."""
        counts = {name: {str(s): 0 for s in DeliveryStatus} for name in destinations}
        with self._read() as db:
            rows = db.execute(
                "SELECT state, delivered_json FROM jobs WHERE state NOT IN (?,?)", (S.REJECTED, S.IGNORED)
            )
            for row in rows.fetchall():
                deliveries = _deliveries(json.loads(row["delivered_json"]))
                for name in destinations:
                    d = deliveries.get(name)
                    if d is not None:
                        counts[name][str(d.status)] += 1
                    elif not JobState(row["state"]).final:
                        counts[name][str(DeliveryStatus.PENDING)] += 1
        return counts

    def record_pseudonyms(self, job_id: int, uid_map: dict[str, str]) -> None:
        """Keep a job's pseudonym -> original UID map (before its image is published)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO pseudonyms (job_id, pseudonym, original) VALUES (?,?,?)",
                [(job_id, pseudonym, original) for pseudonym, original in uid_map.items()],
            )

    def pseudonyms(self, job_id: int) -> dict[str, str]:
        """A job's pseudonym -> original UID map (empty once its objects are re-identified or it ended)."""
        with self._read() as db:
            rows = db.execute("SELECT pseudonym, original FROM pseudonyms WHERE job_id=?", (job_id,)).fetchall()
        return {row["pseudonym"]: row["original"] for row in rows}

    def mark_published(self, job_id: int, **fields: Any) -> None:
        """Handed to the broker (role terminal), with the ``published`` event; a worker's result goes on."""
        with self._tx() as db:
            if self._move(db, job_id, S.PUBLISHED, frozenset({S.QUEUED})):
                self.audit.event(AuditEvent.PUBLISHED, job=job_id, **fields)

    def hand_over(
        self,
        job: Job,
        expect: frozenset[JobState],
        outputs: list[str],
        summary: dict[str, Any] | None = None,
        **fields: Any,
    ) -> JobState | None:
        """To ``delivering`` for the terminal's own delivery (role terminal): the objects a cloud worker
        returned, re-identified, or ones built here, kept at ``outputs`` (none: a forwarded source).
        With ``summary``, the ``analysed`` event; the job's pseudonyms are no longer needed and go.
        Returns the new state, or ``None`` when the job had moved on (a result delivered twice)."""
        cols: dict[str, Any] = {"outputs_json": json.dumps(outputs), "next_attempt_at": 0}
        if summary is not None:
            cols["result_json"] = json.dumps(summary)
        with self._tx() as db:
            if not self._move(db, job.id, S.DELIVERING, expect, **cols):
                return None
            db.execute("DELETE FROM pseudonyms WHERE job_id=?", (job.id,))
            if summary is not None:
                self.audit.event(
                    AuditEvent.ANALYSED,
                    job=job.id,
                    sop_uid=job.sop_uid,
                    application=summary.get("application"),
                    analysed=summary.get("analysed"),
                    finding=summary.get("finding") or None,
                    models=summary.get("models"),
                    **fields,
                )
        return S.DELIVERING

    def recover(self) -> int:
        """After a crash: queue ``received`` jobs whose spool file exists, release dead workers' leases."""
        n = 0
        with self._tx() as db:
            for row in db.execute("SELECT id, spool_path FROM jobs WHERE state=?", (str(S.RECEIVED),)).fetchall():
                if Path(row["spool_path"]).is_file():
                    self._move(db, row["id"], S.QUEUED, frozenset({S.RECEIVED}))
                    n += 1
            for row in db.execute(
                "SELECT id, lease_owner FROM jobs WHERE state IN (?,?) AND lease_until>?",
                (str(S.ANALYSING), str(S.DELIVERING), time.time()),
            ).fetchall():
                if not _owner_alive(row["lease_owner"]):
                    db.execute("UPDATE jobs SET lease_until=0, lease_owner=NULL WHERE id=?", (row["id"],))
                    n += 1
        return n

    def claim(
        self, owner: str, lease_seconds: float, states: tuple[JobState, ...] = (S.QUEUED, S.ANALYSING, S.DELIVERING)
    ) -> Job | None:
        """Take the oldest runnable job in ``states`` under a lease (expired leases are taken over). A
        terminal's own worker only delivers: its queued jobs are the cloud's."""
        now = time.time()
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            row = db.execute(
                f"""SELECT * FROM jobs WHERE lease_until<? AND next_attempt_at<=?
                   AND state IN ({marks}) ORDER BY id LIMIT 1""",
                (now, now, *map(str, states)),
            ).fetchone()
            if row is None:
                return None
            state = S.ANALYSING if row["state"] == S.QUEUED else JobState(row["state"])
            db.execute(
                "UPDATE jobs SET state=?, lease_owner=?, lease_until=?, updated_at=? WHERE id=?",
                (str(state), owner, now + lease_seconds, _now(), row["id"]),
            )
            row = db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
        return Job.from_row(row)

    # -- reads ---------------------------------------------------------------------------------
    def jobs_in_state(self, state: JobState, limit: int) -> list[Job]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id LIMIT ?", (str(state), limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def replaced_outputs(self, job: Job) -> dict[str, str]:
        """Output name -> SOP Instance UID of the outputs written for the object ``job`` replaces (the latest
        earlier job with its SOP Instance UID and other content that wrote outputs), so that the replacing
        object's outputs replace those in the archives whatever the analysis answers now (empty: none)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE sop_uid=? AND sha256<>? AND id<? ORDER BY id DESC",
                (job.sop_uid, job.sha256, job.id),
            ).fetchall()
        for row in rows:
            outputs = Job.from_row(row).result.get("outputs") or {}
            if outputs:
                return {str(k): str(v) for k, v in outputs.items()}
        return {}

    def get(self, job_id: int) -> Job | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def jobs(self, state: JobState | None = None) -> list[Job]:
        with self._read() as db:
            if state:
                rows = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id", (str(state),)).fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        out = {str(s): 0 for s in JobState}
        out.update({r["state"]: r["n"] for r in rows})
        return out

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest job not yet delivered/failed/rejected was received."""
        marks = ",".join("?" * len(PENDING))
        with self._read() as db:
            row = db.execute(
                f"SELECT MIN(received_at) FROM jobs WHERE state IN ({marks})", [str(s) for s in PENDING]
            ).fetchone()
        if not row or not row[0]:
            return None
        return (datetime.now(UTC) - datetime.fromisoformat(row[0])).total_seconds()
