"""JSON-lines audit events. No patient names or IDs: only AE titles, addresses, UIDs and states."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fetalnode.vocab import AuditEvent

log = logging.getLogger(__name__)


class AuditLog:
    """Appends one JSON object per line to ``path`` (thread-safe, flushed per event)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, kind: AuditEvent, **fields: Any) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": str(kind), **fields}
        line = json.dumps(record, default=str, sort_keys=False)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        log.info("audit %s", line)
