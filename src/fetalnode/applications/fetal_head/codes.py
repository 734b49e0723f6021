"""Coded concepts of the fetal head application's reports.

LOINC fetal biometry of CID 12005 Fetal Biometry Measurements, SNOMED CT normal/abnormal of CID 222
Normality, head of CID 7151, the TID 5000 OB-GYN concepts (each checked against pydicom's copy of PS3.16);
otherwise the private scheme ``99FETALNODE`` (:mod:`fetalnode.outputs.codes`). pydicom only.
"""

from __future__ import annotations

import hashlib

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from fetalnode.outputs.codes import SCHEME

# CID 12005. (11779-6 is "EDD from LMP" of CID 12003 OB-GYN Dates, not a head measurement.)
HEAD_CIRCUMFERENCE = codes.LN.HeadCircumference  # 11984-2

BIPARIETAL_DIAMETER = codes.LN.BiparietalDiameter  # 11820-8

OCCIPITAL_FRONTAL_DIAMETER = codes.LN.OccipitalFrontalDiameter  # 11851-3

NORMAL = codes.SCT.Normal  # 17621005, CID 222

ABNORMAL = codes.SCT.Abnormal  # 263654008, CID 222

HEAD_STRUCTURE = codes.SCT.Head  # 69536005, CID 7151

NOT_ANALYSED = Code("FN0001", SCHEME, "Not analysed: no fetal head found")

MALFORMATION_TYPE = Code("FN0002", SCHEME, "Malformation type")

# The head SR's revision 1 and earlier wrote the classifier's confidences under these two names; readers still
# accept FN0003 in reports already stored. Revision 2 names the finding in the confidence's own concept (below).
FINDING_CONFIDENCE = Code("FN0003", SCHEME, "Classifier confidence of finding")

TYPE_CONFIDENCE = Code("FN0004", SCHEME, "Classifier confidence of malformation type")

HEAD_SCORE = Code("FN0005", SCHEME, "Head segmentation plausibility")

AI_ASSESSMENT = Code("FN0006", SCHEME, "AI assessment of fetal head")

# The value of MALFORMATION_TYPE when the finding is abnormal but the classifier bundle's reporting rule
# names no type ("abnormal, type not determined"): 373068000 of CID 230 Yes-No and CID 240 Present-Absent.
TYPE_NOT_DETERMINED = codes.SCT.Undetermined  # 373068000

# The classifier's calibrated confidence in its finding, one concept per finding: a viewer labels a NUM
# "<concept meaning>: <value> <unit>" (OHIF: "Normal (AI): 99.89 %"), so the finding reads beside its confidence.
NORMAL_CONFIDENCE = Code("FN0008", SCHEME, "Normal (AI)")

ABNORMAL_CONFIDENCE = Code("FN0009", SCHEME, "Abnormal (AI)")  # abnormal, with the type named (its own NUM)

UNTYPED_ABNORMAL_CONFIDENCE = Code("FN0010", SCHEME, "Abnormal, type not determined (AI)")

# Every concept a finding's confidence is written under, newest first (FN0003: reports of revision 1 and earlier).
FINDING_CONFIDENCES = (NORMAL_CONFIDENCE, ABNORMAL_CONFIDENCE, UNTYPED_ABNORMAL_CONFIDENCE, FINDING_CONFIDENCE)

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

def finding_confidence_code(finding: str, typed: bool) -> Code:
    """The concept of the confidence in ``finding`` ("normal" / "abnormal"); ``typed``: a type is named."""
    if finding != "abnormal":
        return NORMAL_CONFIDENCE
    return ABNORMAL_CONFIDENCE if typed else UNTYPED_ABNORMAL_CONFIDENCE

def type_confidence_code(label: str) -> Code:
    """The concept of the confidence in a named malformation type: private ``FNT`` + 6 hex digits of the
    label's SHA-1, meaning "<label in words> (AI)" (the type's own code, :func:`malformation_code`, is the
    value of :data:`MALFORMATION_TYPE`)."""
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:6].upper()
    return Code(f"FNT{digest}", SCHEME, f"{label.replace('_', ' ').capitalize()} (AI)"[:64])

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
