"""Test helpers: produce, consume, run a worker process, scrape metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from txwatch.embedded import flow_env as embedded_flow_env

ROOT = Path(__file__).resolve().parents[1]


def produce(brokers: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 5})
    errors: list[Any] = []
    n = 0
    for key, value in messages:
        p.produce(topic, value, key=key, on_delivery=lambda e, m: errors.append(e) if e else None)
        n += 1
        if n % 5000 == 0:
            p.poll(0)
    assert p.flush(30) == 0, "messages left undelivered"
    assert not errors, errors[:3]
    return n


def consume_all(brokers: str, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every message currently in ``topic`` (explicit assignment, no consumer group)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "txwatch-tests",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                tps.append(TopicPartition(topic, p, lo))
        if not tps:
            return []
        c.assign(tps)
        pending = {tp.partition for tp in tps}
        out = []
        import time

        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(msg.error())
            out.append(msg)
        return out
    finally:
        c.close()


def flow_env(brokers: str, dsn: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    # Bytewax starts its API server when BYTEWAX_DATAFLOW_API_ENABLED is set to anything,
    # "false" included: leave it unset
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TXWATCH_") and k != "BYTEWAX_DATAFLOW_API_ENABLED"}
    env.update(
        embedded_flow_env(brokers, dsn, topics),
        TXWATCH_LATENESS_SECONDS="100000000",
        TXWATCH_MAX_HOLD_SECONDS="1000000000",
    )
    env.update(extra)
    return env


def run_worker(env: dict[str, str], args: Iterable[str] = (), timeout: float = 120,
               **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bytewax.run dataflow`` to completion (tail=false)."""
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        **popen,
    )


def start_worker(env: dict[str, str], args: Iterable[str] = (), log: Path | None = None
                 ) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflow", *args],
        env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True,
    )


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def tx(tid: str, user: str, amount: Any, ts: str, **kw: Any) -> bytes:
    return json.dumps({"transaction_id": tid, "user_id": user, "amount": amount,
                       "timestamp": ts, **kw}).encode()
