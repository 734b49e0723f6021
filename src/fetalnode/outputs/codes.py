"""Coded concepts every fetalnode object shares: units, comments, the algorithm and device identification,
and the private coding scheme ``99FETALNODE``. Each application's own concepts are in its folder
(``applications/<name>/codes.py``).

Standard codes where they exist, each checked against pydicom's copy of PS3.16 (``pydicom.sr``
concept and context group tables); otherwise the private coding scheme ``99FETALNODE``, declared in the
Coding Scheme Identification Sequence of every report.

Importable without torch or highdicom (pydicom only): the Orthanc plugin reads reports by these codes.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99FETALNODE"

SCHEME_VERSION = "1"

MM = Code("mm", "UCUM", "millimeter")

PERCENT = Code("%", "UCUM", "percent")

COMMENT = codes.DCM.Comment  # 121106

# TID 1500 row "Qualitative Evaluations" (not in pydicom's tables: UMLS is not one of its schemes).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# Procedure Reported (TID 1500, DCID 100 extensible); the meaning is PS3.16's for this LOINC code (CID 7000).
OB_ULTRASOUND = codes.LN.UltrasoundObstetricAndGynReport  # 11525-3

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

def coding_scheme_identification() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "fetalnode private codes"
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = "fetalnode project"
    return item
