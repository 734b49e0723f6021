"""The destination interface: store bytes, get a receipt, or raise a transient/permanent DeliveryError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fetalnode.config import DestinationSettings
from fetalnode.errors import ConfigError
from fetalnode.registry import Registry

if TYPE_CHECKING:
    from fetalnode.config import Settings


@dataclass(frozen=True)
class Item:
    """One object to deliver: the output's name (``sr``, ``sc``, ...; ``source``) and its Part 10 bytes.
    ``replaces``: a source that replaces another object under its SOP Instance UID."""

    name: str
    data: bytes
    replaces: bool = False


@dataclass(frozen=True)
class Receipt:
    """The destination's confirmation: its own reference to the stored object (an Orthanc ID, a path...)."""

    destination: str
    item: str
    reference: str


class Destination(Protocol):
    """A place objects are delivered to, built from its ``[[destinations]]`` table (``settings``).

    ``store`` is idempotent for the same object (deterministic UIDs) and raises
    :class:`~fetalnode.errors.DeliveryError` with ``transient`` set when a later attempt may succeed
    and the destination's own words (status and Error Comment, HTTP status and body) in the message.
    """

    settings: DestinationSettings

    @property
    def name(self) -> str: ...

    def store(self, item: Item) -> Receipt: ...

    def probe(self) -> dict[str, Any]:
        """Reachability for ``fetalnode status`` (never raises)."""
        ...


Factory = Callable[["DestinationSettings", "Settings"], Destination]
DESTINATION_KINDS: Registry[Factory] = Registry(
    "destination kind",
    builtins=(
        "fetalnode.destinations.orthanc_rest",
        "fetalnode.destinations.folder",
        "fetalnode.destinations.dicom",
        "fetalnode.destinations.dicomweb",
    ),
)
destination_kind = DESTINATION_KINDS.register  # @destination_kind("kind") on factory(destination, settings)
SOURCE = "source"  # in ``send``: the received image, forwarded unchanged
ALL_OUTPUTS = "outputs"  # in ``send``: every output the job built (``output.enabled``)


def same_pixels(ours: bytes, theirs: bytes) -> bool:
    """Whether two Part 10 objects hold the same image: equal bytes, or the same Pixel Data as encoded (same
    transfer syntax), or the same decoded pixels (an archive may store another transfer syntax, or the
    modality's own copy with other file meta). Anything unreadable counts as different."""
    if ours == theirs:
        return True
    from io import BytesIO

    from pydicom import dcmread

    try:
        a, b = dcmread(BytesIO(ours)), dcmread(BytesIO(theirs))
        if (a.Rows, a.Columns, a.get("NumberOfFrames", 1)) != (b.Rows, b.Columns, b.get("NumberOfFrames", 1)):
            return False
        if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID and a.PixelData == b.PixelData:
            return True
        import numpy as np

        return bool(np.array_equal(a.pixel_array, b.pixel_array))
    except Exception:  # an archive object we cannot read is not known to be ours
        return False


def configured(settings: Settings) -> list[DestinationSettings]:
    """The ``[[destinations]]`` tables; without any, ``[orthanc]`` is the one destination ``orthanc``
    (kind ``orthanc``, sending every enabled output)."""
    if settings.destinations:
        return settings.destinations
    o = settings.orthanc
    return [
        DestinationSettings(
            name="orthanc",
            kind="orthanc",
            send=list(settings.output.enabled),
            url=o.url,
            username=o.username,
            password=o.password,
            password_file=o.password_file,
            timeout=o.timeout,
            max_attempts=o.max_attempts,
            retry_initial=o.retry_initial,
            retry_max=o.retry_max,
        )
    ]


def build_destinations(settings: Settings) -> list[Destination]:
    """The node's destinations, built once from the settings; a wrong table stops start-up with the reason."""
    tables = configured(settings)
    names = [d.name for d in tables]
    if "" in names or len(set(names)) != len(names):
        raise ConfigError(f"[[destinations]]: every destination needs a unique name, got {names}")
    sendable = {SOURCE, ALL_OUTPUTS, *settings.output.enabled}
    for d in tables:
        unknown = [s for s in d.send if s not in sendable]
        if unknown or not d.send:
            raise ConfigError(
                f"destination {d.name}: send {d.send} must name 'source', 'outputs' (every enabled output) or enabled outputs ({', '.join(sorted(sendable))})"
            )
    return [DESTINATION_KINDS.get(d.kind, f"destination {d.name}: kind")(d, settings) for d in tables]
