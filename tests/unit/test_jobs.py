import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetalnode.jobs import JobStore, PreNotification

pytestmark = pytest.mark.unit


def note(tmp: Path, uid: str, sha: str = "ab" * 32) -> PreNotification:
    spool = tmp / f"{uid}-{sha[:4]}.dcm"
    spool.write_bytes(b"x")
    return PreNotification(
        source="c-store",
        spool_path=str(spool),
        sha256=sha,
        size=1,
        calling_ae="US1",
        called_ae="FETALNODE",
        peer="127.0.0.1:1",
        station_name="US1",
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        transfer_syntax="1.2.840.10008.1.2.1",
        extra={},
    )


def test_lifecycle_and_counts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    a = store.prenotify(note(tmp_path, "1.1"))
    assert store.counts()["received"] == 1
    assert store.claim("w:1", 60) is None, "a received (not yet queued) job must not run"
    store.mark_queued(a)
    job = store.claim("w:1", 60)
    assert job is not None and job.id == a and job.state == "analysing"
    assert store.claim("w:2", 60) is None, "a leased job is not handed out twice"
    store.set_delivering(a, ["/x/sr.dcm"], {"finding": "normal"})
    store.retry_later(a, "deliver", "connection refused", 0)
    again = store.claim("w:2", 60)
    assert again is not None and again.state == "delivering" and again.attempts == 1
    store.mark_failed(a, "deliver", "HTTP 401")
    assert store.counts()["failed"] == 1
    assert store.resend() == 1
    assert store.get(a).state == "queued"  # type: ignore[union-attr]


def test_duplicate_and_conflict_lookup(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    store.prenotify(note(tmp_path, "1.5", "aa" * 32))
    assert store.find_same("1.5", "aa" * 32) is not None
    assert store.find_same("1.5", "bb" * 32) is None
    assert store.conflicting("1.5", "bb" * 32) == 1


def test_recover_releases_dead_worker_lease(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    job_id = store.prenotify(note(tmp_path, "1.7"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{os.uname().nodename}:{dead.pid}"
    store.mark_queued(job_id)
    assert store.claim(owner, 3600) is not None
    assert store.claim("other:1", 60) is None
    assert store.recover() == 1
    taken = store.claim("other:1", 60)
    assert taken is not None and taken.id == job_id and taken.state == "analysing"


def test_recover_queues_received_with_spool_file(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    store.prenotify(note(tmp_path, "1.9"))
    assert store.recover() == 1
    assert store.counts()["queued"] == 1
