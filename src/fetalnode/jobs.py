"""The durable record of every received instance: pre-notification, state, attempts, outputs.

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash. States::

    received -> queued -> analysing -> delivering -> delivered
                              |             |
                              +-> rejected  +-> failed   (resend: failed -> queued)

With a broker (role terminal), a worker elsewhere does analysing and delivering::

    received -> queued -> published -> delivered | failed | rejected
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATES = ("received", "queued", "published", "analysing", "delivering", "delivered", "failed", "rejected")

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
    extra_json TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    result_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '[]',
    delivered_json TEXT NOT NULL DEFAULT '[]',
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_sop ON jobs(sop_uid, sha256);
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
class PreNotification:
    """What the data terminal knows of an instance before the worker sees it."""

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
    extra: dict[str, Any]


@dataclass(frozen=True)
class Job:
    id: int
    state: str
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
    extra: dict[str, Any]
    result: dict[str, Any]
    outputs: list[str]
    delivered: list[str]
    updated_at: str = ""

    @property
    def latency_s(self) -> float | None:
        """Receipt to delivery in seconds (for a delivered job: its last update is the delivery)."""
        if self.state != "delivered" or not self.updated_at:
            return None
        return (datetime.fromisoformat(self.updated_at) - datetime.fromisoformat(self.received_at)).total_seconds()

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            state=row["state"],
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
            extra=json.loads(row["extra_json"]),
            result=json.loads(row["result_json"]),
            outputs=json.loads(row["outputs_json"]),
            delivered=json.loads(row["delivered_json"]),
            updated_at=row["updated_at"],
        )


class JobStore:
    """All state transitions of jobs, each in one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")  # per connection; WAL mode is persistent (set in __init__)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def find_same(self, sop_uid: str, sha256: str) -> Job | None:
        """A job for the identical object (same SOP Instance UID and content), if any."""
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE sop_uid=? AND sha256=? ORDER BY id LIMIT 1", (sop_uid, sha256)
            ).fetchone()
        return Job.from_row(row) if row else None

    def conflicting(self, sop_uid: str, sha256: str) -> int:
        """How many jobs hold a *different* object under the same SOP Instance UID."""
        with self._tx() as db:
            return int(
                db.execute("SELECT COUNT(*) FROM jobs WHERE sop_uid=? AND sha256<>?", (sop_uid, sha256)).fetchone()[0]
            )

    def prenotify(self, note: PreNotification) -> int:
        """Record the pre-notification (state ``received``); returns the job id."""
        with self._tx() as db:
            cur = db.execute(
                """INSERT INTO jobs (state, source, spool_path, sha256, size, calling_ae, called_ae, peer,
                   station_name, received_at, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
                   extra_json, updated_at) VALUES ('received',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
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
                    json.dumps(note.extra),
                    _now(),
                ),
            )
            return int(cur.lastrowid or 0)

    def mark_queued(self, job_id: int) -> None:
        self._set(job_id, "queued", "received")

    def _set(self, job_id: int, state: str, expect: str | None = None, **cols: Any) -> None:
        sets = ", ".join([f"{k}=?" for k in cols] + ["state=?", "updated_at=?"])
        args = [*cols.values(), state, _now(), job_id]
        sql = f"UPDATE jobs SET {sets} WHERE id=?"
        if expect is not None:
            sql += " AND state=?"
            args.append(expect)
        with self._tx() as db:
            db.execute(sql, args)

    def recover(self) -> int:
        """After a crash: queue ``received`` jobs whose spool file exists, release dead workers' leases."""
        n = 0
        with self._tx() as db:
            for row in db.execute("SELECT id, spool_path FROM jobs WHERE state='received'").fetchall():
                if Path(row["spool_path"]).is_file():
                    db.execute("UPDATE jobs SET state='queued', updated_at=? WHERE id=?", (_now(), row["id"]))
                    n += 1
            for row in db.execute(
                "SELECT id, lease_owner FROM jobs WHERE state IN ('analysing','delivering') AND lease_until>?",
                (time.time(),),
            ).fetchall():
                if not _owner_alive(row["lease_owner"]):
                    db.execute("UPDATE jobs SET lease_until=0, lease_owner=NULL WHERE id=?", (row["id"],))
                    n += 1
        return n

    def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job under a lease (expired leases are taken over)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                """SELECT * FROM jobs WHERE lease_until<? AND next_attempt_at<=?
                   AND state IN ('queued','analysing','delivering') ORDER BY id LIMIT 1""",
                (now, now),
            ).fetchone()
            if row is None:
                return None
            state = "analysing" if row["state"] == "queued" else row["state"]
            db.execute(
                "UPDATE jobs SET state=?, lease_owner=?, lease_until=?, updated_at=? WHERE id=?",
                (state, owner, now + lease_seconds, _now(), row["id"]),
            )
            row = db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
        return Job.from_row(row)

    def set_delivering(self, job_id: int, outputs: list[str], result: dict[str, Any]) -> None:
        self._set(
            job_id,
            "delivering",
            None,
            outputs_json=json.dumps(outputs),
            result_json=json.dumps(result),
            stage="deliver",
            error="",
        )

    def retry_later(self, job_id: int, stage: str, error: str, delay: float) -> None:
        with self._tx() as db:
            db.execute(
                """UPDATE jobs SET attempts=attempts+1, next_attempt_at=?, lease_until=0, lease_owner=NULL,
                   stage=?, error=?, updated_at=? WHERE id=?""",
                (time.time() + delay, stage, error, _now(), job_id),
            )

    def mark_delivered(self, job_id: int, orthanc_ids: list[str]) -> None:
        self._set(
            job_id, "delivered", None, delivered_json=json.dumps(orthanc_ids), lease_until=0, lease_owner=None, error=""
        )

    def mark_failed(self, job_id: int, stage: str, error: str) -> None:
        self._set(job_id, "failed", None, stage=stage, error=error, lease_until=0, lease_owner=None)

    def mark_rejected(self, job_id: int, reason: str) -> None:
        self._set(job_id, "rejected", None, stage="intake", error=reason, lease_until=0, lease_owner=None)

    def resend(self, job_ids: list[int] | None = None) -> int:
        """Queue failed jobs again (all of them, or the given ids); returns how many."""
        with self._tx() as db:
            if job_ids:
                marks = ",".join("?" * len(job_ids))
                cur = db.execute(
                    f"""UPDATE jobs SET state='queued', attempts=0, next_attempt_at=0, error='', updated_at=?
                        WHERE state='failed' AND id IN ({marks})""",
                    (_now(), *job_ids),
                )
            else:
                cur = db.execute(
                    """UPDATE jobs SET state='queued', attempts=0, next_attempt_at=0, error='', updated_at=?
                       WHERE state='failed'""",
                    (_now(),),
                )
            return int(cur.rowcount)

    def jobs_in_state(self, state: str, limit: int) -> list[Job]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id LIMIT ?", (state, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def mark_published(self, job_id: int) -> None:
        """Handed to the broker (role terminal); a worker's result will finish it."""
        self._set(job_id, "published", "queued")

    def mark_remote_delivered(self, job_id: int, result: dict[str, Any], orthanc_ids: list[str]) -> None:
        """A worker elsewhere analysed and delivered a published job (role terminal)."""
        self._set(
            job_id,
            "delivered",
            None,
            result_json=json.dumps(result),
            delivered_json=json.dumps(orthanc_ids),
            stage="deliver",
            error="",
        )

    def get(self, job_id: int) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def jobs(self, state: str | None = None) -> list[Job]:
        with self._tx() as db:
            if state:
                rows = db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id", (state,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r["state"]: r["n"] for r in rows})
        return out

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest job not yet delivered/failed/rejected was received."""
        with self._tx() as db:
            row = db.execute(
                "SELECT MIN(received_at) FROM jobs WHERE state IN ('received','queued','published','analysing','delivering')"
            ).fetchone()
        if not row or not row[0]:
            return None
        return (datetime.now(UTC) - datetime.fromisoformat(row[0])).total_seconds()
