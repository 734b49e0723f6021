"""The coded concepts of the image-quality report: a private scheme of this plugin (pydicom only)."""

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

SCHEME = "99FNQUALITY"
CONTRAST_SCORE = Code("Q001", SCHEME, "Image contrast score")
SCORE_UNIT = Code("{score}", "UCUM", "score")


def coding_scheme_identification() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "fetalnode image-quality plugin codes"
    item.CodingSchemeVersion = "1"
    item.CodingSchemeResponsibleOrganization = "fetalnode project (test plugin)"
    return item
