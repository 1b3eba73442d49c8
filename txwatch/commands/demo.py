"""``txwatch demo``: the whole pipeline on this machine, with live progress.

Starts (unless ``TXWATCH_KAFKA_BROKERS`` / ``TXWATCH_DATABASE_URL`` point elsewhere) the
embedded Kafka-compatible broker and an embedded PostgreSQL, creates the topics, applies the
migrations, runs a dataflow worker (``python -m bytewax.run dataflow``) and the producer
(some days of compressed history at full speed, then live), shows progress, and on
Ctrl-C or after ``--duration`` seconds stops everything and prints the latest alerts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from txwatch.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    create_topics,
    embedded_kafka_extra,
    free_port,
    wait_for,
)


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            rest = line[len(name):]
            if rest[:1] in (" ", "{"):
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our loopback URL
            return r.read().decode()
    except OSError:
        return ""


def _produced(brokers: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "txwatch-demo-progress"})
    try:
        md = c.list_topics(topic, timeout=2)
        total = 0
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=2)
            total += hi - lo
        return total
    except Exception:
        return -1
    finally:
        c.close()


def _count_alerts(dsn: str) -> int:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2) as c:
            row = c.execute("SELECT count(*) FROM alerts").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return -1


def _stop(proc: subprocess.Popen[Any] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_demo(args: argparse.Namespace) -> int:
    env_brokers = os.environ.get("TXWATCH_KAFKA_BROKERS")
    env_db = os.environ.get("TXWATCH_DATABASE_URL")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="txwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    pg: EmbeddedPostgres | None = None
    worker = producer = None
    stopping = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["flag"] = True

    old = signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if env_brokers:
            brokers = env_brokers
        else:
            print("starting the embedded broker (Tansu)...", file=sys.stderr)
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            brokers = broker.brokers
        if env_db:
            dsn = env_db
        else:
            print("starting the embedded PostgreSQL...", file=sys.stderr)
            pg = EmbeddedPostgres(workdir / "pgdata").start()
            dsn = pg.uri
        from txwatch.settings import Settings

        settings = Settings(kafka_brokers=brokers, database_url=dsn)  # type: ignore[arg-type]
        topics = [settings.transactions_topic, settings.labels_topic, settings.controls_topic,
                  settings.decisions_topic]
        create_topics(brokers, topics, partitions=args.partitions)
        create_topics(brokers, [settings.dlq_topic], partitions=args.partitions, config={
            "retention.ms": str(int(settings.dead_letters_retention_days * 86400_000))})
        from sinks.migrate import migrate

        migrate(dsn)
        metrics_port = args.metrics_port or free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k != "BYTEWAX_DATAFLOW_API_ENABLED"},
            "TXWATCH_KAFKA_BROKERS": brokers,
            "TXWATCH_DATABASE_URL": dsn,
            "TXWATCH_METRICS_PORT": str(metrics_port),
            "TXWATCH_KAFKA_BATCH_SIZE": "200",
        }
        if broker is not None:
            env["TXWATCH_KAFKA_EXTRA_CONFIG"] = embedded_kafka_extra()
        log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - closed at exit
        worker = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow"],
            env=env, stdout=log, stderr=log, start_new_session=True,
        )
        url = f"http://127.0.0.1:{metrics_port}"
        print(f"dataflow worker starting; metrics at {url}/metrics", file=sys.stderr)
        wait_for(lambda: _scrape(url + "/readyz") != "" or worker.poll() is not None,
                 timeout=60, what="the worker's metrics endpoint")
        if worker.poll() is not None:
            print(f"the worker exited ({worker.returncode}); see {workdir / 'worker.log'}",
                  file=sys.stderr)
            return 1
        plog = open(workdir / "producer.log", "ab")  # noqa: SIM115
        _inject_malformed(brokers, settings.transactions_topic)
        producer = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "txwatch.cli", "produce", "--history-days",
             str(args.history_days), *_pace(args.rate), "--label-delay",
             args.label_delay, "--customers", str(args.customers),
             "--terminals", str(args.terminals)],
            env=env, stdout=plog, stderr=plog, start_new_session=True,
        )
        started = time.monotonic()
        print("pipeline up: streaming history, then live (Ctrl-C to stop)", file=sys.stderr)
        while not stopping["flag"]:
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if worker.poll() is not None:
                print(f"\nthe worker exited ({worker.returncode}); see "
                      f"{workdir / 'worker.log'}", file=sys.stderr)
                return 1
            text = _scrape(url + "/metrics")
            scored = _metric(text, "txwatch_transactions_consumed_total", 'outcome="scored"')
            invalid = _metric(text, "txwatch_transactions_consumed_total", 'outcome="invalid"')
            written = _count_alerts(dsn)
            produced = _produced(brokers, settings.transactions_topic)
            print(f"\rproduced {produced:>8,}  scored {scored:>8,.0f}  invalid {invalid:>4,.0f}"
                  f"  alerts written {written:>6,}", end="", file=sys.stderr)
            time.sleep(1.0)  # the progress line's refresh period
        print("\nstopping...", file=sys.stderr)
        _stop(producer)
        _stop(worker)
        from txwatch.commands.alerts import format_alerts, latest_alerts

        print(f"\nmetrics were at {url}/metrics; logs in {workdir}")
        print(f"latest alerts in {dsn.split('?')[0]}:\n")
        print(format_alerts(latest_alerts(dsn, limit=args.show)))
        return 0
    finally:
        _stop(producer)
        _stop(worker)
        if pg is not None:
            pg.stop()
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGINT, old)


def _inject_malformed(brokers: str, topic: str) -> None:
    """A few malformed messages, so the dead-letter path shows in the demo."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers})
    for raw in (b"not json", b'{"transaction_id": "x"}', b'{"transaction_id": "y", '
                b'"user_id": "u", "amount": -5, "timestamp": "2024-01-01T00:00:00Z"}'):
        p.produce(topic, raw, key=b"malformed")
    p.flush(10)


