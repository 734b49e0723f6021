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
# The view router's answer for an image whose view has no application (issue 19): the image was not
# looked at for a head at all, which "no fetal head found" would wrongly say.
NO_APPLICATION = Code("FN0007", SCHEME, "Not analysed: no application for this view")

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


# TID 5000 OB-GYN report
# Each code below is in pydicom's PS3.16 tables (``pydicom.sr._concepts_dict``); the CID named is where
# pydicom lists it ("no CID": a DCM concept used as an enumerated value in the template row).
OBGYN_REPORT = codes.DCM.OBGYNUltrasoundProcedureReport  # (125000, DCM), CID 12024 document titles; TID 5000 row 1
SUMMARY = codes.DCM.Summary  # (121111, DCM), no CID; TID 5002 row 1
FETAL_BIOMETRY = codes.DCM.FetalBiometry  # (125002, DCM), no CID; TID 5005 row 1
BIOMETRY_GROUP = codes.DCM.BiometryGroup  # (125005, DCM), no CID; TID 5008 row 1
SUBJECT_ID = codes.DCM.SubjectID  # (121030, DCM), no CID; TID 1008 (as highdicom's SubjectContextFetus writes it)
# HC, BPD, OFD (CID 12005 Fetal Biometry Measurements): the constants at the top of this module.
GESTATIONAL_AGE = codes.LN.GestationalAge  # (18185-9, LN, "Gestational Age"), CID 12019; TID 5008 derived row
EQUATION = codes.DCM.Equation  # (121420, DCM, "Equation"), CID 228 Equation or Table
HC_HADLOCK_1984 = codes.LN.HCHadlock1984  # (11932-1, LN, "HC, Hadlock 1984"), CIDs 12012, 12013
WEEK = codes.UCUM.Week  # (wk, UCUM, "week"), CIDs 6046, 7456
