"""The link to the RabbitMQ broker (roles terminal and worker): AMQPS connections and each site's queues.

Connections (:func:`connect`) use TLS 1.2 or later, check the broker's certificate against
``broker.ca_certificates`` and the URL's host name, present ``broker.certificate`` when set, read the
password from ``broker.password_file`` when they connect, send heartbeats and wait for the broker to
confirm every message published. Plain ``amqp://`` is accepted only to a broker on this machine, with a
warning at start (:func:`check`).

Topology: one virtual host (the URL's path) for every site; a site is a RabbitMQ user, and its name is
that user's name. Each site has two exchanges and two queues of its own (:class:`SiteTopology`)::

    terminal of S  --publish_job-->     exchange fetalnode.S.submit --> queue fetalnode.S.jobs
    worker         --(job's replies)--> exchange fetalnode.S.return --> queue fetalnode.S.results --> terminal of S

Site S may only write to ``fetalnode.S.submit`` and read ``fetalnode.S.results`` (:func:`site_permissions`);
it cannot publish to the default exchange, declare, bind, purge or delete anything. The worker user
(:data:`WORKER_PERMISSIONS`) declares every site's exchanges and queues, reads the jobs queues and writes
the return exchanges; it cannot read a results queue. A job's site is the queue the worker took it from,
never the message: only S's user can write to ``fetalnode.S.submit``, and the ``user_id`` property,
which the broker checks against the publishing connection's user, must name S as well.

Typical use (one thread each; a kombu connection is used by one thread only)::

    # terminal of its site: results in, jobs out, on one connection
    def link(conn):
        consume_results(conn, apply_result, stop=stop, idle=lambda: publish_queued_jobs(conn))
    run_connected(settings.broker, link, stop, on_down=audit_down, on_up=audit_up)

    # worker: every site's jobs, one at a time; analyse(delivery) returns the result messages (Reply)
    run_connected(settings.broker, lambda conn: consume_jobs(conn, settings.broker.sites, analyse, stop=stop), stop)
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp.exceptions
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from fetalnode.config import SITE_NAME, BrokerSettings
from fetalnode.errors import BrokerError, ConfigError, NodeError

log = logging.getLogger(__name__)

PREFIX = "fetalnode"
JSON = "application/json"
BINARY = "application/octet-stream"
# Site names in a permission pattern: SITE_NAME without its length limit (RabbitMQ matches Erlang regexes).
_ANY_SITE = "[a-z0-9][a-z0-9-]*"


# -- names and permissions ----------------------------------------------------------------------


@dataclass(frozen=True)
class SiteTopology:
    """The exchanges and queues of one site (all durable; the exchanges are direct, routing key: the site)."""

    site: str

    def __post_init__(self) -> None:
        if not SITE_NAME.fullmatch(self.site):
            raise ConfigError(f"{self.site!r} is not a site name (lower-case letters, digits and hyphens)")

    @property
    def submit_exchange(self) -> str:
        """Where the site's terminal publishes its jobs."""
        return f"{PREFIX}.{self.site}.submit"

    @property
    def jobs_queue(self) -> str:
        """The site's jobs, read by the workers."""
        return f"{PREFIX}.{self.site}.jobs"

    @property
    def return_exchange(self) -> str:
        """Where workers publish the site's results."""
        return f"{PREFIX}.{self.site}.return"

    @property
    def results_queue(self) -> str:
        """The site's results, read by its terminal only."""
        return f"{PREFIX}.{self.site}.results"


@dataclass(frozen=True)
class Permissions:
    """One ``rabbitmqctl set_permissions -p VHOST USER CONFIGURE WRITE READ`` line's three patterns."""

    configure: str
    write: str
    read: str

    def args(self) -> list[str]:
        return [self.configure, self.write, self.read]


def _exact(name: str) -> str:
    return "^" + name.replace(".", r"\.") + "$"


def site_permissions(site: str) -> Permissions:
    """Site ``site``'s user: write its submit exchange, read its results queue, configure nothing."""
    t = SiteTopology(site)
    return Permissions("^$", _exact(t.submit_exchange), _exact(t.results_queue))


