"""Logging set-up of every fetalnode process (the CLI, ``serve``'s worker processes): handlers are configured
here and nowhere else; modules only ``getLogger(__name__)``.

Log lines quote what peers send (AE titles, UIDs, reasons that name a malformed element): the formatter
writes control characters in a message as ``\\xNN``, so no peer can forge or break a line of the log.
"""

from __future__ import annotations

import logging
import re
import sys

from fetalnode.config import THIRD_PARTY_LOGGERS

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (newlines included) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part cannot hold a control character (tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(level: str, third_party: str = "WARNING") -> None:
    """Log to stderr at ``level`` (the libraries at ``third_party``). Like ``logging.basicConfig``, it adds
    no handler where the root logger has one already (a host program's, a test runner's)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter(FORMAT))
        root.addHandler(handler)
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
    third_party_level(third_party)


def third_party_level(level: str) -> None:
    """The libraries' loggers (highdicom logs seven INFO lines per object it builds) at ``level``."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(getattr(logging, level.upper()))
