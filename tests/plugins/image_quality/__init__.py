"""An application that lives outside the source tree: ``image-quality``, a contrast score of the image.

It shows the seam, not a clinical method: the score is the spread of the image's grey levels (the standard
deviation of the 0-1 grayscale frame, in percent). Registered through ``node.plugins =
["tests.plugins.image_quality.register"]``, routed to by the view router (``[router.applications]``), its
report read back by the Orthanc plugin (``"Fetalnode": {"Plugins": ["tests.plugins.image_quality.findings"]}``).

Importing the package imports nothing else (the Orthanc plugin loads ``findings`` with pydicom only).
"""

NAME = "image-quality"
