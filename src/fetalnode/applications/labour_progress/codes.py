"""Coded concepts of the labour-progress application's reports (pydicom only)."""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from fetalnode.outputs.codes import SCHEME

# Labour progress (application ``labour-progress``, intrapartum transperineal ultrasound).
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
