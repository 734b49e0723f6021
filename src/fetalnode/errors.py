"""Typed errors: every failure outside the SCP handlers is one of these."""

from fetalnode.dicom_status import Status


class NodeError(Exception):
    """Base class of all fetalnode errors."""


class ConfigError(NodeError):
    """The configuration is invalid or a required secret is missing."""


class IntakeRejected(NodeError):
    """A received object cannot be analysed (SOP class, pixel data, size...); permanent.

    ``status`` is the C-STORE failure status the SCP answers when it finds this on receipt.
    """

    def __init__(self, message: str, status: int = Status.BAD_IMAGE_MODULE) -> None:
        super().__init__(message)
        self.status = status


class BundleError(NodeError):
    """A model bundle is missing, corrupt or inconsistent."""


class InferenceError(NodeError):
    """The models failed on an image."""


class EncodingError(NodeError):
    """An output DICOM object could not be built."""


class SpoolFull(NodeError):
    """Less free space in the spool than ``scp.min_free_bytes`` (answered with 0xA700)."""


class TransferError(NodeError):
    """The bytes a worker got are not the ones the terminal announced (SHA-256 of the pre-notification)."""


class DeliveryError(NodeError):
    """A destination did not take an object.

    ``transient`` tells whether a later attempt may succeed (connection refused, 502/503)
    or whether the rejection is permanent (401, 400...).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class PrivacyError(NodeError):
    """An object cannot be pseudonymised or re-identified safely; nothing of it may leave the site."""


class BurnedInTextNotRemoved(PrivacyError):
    """Burned-in text could not be removed: no ultrasound region and no ``[[privacy.masks]]`` entry
    matches the image, so it is not sent for analysis (its outputs say :attr:`OUTCOME`)."""

    OUTCOME = "not analysed: burned-in text could not be removed"


class BrokerError(NodeError):
    """The broker link failed: unreachable, TLS refused, login or an operation refused (``fetalnode.broker``).

    ``transient``: a later attempt may succeed (connection refused or lost, a site's queues not declared
    yet); otherwise it needs an operator (certificate not trusted, password or permission refused).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
