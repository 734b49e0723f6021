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
# The head SR's revision 1 and earlier wrote the classifier's confidences under these two names; readers still
# accept FN0003 in reports already stored. Revision 2 names the finding in the confidence's own concept (below).
FINDING_CONFIDENCE = Code("FN0003", SCHEME, "Classifier confidence of finding")
TYPE_CONFIDENCE = Code("FN0004", SCHEME, "Classifier confidence of malformation type")
HEAD_SCORE = Code("FN0005", SCHEME, "Head segmentation plausibility")
AI_ASSESSMENT = Code("FN0006", SCHEME, "AI assessment of fetal head")
# The value of MALFORMATION_TYPE when the finding is abnormal but the classifier bundle's reporting rule
# names no type ("abnormal, type not determined"): 373068000 of CID 230 Yes-No and CID 240 Present-Absent.
TYPE_NOT_DETERMINED = codes.SCT.Undetermined  # 373068000
# The view router's answer for an image whose view has no application (issue 19): the image was not
# looked at for a head at all, which "no fetal head found" would wrongly say.
NO_APPLICATION = Code("FN0007", SCHEME, "Not analysed: no application for this view")
# The classifier's calibrated confidence in its finding, one concept per finding: a viewer labels a NUM
# "<concept meaning>: <value> <unit>" (OHIF: "Normal (AI): 99.89 %"), so the finding reads beside its confidence.
NORMAL_CONFIDENCE = Code("FN0008", SCHEME, "Normal (AI)")
ABNORMAL_CONFIDENCE = Code("FN0009", SCHEME, "Abnormal (AI)")  # abnormal, with the type named (its own NUM)
UNTYPED_ABNORMAL_CONFIDENCE = Code("FN0010", SCHEME, "Abnormal, type not determined (AI)")
# Every concept a finding's confidence is written under, newest first (FN0003: reports of revision 1 and earlier).
FINDING_CONFIDENCES = (NORMAL_CONFIDENCE, ABNORMAL_CONFIDENCE, UNTYPED_ABNORMAL_CONFIDENCE, FINDING_CONFIDENCE)

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


# Labour progress (application ``labour-progress``, intrapartum transperineal ultrasound; issue 19).
# PS3.16 has no concept for the angle of progression or the head-symphysis distance (pydicom 3.0's tables:
# no intrapartum or labour CID; CID 12005 lists antepartum fetal biometry only), nor has LOINC as far as
# could be checked here: both are private codes, in their own range FN01xx.
SYMPHYSIS_PUBIS = codes.SCT.SymphysisPubis  # (82561000, SCT, "Symphysis pubis"), CID 8134 Anatomic Structure
# Not in pydicom's PS3.16 tables: the SNOMED CT concept of KBV's value set "Head circumference body site"
# (fhir.kbv.de KBV_VS_Base_Head_Circumference_BodySite_Snomed), more precise than Head (69536005) of CID 7151.
FETAL_HEAD = Code("362865009", "SCT", "Entire fetal head")
DEGREE = codes.UCUM.Degree  # (deg, UCUM, "Degree"), CID 7183
# UCUM has no pixel unit: an annotation in braces is a dimensionless count (UCUM 1), as "{counts}" of CID 7181,
# so a reader parsing UCUM sees a number of pixel widths, never a length.
PIXELS = Code("{pixels}", "UCUM", "pixels")
# TID 1500's container of measurements outside a measurement group: the labour SR's HSD in pixels (no viewer
# draws it as a label: a UCUM annotation is no unit to show a reader).
DERIVED_IMAGING_MEASUREMENTS = codes.DCM.DerivedImagingMeasurements  # (126011, DCM)
ANGLE_OF_PROGRESSION = Code("FN0101", SCHEME, "Angle of progression")
HEAD_SYMPHYSIS_DISTANCE = Code("FN0102", SCHEME, "Head-symphysis distance")
LABOUR_ASSESSMENT = Code("FN0103", SCHEME, "AI assessment of labour progress")
LABOUR_MEASURED = Code("FN0104", SCHEME, "Angle of progression measured")
LABOUR_NOT_ANALYSED = Code("FN0105", SCHEME, "Not analysed: pubic symphysis or fetal head not measurable")
# The literature anchor shown beside the angle of progression (SR comment, Secondary Capture, Orthanc panel, triage).
AOP_REFERENCE = (
    "AoP \u2265 120\u00b0 went with a 90% chance of spontaneous or easy vacuum delivery "
    "(Kalache et al., Ultrasound Obstet Gynecol 2009) - literature, research use only"
)
# The same in the default character repertoire, for DICOM text (SR comments, Image Comments).
AOP_REFERENCE_ASCII = AOP_REFERENCE.replace("\u2265 ", ">= ").replace("\u00b0", " degrees")
OUTLINE = codes.DCM.Outline  # (111041, DCM, "Outline"), CID 219: geometric purpose of a contour region (TID 1410)
