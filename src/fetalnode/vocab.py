"""Typed vocabularies of the node: job states, stages, audit event kinds and roles.

Every value is the string written to the job store, the audit log and the JSON of ``fetalnode status``,
so the enums are ``StrEnum``: ``JobState.DELIVERED == "delivered"``.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a received instance is (``jobs.py`` lists the allowed transitions)."""

    RECEIVED = "received"
    QUEUED = "queued"
    PUBLISHED = "published"
    ANALYSING = "analysing"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self in (JobState.DELIVERED, JobState.FAILED, JobState.REJECTED)


class Stage(StrEnum):
    """The step of a job an outcome belongs to."""

    RECEIVE = "receive"
    TRANSFER = "transfer"
    INTAKE = "intake"
    INFER = "infer"
    ENCODE = "encode"
    DELIVER = "deliver"
    WORKER = "worker"


class Role(StrEnum):
    """What a ``fetalnode serve`` process does (``node.role``)."""

    ALL = "all"
    TERMINAL = "terminal"
    WORKER = "worker"


class AuditEvent(StrEnum):
    """Kinds of audit events (``audit.jsonl``); each is documented in docs/operations.md."""

    NODE_STARTED = "node-started"
    NODE_STOPPED = "node-stopped"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REJECTED = "association-rejected"
    STORE_REFUSED = "store-refused"
    INSTANCE_RECEIVED = "instance-received"
    INSTANCE_DUPLICATE = "instance-duplicate"
    PRINT_SESSION = "print-session"
    PRINT_REFUSED = "print-refused"
    PRINT_FAILED = "print-failed"
    ANALYSED = "analysed"
    DELIVERY_RETRY = "delivery-retry"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"
    RESEND = "resend"
    BROKER_DOWN = "broker-down"
    BROKER_UP = "broker-up"
    RESULT_UNKNOWN_JOB = "result-unknown-job"
    MODELS_RELOADED = "models-reloaded"
    MODELS_RELOAD_FAILED = "models-reload-failed"
