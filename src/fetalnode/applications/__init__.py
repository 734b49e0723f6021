"""Clinical applications: the bundles an analysis needs, the analysis, and the outputs it feeds.

``registry.py`` names them (``worker.application`` chooses one); ``fetal_head.py`` is the first.
A later view router picks an application per image: it registers here, the runner does not change.
"""
