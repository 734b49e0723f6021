"""The broker link on a real RabbitMQ (Debian package) with a TLS listener only: AMQPS, sites kept apart.

The brokers are made by the harness with the operator's commands of docs/operations.md (a virtual host,
one user per site, a worker user, permissions from ``fetalnode.broker``).
"""

from __future__ import annotations

import dataclasses
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import amqp.exceptions
import pytest
from kombu import Connection, Producer, Queue

from fetalnode import broker
from fetalnode.broker import Delivery, Reply, SiteTopology
from fetalnode.errors import BrokerError, ConfigError
from harness.node import cli
from harness.pki import make_pki
from harness.processes import wait_for
from harness.rabbitmq import WORKER, RabbitMQProcess
from tests.conftest import need

pytestmark = pytest.mark.network
A, B = SiteTopology("site-a"), SiteTopology("site-b")


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQProcess]:
    """TLS listener only, two sites and a worker user."""
    need("rabbitmq-server")
    server = RabbitMQProcess(tmp_path_factory.mktemp("rabbitmq-tls"), tls=True, sites=(A.site, B.site)).start()
    yield server
    server.stop()


@pytest.fixture
def link(rabbit: RabbitMQProcess) -> Iterator[dict[str, Connection]]:
    """An open connection per user with both sites' queues declared (by the worker), closed after the test;
    then the queues are deleted, so that no test sees what another left."""
    conns = {user: broker.connect(rabbit.settings(user)) for user in rabbit.users()}
    for site in (A, B):
        broker.declare_site(conns[WORKER], site.site)
    yield conns
    for conn in conns.values():
        conn.release()
    with broker.connect(rabbit.settings(WORKER)) as worker:
        channel = worker.channel()
        for site in (A, B):
            channel.queue_delete(site.jobs_queue)
            channel.queue_delete(site.results_queue)


def depth(conn: Connection, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare, which needs no permission)."""
    channel = conn.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    finally:
        channel.close()


def take_jobs(conn: Connection, sites: list[str], n: int, reply: bool = True) -> list[Delivery]:
    """Run the worker's consumer until it has taken ``n`` jobs; each gets one JSON reply."""
    got: list[Delivery] = []
    stop = threading.Event()

    def handle(delivery: Delivery) -> list[Reply]:
        got.append(delivery)
        if len(got) == n:
            stop.set()
        return [Reply({"answer": delivery.message_id}, message_id=delivery.message_id)] if reply else []

    watchdog = threading.Timer(30, stop.set)
    watchdog.start()
    try:
        broker.consume_jobs(conn, sites, handle, stop=stop)
    finally:
        watchdog.cancel()
    return got


