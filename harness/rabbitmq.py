"""A private RabbitMQ (Debian ``rabbitmq-server``) on loopback, for the tests and the benchmarks.

Its own node name, ports, Mnesia and log folders and epmd port, so it never touches a system
broker. AMQP and epmd listen on 127.0.0.1; Erlang distribution is bound to 127.0.0.1 too. The
default ``guest`` user only works from loopback (RabbitMQ's own rule).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.ports import free_port
from harness.processes import HarnessError, spawn

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


@dataclass
class RabbitMQProcess:
    """A RabbitMQ broker with its own folders and free loopback ports; ``url`` is its AMQP URL."""

    workdir: Path
    port: int = 0
    _dist_port: int = 0
    _epmd_port: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def node_name(self) -> str:
        return f"fetalnode{self.port}@localhost"

    def _env(self) -> dict[str, str]:
        return {
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            # Loopback distribution; no scheduler busy-waiting (it would take CPU from the workers).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1} "
            "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def start(self, timeout: float = 60.0) -> RabbitMQProcess:
        """Start (or restart: same ports and queues) and wait until AMQP accepts connections."""
        if not SERVER.exists() or (shutil.which("erl") is None and not Path("/usr/lib/erlang").exists()):
            raise HarnessError("RabbitMQ is not installed (Debian package 'rabbitmq-server'); run `make deps`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self.port = self.port or free_port()
        self._dist_port = self._dist_port or free_port()
        self._epmd_port = self._epmd_port or free_port()
        self._proc = spawn([str(SERVER)], self.workdir / "rabbitmq.out", env=self._env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HarnessError(f"RabbitMQ exited with {self._proc.returncode}; see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        raise HarnessError(f"RabbitMQ did not listen within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the broker (its whole process group, epmd included); queues persist in ``workdir``."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        # Erlang processes of this node that left the group: matched by this broker's own node name.
        subprocess.run(["pkill", "-f", self.node_name], check=False)
        epmd = shutil.which("epmd") or next(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), None)
        if epmd:
            subprocess.run([str(epmd), "-kill"], env={**os.environ, **self._env()}, capture_output=True, check=False)
        self._proc = None
