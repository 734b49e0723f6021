"""Clinical applications, one folder each: the analysis, its output writers, the reader of its report.

``fetal_head/`` (``fetal-head``), ``labour_progress/`` (``labour-progress``) and ``view_router/``
(``view-router``: recognises the view of each image and runs the application registered for it).
``base.py`` is what an application is to the runner; ``registry.py`` names them (``worker.application``
chooses one). A module named in ``node.plugins`` adds one the same way, from outside the source tree.
"""
