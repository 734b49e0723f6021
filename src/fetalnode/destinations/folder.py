"""A folder destination: each object as a Part 10 file, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetalnode.destinations.base import Item, Receipt
from fetalnode.errors import DeliveryError
from fetalnode.scp.spool import atomic_write


@dataclass
class FolderDestination:
    """Writes ``<folder>/<prefix><item name>.dcm``; a full or read-only disk is a permanent failure."""

    folder: Path
    prefix: str = ""
    name: str = "folder"
    kind: str = "folder"

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
        return {"name": self.name, "kind": self.kind, "folder": str(self.folder), "reachable": self.folder.is_dir()}