# The worker user, for every site at once: declare the four entities of a site, bind the jobs queue to the
# submit exchange (write on the queue, read on the exchange) and the results queue to the return exchange,
# read the jobs queues, publish to the return exchanges. Not: read a results queue, publish to a submit exchange.
WORKER_PERMISSIONS = Permissions(
    rf"^{PREFIX}\.{_ANY_SITE}\.(submit|jobs|return|results)$",
    rf"^{PREFIX}\.{_ANY_SITE}\.(jobs|return|results)$",
    rf"^{PREFIX}\.{_ANY_SITE}\.(submit|jobs|return)$",
)


# -- settings -> connection ---------------------------------------------------------------------


def _url(b: BrokerSettings) -> Any:
    if not b.url:
        raise ConfigError("broker.url is empty: roles terminal and worker need a broker (amqps://USER@HOST:PORT/VHOST)")
    return urlsplit(b.url)


def is_tls(b: BrokerSettings) -> bool:
    return bool(_url(b).scheme == "amqps")


def site_of(b: BrokerSettings) -> str:
    """The site a terminal publishes for: the user of ``broker.url``."""
    user = unquote(_url(b).username or "")
    SiteTopology(user)  # a terminal's user must be a valid site name
    return user


def vhost_of(b: BrokerSettings) -> str:
    """The URL's virtual host (``amqps://u@h:5671/fetalnode``: ``fetalnode``; ``//`` or none: ``/``)."""
    return unquote(_url(b).path[1:]) or "/"


def read_password(b: BrokerSettings) -> str:
    """The broker user's password, read from ``broker.password_file`` now (never logged)."""
    if not b.password_file:
        raise ConfigError("broker.password_file is empty: the broker user's password is read from that file")
    try:
        password = Path(b.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"broker.password_file {b.password_file} cannot be read: {exc}") from exc
    if not password:
        raise ConfigError(f"broker.password_file {b.password_file} is empty")
    return password


def tls_options(b: BrokerSettings) -> dict[str, Any] | None:
    """py-amqp's ``ssl`` options for ``broker.url`` (kombu ``Connection(ssl=...)``, Celery ``broker_use_ssl``);
    None for plain ``amqp://``.

    py-amqp builds an ``ssl.SSLContext(PROTOCOL_TLS_CLIENT)`` from them: TLS 1.2 at least, the broker's
    certificate required and checked against ``ca_certificates`` (empty: the system's trust store) and
    against the URL's host name; ``certificate``/``private_key`` presented as the client certificate.
    """
    parts = _url(b)
    if parts.scheme != "amqps":
        return None
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": parts.hostname,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }
    if b.ca_certificates:
        options["ca_certs"] = b.ca_certificates
    if b.certificate:
        options["certfile"] = b.certificate
        options["keyfile"] = b.private_key
    return options


