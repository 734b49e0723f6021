"""The destination interface: store bytes, get a receipt, or raise a transient/permanent DeliveryError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fetalnode.errors import ConfigError
from fetalnode.registry import Registry

if TYPE_CHECKING:
    from fetalnode.config import Settings


@dataclass(frozen=True)
class Item:
    """One object to deliver: the output's name (``sr``, ``sc``, ...) and its Part 10 bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Receipt:
    """The destination's confirmation: its own reference to the stored object (an Orthanc ID, a path...)."""

    destination: str
    item: str
    reference: str


class Destination(Protocol):
    """A place objects are delivered to.

    ``store`` is idempotent for the same object (deterministic UIDs) and raises
    :class:`~fetalnode.errors.DeliveryError` with ``transient`` set when a later attempt may succeed.
    """

    name: str
    kind: str

    def store(self, item: Item) -> Receipt: ...

    def probe(self) -> dict[str, Any]:
        """Reachability for ``fetalnode status`` (never raises)."""
        ...


Factory = Callable[["Settings"], list[Destination]]
DESTINATION_KINDS: Registry[Factory] = Registry("destination kind")
destination_kind = DESTINATION_KINDS.register  # @destination_kind("kind") on factory(settings) -> [Destination]


def build_destinations(settings: Settings) -> list[Destination]:
    """The node's destinations, built once from the settings.

    Today the ``[orthanc]`` section is the one destination, named ``orthanc``.
    """
    from fetalnode.destinations import folder, orthanc_rest  # noqa: F401  (register the built-in kinds)

    destinations = DESTINATION_KINDS.get("orthanc", "[orthanc]")(settings)
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ConfigError(f"destination names must be unique: {names}")
    return destinations
