"""A folder destination: each object as a Part 10 file, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import Destination, Item, Receipt, destination_kind
from fetalnode.errors import ConfigError, DeliveryError
from fetalnode.scp.spool import atomic_write


@dataclass
class FolderDestination:
    """Writes ``<folder>/<prefix><item name>.dcm``; a full or read-only disk is a permanent failure."""

    settings: DestinationSettings
    prefix: str = ""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def folder(self) -> Path:
        return Path(self.settings.folder)

    def path_of(self, item_name: str) -> Path:
        return self.folder / f"{self.prefix}{item_name}.dcm"

    def store(self, item: Item) -> Receipt:
        path = self.path_of(item.name)
        try:
            atomic_write(path, item.data)
        except OSError as exc:
            raise DeliveryError(f"cannot write {path}: {exc}", transient=False) from exc
        return Receipt(self.name, item.name, str(path))

    def probe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "folder", "folder": str(self.folder), "reachable": self.folder.is_dir()}


def folder_destination(folder: Path, send: list[str], name: str = "folder", prefix: str = "") -> FolderDestination:
    """A folder destination outside the configuration (``analyze``, tests)."""
    return FolderDestination(DestinationSettings(name=name, kind="folder", folder=str(folder), send=send), prefix)


@destination_kind("folder")
def from_settings(destination: DestinationSettings, settings: Settings) -> Destination:
    if not destination.folder:
        raise ConfigError(f'destination {destination.name}: kind folder needs folder = "/path"')
    return FolderDestination(destination)
