"""Analysts' labels and controls as Kafka messages, and the producer that publishes them.

A confirmed alert becomes the label ``fraud``, a false positive ``legit`` (the producer's
:class:`~operators.records.Label` format, keyed by user id); an escalation publishes nothing.
A snooze becomes a :class:`~operators.records.Control` on the controls topic, keyed by target.

:func:`publish_label` and :func:`publish_control` publish one message directly and raise
:class:`PublishError` when it is not delivered; the web application does not use them for its
own writes but goes through the outbox (:mod:`txwatch.web.outbox`), so a Kafka outage never
loses a label.

>>> from datetime import datetime, UTC
>>> t = datetime(2018, 4, 1, 10, tzinfo=UTC)
>>> lb = label_for_alert({"transaction_id": "t1", "user_id": "u1", "terminal_id": "T9",
...                       "event_time": t}, "confirmed", t)
>>> (lb.label, lb.terminal_id)
('fraud', 'T9')
>>> label_for_alert({"transaction_id": "t1", "user_id": "u1", "terminal_id": None,
...                  "event_time": t}, "escalated", t) is None
True
>>> control_to_json(Control("snooze", "user", "u1", t, t))
b'{"kind": "snooze", "scope": "user", "target": "u1", "until": "2018-04-01T10:00:00Z", \
"issued_at": "2018-04-01T10:00:00Z"}'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from operators.parse import label_to_json
from operators.records import Control, Label
from txwatch.settings import Settings, get_settings

LABEL_OF_STATUS = {"confirmed": "fraud", "false_positive": "legit"}


class PublishError(RuntimeError):
    """A message was not delivered to Kafka; ``str(e)`` says why."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: str | None
    value: bytes


def _z(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def label_for_alert(alert: Mapping[str, Any], status: str, now: datetime) -> Label | None:
    """The label announcing review ``status`` of ``alert`` (None for an escalation)."""
    value = LABEL_OF_STATUS.get(status)
    if value is None:
        return None
    return Label(
        transaction_id=alert["transaction_id"],
        user_id=alert["user_id"],
        terminal_id=alert["terminal_id"],
        label=value,  # type: ignore[arg-type]
        transaction_time=alert["event_time"].astimezone(UTC),
        label_time=now.astimezone(UTC),
    )


def label_message(label: Label, topic: str) -> Message:
    return Message(topic, label.user_id, label_to_json(label))


def control_to_json(c: Control) -> bytes:
    """Serialise a control in the wire format (inverse of :func:`operators.parse.parse_control`)."""
    return json.dumps(
        {
            "kind": c.kind,
            "scope": c.scope,
            "target": c.target,
            "until": _z(c.until),
            "issued_at": _z(c.issued_at),
        }
    ).encode()


def control_message(control: Control, topic: str) -> Message:
    return Message(topic, control.target, control_to_json(control))


class KafkaPublisher:
    """An idempotent confluent-kafka producer that reports delivery per message.

    ``timeout`` bounds each :meth:`publish` call: librdkafka's ``message.timeout.ms`` is set to
    it, so every message gets a definite delivery report (delivered or failed) within it. A
    message that timed out while in flight may still have been written: delivery is
    at-least-once.
    """

    def __init__(self, config: Mapping[str, Any], timeout: float = 5.0) -> None:
        from confluent_kafka import Producer

        self.timeout = timeout
        cfg = {
            **config,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": max(1000, int(timeout * 1000)),
            "reconnect.backoff.max.ms": 2000,
            "linger.ms": 5,
            "logger": logging.getLogger("txwatch.web.kafka"),  # librdkafka logs, not stderr
        }
        self._producer = Producer(cfg)
        self.failing_since: float | None = None
        """Wall-clock time of the first failure since the last delivery, None when healthy."""
        self.last_error: str | None = None

    def publish(self, messages: Sequence[Message]) -> list[str | None]:
        """Publish ``messages``; for each, None if delivered, else the error text."""
        pending = object()
        results: list[Any] = [pending] * len(messages)

        def report(i: int) -> Any:
            def cb(err: Any, _msg: Any) -> None:
                results[i] = None if err is None else f"Kafka: {err.str()}"

            return cb

        for i, m in enumerate(messages):
            try:
                self._producer.produce(m.topic, value=m.value, key=m.key, on_delivery=report(i))
            except Exception as e:  # BufferError, KafkaException: not queued at all
                results[i] = f"Kafka: {e}"
        deadline = time.monotonic() + self.timeout + 2.0
        while any(r is pending for r in results) and time.monotonic() < deadline:
            self._producer.poll(0.05)
        out = [
            f"no delivery report within {self.timeout:g}s" if r is pending else r for r in results
        ]
        if any(r is None for r in out):
            self.failing_since, self.last_error = None, None
        elif out:
            self.failing_since = self.failing_since or time.time()
            self.last_error = out[0]
        return out

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)


def _publish_one(
    msg: Message, settings: Settings | None, publisher: KafkaPublisher | None, timeout: float
) -> None:
    own = publisher is None
    pub = publisher or KafkaPublisher((settings or get_settings()).kafka_config(), timeout)
    try:
        (err,) = pub.publish([msg])
    finally:
        if own:
            pub.close(1.0)
    if err is not None:
        raise PublishError(f"{msg.topic}: {err}")


def publish_label(
    label: Label,
    settings: Settings | None = None,
    *,
    publisher: KafkaPublisher | None = None,
    timeout: float = 10.0,
) -> None:
    """Publish ``label`` to the labels topic of ``settings`` and wait for delivery.

    Raises :class:`PublishError` if it is not delivered within ``timeout`` seconds.
    """
    s = settings or get_settings()
    _publish_one(label_message(label, s.labels_topic), s, publisher, timeout)


def publish_control(
    control: Control,
    settings: Settings | None = None,
    *,
    publisher: KafkaPublisher | None = None,
    timeout: float = 10.0,
) -> None:
    """Publish ``control`` to the controls topic of ``settings`` and wait for delivery."""
    s = settings or get_settings()
    _publish_one(control_message(control, s.controls_topic), s, publisher, timeout)
