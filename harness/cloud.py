"""The cloud set-up on loopback: a RabbitMQ broker with a TLS listener and a user per site, site terminals
(``serve --role terminal``), each delivering to its own Orthanc, and cloud workers (``serve --role worker``)
serving every site. Used by the cloud tests, ``python -m harness.demo --cloud`` and the benchmarks.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetalnode.config import MaskSettings, Settings
from harness.config import MODALITY_AET, NODE_AET, TOOL_AETS, override
from harness.node import MODELS, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from harness.rabbitmq import WORKER, RabbitMQProcess


def write_secret(path: Path) -> Path:
    """A site's pseudonymisation secret (32 random bytes, hex), mode 600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def prepare_terminal(
    folder: Path,
    orthanc: OrthancProcess,
    broker: RabbitMQProcess,
    site: str,
    *,
    masks: Sequence[MaskSettings] = (),
    calling_aets: Sequence[str] = (MODALITY_AET, *TOOL_AETS),
    **fields: Any,
) -> NodeProcess:
    """A site terminal in ``folder`` (not started): its broker user ``site``, a fresh secret, ``masks``, and
    ``orthanc`` as its destination for the source and every output."""
    site_fields: dict[str, Any] = {
        "node__role": "terminal",
        "privacy__secret_file": str(write_secret(folder / "site.secret")),
        "privacy__masks": list(masks),
        **broker.node_fields(site),
        **fields,
    }
    return prepare_node(folder, orthanc, calling_aets=calling_aets, source_to_orthanc=True, **site_fields)


def prepare_worker(folder: Path, broker: RabbitMQProcess, **fields: Any) -> NodeProcess:
    """A cloud worker's configuration in ``folder`` (start it with :meth:`NodeProcess.start_broker_worker`):
    the broker's worker user, every site of the broker, the bundles; no destination, no patient data."""
    settings = Settings()
    settings.node.role = "worker"
    settings.node.ae_title = NODE_AET
    settings.node.port = free_port()  # unused by a worker: no SCP
    settings.node.data_dir = str(folder / "data")
    settings.models.dir = str(MODELS)
    for name, value in broker.node_fields(WORKER).items():
        override(settings, **{name: value})
    return NodeProcess.write(folder, override(settings, **fields))


@dataclass
class CloudSites:
    """A broker, one terminal and one Orthanc per site, and the cloud workers (all prepared, none started)."""

    broker: RabbitMQProcess
    terminals: dict[str, NodeProcess] = field(default_factory=dict)
    orthancs: dict[str, OrthancProcess] = field(default_factory=dict)
    workers: list[NodeProcess] = field(default_factory=list)

    def stop(self) -> None:
        for node in [*self.workers, *self.terminals.values()]:
            node.stop()
        for orthanc in self.orthancs.values():
            orthanc.stop()
        self.broker.stop()
