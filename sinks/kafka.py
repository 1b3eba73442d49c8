"""Kafka sinks: dead letters (Bytewax's ``KafkaSink``) and decisions (:class:`DecisionSink`),
as JSON.

Bytewax's sink flushes the producer after every batch, which waits for the broker's
acknowledgement of each small batch; :class:`DecisionSink` flushes at the end of every epoch
(its snapshot, taken before the epoch's input offsets are committed) and at close instead,
which gives the same at-least-once delivery. Producers are idempotent with ``acks=all`` so
librdkafka retries without duplicates.

>>> from datetime import datetime, UTC
>>> from operators.records import DeadLetter
>>> msg = dead_letter_message(DeadLetter(b"\\xff", "not valid UTF-8", "transactions", 0, 7,
...                                      datetime(2024, 1, 1, tzinfo=UTC)))
>>> json.loads(msg.value)["payload_b64"], json.loads(msg.value)["reason"]
('/w==', 'not valid UTF-8')
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Producer

from operators.records import DeadLetter, Decision
from txwatch.settings import Settings

MAX_DLQ_PAYLOAD = 512 * 1024
"""Largest original payload a dead letter carries whole: base64 and JSON must stay under
Kafka's default 1 MB message limit. A larger payload keeps its first MAX_DLQ_PAYLOAD bytes,
with its full size and SHA-256, so it can still be found and matched."""


def dead_letter_message(d: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes]:
    payload = d.payload
    extra: dict[str, object] = {}
    if len(payload) > MAX_DLQ_PAYLOAD:
        extra = {"payload_truncated": True, "payload_bytes": len(payload),
                 "payload_sha256": hashlib.sha256(payload).hexdigest()}
        payload = payload[:MAX_DLQ_PAYLOAD]
    body = {
        **extra,
        "payload_b64": base64.b64encode(payload).decode(),
        "reason": d.reason,
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "received_at": d.received_at.isoformat().replace("+00:00", "Z"),
    }
    return KafkaSinkMessage(key=None, value=json.dumps(body).encode())


_UTC_Z = orjson.OPT_UTC_Z
"""A UTC time as ``...Z`` (any other offset as ``+hh:mm``), with its microseconds when it has
any: what ``isoformat()`` writes, ``+00:00`` made ``Z``, without building the string first."""


def decision_json(d: Decision) -> dict[str, object]:
    """The fields of a decision's message (its ``timestamp`` a datetime: dump it with
    ``orjson`` and ``OPT_UTC_Z``, as :func:`decision_messages` does)."""
    return {
        "transaction_id": d.txn.transaction_id,
        "user_id": d.txn.user_id,
        "timestamp": d.txn.timestamp,
        "decision": d.severity,
        "alert": d.is_alert,
        "snoozed": d.snoozed,
        "score": d.score,
        "threshold": d.threshold,
        "reasons": [r.code for r in d.reasons],
        "model_version": d.model_version,
    }


def decision_messages(kds: list[tuple[str, Decision]]) -> list[tuple[str, tuple[bytes, bytes]]]:
    """``(user shard, (key, value))`` of a batch of ``(user shard, Decision)`` items, for
    :class:`DecisionSink`.

    >>> from datetime import UTC, datetime
    >>> from decimal import Decimal
    >>> from operators.records import Reason, Txn
    >>> t = Txn("t1", "u1", Decimal("9.5"), datetime(2018, 4, 1, 7, 30, 0, 250, tzinfo=UTC),
    ...         "EUR", Decimal("9.5"))
    >>> d = Decision(t, 5.5, 3.5, "review", (Reason("velocity", "5 in 10 min", 5.0),), {},
    ...              {}, "txw")
    >>> [(k, (key, value))] = decision_messages([("7", d)])
    >>> k, key, value[:79]
    ('7', b'u1', b'{"transaction_id":"t1","user_id":"u1","timestamp":"2018-04-01T07:30:00.000250Z"')
    >>> json.loads(value)["reasons"], json.loads(value)["alert"]
    (['velocity'], True)
    """
    return [(k, (d.txn.user_id.encode(), orjson.dumps(decision_json(d), option=_UTC_Z)))
            for k, d in kds]


def _producer_config(settings: Settings) -> dict[str, str]:
    cfg = settings.kafka_config()
    cfg.setdefault("enable.idempotence", "true")
    cfg.setdefault("acks", "all")
    cfg.setdefault("linger.ms", "5")
    return cfg


def kafka_sink(settings: Settings, topic: str) -> KafkaSink:
    cfg = _producer_config(settings)
    brokers = cfg.pop("bootstrap.servers").split(",")
    return KafkaSink(brokers, topic, add_config=cfg)


class _SharedProducer:
    """One producer per process and configuration for every partition of a sink (each
    Producer has its own threads and connections); closed with its last partition."""

    lock = threading.Lock()
    producers: dict[str, tuple[Producer, int]] = {}  # noqa: RUF012 - process-wide on purpose

    @classmethod
    def get(cls, cfg: dict[str, str]) -> Producer:
        key = json.dumps(cfg, sort_keys=True)
        with cls.lock:
            p, n = cls.producers.get(key, (None, 0))
            if p is None:
                p = Producer(cfg)
            cls.producers[key] = (p, n + 1)
            return p

    @classmethod
    def release(cls, cfg: dict[str, str]) -> None:
        key = json.dumps(cfg, sort_keys=True)
        with cls.lock:
            p, n = cls.producers[key]
            p.flush()
            if n <= 1:
                del cls.producers[key]
            else:
                cls.producers[key] = (p, n - 1)


class _DecisionPartition(StatefulSinkPartition[tuple[bytes, bytes], None]):
    def __init__(self, cfg: dict[str, str], topic: str) -> None:
        self.cfg = cfg
        self.topic = topic
        self.producer = _SharedProducer.get(cfg)

    def write_batch(self, values: list[tuple[bytes, bytes]]) -> None:
        produce = self.producer.produce
        for key, value in values:
            while True:
                try:
                    produce(self.topic, value, key)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def snapshot(self) -> None:
        # the end of an epoch: everything of it is delivered before its input is committed
        self.producer.flush()

    def close(self) -> None:
        _SharedProducer.release(self.cfg)


class DecisionSink(FixedPartitionedSink[tuple[bytes, bytes], None]):
    """Every decision to the decisions topic, one partition per user shard (so decisions
    stay on the worker that made them); takes ``(user shard, (key, value))`` items (see
    :func:`decision_messages`).

    Delivery: at-least-once. The shared producer is flushed at the end of every epoch and at
    close rather than after every batch; after a resume, up to one snapshot interval of
    decisions is published again (same key and value).
    """

    def __init__(self, settings: Settings, topic: str, parts: list[str]) -> None:
        self.cfg = _producer_config(settings)
        self.topic = topic
        self.parts = list(parts)
        self._index = {p: i for i, p in enumerate(self.parts)}

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def part_fn(self, item_key: str) -> int:
        return self._index.get(item_key, 0)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _DecisionPartition:
        return _DecisionPartition(self.cfg, self.topic)
