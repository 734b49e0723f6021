"""Coded concepts of fetalnode reports.

Standard codes where they exist, each checked against pydicom's copy of PS3.16 (``pydicom.sr``
concept and context group tables): LOINC fetal biometry of CID 12005 Fetal Biometry Measurements,
SNOMED CT normal/abnormal of CID 222 Normality, head of CID 7151, DCM; otherwise the private coding
scheme ``99FETALNODE``, declared in the Coding Scheme Identification Sequence of every report.

Importable without torch or highdicom (pydicom only): the Orthanc plugin reads reports by these codes.
"""

from __future__ import annotations

import hashlib

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99FETALNODE"
SCHEME_VERSION = "1"

# CID 12005. (11779-6 is "EDD from LMP" of CID 12003 OB-GYN Dates, not a head measurement.)
HEAD_CIRCUMFERENCE = codes.LN.HeadCircumference  # 11984-2
BIPARIETAL_DIAMETER = codes.LN.BiparietalDiameter  # 11820-8
OCCIPITAL_FRONTAL_DIAMETER = codes.LN.OccipitalFrontalDiameter  # 11851-3
MM = Code("mm", "UCUM", "millimeter")
PERCENT = Code("%", "UCUM", "percent")

NORMAL = codes.SCT.Normal  # 17621005, CID 222
ABNORMAL = codes.SCT.Abnormal  # 263654008, CID 222
HEAD_STRUCTURE = codes.SCT.Head  # 69536005, CID 7151
COMMENT = codes.DCM.Comment  # 121106
# TID 1500 row "Qualitative Evaluations" (not in pydicom's tables: UMLS is not one of its schemes).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# Procedure Reported (TID 1500, DCID 100 extensible); the meaning is PS3.16's for this LOINC code (CID 7000).
OB_ULTRASOUND = codes.LN.UltrasoundObstetricAndGynReport  # 11525-3

NOT_ANALYSED = Code("FN0001", SCHEME, "Not analysed: no fetal head found")
MALFORMATION_TYPE = Code("FN0002", SCHEME, "Malformation type")
FINDING_CONFIDENCE = Code("FN0003", SCHEME, "Classifier confidence of finding")
TYPE_CONFIDENCE = Code("FN0004", SCHEME, "Classifier confidence of malformation type")
HEAD_SCORE = Code("FN0005", SCHEME, "Head segmentation plausibility")
AI_ASSESSMENT = Code("FN0006", SCHEME, "AI assessment of fetal head")

# DICOM Segmentation (PS3.3 C.8.20.2): segmented property category (CID 7150) and algorithm family (CID 7162);
# the property type is HEAD_STRUCTURE (CID 7151).
SEGMENT_CATEGORY = codes.cid7150.AnatomicalStructure
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence

FETUS = codes.DCM.Fetus
# TID 1004 Device Observer Identifying Attributes: the report names this software's Device UID.
DEVICE_OBSERVER_UID = codes.DCM.DeviceObserverUID
# TID 4019 Algorithm Identification (written by highdicom's AlgorithmIdentification).
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
ALGORITHM_PARAMETERS = codes.DCM.AlgorithmParameters


# Classifier labels with a standard concept in pydicom's copy of PS3.16; every other label keeps a
# private code (no SNOMED CT code is written that could not be checked against a local source).
STANDARD_MALFORMATIONS: dict[str, Code] = {
    "intracranial_hemorrhage": codes.SCT.IntracranialHemorrhage,  # 1386000
}


def malformation_code(label: str) -> Code:
    """Code of a classifier label: the standard concept of :data:`STANDARD_MALFORMATIONS`, else the
    private ``FNM`` + 6 hex digits of the label's SHA-1 (Code Value is SH, 16 chars)."""
    if label in STANDARD_MALFORMATIONS:
        return STANDARD_MALFORMATIONS[label]
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:6].upper()
    return Code(f"FNM{digest}", SCHEME, label.replace("_", " ").capitalize())


def coding_scheme_identification() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "fetalnode private codes"
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = "fetalnode project"
    return item
