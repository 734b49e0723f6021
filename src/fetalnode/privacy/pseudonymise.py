"""Pseudonymise a received image at the terminal before it leaves the site.

PS3.15 Annex E Basic Application Level Confidentiality Profile with the Clean Pixel Data Option:
the attribute actions of :mod:`fetalnode.privacy.profile`, keyed UID pseudonyms of
:mod:`fetalnode.privacy.keys`, and the pixel cleaning of :mod:`fetalnode.privacy.pixels`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian

from fetalnode import __version__
from fetalnode.config import MaskSettings, PrivacySettings
from fetalnode.errors import IntakeRejected, PrivacyError
from fetalnode.privacy.keys import UidPseudonyms, is_registered, names_a_kind, read_secret
from fetalnode.privacy.pixels import PixelReport, clean_pixels, kept_area
from fetalnode.privacy.profile import apply_profile
from fetalnode.vocab import PixelCleaning

# CID 7050 De-identification Method: what was applied (PS3.16).
BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = ("113101", "DCM", "Clean Pixel Data Option")


@dataclass(frozen=True)
class Pseudonymised:
    """A pseudonymised image: what may leave the site (``data``), and what stays (``uid_map``).

    ``uid_map`` maps each pseudonym in ``dataset`` to its original UID; ``pixels`` says how the
    burned-in text was removed (:meth:`PixelReport.describe` is audit text without patient data).
    """

    dataset: Dataset
    data: bytes
    uid_map: dict[str, str]
    pixels: PixelReport

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def _fresh(ds: Dataset) -> Dataset:
    """``ds`` as a new in-memory dataset: no longer tied to the encoding it was read in (a big endian
    or implicit VR source is written as Explicit VR Little Endian)."""
    out = Dataset()
    for element in ds.iterall():  # decodes every raw element, nested ones included
        del element
    for element in ds:
        out.add(element)
    return out


class Pseudonymiser:
    """Pseudonymises images with one site's secret, pixel policy and masks (thread-safe)."""

    def __init__(
        self, secret: bytes, pixels: PixelCleaning = PixelCleaning.REGIONS, masks: Sequence[MaskSettings] = ()
    ) -> None:
        self._uids = UidPseudonyms(secret)
        self.pixels = PixelCleaning(pixels)
        self.masks = tuple(masks)

    def __repr__(self) -> str:
        return f"Pseudonymiser(pixels={self.pixels.value!r}, masks={len(self.masks)}, secret=***)"

    @classmethod
    def from_settings(cls, privacy: PrivacySettings) -> Pseudonymiser:
        """The pseudonymiser of ``[privacy]``; reads ``secret_file``.

        Raises
        ------
        ConfigError
            The secret file is not set, unreadable, shorter than 32 bytes or too repetitive: a
            terminal that pseudonymises must not start without it.
        """
        return cls(read_secret(privacy.secret_file), PixelCleaning(privacy.pixels), privacy.masks)

    def pseudonym(self, uid: str) -> str:
        """The pseudonym of ``uid`` (well-known UIDs are their own)."""
        return uid if is_registered(uid) else self._uids.pseudonym(uid)

    def pseudonymise_bytes(self, data: bytes) -> Pseudonymised:
        """:meth:`pseudonymise` of a Part 10 object (a spool file's bytes)."""
        try:
            ds = dcmread(BytesIO(data))
        except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
            raise IntakeRejected(f"cannot read the received object: {exc}") from exc
        return self.pseudonymise(ds)

    def pseudonymise(self, source: Dataset) -> Pseudonymised:
        """A pseudonymised copy of ``source`` (which is not changed).

        Raises
        ------
        BurnedInTextNotRemoved
            No ultrasound region and no matching mask: the image must not leave the site.
        IntakeRejected
            The pixel data cannot be decoded.
        PrivacyError
            The profile could not be applied; nothing of the image may leave the site.
        """
        ds = copy.deepcopy(source)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise IntakeRejected("the object has no transfer syntax (not a Part 10 object)")
        area = kept_area(ds, self.pixels, self.masks)  # before the profile removes Station Name
        apply_profile(ds)
        uid_map: dict[str, str] = {}
        ds.walk(lambda _, element: self._map(element, uid_map))
        report = clean_pixels(ds, area)
        self._mark(ds)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _fresh(ds)
        ds.file_meta = meta
        buffer = BytesIO()
        try:
            ds.save_as(buffer, enforce_file_format=True)
        except (ValueError, TypeError, OverflowError) as exc:
            raise PrivacyError(f"the pseudonymised object could not be encoded: {exc}") from exc
        return Pseudonymised(ds, buffer.getvalue(), uid_map, report)

    def _map(self, element: DataElement, uid_map: dict[str, str]) -> None:
        if element.VR != "UI" or element.value in (None, "") or names_a_kind(element):
            return
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        mapped = []
        for value in values:
            original = str(value).strip("\0 ")
            pseudonym = self.pseudonym(original)
            if pseudonym != original:
                uid_map[pseudonym] = original
            mapped.append(UID(pseudonym))
        element.value = mapped if len(mapped) > 1 else mapped[0]

    @staticmethod
    def _mark(ds: Dataset) -> None:
        """Patient Identity Removed and the De-identification Method (PS3.15 E.1.1)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [
            "DICOM PS3.15 Basic Application Confidentiality Profile",
            "Clean Pixel Data Option",
            f"fetalnode {__version__}: keyed UID pseudonyms",
        ]
        items = []
        for value, scheme, meaning in (BASIC_PROFILE, CLEAN_PIXEL_DATA):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
