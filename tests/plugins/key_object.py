"""An extra output writer, ``ko``: a Key Object Selection document flagging the analysed image.

Registered through ``node.plugins = ["tests.plugins.key_object"]`` and enabled with
``output.enabled = ["sr", "sc", "ko"]``: what a site adding its own output object would write.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fetalnode.outputs.common import identity
from fetalnode.outputs.registry import OutputContext, register_output


@register_output("ko")
def key_object(ctx: OutputContext) -> Dataset:
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=[ctx.source],
        description=f"analysed by fetalnode ({ctx.analysis.application})",
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=[ctx.source],
        content=content,
        **identity(ctx, series_number=9199),
    )
