"""The data terminal's Application Entity: its DICOM services composed on one :class:`Terminal`.

:mod:`fetalnode.scp.storage` (verification, storage, and what every association goes through) and
:mod:`fetalnode.scp.printer` (the print SCP) hand what they receive to the
:class:`~fetalnode.scp.terminal.Terminal`; neither knows the other. The association acceptor itself
(request screening, association limits, peer faults) is :mod:`fetalnode.scp.association`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fetalnode.config import Settings
from fetalnode.scp.access import server_tls_context
from fetalnode.scp.association import AssociationLimits, NodeServer, install_peer_faults
from fetalnode.scp.contexts import ANNOTATION_BOX, META_COLOR, META_GRAYSCALE, PRESENTATION_LUT, served_on
from fetalnode.scp.printer import PrintScp
from fetalnode.scp.storage import StorageScp
from fetalnode.scp.terminal import Terminal

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]


def build_ae(settings: Settings) -> AE:
    """The AE with its presentation contexts, timeouts and access rules.

    Every Storage SOP class is accepted at negotiation so that an unsupported one gets a clear
    C-STORE status (0x0122) rather than a silent "no presentation context" at the modality.
    """
    scp = settings.scp
    ae = AE(ae_title=settings.node.ae_title)
    ae.acse_timeout = scp.acse_timeout
    ae.dimse_timeout = scp.dimse_timeout
    ae.network_timeout = scp.network_timeout
    # pynetdicom's own limit counts every open connection, negotiated or not: it is the hard cap behind the
    # node's limits (AssociationLimits), which count negotiated associations only and evict idle ones.
    ae.maximum_associations = AssociationLimits.of(
        scp.maximum_associations_per_address, scp.maximum_associations, scp.idle_eviction_seconds
    ).hard_limit
    ae.maximum_pdu_size = scp.maximum_pdu_size
    ae.require_called_aet = scp.check_called_aet
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for context in StoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    if settings.print.enabled:
        for sop_class in (META_GRAYSCALE, META_COLOR, PRESENTATION_LUT, ANNOTATION_BOX):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def start_scp(settings: Settings, terminal: Terminal) -> list[NodeServer]:
    """Compose the node's DICOM services on ``terminal`` (storage and verification; the print SCP when
    ``print.enabled``) into one Application Entity and start listening (non-blocking) on the DICOM port,
    and the TLS port if configured.

    Returns the servers to ``shutdown()``.
    """
    ae = build_ae(settings)
    install_peer_faults()
    # pynetdicom's standard handlers only log (at DEBUG), and raise on a malformed command set.
    _config.LOG_HANDLER_LEVEL = "standard" if settings.logging.third_party.upper() == "DEBUG" else "none"
    storage = StorageScp(terminal)
    handlers = storage.handlers()
    if settings.print.enabled:
        handlers += PrintScp(terminal).handlers()
    host, scp = settings.node.host, settings.scp
    tls = server_tls_context(scp) if scp.tls_port else None
    servers = [_serve(ae, (host, settings.node.port), handlers, storage, None)]
    log.info("SCP %s listening on %s:%d", settings.node.ae_title, host, settings.node.port)
    if tls is not None:
        servers.append(_serve(ae, (host, scp.tls_port), handlers, storage, tls))
        log.info(
            "SCP %s listening with DICOM TLS on %s:%d (client certificates %s)",
            settings.node.ae_title,
            host,
            scp.tls_port,
            "required" if scp.tls_ca_certificates else "not required",
        )
    return servers


def _serve(
    ae: AE, address: tuple[str, int], handlers: list[Any], storage: StorageScp, tls: ssl.SSLContext | None
) -> NodeServer:
    """What ``AE.start_server(block=False)`` does, with the node's server class (:class:`NodeServer`)."""
    server: Any = ae.make_server(
        address,
        ssl_context=tls,
        evt_handlers=handlers,
        server_class=NodeServer,
        refused=storage.request_refused,
        served_on=served_on,
        finished=storage.association_ended,
    )
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)
    assert isinstance(server, NodeServer)
    return server
