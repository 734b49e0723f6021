"""A private RabbitMQ (Debian ``rabbitmq-server``) on loopback, for the tests and the benchmarks.

Its own node name, ports, Mnesia and log folders and epmd port, so it never touches a system
broker. AMQP and epmd listen on 127.0.0.1; Erlang distribution is bound to 127.0.0.1 too.

Two modes:

- plain (default): the AMQP port with RabbitMQ's ``guest`` user (loopback only, RabbitMQ's own rule);
  :meth:`RabbitMQProcess.node_fields` gives the node settings (URL without password + password file).
- ``tls=True``: a TLS listener only (``listeners.tcp = none``), a throw-away CA (:func:`harness.pki.make_pki`),
  a virtual host ``fetalnode`` with one user per site in ``sites`` and a worker user, made with the same
  ``rabbitmqctl`` commands as docs/operations.md (permissions from :mod:`fetalnode.broker`), random
  passwords in files of mode 600; ``guest`` is deleted. ``require_client_certificates``: the broker asks
  every client for a certificate from the CA (``verify_peer`` + ``fail_if_no_peer_cert``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fetalnode.broker import WORKER_PERMISSIONS, site_permissions
from fetalnode.config import BrokerSettings
from harness.pki import make_pki
from harness.ports import free_port
from harness.processes import HarnessError, spawn

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
VHOST = "fetalnode"
WORKER = "fetalnode-worker"


@dataclass
class RabbitMQProcess:
    """A RabbitMQ broker with its own folders and free loopback ports.

    Plain mode: ``url`` / ``password_file`` (user ``guest``). TLS mode: :meth:`settings` /
    :meth:`node_fields` of each user (a site's name, or :data:`WORKER`); ``pki`` holds the CA, server
    and client keys and certificates.
    """

    workdir: Path
    tls: bool = False
    sites: tuple[str, ...] = ()
    require_client_certificates: bool = False
    port: int = 0
    pki: dict[str, Path] = field(default_factory=dict)
    # seconds of the last start: config_and_ca_s (TLS), listening_s, rabbitmqctl_s (TLS, first start)
    timings: dict[str, float] = field(default_factory=dict)
    _dist_port: int = 0
    _epmd_port: int = 0
    _provisioned: bool = False
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Plain mode: the AMQP URL of user ``guest`` (no password in it: see ``password_file``)."""
        return f"amqp://guest@127.0.0.1:{self.port}//"

    @property
    def password_file(self) -> Path:
        """Plain mode: the file holding ``guest``'s password."""
        return self.workdir / "secrets" / "guest.password"

    @property
    def node_name(self) -> str:
        return f"fetalnode{self.port}@localhost"

    def users(self) -> tuple[str, ...]:
        """TLS mode: every user made at start, the sites' and the worker's."""
        return (*self.sites, WORKER)

    def settings(self, user: str, *, client_certificate: bool | None = None) -> BrokerSettings:
        """TLS mode: ``[broker]`` for ``user`` (a site or :data:`WORKER`): its URL, password file, the CA, and a
        client certificate when the broker requires one (``client_certificate`` says otherwise)."""
        if not self.tls:
            return BrokerSettings(url=self.url, password_file=str(self.password_file))
        if user not in self.users():
            raise HarnessError(f"no broker user {user!r}; users: {', '.join(self.users())}")
        with_cert = self.require_client_certificates if client_certificate is None else client_certificate
        return BrokerSettings(
            url=f"amqps://{user}@127.0.0.1:{self.port}/{VHOST}",
            password_file=str(self.workdir / "secrets" / f"{user}.password"),
            ca_certificates=str(self.pki["ca_crt"]),
            certificate=str(self.pki["client_crt"]) if with_cert else "",
            private_key=str(self.pki["client_key"]) if with_cert else "",
            sites=list(self.sites) if user == WORKER else [],
            heartbeat=10.0,
            connect_timeout=5.0,
        )

    def node_fields(self, user: str = WORKER) -> dict[str, object]:
        """``broker__*`` fields for ``make_node``/``prepare_node`` (plain mode: guest, whatever ``user``)."""
        b = self.settings(user)
        names = ("url", "password_file", "ca_certificates", "certificate", "private_key", "sites")
        return {f"broker__{name}": getattr(b, name) for name in names if getattr(b, name)}

    def _env(self) -> dict[str, str]:
        env = {
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node_name,
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
        if self.tls:
            # The TCP listener comes from rabbitmq.conf (none); RABBITMQ_NODE_PORT would add one back.
            env["RABBITMQ_CONFIG_FILE"] = str(self.workdir / "rabbitmq.conf")
        else:
            env["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1"
            env["RABBITMQ_NODE_PORT"] = str(self.port)
        return env

    def _write_tls_config(self) -> None:
        if not self.pki:
            self.pki = make_pki(self.workdir / "pki")
        verify = "verify_peer" if self.require_client_certificates else "verify_none"
        lines = [
            "listeners.tcp = none",
            f"listeners.ssl.default = 127.0.0.1:{self.port}",
            f"ssl_options.cacertfile = {self.pki['ca_crt']}",
            f"ssl_options.certfile = {self.pki['server_crt']}",
            f"ssl_options.keyfile = {self.pki['server_key']}",
            f"ssl_options.verify = {verify}",
            f"ssl_options.fail_if_no_peer_cert = {str(self.require_client_certificates).lower()}",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 60.0) -> RabbitMQProcess:
        """Start (or restart: same ports, users and queues) and wait until AMQP accepts connections;
        in TLS mode, the first start also makes the virtual host, the users and their permissions."""
        if not SERVER.exists() or (shutil.which("erl") is None and not Path("/usr/lib/erlang").exists()):
            raise HarnessError("RabbitMQ is not installed (Debian package 'rabbitmq-server'); run `make deps`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self.port = self.port or free_port()
        self._dist_port = self._dist_port or free_port()
        self._epmd_port = self._epmd_port or free_port()
        if self.tls:
            began = time.monotonic()
            self._write_tls_config()
            self.timings["config_and_ca_s"] = time.monotonic() - began
        else:
            self._write_secret("guest", "guest")
        began = time.monotonic()
        self._proc = spawn([str(SERVER)], self.workdir / "rabbitmq.out", env=self._env())
        try:
            self._wait_listening(self._proc, timeout)
            self.timings["listening_s"] = time.monotonic() - began
            if self.tls and not self._provisioned:
                began = time.monotonic()
                self._provision()
                self.timings["rabbitmqctl_s"] = time.monotonic() - began
        except BaseException:
            self.stop()  # never leave a half-started broker behind
            raise
        return self

    def _wait_listening(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"RabbitMQ exited with {proc.returncode}; see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise HarnessError(f"RabbitMQ did not listen within {timeout:.0f} s")

    def _write_secret(self, user: str, password: str) -> Path:
        folder = self.workdir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{user}.password"
        path.touch(mode=0o600)
        path.write_text(password + "\n")
        return path

    def rabbitmqctl(self, *args: str, stdin: str | None = None) -> str:
        """Run ``rabbitmqctl ARGS`` against this broker; its output (HarnessError if it fails)."""
        done = subprocess.run(
            [str(CTL), "--node", self.node_name, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **self._env()},
            timeout=60,
        )
        if done.returncode != 0:
            raise HarnessError(f"rabbitmqctl {args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def add_user(self, user: str, password: str) -> None:
        """``rabbitmqctl add_user`` with the password on standard input (never on a command line)."""
        self.rabbitmqctl("add_user", user, stdin=password + "\n")

    def _provision(self) -> None:
        """The operator's commands of docs/operations.md ("Adding a site"), for every site and the worker."""
        self.rabbitmqctl("add_vhost", VHOST)
        for user in self.users():
            password = secrets.token_urlsafe(24)
            self.add_user(user, password)
            self._write_secret(user, password)
            permissions = WORKER_PERMISSIONS if user == WORKER else site_permissions(user)
            self.rabbitmqctl("set_permissions", "-p", VHOST, user, *permissions.args())
        self.rabbitmqctl("delete_user", "guest")
        self._provisioned = True

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
