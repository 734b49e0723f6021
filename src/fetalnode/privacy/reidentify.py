"""Re-identify an object the cloud returns: the real patient, study and UIDs, at the terminal.

The object (an SR, SC, GSPS, SEG, OB-GYN SR... built from a pseudonymised image) gets back the
source's Patient and Study information entities, the modules the output writers copy from their
source (highdicom's ``copy_patient_and_study_information``), so an object re-identified here equals
the one the embedded mode writes from the real source. Every UID found in the map is replaced
wherever it is (SR evidence and content items, referenced series, source images, frame of
reference, the file meta) by a generic walk, and text that quotes a pseudonym quotes the original.
The Contributing Equipment item that describes the source's scanner (Acquisition Equipment) is made
again from the source, as highdicom makes it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from io import BytesIO

import highdicom as hd
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from fetalnode.errors import PrivacyError

# DCM 109101 Acquisition Equipment (CID 7005): the item that describes the source's scanner.
_ACQUISITION = ("109101", "DCM")
# Value representations whose text may quote a UID.
_TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "UR", "AE", "CS", "DS", "IS", "PN"}


@functools.cache
def patient_and_study_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """Top-level attributes of the Patient and Study information entities of the IOD of
    ``sop_class_uid`` (Patient, Clinical Trial Subject, General Study, Patient Study, ...)."""
    iod = get_sop_class_iod_map().get(str(sop_class_uid))
    if iod is None:
        raise PrivacyError(f"no IOD is known for SOP class {sop_class_uid}: its patient modules cannot be restored")
    attributes = get_module_attribute_map()
    keywords: list[str] = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            keywords += [str(a["keyword"]) for a in attributes[module["key"]] if not a["path"]]
    return tuple(dict.fromkeys(keywords))


def reidentify(obj: Dataset, source: Dataset, uid_map: Mapping[str, str]) -> Dataset:
    """A re-identified copy of ``obj``.

    Parameters
    ----------
    obj
        An object built from the pseudonymised image (not changed).
    source
        The original image, as received.
    uid_map
        pseudonym -> original UID: the map of :class:`~fetalnode.privacy.Pseudonymised`, extended
        with the object's own UIDs (the ones the embedded mode derives from the real source).

    Raises
    ------
    PrivacyError
        A pseudonym is still in the object after re-identification.
    """
    return _reidentify(copy.deepcopy(obj), source, uid_map, _acquisition_of(source))


def reidentify_all(objects: Mapping[str, bytes], source: Dataset, uid_map: Mapping[str, str]) -> dict[str, bytes]:
    """:func:`reidentify` of the Part 10 objects a worker returned (name -> bytes, as the runner's
    ``built``), each parsed once and encoded again; the source's scanner is described once."""
    acquisition = _acquisition_of(source)
    out = {}
    for name, data in objects.items():
        buffer = BytesIO()
        _reidentify(dcmread(BytesIO(data)), source, uid_map, acquisition).save_as(buffer, enforce_file_format=True)
        out[name] = buffer.getvalue()
    return out


def _acquisition_of(source: Dataset) -> Dataset | None:
    """The source's scanner as highdicom describes it (``ContributingEquipment.for_image_acquisition``)."""
    try:
        return hd.ContributingEquipment.for_image_acquisition(source)
    except Exception:  # highdicom leaves the item out when the source does not describe its scanner
        return None


def _reidentify(out: Dataset, source: Dataset, uid_map: Mapping[str, str], acquisition: Dataset | None) -> Dataset:
    out.decode()  # every text value decoded with the object's own character set, before it may change
    out.walk(lambda _, element: _restore(element, uid_map))
    if hasattr(out, "file_meta"):
        out.file_meta.walk(lambda _, element: _restore(element, uid_map))
    for keyword in patient_and_study_keywords(str(source.SOPClassUID)):
        if keyword in source:
            out[keyword] = copy.deepcopy(source[keyword])
        elif keyword in out:
            del out[keyword]
    _acquisition_equipment(out, acquisition)
    _character_set(out, source)
    left = _pseudonyms_in(out, uid_map)
    if left:
        raise PrivacyError(f"{len(left)} element(s) still hold a pseudonym after re-identification: {sorted(left)}")
    return out


def _acquisition_equipment(out: Dataset, acquisition: Dataset | None) -> None:
    """``acquisition`` (a copy) in place of the Contributing Equipment item the writer made from the
    pseudonymised image's scanner."""
    items = out.get("ContributingEquipmentSequence")
    if not items:
        return
    acquisition = copy.deepcopy(acquisition)
    kept = []
    for item in items:
        purpose = item.get("PurposeOfReferenceCodeSequence")
        if purpose and (purpose[0].get("CodeValue"), purpose[0].get("CodingSchemeDesignator")) == _ACQUISITION:
            if acquisition is not None:
                kept.append(acquisition)
                acquisition = None
            continue
        kept.append(item)
    out.ContributingEquipmentSequence = kept


def _restore(element: DataElement, uid_map: Mapping[str, str]) -> None:
    if element.VR == "UI" and element.value:
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        restored = [UID(uid_map.get(str(v).strip("\0 "), str(v))) for v in values]
        element.value = restored if len(restored) > 1 else restored[0]
    elif element.VR in _TEXT_VRS and element.value:
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        if not any(isinstance(v, str) and "2.25." in v for v in values):
            return
        texts = [_replace_text(v, uid_map) if isinstance(v, str) else v for v in values]
        element.value = texts if len(texts) > 1 else texts[0]


def _replace_text(text: str, uid_map: Mapping[str, str]) -> str:
    # Longest first: one pseudonym is never the prefix of another's replacement.
    for pseudonym in sorted((p for p in uid_map if p in text), key=len, reverse=True):
        text = text.replace(pseudonym, uid_map[pseudonym])
    return text


def _character_set(out: Dataset, source: Dataset) -> None:
    """UTF-8 when the restored names need more than the object's character set says."""
    charsets = {str(c) for ds in (out, source) for c in _as_list(ds.get("SpecificCharacterSet", ""))} - {""}
    if charsets - {"ISO_IR 6"}:
        out.SpecificCharacterSet = "ISO_IR 192"


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _pseudonyms_in(ds: Dataset, uid_map: Mapping[str, str]) -> set[str]:
    """Keywords (or tags) of the elements, nested included, whose value still holds a pseudonym."""
    found: set[str] = set()
    pseudonyms = set(uid_map)

    def visit(_: Dataset, element: DataElement) -> None:
        if element.VR == "SQ" or not element.value or isinstance(element.value, bytes):
            return
        for value in _as_list(element.value):
            text = str(value)
            if "2.25." in text and (text in pseudonyms or any(p in text for p in pseudonyms)):
                found.add(element.keyword or str(element.tag))

    ds.walk(visit)
    if hasattr(ds, "file_meta"):
        ds.file_meta.walk(visit)
    return found