def ssl_context(b: BrokerSettings) -> ssl.SSLContext:
    """The client TLS context :func:`tls_options` describes, built here to check the files at start."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checking and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if b.ca_certificates:
            context.load_verify_locations(b.ca_certificates)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if b.certificate:
            context.load_cert_chain(b.certificate, b.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker TLS files (ca_certificates, certificate, private_key): {exc}") from exc
    return context


def check(b: BrokerSettings) -> None:
    """At the start of roles terminal and worker: the password file and TLS files are readable and usable.

    Raises ConfigError naming the file; warns when the link is plain AMQP. Does not connect.
    """
    read_password(b)
    if is_tls(b):
        ssl_context(b)
    else:
        log.warning(
            "broker.url is plain amqp:// to %s: not encrypted and the broker not authenticated; allowed for a "
            "broker on this machine only (use amqps:// across machines)",
            _url(b).hostname,
        )


def connection(b: BrokerSettings) -> Connection:
    """A kombu connection (not yet open) for ``[broker]``: TLS options, password read now, heartbeat,
    connect timeout, publisher confirms on every channel."""
    parts = _url(b)
    tls = tls_options(b)
    return Connection(
        hostname=parts.hostname,
        port=parts.port or (5671 if tls else 5672),
        userid=unquote(parts.username or ""),
        password=read_password(b),
        virtual_host=vhost_of(b),
        ssl=tls or False,
        transport="pyamqp",
        connect_timeout=b.connect_timeout,
        heartbeat=b.heartbeat,
        transport_options={"confirm_publish": True},
    )


def _user(conn: Connection) -> str:
    return str(conn.userid or "")


def _where(b: BrokerSettings) -> str:
    parts = _url(b)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}/{vhost_of(b)}"


def connect(b: BrokerSettings) -> Connection:
    """An open connection for ``[broker]`` (close it, or use it in ``with``).

    Raises BrokerError: transient when the broker cannot be reached; not transient when TLS fails (the
    broker's certificate not trusted or not for the URL's host, no client certificate where one is
    required) or the broker refuses the login or the virtual host. ConfigError: the password file.
    Heartbeats go out while :func:`consume_jobs` or :func:`consume_results` runs; a connection that only
    publishes must call ``conn.heartbeat_check()`` at least every ``heartbeat / 2`` seconds.
    """
    conn = connection(b)
    try:
        conn.connect()
    except ssl.SSLError as exc:
        conn.release()
        hint = ""
        if isinstance(exc, ssl.SSLEOFError) and not b.certificate:
            # TLS 1.3: a broker that wants a client certificate may just close, without its alert.
            hint = " (does the broker require a client certificate? broker.certificate, broker.private_key)"
        raise BrokerError(f"TLS with the broker {_where(b)} failed: {exc}{hint}", transient=False) from exc
    except (amqp.exceptions.AccessRefused, amqp.exceptions.NotAllowed) as exc:
        conn.release()
        raise BrokerError(
            f"the broker {_where(b)} refused user {conn.userid!r} (password or virtual host): {exc}", transient=False
        ) from exc
    except (OSError, *conn.connection_errors) as exc:
        conn.release()
        raise BrokerError(f"broker {_where(b)} unreachable: {type(exc).__name__}: {exc}", transient=True) from exc
    return conn


# -- declaring and publishing -------------------------------------------------------------------


def _refused(what: str, exc: BaseException) -> BrokerError:
    """One BrokerError for a broker's refusal or a lost connection during ``what``."""
    if isinstance(exc, amqp.exceptions.NotFound):
        return BrokerError(f"{what}: not declared on the broker yet ({exc}); a worker serving the site declares it",
                           transient=True)  # fmt: skip
    if isinstance(exc, amqp.exceptions.AccessRefused):
        return BrokerError(f"{what}: ACCESS_REFUSED by the broker ({exc})", transient=False)
    if isinstance(exc, amqp.exceptions.ChannelError) and not isinstance(exc, amqp.exceptions.RecoverableChannelError):
        return BrokerError(f"{what}: refused by the broker ({type(exc).__name__}: {exc})", transient=False)
    return BrokerError(f"{what}: {type(exc).__name__}: {exc}", transient=True)


_channels: weakref.WeakKeyDictionary[Connection, Any] = weakref.WeakKeyDictionary()


def _publish_channel(conn: Connection) -> Any:
    """The connection's publishing channel, opened again after the broker closed it (a refused operation)."""
    channel = _channels.get(conn)
    if channel is None or not channel.is_open:
        channel = _channels[conn] = conn.channel()
    return channel


def declare_site(conn: Connection, site: str) -> SiteTopology:
    """Declare site ``site``'s exchanges and queues and bind them (idempotent; the worker does it for each
    of ``broker.sites`` when it starts consuming). Returns the names."""
    t = SiteTopology(site)
    channel = _publish_channel(conn)
    try:
        for exchange, queue in ((t.submit_exchange, t.jobs_queue), (t.return_exchange, t.results_queue)):
            x = Exchange(exchange, type="direct", durable=True, channel=channel)
            x.declare()
            Queue(queue, exchange=x, routing_key=site, durable=True, channel=channel).declare()
    except (amqp.exceptions.AMQPError, *conn.connection_errors, OSError) as exc:
        raise _refused(f"declaring site {site}'s exchanges and queues", exc) from exc
    return t


