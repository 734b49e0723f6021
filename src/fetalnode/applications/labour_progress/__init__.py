"""The labour-progress application (``labour-progress``): the angle of progression and the head-symphysis
distance on intrapartum transperineal ultrasound, in one folder.

- ``application.py``: the analysis (pubic symphysis and fetal head segmentation, :mod:`fetalnode.inference.aop`);
- ``writers.py``: its output writers: ``report`` (TID 1500 SR), ``capture`` (the angle drawn, Secondary
  Capture), ``presentation`` (the lines as a Presentation State), ``segmentation`` (SEG of both structures);
  ``geometry.py``: the graphics they share;
- ``findings.py``: the reader of its SR (pydicom only); ``codes.py``: its coded concepts.
"""

NAME = "labour-progress"
