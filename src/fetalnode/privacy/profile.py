"""The attribute actions of the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

The actions of Table E.1-1 come from ``dicom-anonymizer`` (its copy of the table, edition
:data:`TABLE`); this module only overrides what the node does differently, each for a stated reason:

- UIDs (action U, and UIDs that a D action would replace): kept here, then replaced by keyed
  pseudonyms (:mod:`fetalnode.privacy.keys`); the library's own UIDs are random and unkeyed.
- Sequences whose action is D, Z/D, X/D, X/Z/D or X/Z/U*: removed (X), which the profile allows
  for these Type 3 attributes of the ultrasound and Secondary Capture IODs; the library would
  otherwise write "ANONYMIZED" into every item and random UIDs into references.
- Sequences whose action is Z: emptied (zero items).
- Dates and times the library empties or replaces get a zero-length value instead of its dummy
  ``00010101`` / ``000000.00`` (which validators refuse as dates); no image IOD the node accepts has
  a Type 1 date.
- :data:`KEEP`: what the analysis needs. None of them is in Table E.1-1 today; they are named so
  that a later edition of the table cannot take them away unnoticed.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import dicomanonymizer.simpledicomanonymizer as library
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fetalnode.errors import PrivacyError

TABLE = "dicomfields_2026c"
LIBRARY = "dicom-anonymizer"

KEEP = (
    "SOPClassUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SequenceOfUltrasoundRegions",
    "PixelSpacing",
    "ImageType",
    "NumberOfFrames",
    "FrameTime",
    "FrameTimeVector",
    "FrameIncrementPointer",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)

Action = Callable[[Dataset, Any], None]
# The library keeps a process-wide dictionary of the UIDs it replaced: one profile at a time.
_LOCK = threading.Lock()


def _empty_sequence(dataset: Dataset, tag: Any) -> None:
    if tag in dataset:
        dataset[tag].value = Sequence()


_DUMMY_DATES = {"00010101", "00010101010101.000000+0000", "000000.00"}


def _empty_dummy_date(_: Dataset, element: Any) -> None:
    if element.VR in ("DA", "DT", "TM") and str(element.value) in _DUMMY_DATES:
        element.value = ""


def _vr(tag: tuple[int, ...]) -> str:
    if len(tag) != 2:
        return ""  # a repeating group: its elements are never UIDs or sequences in the table
    try:
        return str(dictionary_VR((tag[0] << 16) | tag[1]))
    except KeyError:
        return ""


@functools.cache
def overrides() -> dict[tuple[int, ...], Action]:
    """The node's overrides of the library's actions, by tag."""
    table = dicom_anonymization_database_selector(TABLE)
    rules: dict[tuple[int, ...], Action] = {}
    for tag in table["U_TAGS"]:
        rules[tag] = library.keep
    for group in ("D_TAGS", "Z_D_TAGS", "X_D_TAGS", "X_Z_D_TAGS", "X_Z_U_STAR_TAGS"):
        for tag in table[group]:
            vr = _vr(tag)
            if vr == "SQ":
                rules[tag] = library.delete
            elif vr == "UI":
                rules[tag] = library.keep
    for tag in table["Z_TAGS"] + table["X_Z_TAGS"]:
        if _vr(tag) == "SQ":
            rules[tag] = _empty_sequence
    for keyword in KEEP:
        value = tag_for_keyword(keyword)
        assert value is not None, keyword
        rules[(value >> 16, value & 0xFFFF)] = library.keep
    return rules


def base_rules() -> dict[tuple[int, ...], Action]:
    """Table E.1-1 as the library maps it to actions."""
    return dict(library.initialize_actions(TABLE))


def apply_profile(ds: Dataset) -> None:
    """Apply the profile's attribute actions to ``ds`` in place; private attributes are removed.

    Raises
    ------
    PrivacyError
        The library met an element it cannot process, or made a UID of its own (fail closed).
    """
    with _LOCK:
        library.dictionary.clear()
        try:
            library.anonymize_dataset(
                ds, extra_anonymization_rules=overrides(), delete_private_tags=True, base_rules_gen=base_rules
            )
        except (NotImplementedError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PrivacyError(f"the confidentiality profile could not be applied: {exc}") from exc
        finally:
            made = len(library.dictionary)
            # The library remembers each original UID it replaced: none may stay in memory.
            library.dictionary.clear()
    ds.walk(_empty_dummy_date)
    if made:
        raise PrivacyError(f"the confidentiality profile replaced {made} UID(s) without the site's key")