def _encode(body: bytes | Mapping[str, Any], content_type: str | None) -> tuple[bytes, str, str]:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), content_type or BINARY, "binary"
    return json.dumps(body, separators=(",", ":")).encode("utf-8"), JSON, "utf-8"


def _publish(
    conn: Connection,
    exchange: str,
    site: str,
    body: bytes | Mapping[str, Any],
    headers: Mapping[str, Any] | None,
    message_id: str | None,
    content_type: str | None,
) -> None:
    payload, ctype, encoding = _encode(body, content_type)
    # user_id: the broker refuses a message whose user_id is not the connection's user, so the consumer
    # can trust it (RabbitMQ's validated user ID).
    properties: dict[str, Any] = {"user_id": _user(conn)}
    if message_id is not None:
        properties["message_id"] = message_id
    try:
        Producer(_publish_channel(conn), auto_declare=False).publish(
            payload,
            exchange=exchange,
            routing_key=site,
            mandatory=True,  # an unroutable message raises (NO_ROUTE) instead of vanishing
            delivery_mode=2,
            content_type=ctype,
            content_encoding=encoding,
            headers=dict(headers or {}),
            **properties,
        )
    except amqp.exceptions.MessageNacked as exc:
        raise BrokerError(
            f"publishing to {exchange}: the broker did not take the message (nack: a queue length limit?)",
            transient=True,
        ) from exc
    except (amqp.exceptions.AMQPError, *conn.connection_errors, OSError) as exc:
        raise _refused(f"publishing to {exchange or 'the default exchange'}", exc) from exc


def publish_job(
    conn: Connection,
    body: bytes | Mapping[str, Any],
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    content_type: str | None = None,
) -> None:
    """Terminal: publish one job for its own site (the connection's user), persistent, and return once the
    broker has confirmed it.

    ``body``: bytes (sent as they are, ``content_type`` default ``application/octet-stream``) or a
    JSON-able mapping. ``headers``: AMQP headers (str, int, float, bool, bytes values). ``message_id``: the
    job's idempotency key, handed to the worker. Raises BrokerError (see :func:`connect`).
    """
    site = _user(conn)
    _publish(conn, SiteTopology(site).submit_exchange, site, body, headers, message_id, content_type)


def publish_result(
    conn: Connection,
    site: str,
    body: bytes | Mapping[str, Any],
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    content_type: str | None = None,
) -> None:
    """Worker: publish one result message for site ``site`` and return once the broker has confirmed it.
    :func:`consume_jobs` does this for the replies its handler returns."""
    _publish(conn, SiteTopology(site).return_exchange, site, body, headers, message_id, content_type)


