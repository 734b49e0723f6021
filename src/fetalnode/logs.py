"""Logging set-up of every fetalnode process (the CLI, ``serve``'s worker processes): handlers are configured
here and nowhere else; modules only ``getLogger(__name__)``.

Log lines quote what peers send (AE titles, UIDs, reasons that name a malformed element): the formatter
writes control characters in a message as ``\\xNN``, so no peer can forge or break a line of the log.
pynetdicom logs a peer's malformed PDU or message as an ERROR with its traceback: the log writes it as one
WARNING line with the exception's type (:class:`PeerFaultLines`), since a peer's bytes are not a bug here.
"""

from __future__ import annotations

import logging
import re
import sys

from fetalnode.config import THIRD_PARTY_LOGGERS

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The loggers pynetdicom reports a peer's malformed PDUs and messages on.
PEER_LOGGERS = (
    "pynetdicom.dul",
    "pynetdicom.fsm",
    "pynetdicom.dimse",
    "pynetdicom.acse",
    "pynetdicom.association",
    "pynetdicom.utils",
)


def escape_controls(text: str) -> str:
    """``text`` with every control character (newlines included) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class PeerFaultLines(logging.Filter):
    """On the log's handler (so other handlers see pynetdicom's records unchanged): a peer fault pynetdicom
    logs with its traceback becomes one WARNING line naming the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in PEER_LOGGERS:
            return True
        if record.exc_info:
            exc = record.exc_info[1]
            message = record.getMessage()
            record.msg = f"{message} ({type(exc).__name__})" if exc is not None else message
            record.args = ()
            record.exc_info = record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


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
        handler.addFilter(PeerFaultLines())
        root.addHandler(handler)
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
    third_party_level(third_party)


def third_party_level(level: str) -> None:
    """The libraries' loggers (highdicom logs seven INFO lines per object it builds) at ``level``."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(getattr(logging, level.upper()))