def take_results(conn: Connection, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    stop = threading.Event()

    def handle(delivery: Delivery) -> None:
        got.append(delivery)
        if len(got) == n:
            stop.set()

    watchdog = threading.Timer(30, stop.set)
    watchdog.start()
    try:
        broker.consume_results(conn, handle, stop=stop)
    finally:
        watchdog.cancel()
    return got


def raw_publish(conn: Connection, exchange: str, routing_key: str, **properties: object) -> None:
    """Publish as any AMQP client could, without our helpers (the broker alone has to refuse)."""
    Producer(conn.channel(), auto_declare=False).publish(
        b"forged", exchange=exchange, routing_key=routing_key, content_type="application/octet-stream", **properties
    )


def raw_consume(conn: Connection, queue: str) -> None:
    channel = conn.channel()
    channel.basic_consume(queue, callback=lambda message: None)


# -- isolation -----------------------------------------------------------------------------------


def test_a_job_goes_to_the_worker_and_its_result_back_to_its_own_site(link) -> None:
    broker.publish_job(link["site-a"], b"\x00pseudonymised image\xff", headers={"job": 7}, message_id="job-7")
    broker.publish_job(link["site-b"], {"job": 8}, message_id="job-8")
    jobs = take_jobs(link[WORKER], [A.site, B.site], 2)
    by_site = {job.site: job for job in jobs}
    assert set(by_site) == {A.site, B.site}
    a, b = by_site[A.site], by_site[B.site]
    assert (a.body, a.headers, a.message_id, a.user_id) == (b"\x00pseudonymised image\xff", {"job": 7}, "job-7", "site-a")
    assert (b.json(), b.message_id, b.user_id) == ({"job": 8}, "job-8", "site-b")
    [result_a] = take_results(link["site-a"], 1)
    [result_b] = take_results(link["site-b"], 1)
    assert (result_a.site, result_a.json(), result_a.user_id) == (A.site, {"answer": "job-7"}, WORKER)
    assert (result_b.site, result_b.json(), result_b.user_id) == (B.site, {"answer": "job-8"}, WORKER)
    for queue in (A.jobs_queue, B.jobs_queue, A.results_queue, B.results_queue):
        assert depth(link[WORKER], queue) == 0


REFUSED = {
    "publish to B's submit exchange": lambda conn: raw_publish(conn, B.submit_exchange, B.site),
    "publish to B's jobs queue by the default exchange": lambda conn: raw_publish(conn, "", B.jobs_queue),
    "publish to B's return exchange (a forged result)": lambda conn: raw_publish(conn, B.return_exchange, B.site),
    "publish to its own return exchange (a forged result)": lambda conn: raw_publish(conn, A.return_exchange, A.site),
    "consume B's results": lambda conn: raw_consume(conn, B.results_queue),
    "consume B's jobs": lambda conn: raw_consume(conn, B.jobs_queue),
    "consume its own jobs": lambda conn: raw_consume(conn, A.jobs_queue),
    "declare a queue": lambda conn: Queue("fetalnode.site-a.mine", channel=conn.channel()).declare(),
    "bind B's results to its submit exchange": lambda conn: conn.channel().queue_bind(
        B.results_queue, A.submit_exchange, A.site
    ),
    "delete B's jobs queue": lambda conn: conn.channel().queue_delete(B.jobs_queue),
    "purge B's results": lambda conn: conn.channel().queue_purge(B.results_queue),
}


@pytest.mark.parametrize("attempt", list(REFUSED))
def test_site_a_is_refused_on_site_b_queues(link, attempt: str) -> None:
    with pytest.raises(amqp.exceptions.AccessRefused) as refused:
        REFUSED[attempt](link["site-a"])
    assert refused.value.reply_code == 403 and "ACCESS_REFUSED" in str(refused.value)
    for queue in (B.jobs_queue, B.results_queue, A.jobs_queue, A.results_queue):
        assert depth(link[WORKER], queue) == 0, "nothing got through"


def test_our_helpers_report_a_refusal_as_a_broker_error(link) -> None:
    with pytest.raises(BrokerError) as refused:
        broker.publish_result(link["site-a"], B.site, b"forged result")
    assert not refused.value.transient and "ACCESS_REFUSED" in str(refused.value)
    assert isinstance(refused.value.__cause__, amqp.exceptions.AccessRefused)
    with pytest.raises(BrokerError) as refused:  # a site cannot act as a worker: declaring needs configure
        broker.consume_jobs(link["site-a"], [B.site], lambda d: [], stop=threading.Event())
    assert not refused.value.transient and "ACCESS_REFUSED" in str(refused.value)
    broker.publish_job(link["site-a"], b"the connection still works")  # a refusal closes a channel, not the link
    assert depth(link[WORKER], A.jobs_queue) == 1
    take_jobs(link[WORKER], [A.site], 1, reply=False)


def test_the_worker_may_not_read_results_or_forge_jobs(link) -> None:
    with pytest.raises(amqp.exceptions.AccessRefused):
        raw_consume(link[WORKER], A.results_queue)
    with pytest.raises(amqp.exceptions.AccessRefused):
        raw_publish(link[WORKER], A.submit_exchange, A.site)


def test_a_site_cannot_publish_as_another_user(link) -> None:
    # RabbitMQ's validated user ID: user_id must be the connection's user.
    with pytest.raises(amqp.exceptions.PreconditionFailed):
        raw_publish(link["site-a"], A.submit_exchange, A.site, user_id="site-b")
    assert depth(link[WORKER], A.jobs_queue) == 0


def test_the_worker_drops_a_job_without_the_sites_user_id(link) -> None:
    raw_publish(link["site-a"], A.submit_exchange, A.site, message_id="anonymous")  # no user_id property
    broker.publish_job(link["site-a"], b"signed", message_id="signed")
    [job] = take_jobs(link[WORKER], [A.site], 1, reply=False)
    assert (job.message_id, job.user_id) == ("signed", "site-a")
    assert depth(link[WORKER], A.jobs_queue) == 0, "the anonymous job was dropped, not requeued"


def test_a_busy_worker_holds_one_job_across_all_sites(link, rabbit: RabbitMQProcess) -> None:
    # Prefetch 1 for the whole channel: while it works on A's job, B's job stays for another worker.
    started, release, stop = threading.Event(), threading.Event(), threading.Event()

    def slow(delivery: Delivery) -> list[Reply]:
        started.set()
        release.wait(30)
        stop.set()
        return []

    busy = threading.Thread(target=broker.consume_jobs, args=(link[WORKER], [A.site, B.site], slow), kwargs={"stop": stop})
    broker.publish_job(link["site-a"], b"first")
    busy.start()
    try:
        assert started.wait(30)
        broker.publish_job(link["site-b"], b"second")
        with broker.connect(rabbit.settings(WORKER)) as other:
            [job] = take_jobs(other, [A.site, B.site], 1, reply=False)
        assert (job.site, job.body) == (B.site, b"second")
    finally:
        release.set()
        busy.join(30)


def test_a_failing_handler_gets_the_job_once_more_then_it_is_dropped(link) -> None:
    broker.publish_job(link["site-a"], b"poison", message_id="poison")
    seen: list[bool] = []
    stop = threading.Event()

    def fail(delivery: Delivery) -> list[Reply]:
        seen.append(delivery.redelivered)
        if len(seen) == 2:
            stop.set()
        raise RuntimeError("cannot analyse")

    watchdog = threading.Timer(30, stop.set)
    watchdog.start()
    broker.consume_jobs(link[WORKER], [A.site], fail, stop=stop)
    watchdog.cancel()
    assert seen == [False, True]
    wait_for(lambda: depth(link[WORKER], A.jobs_queue) == 0, 10, "the job dropped")
    assert depth(link[WORKER], A.results_queue) == 0


# -- TLS -----------------------------------------------------------------------------------------


def test_the_link_is_tls_1_2_or_later_with_the_broker_certificate_checked(link) -> None:
    sock = link["site-a"].connection.transport.sock
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.version() in {"TLSv1.2", "TLSv1.3"}
    assert sock.context.verify_mode == ssl.CERT_REQUIRED and sock.context.check_hostname
    assert sock.getpeercert()["subject"] == ((("commonName", "fetalnode test server"),),)


def test_plain_amqp_to_the_tls_listener_is_refused(rabbit: RabbitMQProcess) -> None:
    tls = rabbit.settings("site-a")
    plain = dataclasses.replace(tls, url=tls.url.replace("amqps://", "amqp://"), ca_certificates="")
    with pytest.raises(BrokerError) as refused:
        broker.connect(plain)
    assert "unreachable" in str(refused.value)


def test_a_client_that_does_not_trust_the_broker_ca_is_refused(rabbit: RabbitMQProcess, tmp_path: Path) -> None:
    other_ca = make_pki(tmp_path / "other")["ca_crt"]
    for ca in (str(other_ca), ""):  # another CA; the system's trust store
        with pytest.raises(BrokerError) as refused:
            broker.connect(dataclasses.replace(rabbit.settings("site-a"), ca_certificates=ca))
        assert not refused.value.transient
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        assert "certificate verify failed" in str(refused.value)


def test_the_broker_host_name_is_checked(rabbit: RabbitMQProcess) -> None:
    # The broker's certificate names 127.0.0.1 only; "localhost" reaches the same listener.
    settings = rabbit.settings("site-a")
    with pytest.raises(BrokerError) as refused:
        broker.connect(dataclasses.replace(settings, url=settings.url.replace("127.0.0.1", "localhost")))
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert "mismatch" in str(refused.value)


def test_a_wrong_password_is_refused_with_a_clear_error(rabbit: RabbitMQProcess, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(BrokerError) as refused:
        broker.connect(dataclasses.replace(rabbit.settings("site-a"), password_file=str(wrong)))
    assert not refused.value.transient and "refused user 'site-a'" in str(refused.value)


@pytest.fixture(scope="module")
def rabbit_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQProcess]:
    """A broker that requires a client certificate from its CA (verify_peer, fail_if_no_peer_cert)."""
    need("rabbitmq-server")
    server = RabbitMQProcess(
        tmp_path_factory.mktemp("rabbitmq-peer"), tls=True, sites=(A.site,), require_client_certificates=True
    ).start()
    yield server
    server.stop()


def test_client_certificate_when_the_broker_requires_one(rabbit_peer: RabbitMQProcess, tmp_path: Path) -> None:
    with broker.connect(rabbit_peer.settings(WORKER)) as worker:
        broker.declare_site(worker, A.site)
        with broker.connect(rabbit_peer.settings("site-a")) as site:
            broker.publish_job(site, b"with a client certificate", message_id="cert")
        [job] = take_jobs(worker, [A.site], 1, reply=False)
    assert (job.site, job.message_id, job.user_id) == (A.site, "cert", "site-a")

    for _ in range(3):  # TLS 1.3: the broker's "certificate required" alert, or only its close (EOF)
        with pytest.raises(BrokerError) as refused:
            broker.connect(rabbit_peer.settings("site-a", client_certificate=False))
        assert not refused.value.transient and isinstance(refused.value.__cause__, ssl.SSLError)
        assert "certificate" in str(refused.value)

    other = make_pki(tmp_path / "other")  # a certificate the broker's CA did not sign
    stranger = dataclasses.replace(
        rabbit_peer.settings("site-a"), certificate=str(other["client_crt"]), private_key=str(other["client_key"])
    )
    with pytest.raises(BrokerError):
        broker.connect(stranger)


# -- secrets at start ----------------------------------------------------------------------------


def test_a_missing_or_unreadable_password_file_is_a_clear_error(rabbit: RabbitMQProcess, tmp_path: Path) -> None:
    settings = rabbit.settings("site-a")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, says in ((tmp_path / "missing", "No such file"), (tmp_path, "Is a directory"), (empty, "is empty")):
        bad = dataclasses.replace(settings, password_file=str(path))
        for call in (broker.check, broker.connect):
            with pytest.raises(ConfigError) as error:
                call(bad)
            assert f"broker.password_file {path}" in str(error.value) and says in str(error.value)


@pytest.mark.parametrize("role", ["terminal", "worker"])
def test_serve_refuses_to_start_without_the_password_file(rabbit: RabbitMQProcess, tmp_path: Path, role: str) -> None:
    b = rabbit.settings("site-a")
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nrole = "{role}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[broker]\nurl = "{b.url}"\npassword_file = "{tmp_path / "missing"}"\nca_certificates = "{b.ca_certificates}"\n'
    )
    done = cli("serve", "--config", str(config), timeout=60)
    assert done.returncode == 2
    assert f"ConfigError: broker.password_file {tmp_path / 'missing'} cannot be read" in done.stderr


