import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from fetalnode import jobs as jobs_module
from fetalnode.audit import AuditLog
from fetalnode.errors import NodeError
from fetalnode.jobs import TRANSITIONS, Job, JobStore, PreNotification, Printed, Receipt, TransitionRefused
from fetalnode.outcomes import Delivery, Outcome, Verdict
from fetalnode.runner import crashed
from fetalnode.vocab import AuditEvent, DeliveryStatus, JobState, RouteAction, Stage, UidConflict

pytestmark = pytest.mark.unit


def note(tmp: Path, uid: str, sha: str = "ab" * 32, action: RouteAction = RouteAction.ANALYSE) -> PreNotification:
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
        route="default",
        action=action,
    )


def store_in(tmp: Path) -> JobStore:
    return JobStore(tmp / "j.sqlite", AuditLog(tmp / "audit.jsonl"))


def events(tmp: Path) -> list[dict]:
    path = tmp / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


CLAIMED = frozenset({JobState.ANALYSING, JobState.DELIVERING})


def delivered(**receipts: str) -> Delivery:
    return Delivery(DeliveryStatus.DELIVERED, receipts=receipts)


def claimed(store: JobStore, tmp: Path, uid: str) -> Job:
    """A received, queued and claimed job."""
    job_id = store.receive(note(tmp, uid)).job_id
    job = store.claim("w:1", 60)
    assert job is not None and job.id == job_id
    return job