# -- consuming ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One message taken from a site's jobs or results queue.

    ``site``: the site whose queue it came from (never read from the message). ``user_id``: the
    publishing connection's user, checked by the broker. ``redelivered``: the broker gave it before to a
    consumer that did not acknowledge it (a worker killed mid-job).
    """

    site: str
    body: bytes
    content_type: str
    headers: Mapping[str, Any]
    message_id: str | None
    user_id: str | None
    redelivered: bool

    def json(self) -> Any:
        """The body decoded as JSON (a body published as a mapping)."""
        if self.content_type != JSON:
            raise ValueError(f"message body is {self.content_type}, not {JSON}")
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A result message a job handler returns; :func:`consume_jobs` publishes it to the job's site."""

    body: bytes | Mapping[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    content_type: str | None = None


class Drop(NodeError):
    """Raised by a handler for a message that can never be handled: it is dropped (rejected, not requeued)."""


def _delivery(site: str, message: Message) -> Delivery:
    props = message.properties
    body = message.body
    if isinstance(body, str):  # py-amqp decodes a body whose content_encoding is a text encoding (JSON)
        body = body.encode(message.content_encoding or "utf-8")
    return Delivery(
        site=site,
        body=bytes(body),
        content_type=message.content_type or BINARY,
        headers=dict(message.headers or {}),
        message_id=props.get("message_id"),
        user_id=props.get("user_id"),
        redelivered=bool(message.delivery_info.get("redelivered")),
    )


def _run_in_thread(conn: Connection, call: Callable[[], Any], tick: float) -> Any:
    """Run ``call`` in a thread while this one keeps the connection alive (heartbeats in and out)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="fetalnode-broker-handler", daemon=True)
    thread.start()
    while True:
        thread.join(tick)  # returns as soon as the handler is done
        if not thread.is_alive():
            break
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.01)  # prefetch 1: only heartbeats or a close can arrive here
        conn.heartbeat_check()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _serve(
    conn: Connection,
    queues: Mapping[str, str],
    handle: Callable[[Delivery], Iterable[Reply] | None],
    *,
    stop: threading.Event,
    replies: bool,
    idle: Callable[[], None] | None,
    timeout: float,
) -> None:
    channel = conn.channel()
    pending: list[tuple[str, Message]] = []
    # prefetch 1 for the whole channel (RabbitMQ's global flag), not per queue: a busy worker holds one
    # message of one site, never one of each site while other workers wait.
    channel.basic_qos(prefetch_size=0, prefetch_count=1, a_global=True)
    tick = min(timeout, conn.heartbeat / 4) if conn.heartbeat else timeout
    try:
        for site, name in queues.items():
            consumer = Consumer(
                channel,
                queues=[Queue(name, channel=channel, no_declare=True)],
                on_message=lambda message, site=site: pending.append((site, message)),
                auto_declare=False,
            )
            consumer.consume()
        while not stop.is_set():
            if pending:
                site, message = pending.pop(0)
                _handle_one(conn, site, message, handle, replies, tick)
                continue
            if idle is not None:
                idle()
                if pending:  # delivered while idle() waited for its publisher confirms
                    continue
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=tick)
            conn.heartbeat_check()
    except BrokerError:
        raise
    except (amqp.exceptions.AMQPError, *conn.connection_errors, OSError) as exc:
        raise _refused(f"consuming {', '.join(queues.values())}", exc) from exc
    finally:
        if channel.is_open:
            try:
                channel.close()
            except (amqp.exceptions.AMQPError, *conn.connection_errors, OSError):
                pass


def _handle_one(
    conn: Connection,
    site: str,
    message: Message,
    handle: Callable[[Delivery], Iterable[Reply] | None],
    replies: bool,
    tick: float,
) -> None:
    delivery = _delivery(site, message)
    where = f"{'job' if replies else 'result'} {delivery.message_id or '(no id)'} of site {site}"
    if replies and delivery.user_id != site:
        log.error("%s dropped: published by user %r, not by the site's user", where, delivery.user_id)
        message.reject(requeue=False)
        return
    try:
        out = _run_in_thread(conn, lambda: handle(delivery), tick)
        if replies:
            for reply in out or ():
                publish_result(
                    conn,
                    site,
                    reply.body,
                    headers=reply.headers,
                    message_id=reply.message_id,
                    content_type=reply.content_type,
                )
    except Drop as exc:
        log.warning("%s dropped: %s", where, exc)
        message.reject(requeue=False)
        return
    except BrokerError:
        raise  # a reply not published: the job stays unacknowledged and is redelivered
    except (amqp.exceptions.AMQPError, *conn.connection_errors, OSError):
        raise
    except Exception:
        # Once more for a first failure; a message that failed twice is dropped rather than looping for ever.
        again = not delivery.redelivered
        log.exception("%s: handler failed; %s", where, "requeued once" if again else "dropped (failed twice)")
        message.reject(requeue=again)
        return
    message.ack()


def consume_jobs(
    conn: Connection,
    sites: Sequence[str],
    handle: Callable[[Delivery], Iterable[Reply] | None],
    *,
    stop: threading.Event,
    timeout: float = 1.0,
) -> None:
    """Worker: take jobs from the queues of ``sites`` (``broker.sites``), one at a time across all of them,
    until ``stop`` is set.

    Declares each site's exchanges and queues first. ``handle(delivery)`` runs in a thread of its own (it
    must not use ``conn``) while this one keeps the connection's heartbeats; the :class:`Reply` messages it
    returns are published to the job's site, each confirmed by the broker, and only then is the job
    acknowledged (a worker killed before that: the broker gives the job to another worker). A job whose
    ``user_id`` is not its site's user is dropped. ``handle`` raising :class:`Drop`: the job is dropped;
    raising anything else: it is requeued once, dropped on its second failure (``delivery.redelivered``
    already set, e.g. after a killed worker: dropped at once). Raises BrokerError when the connection fails
    or the broker refuses.
    """
    queues = {site: declare_site(conn, site).jobs_queue for site in sites}
    if not queues:
        raise ConfigError("broker.sites is empty: a worker needs the sites whose jobs it takes")
    _serve(conn, queues, handle, stop=stop, replies=True, idle=None, timeout=timeout)


def consume_results(
    conn: Connection,
    handle: Callable[[Delivery], None],
    *,
    stop: threading.Event,
    idle: Callable[[], None] | None = None,
    timeout: float = 0.5,
) -> None:
    """Terminal: take its site's results (the connection's user) until ``stop`` is set.

    ``handle(delivery)`` returning: acknowledged; raising :class:`Drop`: dropped; raising anything else:
    requeued once, then dropped. ``handle`` runs in a thread of its own and must not use ``conn``.
    ``idle()`` is called in this thread whenever no result is waiting, at least every ``timeout`` seconds,
    and may publish on ``conn`` (:func:`publish_job`): one connection carries the jobs out and the results in.
    Raises BrokerError (transient when the results queue is not declared yet: no worker has served the site).
    """
    site = _user(conn)
    results = SiteTopology(site).results_queue
    _serve(conn, {site: results}, handle, stop=stop, replies=False, idle=idle, timeout=timeout)


def run_connected(
    b: BrokerSettings,
    work: Callable[[Connection], None],
    stop: threading.Event,
    *,
    retry_seconds: float = 2.0,
    on_down: Callable[[str], None] | None = None,
    on_up: Callable[[float], None] | None = None,
) -> None:
    """Call ``work(conn)`` on a fresh connection, and again after each broker error, until ``stop`` is set.

    ``on_down(reason)``: once when the link fails (or cannot be made at first); ``on_up(seconds_down)``: once
    when a connection is open again. The wait between attempts starts at ``retry_seconds`` and doubles up to
    30 s while they keep failing. A refusal that needs an operator (TLS, login, permissions, the password
    file) is logged as an error; the loop keeps trying, so fixing the broker's side needs no restart.
    """
    down_since: float | None = None
    wait = retry_seconds
    while not stop.is_set():
        opened = None
        try:
            with connect(b) as conn:
                opened = time.monotonic()
                if down_since is not None:
                    seconds = opened - down_since
                    log.info("broker link back after %.0f s", seconds)
                    if on_up is not None:
                        on_up(seconds)
                    down_since = None
                work(conn)
        except (BrokerError, ConfigError, OSError, amqp.exceptions.ConnectionError) as exc:
            operator = isinstance(exc, ConfigError) or (isinstance(exc, BrokerError) and not exc.transient)
            reason = str(exc) if isinstance(exc, NodeError) else f"{type(exc).__name__}: {exc}"
            if down_since is None:
                down_since = time.monotonic()
                log.log(logging.ERROR if operator else logging.WARNING, "broker link down: %s", reason)
                if on_down is not None:
                    on_down(reason)
            if opened is not None and time.monotonic() - opened > 30:
                wait = retry_seconds  # it worked for a while: this is a new outage
            stop.wait(wait)
            wait = min(30.0, wait * 2)
