"""The site's secret and the keyed UID pseudonyms made with it.

A pseudonym is HMAC-SHA256(secret, UID) rendered as a ``2.25`` UID (PS3.5 B.2): the same UID always
gets the same pseudonym at one site (a redelivered job stays idempotent), another site's secret gives
another one, and without the secret a pseudonym cannot be traced back to its UID.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections import Counter
from pathlib import Path

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.uid import UID_dictionary

from fetalnode.errors import ConfigError

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
# Shannon entropy of the secret's byte histogram, per byte: 32 random bytes give ~4.9, their 64 hex
# digits ~3.8; "aaaa..." or a word repeated give less than 3.
MIN_BITS_PER_BYTE = 3.0
DICOM_ROOT = "1.2.840.10008."
# UIDs that name a kind of thing, not a patient's data: they stay even when not registered (a vendor's
# private SOP class names the vendor, which Manufacturer says anyway).
_KIND_KEYWORDS = ("TransferSyntaxUID", "CodingSchemeUID", "ReferencedTransferSyntaxUIDInFile")


def read_secret(path: str) -> bytes:
    """The per-site secret from ``privacy.secret_file``: its bytes, surrounding white space stripped.

    Raises
    ------
    ConfigError
        The path is not set, the file cannot be read, or it holds fewer than 32 bytes or too
        repetitive ones. The message names the file, never its content.
    """
    hint = "make one with `openssl rand -hex 32 > FILE` and `chmod 600 FILE`"
    if not path:
        raise ConfigError(f"privacy.secret_file is not set: the terminal pseudonymises with a per-site secret ({hint})")
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"privacy.secret_file {path}: cannot read it ({exc.strerror or exc})") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"privacy.secret_file {path}: {len(secret)} bytes, at least {MIN_SECRET_BYTES} are needed ({hint})"
        )
    if bits_per_byte(secret) < MIN_BITS_PER_BYTE:
        raise ConfigError(f"privacy.secret_file {path}: too repetitive to be a secret ({hint})")
    try:
        if Path(path).stat().st_mode & 0o077:
            log.warning("privacy.secret_file %s is readable by other users: chmod 600 it", path)
    except OSError:
        pass
    return secret


def bits_per_byte(data: bytes) -> float:
    """Shannon entropy of the byte histogram of ``data`` (bits per byte)."""
    counts = Counter(data)
    return -sum(n / len(data) * math.log2(n / len(data)) for n in counts.values()) if data else 0.0


def is_registered(uid: str) -> bool:
    """A UID the standard defines (SOP classes, transfer syntaxes, coding schemes, well-known
    frames of reference...): in pydicom's UID dictionary or under the DICOM root."""
    return uid in UID_dictionary or uid.startswith(DICOM_ROOT)


def names_a_kind(element: DataElement) -> bool:
    """An element whose UID names a class or syntax rather than an instance (kept as it is)."""
    keyword = keyword_for_tag(element.tag)
    return keyword.endswith("ClassUID") or keyword in _KIND_KEYWORDS


class UidPseudonyms:
    """Keyed pseudonyms of UIDs; holds the secret and never shows it."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the pseudonymisation secret must have at least {MIN_SECRET_BYTES} bytes")
        self._key = bytes(secret)

    def __repr__(self) -> str:
        return "UidPseudonyms(secret=***)"

    def pseudonym(self, uid: str) -> str:
        """``2.25.<int>``: the first 128 bits of HMAC-SHA256(secret, uid) with the UUID variant and
        version 8 (vendor-defined) bits set, as PS3.5 B.2 derives UIDs from UUIDs."""
        digest = hmac.new(self._key, b"fetalnode uid\x1f" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
        n = int.from_bytes(digest[:16], "big")
        n = (n & ~(0xF << 76)) | (8 << 76)  # version 8
        n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
        return f"2.25.{n}"
