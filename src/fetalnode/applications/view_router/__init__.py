"""The view router (``view-router``): recognises the view of every image and runs the application
registered for it, in one folder.

- ``application.py``: the view model, the cross-check, the routing;
- ``result.py``: its own answer when no application answers (:class:`~.result.NoApplication`: "not analysed:
  <view>, no application for this view", or the view uncertain);
- ``writers.py``: the small objects of that answer: ``report`` (TID 1500 SR), ``capture`` (Secondary
  Capture), ``presentation`` (Presentation State);
- ``findings.py``: the reader of its SR (pydicom only); ``codes.py``: its coded concepts.
"""

NAME = "view-router"
