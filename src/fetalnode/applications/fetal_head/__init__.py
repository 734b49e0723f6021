"""The fetal head application (``fetal-head``), in one folder.

- ``application.py``: the analysis (head segmentation, plausibility gate, biometry in mm, malformation
  classifier, Grad-CAM; the models are :mod:`fetalnode.inference`'s);
- ``writers.py``: its output writers, each a module here: ``report`` (TID 1500 SR), ``capture`` (the
  heatmap Secondary Capture), ``presentation`` (GSPS / Color PS), ``segmentation`` (SEG), ``obgyn``
  (OB-GYN Ultrasound Procedure Report, TID 5000);
- ``findings.py``: the reader of its SR, for the Orthanc plugin and the triage list (pydicom only);
- ``codes.py``: its coded concepts; ``gestation.py``: gestational age from HC (Hadlock 1984).

Importing the package imports nothing else: the Orthanc plugin loads ``findings`` without torch.
"""

NAME = "fetal-head"
