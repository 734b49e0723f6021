"""Who may associate: calling AE allow-list, per-AE source addresses, and DICOM TLS.

The checks run on the A-ASSOCIATE-RQ (pynetdicom's EVT_REQUESTED), before any presentation
context is negotiated, so a refused peer never gets to send a byte of data. The called-AE
check is pynetdicom's own (``AE.require_called_aet``).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from fetalnode.config import ScpSettings
from fetalnode.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessPolicy:
    """``allowed``: calling AE titles (empty = any); ``sources``: per-AE address ranges (absent = any)."""

    allowed: frozenset[str]
    sources: dict[str, tuple[Network, ...]]

    @classmethod
    def from_settings(cls, scp: ScpSettings) -> AccessPolicy:
        sources: dict[str, list[Network]] = {}
        for item in scp.allowed_sources:
            ae, sep, where = item.partition("=")
            if not sep or not ae.strip() or not where.strip():
                raise ConfigError(f"scp.allowed_sources item {item!r} is not 'AE=address[/prefix]'")
            try:
                net = ipaddress.ip_network(where.strip(), strict=False)
            except ValueError as exc:
                raise ConfigError(f"scp.allowed_sources item {item!r}: {exc}") from exc
            sources.setdefault(ae.strip(), []).append(net)
        return cls(frozenset(a.strip() for a in scp.allowed_calling_aets), {k: tuple(v) for k, v in sources.items()})

    def refusal(self, calling_ae: str, address: str) -> str:
        """Why this peer may not associate, or "" if it may."""
        ae = calling_ae.strip()
        if self.allowed and ae not in self.allowed:
            return f"calling AE title {ae!r} is not in scp.allowed_calling_aets"
        nets = self.sources.get(ae)
        if nets:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return f"peer address {address!r} is not an IP address"
            if not any(ip in net for net in nets):
                return f"calling AE title {ae!r} is not allowed from {address}"
        return ""


def server_tls_context(scp: ScpSettings) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``tls_ca_certificates`` a client certificate signed by that CA is required."""
    if not (scp.tls_certificate and scp.tls_private_key):
        raise ConfigError("scp.tls_port needs scp.tls_certificate and scp.tls_private_key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(scp.tls_certificate, scp.tls_private_key)
        if scp.tls_ca_certificates:
            ctx.load_verify_locations(scp.tls_ca_certificates)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA: {exc}") from exc
    return ctx
