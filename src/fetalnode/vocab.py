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
    IGNORED = "ignored"

    @property
    def final(self) -> bool:
        return self in (JobState.DELIVERED, JobState.FAILED, JobState.REJECTED, JobState.IGNORED)


class DeliveryStatus(StrEnum):
    """Where a job stands with one destination."""

    PENDING = "pending"  # not yet (or not all) delivered; retried with the destination's backoff
    DELIVERED = "delivered"  # every object the destination is sent is there
    DEAD = "dead"  # dead letter: refused permanently, or attempts ran out; `fetalnode resend` replays it


class RouteAction(StrEnum):
    """What a routing rule does with a received image."""

    ANALYSE = "analyse"  # run the application, deliver outputs (and the source where `send` has it)
    FORWARD = "forward"  # deliver the source only, to the destinations whose `send` has "source"
    IGNORE = "ignore"  # acknowledge and record only


class UidConflict(StrEnum):
    """What the SCP does with a different object received under an already used SOP Instance UID."""

    REFUSE = "refuse"  # C-STORE 0x0111: the archive keeps the first object and its reports
    REPLACE = "replace"  # accept it: analyse it and deliver it before its outputs, so the archive replaces both


class FolderLayout(StrEnum):
    """How a ``folder`` destination names its files."""

    ARCHIVE = "archive"  # <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm: one file per object
    NAMES = "names"  # <output name>.dcm: one job's objects (fetalnode analyze --out)


class Stage(StrEnum):
    """The step of a job an outcome belongs to."""

    RECEIVE = "receive"
    TRANSFER = "transfer"
    INTAKE = "intake"
    PRIVACY = "privacy"  # a site terminal pseudonymising an image, or re-identifying the cloud's objects
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
    WORKER_RESTARTED = "worker-restarted"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REJECTED = "association-rejected"
    ASSOCIATION_ABORTED = "association-aborted"
    ASSOCIATION_EVICTED = "association-evicted"
    STORE_REFUSED = "store-refused"
    REQUEST_REFUSED = "request-refused"
    INSTANCE_RECEIVED = "instance-received"
    INSTANCE_DUPLICATE = "instance-duplicate"
    PUBLISHED = "published"
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
    OUTPUT_TEMPLATES_DISABLED = "output-templates-disabled"
    DEAD_LETTER = "dead-letter"
    IGNORED = "ignored"


class PixelCleaning(StrEnum):
    """How the terminal removes burned-in text before an image leaves the site (``privacy.pixels``)."""

    # Keep the tissue and colour-flow regions of the Sequence of Ultrasound Regions; an image without
    # such a region gets the rectangles of the first matching ``[[privacy.masks]]`` entry.
    REGIONS = "regions"
    # Only the masks: the ultrasound regions are not trusted (a scanner that writes them wrong).
    MASKS = "masks"


class TypeNote(StrEnum):
    """Why an abnormal finding names no malformation type (every output says it in these words)."""

    # The classifier bundle's reporting rule (``type_reporting``) does not allow the most probable type.
    NOT_DETERMINED = "type not determined"


class View(StrEnum):
    """What an ultrasound image shows, by anatomy and plane, as the view classifier names it
    (``fetalnode train view``).

    ``AXIAL_FETAL_HEAD`` is an axial plane of the fetal head at any gestational age at which a head
    circumference is measured (trans-thalamic, trans-ventricular, trans-cerebellar). ``UNKNOWN`` is no
    class of the model: the router answers it when the model's top probability is below the bundle's
    abstain threshold.
    """

    AXIAL_FETAL_HEAD = "axial_fetal_head"
    INTRAPARTUM_TRANSPERINEAL = "intrapartum_transperineal"
    FIRST_TRIMESTER_MIDSAGITTAL = "first_trimester_midsagittal"
    OTHER_FETAL_PLANE = "other_fetal_plane"
    NOT_FETAL = "not_fetal"
    UNKNOWN = "unknown"

    @property
    def words(self) -> str:
        """The view as a person reads it (reports, banners, logs)."""
        return _VIEW_WORDS[self]

    @classmethod
    def named(cls, name: str) -> View:
        """The view of a name, earlier names included (:data:`RENAMED_VIEWS`: bundles and settings written
        before a view was renamed); ``ValueError`` for a name that was never a view."""
        return RENAMED_VIEWS.get(name) or cls(name)


_VIEW_WORDS = {
    View.AXIAL_FETAL_HEAD: "axial fetal head",
    View.INTRAPARTUM_TRANSPERINEAL: "intrapartum transperineal view",
    View.FIRST_TRIMESTER_MIDSAGITTAL: "first-trimester mid-sagittal view",
    View.OTHER_FETAL_PLANE: "other fetal plane (not an axial head)",
    View.NOT_FETAL: "not a fetal image",
    View.UNKNOWN: "view not recognised",
}

# Earlier names of views (classes were named by trimester before they were named by anatomy and plane).
RENAMED_VIEWS: dict[str, View] = {"second_trimester_head": View.AXIAL_FETAL_HEAD}
