"""Coded concepts of fetalnode reports.

Standard codes where they exist (LOINC fetal biometry of CID 12005, SNOMED CT normal/abnormal,
DCM); otherwise the private coding scheme ``99FETALNODE``, declared in the Coding Scheme
Identification Sequence of every report.

Importable without torch or highdicom (pydicom only): the Orthanc plugin reads reports by these codes.
"""

from __future__ import annotations

import hashlib

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99FETALNODE"
SCHEME_VERSION = "1"

HEAD_CIRCUMFERENCE = Code("11779-6", "LN", "Head Circumference")
BIPARIETAL_DIAMETER = Code("11820-8", "LN", "Biparietal Diameter")
OCCIPITAL_FRONTAL_DIAMETER = Code("11851-3", "LN", "Occipital-Frontal Diameter")
MM = Code("mm", "UCUM", "millimeter")
PERCENT = Code("%", "UCUM", "percent")

NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")
HEAD_STRUCTURE = Code("69536005", "SCT", "Head")
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
OB_ULTRASOUND = Code("11525-3", "LN", "US Pelvis Fetus for pregnancy")

NOT_ANALYSED = Code("FN0001", SCHEME, "Not analysed: no fetal head found")
MALFORMATION_TYPE = Code("FN0002", SCHEME, "Malformation type")
FINDING_CONFIDENCE = Code("FN0003", SCHEME, "Classifier confidence of finding")
TYPE_CONFIDENCE = Code("FN0004", SCHEME, "Classifier confidence of malformation type")
HEAD_SCORE = Code("FN0005", SCHEME, "Head segmentation plausibility")
AI_ASSESSMENT = Code("FN0006", SCHEME, "AI assessment of fetal head")

FETUS = codes.DCM.Fetus
# TID 1004 Device Observer Identifying Attributes: the report names this software's Device UID.
DEVICE_OBSERVER_UID = codes.DCM.DeviceObserverUID
# TID 4019 Algorithm Identification (written by highdicom's AlgorithmIdentification).
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
ALGORITHM_PARAMETERS = codes.DCM.AlgorithmParameters


def malformation_code(label: str) -> Code:
    """Private code of a classifier label: ``FNM`` + 6 hex digits of its SHA-1 (Code Value is SH, 16 chars)."""
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
# CID 12005 Fetal Biometry Measurements (LOINC).
FETAL_HEAD_CIRCUMFERENCE = codes.LN.HeadCircumference  # (11984-2, LN, "Head Circumference"), CIDs 12005, 12279
GESTATIONAL_AGE = codes.LN.GestationalAge  # (18185-9, LN, "Gestational Age"), CID 12019; TID 5008 derived row
EQUATION = codes.DCM.Equation  # (121420, DCM, "Equation"), CID 228 Equation or Table
HC_HADLOCK_1984 = codes.LN.HCHadlock1984  # (11932-1, LN, "HC, Hadlock 1984"), CIDs 12012, 12013
WEEK = codes.UCUM.Week  # (wk, UCUM, "week"), CIDs 6046, 7456
