"""fetalnode: a DICOM-native AI node for fetal ultrasound.

Research use only, not for diagnosis: the models are trained on small public datasets.
"""

__version__ = "0.1.0"

RESEARCH_NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
