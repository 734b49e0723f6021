"""The site's privacy layer: pseudonymise an image before it leaves the site, re-identify what comes back.

- :class:`Pseudonymiser` (``from_settings(settings.privacy)``) -> :class:`Pseudonymised`: the bytes to
  publish, the UID map (pseudonym -> original, kept at the terminal only) and the pixel report.
- :func:`reidentify` (a dataset) / :func:`reidentify_all` (the Part 10 objects a worker returned):
  objects built from the pseudonymised image, with the real patient, study and UIDs.

docs/security.md says what leaves the site and what does not.
"""

from fetalnode.privacy.keys import UidPseudonyms, is_registered, read_secret
from fetalnode.privacy.pixels import KEPT_REGION_TYPES, PixelReport, matching_mask
from fetalnode.privacy.pseudonymise import Pseudonymised, Pseudonymiser
from fetalnode.privacy.reidentify import patient_and_study_keywords, reidentify, reidentify_all

__all__ = [
    "KEPT_REGION_TYPES",
    "PixelReport",
    "Pseudonymised",
    "Pseudonymiser",
    "UidPseudonyms",
    "is_registered",
    "matching_mask",
    "patient_and_study_keywords",
    "read_secret",
    "reidentify",
    "reidentify_all",
]
