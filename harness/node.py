"""fetalnode node processes: the one way the demo, the tests and the benchmarks start a node.

A node is ``python -m fetalnode.cli serve --config node.toml`` (plus ``worker`` and
``serve --role worker`` processes on the same configuration), written by :mod:`harness.config`
into a folder of its own: ``node.toml``, ``data/``, ``node.log``, ``orthanc-password``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetalnode.config import Settings, load_settings
from fetalnode.jobs import JobStore
from fetalnode.vocab import JobState
from harness.config import (
    MODALITY_AET,
    NODE_AET,
    TOOL_AETS,
    node_settings,
    orthanc_destination,
    override,
    write_settings,
)
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from harness.processes import HarnessError, spawn, stop_process, tail, wait_for

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
FINAL = frozenset(str(s) for s in JobState if s.final)


def fetalnode_command(*args: str) -> list[str]:
    """``fetalnode ARGS`` with this interpreter (the checkout's virtual environment)."""
    return [sys.executable, "-m", "fetalnode.cli", *args]


def cli(
    *args: str, env: Mapping[str, str] | None = None, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``fetalnode ARGS`` to completion as a user would, from the repository root."""
    return subprocess.run(
        fetalnode_command(*args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=check,
        timeout=timeout,
    )


def echo(port: int, calling_aet: str = MODALITY_AET, called_aet: str = NODE_AET) -> bool:
    """One C-ECHO with DCMTK ``echoscu`` to 127.0.0.1:``port``; True if it succeeded."""
    command = ["echoscu", "-aet", calling_aet, "-aec", called_aet, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True).returncode == 0


def wait_echo(
    port: int,
    timeout: float,
    *,
    calling_aet: str = MODALITY_AET,
    called_aet: str = NODE_AET,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll with ``echoscu`` until the peer on ``port`` answers C-ECHO; fail early if ``proc`` exits."""

    def answered() -> bool:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(
                f"{called_aet} exited with {proc.returncode} before answering C-ECHO"
                + (f":\n{tail(log)}" if log is not None else "")
            )
        return echo(port, calling_aet, called_aet)

    try:
        wait_for(answered, timeout, f"{called_aet} to answer C-ECHO on port {port}")
    except TimeoutError as exc:
        raise HarnessError(str(exc) + (f":\n{tail(log)}" if log is not None else "")) from None


@dataclass
class NodeProcess:
    """A node configuration and the processes started on it: ``serve``, ``worker``s, ``serve --role worker``s.

    ``settings`` is what ``config`` holds; ``echo_aet`` is the calling AE of the readiness C-ECHO;
    ``env`` is added to the processes' environment.
    """

    config: Path
    settings: Settings
    log: Path
    echo_aet: str = MODALITY_AET
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    broker_workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def write(
        cls, folder: Path, settings: Settings, *, echo_aet: str | None = None, env: Mapping[str, str] | None = None
    ) -> NodeProcess:
        """Write ``settings`` to ``folder/node.toml`` (checked by reading it back) for a node logging to ``folder/node.log``."""
        folder.mkdir(parents=True, exist_ok=True)
        config = write_settings(settings, folder / "node.toml")
        if load_settings(config, env={}) != settings:
            raise HarnessError(f"{config} does not read back as the settings written")
        aets = settings.scp.allowed_calling_aets
        return cls(
            config=config,
            settings=settings,
            log=folder / "node.log",
            echo_aet=echo_aet or (aets[0] if aets else "ECHOSCU"),
            env=dict(env or {}),
        )

    @property
    def folder(self) -> Path:
        return self.config.parent

    @property
    def port(self) -> int:
        return self.settings.node.port

    @property
    def ae_title(self) -> str:
        return self.settings.node.ae_title

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.node.data_dir)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.data_dir / "jobs.sqlite")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return spawn(fetalnode_command(*args, "--config", str(self.config)), self.log, env=self.env, cwd=ROOT)

    def start(self, *extra: str, timeout: float = 120) -> NodeProcess:
        """``serve`` with CLI flags ``extra`` (e.g. ``--no-worker``, ``--role terminal``); returns once it answers C-ECHO."""
        if self.running:
            raise HarnessError(f"the node on port {self.port} is already running")
        self.proc = self._spawn("serve", *extra)
        try:
            self.wait_echo(timeout)
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def wait_echo(self, timeout: float = 120) -> None:
        wait_echo(self.port, timeout, calling_aet=self.echo_aet, called_aet=self.ae_title, proc=self.proc, log=self.log)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A ``fetalnode worker`` process (the embedded queue's worker, separate from ``serve --no-worker``)."""
        self.worker = self._spawn("worker")
        return self.worker

    def start_broker_worker(self) -> subprocess.Popen[bytes]:
        """A ``serve --role worker`` process (a cloud worker on the broker) with this node's config."""
        proc = self._spawn("serve", "--role", "worker")
        self.broker_workers.append(proc)
        return proc

    def wait_all(self, n: int, states: Collection[str] = FINAL, timeout: float = 240) -> None:
        """Wait until at least ``n`` jobs exist and every job is in ``states``."""

        def done() -> bool:
            jobs = self.jobs.jobs()
            return len(jobs) >= n and all(j.state in states for j in jobs)

        try:
            wait_for(done, timeout, f"{n} jobs in {sorted(states)}")
        except TimeoutError as exc:
            jobs = [(j.id, j.state, j.error) for j in self.jobs.jobs()]
            raise TimeoutError(f"{exc}; jobs: {jobs}\nnode log:\n{tail(self.log, 4000)}") from None

    def kill(self) -> None:
        """SIGKILL ``serve`` (SCP and embedded worker at once), as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every process of this node (SIGKILL after ``timeout`` seconds)."""
        for proc in self.broker_workers:
            stop_process(proc, timeout)
        stop_process(self.worker, timeout)
        stop_process(self.proc, timeout)


def prepare_node(
    folder: Path,
    orthanc: OrthancProcess,
    *,
    calling_aets: Sequence[str] = (MODALITY_AET, *TOOL_AETS),
    models_dir: Path = MODELS,
    env: Mapping[str, str] | None = None,
    source_to_orthanc: bool = False,
    **fields: Any,
) -> NodeProcess:
    """A node in ``folder`` on a free port delivering to ``orthanc``; not started yet.

    ``source_to_orthanc``: Orthanc is a ``[[destinations]]`` table receiving the source image too
    (so each study shows the image beside the report), else the implicit ``[orthanc]`` destination.
    ``fields``: further settings as ``section__key=value`` (:func:`harness.config.override`).
    The first allowed calling AE is the modality: the C-ECHO that tells the node is up calls from it.
    """
    if not orthanc.http_port:
        raise HarnessError("start the Orthanc before configuring a node for it: its ports are chosen at start")
    settings = node_settings(
        port=free_port(),
        data_dir=folder / "data",
        orthanc_url=orthanc.url,
        orthanc_username=orthanc.username,
        password_file=orthanc.write_password_file(folder / "orthanc-password"),
        models_dir=models_dir,
        calling_aets=calling_aets,
    )
    if source_to_orthanc:
        settings.destinations = [orthanc_destination(settings, ["source", "outputs"])]
    return NodeProcess.write(folder, override(settings, **fields), env=env)