def _pace(rate: float | None) -> list[str]:
    """The producer's pacing after the history: the customers' own pace (one simulated day per
    day), unless a rate is asked for.

    >>> _pace(None), _pace(20.0)
    (['--compress', '86400'], ['--rate', '20.0'])
    """
    return ["--compress", "86400"] if rate is None else ["--rate", str(rate)]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline locally, with live progress",
        description="Run broker, database, producer and a dataflow worker on this machine "
        "(embedded broker and PostgreSQL unless TXWATCH_KAFKA_BROKERS / "
        "TXWATCH_DATABASE_URL are set). Streams some days of compressed history at full "
        "speed, then goes live. Ctrl-C or --duration stops everything cleanly.",
    )
    p.add_argument("--duration", type=float, default=0,
                   help="seconds to run once the pipeline is up (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=None,
                   help="live events per second (default: the simulated customers' own pace, "
                   "about 0.1/s for 5,000 customers; a faster rate squeezes their days, so "
                   "every customer then transacts like a spree and velocity alerts follow)")
    p.add_argument("--history-days", type=int, default=14,
                   help="days of compressed history streamed first (14)")
    p.add_argument("--customers", type=int, default=5000, help="simulated customers (5000)")
    p.add_argument("--terminals", type=int, default=10000, help="simulated terminals (10000)")
    p.add_argument("--label-delay", default="30s", help="wall-clock label delay (30s)")
    p.add_argument("--partitions", type=int, default=4, help="partitions per topic (4)")
    p.add_argument("--metrics-port", type=int, default=0, help="metrics port (free port)")
    p.add_argument("--show", type=int, default=15, help="alerts to print at the end (15)")
    p.add_argument("--workdir", help="where logs and the embedded database live")
    p.set_defaults(func=run_demo)
