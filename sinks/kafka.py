"""Kafka sinks: dead letters and decisions, as JSON, through Bytewax's ``KafkaSink``.

Bytewax's sink flushes the producer after every batch (delivery before the epoch closes);
txwatch configures it idempotent with ``acks=all`` so librdkafka retries without duplicates.

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

import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage

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


def decision_json(d: Decision) -> dict[str, object]:
    return {
        "transaction_id": d.txn.transaction_id,
        "user_id": d.txn.user_id,
        "timestamp": d.txn.timestamp.isoformat().replace("+00:00", "Z"),
        "decision": d.severity,
        "alert": d.is_alert,
        "snoozed": d.snoozed,
        "score": d.score,
        "threshold": d.threshold,
        "reasons": [r.code for r in d.reasons],
        "model_version": d.model_version,
    }


def decision_message(d: Decision) -> KafkaSinkMessage[bytes, bytes]:
    return KafkaSinkMessage(key=d.txn.user_id.encode(), value=orjson.dumps(decision_json(d)))


def decision_messages(kds: list[tuple[str, Decision]]) -> list[KafkaSinkMessage[bytes, bytes]]:
    """The messages of a batch of ``(user shard, Decision)`` items."""
    return [decision_message(d) for _, d in kds]


def kafka_sink(settings: Settings, topic: str) -> KafkaSink:
    cfg = settings.kafka_config()
    brokers = cfg.pop("bootstrap.servers").split(",")
    cfg.setdefault("enable.idempotence", "true")
    cfg.setdefault("acks", "all")
    cfg.setdefault("linger.ms", "5")
    return KafkaSink(brokers, topic, add_config=cfg)
