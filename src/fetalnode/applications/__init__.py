"""Clinical applications: the bundles an analysis needs, the analysis, and the outputs it feeds.

``registry.py`` names them (``worker.application`` chooses one): ``fetal_head.py`` (``fetal-head``) and
``labour_progress.py`` (``labour-progress``: angle of progression on intrapartum transperineal images).
A later view router picks an application per image: it registers here, the runner does not change.
"""