def test_a_full_site_queue_refuses_more_jobs_and_the_terminal_is_told(link, rabbit: RabbitMQProcess) -> None:
    # The operator's queue limit (docs/operations.md): overflow reject-publish nacks, a confirmed publish raises.
    rabbit.rabbitmqctl(
        "set_policy", "-p", "fetalnode", "--apply-to", "queues", "test-limit", r"^fetalnode\.site-a\.jobs$",
        '{"max-length": 1, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        wait_for(lambda: "test-limit" in rabbit.rabbitmqctl("list_queues", "-p", "fetalnode", "name", "policy"),
                 10, "the policy applied")  # fmt: skip
        broker.publish_job(link["site-a"], b"first")
        with pytest.raises(BrokerError) as refused:
            broker.publish_job(link["site-a"], b"second")
        assert refused.value.transient and "nack" in str(refused.value)
        assert depth(link[WORKER], A.jobs_queue) == 1
        broker.publish_job(link["site-b"], b"another site is not limited")
        assert depth(link[WORKER], B.jobs_queue) == 1
    finally:
        rabbit.rabbitmqctl("clear_policy", "-p", "fetalnode", "test-limit")


def test_run_connected_comes_back_after_a_broker_restart(rabbit: RabbitMQProcess) -> None:
    with broker.connect(rabbit.settings(WORKER)) as worker:
        broker.declare_site(worker, A.site)
    events: list[str] = []
    got: list[bytes] = []
    stop = threading.Event()

    def work(conn: Connection) -> None:
        broker.consume_results(conn, lambda delivery: got.append(delivery.body), stop=stop)

    link_thread = threading.Thread(
        target=broker.run_connected,
        args=(rabbit.settings("site-a"), work, stop),
        kwargs={"retry_seconds": 0.5, "on_down": lambda reason: events.append("down"),
                "on_up": lambda seconds: events.append("up")},
    )  # fmt: skip
    link_thread.start()
    try:
        rabbit.stop()
        wait_for(lambda: events == ["down"], 30, "the link to notice the broker is gone")
        rabbit.start()
        wait_for(lambda: events == ["down", "up"], 60, "the link back")
        with broker.connect(rabbit.settings(WORKER)) as worker:
            broker.publish_result(worker, A.site, b"after the restart")
        wait_for(lambda: got == [b"after the restart"], 30, "the result taken on the new connection")
    finally:
        stop.set()
        link_thread.join(30)
    assert not link_thread.is_alive()
