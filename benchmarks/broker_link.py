"""The broker link over TLS against plain AMQP, side by side in one run on this machine (a private RabbitMQ).

- Broker start: the throw-away CA, boot until the TLS listener accepts, and the operator's ``rabbitmqctl``
  commands for the sites and the worker (``harness.rabbitmq``), against a plain broker's boot.
- Connection set-up: ``fetalnode.broker.connect`` (TCP, TLS handshake, AMQP login), median of ``--connects``.
- Round trip: the terminal publishes a job of ``--size`` bytes (confirmed), the worker takes it
  (``consume_jobs``) and returns a result of the same size (confirmed) before acknowledging, the terminal
  takes the result (``consume_results``). p50/p95 of ``--n`` jobs one after another, one connection each side.

    .venv/bin/python -m benchmarks.broker_link [--n 200] [--size 300000] [--connects 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

from benchmarks.common import scratch
from fetalnode import broker
from fetalnode.broker import Delivery, Reply
from fetalnode.config import BrokerSettings
from harness.rabbitmq import WORKER, RabbitMQProcess


def round_trips(terminal: BrokerSettings, worker: BrokerSettings, n: int, size: int) -> list[float]:
    """Seconds from publishing each job to taking its result, ``n`` jobs one after another."""
    body, site = os.urandom(size), broker.site_of(terminal)
    worker_stop, stop = threading.Event(), threading.Event()

    def analyse(delivery: Delivery) -> list[Reply]:
        return [Reply(delivery.body, message_id=delivery.message_id)]

    def work() -> None:
        with broker.connect(worker) as conn:
            broker.consume_jobs(conn, [site], analyse, stop=worker_stop, timeout=0.2)

    with broker.connect(worker) as conn:
        broker.declare_site(conn, site)
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    times: list[float] = []
    sent: list[float] = []

    def publish_next(conn: object) -> None:
        if len(sent) == len(times) and len(times) < n:
            sent.append(time.perf_counter())
            broker.publish_job(conn, body, message_id=str(len(sent)))  # type: ignore[arg-type]

    def result(delivery: Delivery) -> None:
        times.append(time.perf_counter() - sent[len(times)])
        if len(times) == n:
            stop.set()

    try:
        with broker.connect(terminal) as conn:
            broker.consume_results(conn, result, stop=stop, idle=lambda: publish_next(conn), timeout=0.2)
    finally:
        worker_stop.set()
        thread.join(30)
    return times


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
    }


def connect_ms(settings: BrokerSettings, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        broker.connect(settings).release()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=300_000, help="job and result bytes (a pseudonymised US image)")
    ap.add_argument("--connects", type=int, default=20)
    args = ap.parse_args()
    work = scratch("fetalnode-broker-")
    out: dict[str, object] = {"cpu_cores": os.cpu_count(), "jobs": args.n, "bytes_each_way": args.size}
    plain = RabbitMQProcess(work / "plain")
    tls = RabbitMQProcess(work / "tls", tls=True, sites=("site-a", "site-b"))
    try:
        plain.start()
        out["plain_broker_start_s"] = round(plain.timings["listening_s"], 2)
        tls.start()
        out["tls_broker_start_s"] = {key: round(value, 2) for key, value in tls.timings.items()}
        # plain mode: user guest, every permission on "/": terminal (site "guest") and worker at once
        guest = plain.settings(WORKER)
        out["connect_ms"] = {
            "plain": connect_ms(guest, args.connects),
            "tls": connect_ms(tls.settings("site-a"), args.connects),
        }
        out["round_trip"] = {
            "tls": summary(round_trips(tls.settings("site-a"), tls.settings(WORKER), args.n, args.size)),
            "plain": summary(round_trips(guest, guest, args.n, args.size)),
        }
    finally:
        plain.stop()
        tls.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
