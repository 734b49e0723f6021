"""Coded concepts of the view router's own report (pydicom only)."""

from __future__ import annotations

from pydicom.sr.coding import Code

from fetalnode.outputs.codes import SCHEME

# The router's assessment of an image no application answered (its SR's one qualitative evaluation).
VIEW_ASSESSMENT = Code("FN0201", SCHEME, "AI assessment of image view")
# Its values. No application for the recognised view: the image was not looked at for a head at all, which
# "no fetal head found" would wrongly say. (Reports written before the router had its own report carry this
# value under the head's assessment, FN0006.)
NO_APPLICATION = Code("FN0007", SCHEME, "Not analysed: no application for this view")
# The view model and an application that recognises its own view disagreed, or the model abstained.
VIEW_UNCERTAIN = Code("FN0202", SCHEME, "Not analysed: view uncertain")
