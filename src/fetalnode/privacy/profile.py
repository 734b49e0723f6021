"""The attribute actions of the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

The actions of Table E.1-1 come from ``dicom-anonymizer`` (its copy of the table, edition
:data:`TABLE`); this module only overrides what the node does differently, each for a stated reason:

- UIDs (action U, and UIDs that a D action would replace): kept here, then replaced by keyed
  pseudonyms (:mod:`fetalnode.privacy.keys`); the library's own UIDs are random and unkeyed.
- The conditional actions (X/Z, X/D, X/Z/D, X/Z/U*, Z/D) are decided as the standard says, from the
  attribute's Type in the image's IOD (highdicom's tables of PS3.3): remove (X) when it is Type 3 or
  not in the IOD, zero-length (Z) when Type 2, replace (D) only when Type 1. The library would
  replace them all, with "ANONYMIZED" in names and random UIDs in references.
- Other sequences whose action is D are removed (none is in the image IODs the node accepts); Z
  sequences get zero items.
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
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
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


def _attribute_types(sop_class_uid: str) -> dict[str, str]:
    """Type ("1", "1C", "2", "2C", "3") of each top-level attribute of the IOD of ``sop_class_uid``."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return {}
    attributes = get_module_attribute_map()
    types: dict[str, str] = {}
    for module in get_iod_module_map()[iod]:
        for attribute in attributes[module["key"]]:
            if not attribute["path"]:
                # An attribute in several modules keeps its strictest type.
                old, new = types.get(attribute["keyword"], "3"), str(attribute["type"])
                types[attribute["keyword"]] = min(old, new)
    return types


def _conditional(tag: tuple[int, ...], group: str, required: str) -> Action:
    """The action of an X/Z, X/D, X/Z/D, X/Z/U* or Z/D attribute of Type ``required`` ("" if not in the IOD)."""
    vr = _vr(tag)
    if required.startswith("1") and group != "X_Z_TAGS":
        return library.keep if vr == "UI" else library.delete if vr == "SQ" else library.replace
    if required.startswith("2") or group == "Z_D_TAGS":
        return _empty_sequence if vr == "SQ" else library.empty
    return library.delete


@functools.cache
def overrides(sop_class_uid: str) -> dict[tuple[int, ...], Action]:
    """The node's overrides of the library's actions for images of ``sop_class_uid``, by tag."""
    table = dicom_anonymization_database_selector(TABLE)
    types = _attribute_types(sop_class_uid)
    rules: dict[tuple[int, ...], Action] = {}
    for tag in table["U_TAGS"]:
        rules[tag] = library.keep
    for tag in table["D_TAGS"]:
        vr = _vr(tag)
        if vr == "SQ":
            rules[tag] = library.delete
        elif vr == "UI":
            rules[tag] = library.keep
    for group in ("X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS", "X_Z_U_STAR_TAGS", "Z_D_TAGS"):
        for tag in table[group]:
            if len(tag) == 2:
                rules[tag] = _conditional(tag, group, types.get(keyword_for_tag((tag[0] << 16) | tag[1]), ""))
    for tag in table["Z_TAGS"]:
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
                ds,
                extra_anonymization_rules=overrides(str(ds.get("SOPClassUID", ""))),
                delete_private_tags=True,
                base_rules_gen=base_rules,
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