def test_lifecycle_each_change_with_its_audit_event(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    b = store.prenotify(note(tmp_path, "1.0"))  # a pre-notification alone, as a crash mid-receipt leaves it
    assert store.counts()["received"] == 1
    assert store.claim("w:1", 60) is None, "a received (not yet queued) job must not run"
    a = store.receive(note(tmp_path, "1.1"), calling_ae="US1").job_id
    assert a is not None and a != b
    assert [e["event"] for e in events(tmp_path)] == ["instance-received"]
    job = store.claim("w:1", 60)
    assert job is not None and job.id == a and job.state == JobState.ANALYSING
    assert store.claim("w:2", 60) is None, "a leased job is not handed out twice"
    retry = Outcome(Verdict.RETRY, Stage.DELIVER, "connection refused", {"finding": "normal"}, retry_in=0)
    assert store.apply(job, retry, CLAIMED, outputs=["/x/sr.dcm"]) is JobState.DELIVERING
    again = store.claim("w:2", 60)
    assert again is not None and again.state == JobState.DELIVERING and again.attempts == 1
    assert again.outputs == ["/x/sr.dcm"] and again.result == {"finding": "normal"}
    assert store.apply(again, Outcome(Verdict.FAILED, Stage.DELIVER, "HTTP 401"), CLAIMED) is JobState.FAILED
    assert store.counts()["failed"] == 1
    assert store.resend() == 1
    assert store.get(a).state == JobState.QUEUED  # type: ignore[union-attr]
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds == ["instance-received", "analysed", "delivery-retry", "failed", "resend"]
    assert events(tmp_path)[3]["stage"] == "deliver" and events(tmp_path)[3]["reason"] == "HTTP 401"


def test_guarded_transitions_write_nothing_when_refused(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    job = claimed(store, tmp_path, "1.2")
    a = job.id
    done = Outcome(Verdict.DELIVERED, Stage.DELIVER, deliveries={"orthanc": delivered(sr="abc")})
    assert store.apply(job, done, CLAIMED) is JobState.DELIVERED
    assert store.get(a).receipts == {"orthanc": {"sr": "abc"}}  # type: ignore[union-attr]
    before = len(events(tmp_path))
    # a redelivered broker result for a job already delivered: no change, no event
    assert store.apply(job, Outcome(Verdict.FAILED, Stage.DELIVER, "late"), frozenset({JobState.PUBLISHED})) is None
    assert len(events(tmp_path)) == before and store.get(a).state == JobState.DELIVERED  # type: ignore[union-attr]
    with pytest.raises(TransitionRefused):
        store.apply(job, done, frozenset({JobState.DELIVERED, JobState.REJECTED}))
    assert TRANSITIONS[JobState.DELIVERED] == frozenset() and TRANSITIONS[JobState.REJECTED] == frozenset()


def test_crash_path_is_audited_and_a_read_only_store_cannot_write(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    job = claimed(store, tmp_path, "1.3")
    a = job.id
    assert store.apply(job, crashed(MemoryError()), CLAIMED) is JobState.FAILED
    assert events(tmp_path)[-1] | {"ts": ""} == {
        "ts": "",
        "event": AuditEvent.FAILED,
        "job": a,
        "sop_uid": "1.3",
        "stage": "worker",
        "reason": "MemoryError: ",
        "permanent": False,
    }
    with pytest.raises(NodeError, match="read-only"):
        JobStore(tmp_path / "j.sqlite").resend()


def test_duplicate_and_conflict_lookup(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    first = store.receive(note(tmp_path, "1.5", "aa" * 32))
    assert first.job_id is not None and first.duplicate_of is None
    assert store.find_same("1.5", "aa" * 32) is not None
    assert store.find_same("1.5", "bb" * 32) is None
    assert store.conflicting("1.5", "bb" * 32) == 1
    again = store.receive(note(tmp_path, "1.5", "aa" * 32))
    assert again.job_id is None and again.duplicate_of is not None and again.duplicate_of.id == first.job_id
    refused = store.receive(note(tmp_path, "1.5", "bb" * 32))
    assert refused == Receipt(None, None, conflicts=1), "a conflicting object is not recorded by default"
    other = store.receive(note(tmp_path, "1.5", "bb" * 32), UidConflict.REPLACE)
    assert other.job_id is not None
    flagged = store.get(other.job_id)
    assert flagged is not None and flagged.replaces and not store.get(first.job_id).replaces
    ignored = store.receive(note(tmp_path, "1.6", action=RouteAction.IGNORE), route="drop")
    assert ignored.job_id is not None and store.counts()["ignored"] == 1
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds == ["instance-received", "instance-duplicate", "instance-received", "ignored"]


def test_recover_releases_dead_worker_lease(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    job_id = store.receive(note(tmp_path, "1.7")).job_id
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has it
    owner = f"{os.uname().nodename}:{dead}"
    assert store.claim(owner, 3600) is not None
    assert store.claim("other:1", 60) is None
    assert store.recover() == 1
    taken = store.claim("other:1", 60)
    assert taken is not None and taken.id == job_id and taken.state == JobState.ANALYSING


def test_recover_queues_received_with_spool_file(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    store.prenotify(note(tmp_path, "1.9"))
    assert store.recover() == 1
    assert store.counts()["queued"] == 1


def test_terminal_applies_cloud_results_and_drops_what_can_never_apply(tmp_path: Path) -> None:
    """A site terminal's link (no broker: the results as the broker hands them over): a result for a job it
    never published, or one naming another SOP Instance UID, or unreadable, is dropped and audited; the
    worker's rejection is applied; a second result for a job that moved on changes nothing."""
    import threading

    from fetalnode.broker import Delivery as Message
    from fetalnode.broker import Drop
    from fetalnode.config import Settings
    from fetalnode.distributed import CloudTerminal
    from fetalnode.runner import Runtime

    def result(body: dict) -> Message:
        return Message("site-a", json.dumps(body).encode(), "application/json", {}, None, "fetalnode-worker", False)

    store = store_in(tmp_path)
    none = Runtime(application=None, writers=[], destinations=[], output=Settings().output)  # type: ignore[arg-type]
    terminal = CloudTerminal(
        Settings(), store, store.audit, None, none, tmp_path / "outbox", wake=threading.Event().set
    )
    a = store.receive(note(tmp_path, "2.1")).job_id
    assert a is not None
    store.record_pseudonyms(a, {"2.25.9": "2.1"})
    store.mark_published(a, bytes=1, pixels="test")
    rejected = Outcome(Verdict.REJECTED, Stage.INTAKE, "pixel data cannot be decoded").to_message()
    for body in (
        {"job": "x", "outcome": {}},  # unreadable
        {"job": a, "sop_uid": "2.1", "outcome": {"verdict": "maybe", "stage": "deliver"}},  # unknown verdict
        {"job": 99, "sop_uid": "9.9", "outcome": rejected},  # never published
        {"job": a, "sop_uid": "2.25.8", "outcome": rejected},  # another image's result
    ):
        with pytest.raises(Drop):
            terminal.apply_result(result(body))
    assert store.get(a).state == JobState.PUBLISHED  # type: ignore[union-attr]
    assert [e["event"] for e in events(tmp_path)].count("result-unknown-job") == 4
    terminal.apply_result(result({"job": a, "sop_uid": "2.1", "worker": "w:7", "outcome": rejected}))
    job = store.get(a)
    assert job is not None and job.state == JobState.REJECTED and job.error == "pixel data cannot be decoded"
    assert events(tmp_path)[-1]["event"] == "rejected" and events(tmp_path)[-1]["worker"] == "w:7"
    assert store.pseudonyms(a) == {}, "the pseudonym map goes with the job"
    terminal.apply_result(result({"job": a, "sop_uid": "2.1", "outcome": rejected}))  # again: nothing written
    assert [e["event"] for e in events(tmp_path)].count("rejected") == 1


def test_dead_letters_are_audited_once_counted_per_destination_and_resent_per_destination(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    job = claimed(store, tmp_path, "3.1")
    dead = Delivery(DeliveryStatus.DEAD, 1, 0.0, {}, "C-STORE 0xA900 dataset does not match")
    failed = Outcome(
        Verdict.FAILED, Stage.DELIVER, "pacs: ...", deliveries={"pacs": dead, "orthanc": delivered(sr="x")}
    )
    assert store.apply(job, failed, CLAIMED) is JobState.FAILED
    assert [e for e in events(tmp_path) if e["event"] == "dead-letter"] == [
        events(tmp_path)[-2] | {"destination": "pacs", "attempts": 1, "reason": dead.error}
    ]
    assert store.delivery_counts(["pacs", "orthanc", "vna"]) == {
        "pacs": {"pending": 0, "delivered": 0, "dead": 1},
        "orthanc": {"pending": 0, "delivered": 1, "dead": 0},
        "vna": {"pending": 0, "delivered": 0, "dead": 0},
    }
    assert store.resend(destination="orthanc") == 0, "nothing of orthanc's is dead"
    assert store.resend(destination="pacs") == 1
    again = store.get(job.id)
    assert again is not None and again.state == JobState.QUEUED
    assert again.deliveries["pacs"].status is DeliveryStatus.PENDING and again.deliveries["pacs"].attempts == 0
    assert again.receipts["orthanc"] == {"sr": "x"}, "what orthanc holds is kept: it is not sent again"
    assert events(tmp_path)[-1]["event"] == "resend" and events(tmp_path)[-1]["destination"] == "pacs"


def test_a_failed_commit_leaves_the_store_usable(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred constraint; in life a full disk) must not leave this thread's
    kept connection inside the transaction: the next state change would fail too."""
    store = store_in(tmp_path)
    db = store._connection()
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), store._tx() as tx:
        tx.execute("INSERT INTO child VALUES (42)")  # checked only at COMMIT
    first = store.receive(note(tmp_path, "4.1"))
    assert first.job_id is not None and store.counts()["queued"] == 1


def test_threads_record_concurrently_on_their_own_connections(tmp_path: Path) -> None:
    store = store_in(tmp_path)

    def send(k: int) -> None:
        for i in range(10):
            assert store.receive(note(tmp_path, f"5.{k}.{i}")).job_id is not None

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts()["queued"] == 40
    assert [e["event"] for e in events(tmp_path)].count("instance-received") == 40


def test_store_with_extra_json_is_migrated_to_typed_columns(tmp_path: Path) -> None:
    """A job store that kept the route, its action, a print's boxes and the UID conflict flag in
    ``extra_json`` opens with those in their typed fields."""
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    old_schema = jobs_module._SCHEMA
    for column in (
        "route TEXT NOT NULL DEFAULT '',",
        "action TEXT NOT NULL DEFAULT 'analyse',",
        "uid_conflict TEXT NOT NULL DEFAULT '',",
        "printed_json TEXT NOT NULL DEFAULT '',",
    ):
        old_schema = old_schema.replace(column, "", 1)
    old_schema = old_schema.replace(
        "transfer_syntax TEXT NOT NULL,", "transfer_syntax TEXT NOT NULL, extra_json TEXT NOT NULL DEFAULT '{}',"
    )
    db.executescript(old_schema)
    extras = [
        {"route": "drop", "action": "ignore"},
        {"film_session": "1.2.1", "film_box": "1.2.2", "image_box_position": 3, "film_session_label": "room 3"},
        {"route": "default", "action": "analyse", "uid_conflict": "replaces 1 different object(s)"},
    ]
    for i, extra in enumerate(extras):
        db.execute(
            """INSERT INTO jobs (state, source, spool_path, sha256, size, calling_ae, called_ae, peer, received_at,
               study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax, extra_json, updated_at)
               VALUES ('queued','c-store',?,'ab',1,'US1','FN','p','t','1','1.1',?,'1.2','1.2.840.10008.1.2.1',?,'t')""",
            (f"/spool/{i}", f"1.{i}", json.dumps(extra)),
        )
    db.commit()
    db.close()
    ignored, printed, replacing = sorted(JobStore(path).jobs(), key=lambda j: j.id)
    assert (ignored.route, ignored.action, ignored.printed, ignored.replaces) == (
        "drop",
        RouteAction.IGNORE,
        None,
        False,
    )
    assert printed.action is RouteAction.ANALYSE and printed.printed == Printed("1.2.1", "1.2.2", 3, "room 3")
    assert replacing.replaces and replacing.route == "default"


def test_a_replacing_job_finds_the_outputs_of_the_object_it_replaces(tmp_path: Path) -> None:
    """The outputs written for the object a job replaces (same SOP Instance UID, other content): the latest
    earlier job of that UID that wrote outputs; none for a job that replaces nothing."""
    store = store_in(tmp_path)
    first = claimed(store, tmp_path, "1.5")
    written = {"finding": "normal", "outputs": {"sr": "2.25.1", "sc": "2.25.2"}}
    store.apply(first, Outcome(Verdict.DELIVERED, Stage.DELIVER, "", written), CLAIMED)
    replacing = store.receive(note(tmp_path, "1.5", sha="cd" * 32), UidConflict.REPLACE).job_id
    other = store.receive(note(tmp_path, "1.6")).job_id
    assert replacing is not None and other is not None
    job = store.get(replacing)
    assert job is not None and job.replaces
    assert store.replaced_outputs(job) == {"sr": "2.25.1", "sc": "2.25.2"}
    unrelated = store.get(other)
    assert unrelated is not None and store.replaced_outputs(unrelated) == {}
