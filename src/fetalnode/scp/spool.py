"""The spool: received objects written atomically and durably before they are acknowledged."""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from fetalnode.errors import SpoolFull
from fetalnode.files import atomic_write

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


class Spool:
    """Files are named ``<day>/<SOPInstanceUID>_<sha256[:16]>.dcm``: two different objects that
    share a SOP Instance UID never overwrite each other, an identical re-send maps to the same file."""

    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        root.mkdir(parents=True, exist_ok=True)

    def check_space(self, incoming: int = 0) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise SpoolFull(f"spool full: {free} bytes free, minimum {self.min_free_bytes} ({self.root})")

    def store(self, data: bytes, sop_instance_uid: str, digest: str | None = None) -> tuple[Path, str, bool]:
        """Persist ``data``; returns (path, sha256, already_present)."""
        self.check_space(len(data))
        digest = digest or hashlib.sha256(data).hexdigest()
        day = datetime.now(UTC).strftime("%Y%m%d")
        name = f"{_SAFE.sub('_', sop_instance_uid)[:64]}_{digest[:16]}.dcm"
        path = self.root / day / name
        if path.exists():
            return path, digest, True
        atomic_write(path, data)
        return path, digest, False
