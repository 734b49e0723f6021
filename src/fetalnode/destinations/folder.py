"""A folder destination: each object as a Part 10 file, written atomically (temp file, fsync, rename).

Layout ``archive`` (the default): ``<folder>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
as an archive drop folder is read, so every object has its own file and only the same object (a retry,
or a replacement under its UID) ever writes it again. Layout ``names``: ``<folder>/<output name>.dcm``,
one job's objects by output name (what ``fetalnode analyze --out`` writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import Destination, Item, Receipt, destination_kind
from fetalnode.errors import ConfigError, DeliveryError
from fetalnode.scp.spool import atomic_write
from fetalnode.vocab import FolderLayout

_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_NOT_UID = re.compile(r"[^0-9.]")


def archive_path(data: bytes) -> Path:
    """``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` of a Part 10 object (a UID holds only
    digits and dots; anything else is written as ``_``, so no value can leave the folder)."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=list(_UID_KEYWORDS))
        uids = [str(ds[keyword].value) for keyword in _UID_KEYWORDS]
    except Exception as exc:  # our own outputs and a checked source: a failure here is a permanent one
        raise DeliveryError(f"cannot read the UIDs of the object: {exc}", transient=False) from exc
    parts = [_NOT_UID.sub("_", uid)[:64].strip(".") or "_" for uid in uids]
    return Path(parts[0], parts[1], f"{parts[2]}.dcm")


@dataclass
class FolderDestination:
    """Writes each object under ``folder`` in its ``layout``; a full or read-only disk is a permanent failure."""

    settings: DestinationSettings
    prefix: str = ""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def folder(self) -> Path:
        return Path(self.settings.folder)

    def path_of(self, item: Item) -> Path:
        if FolderLayout(self.settings.layout) is FolderLayout.ARCHIVE:
            return self.folder / archive_path(item.data)
        return self.folder / f"{self.prefix}{item.name}.dcm"

    def store(self, item: Item) -> Receipt:
        path = self.path_of(item)
        try:
            atomic_write(path, item.data)
        except OSError as exc:
            raise DeliveryError(f"cannot write {path}: {exc}", transient=False) from exc
        return Receipt(self.name, item.name, str(path))

    def probe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "folder", "folder": str(self.folder), "reachable": self.folder.is_dir()}


def folder_destination(folder: Path, send: list[str], name: str = "folder", prefix: str = "") -> FolderDestination:
    """A folder destination by output name outside the configuration (``analyze``, tests)."""
    table = DestinationSettings(name=name, kind="folder", folder=str(folder), send=send, layout=FolderLayout.NAMES)
    return FolderDestination(table, prefix)


@destination_kind("folder")
def from_settings(destination: DestinationSettings, settings: Settings) -> Destination:
    if not destination.folder:
        raise ConfigError(f'destination {destination.name}: kind folder needs folder = "/path"')
    if destination.layout not in set(FolderLayout):
        raise ConfigError(
            f"destination {destination.name}: layout must be one of {', '.join(FolderLayout)}, not {destination.layout!r}"
        )
    return FolderDestination(destination)
