"""Send a transaction stream and its delayed labels to Kafka.

Transactions go to ``settings.transactions_topic`` and labels to ``settings.labels_topic``, both
keyed by user id, from one idempotent producer (``enable.idempotence``: no duplicates from
retries, order kept per partition). Every delivery is counted; failed ones are reported in
:class:`ProduceStats` and make ``ok`` false.

Labels are scheduled when their transaction is sent and go out when their ``label_time`` comes
on the label clock: ``label_clock()`` (the wall clock in live mode) or, by default, the event
time of the latest transaction sent (replay). At the end of a replay the labels still pending
are sent too (the simulated future is known); in live mode they are counted, not sent.

Example (needs a broker; the test suite runs this against the embedded one)::

    import time

    from producer.config import SimConfig
    from producer.kafka import produce_stream
    from producer.labels import LabelPolicy
    from producer.simulator import iter_transactions
    from producer.stream import history_then_live
    from txwatch.settings import Settings

    records = history_then_live(iter_transactions(SimConfig(n_customers=500)),
                                history_days=7, rate=50)
    stats = produce_stream(Settings(), records, labels=LabelPolicy(delay_seconds=30),
                           label_clock=time.time, duration=600)
    assert stats.ok
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from operators.parse import label_to_json
from operators.records import Label
from producer.labels import LabelPolicy, LabelSchedule
from producer.stream import epoch_of, rate_limited
from txwatch.settings import Settings

TRUTH_FIELDS = ("is_fraud", "fraud_scenario")
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 10,
    "client.id": "txwatch-producer",
}


@dataclass(slots=True)
class ProduceStats:
    """What :func:`produce_stream` did."""

    transactions: int = 0
    """Transactions handed to the producer."""
    labels: int = 0
    """Labels handed to the producer."""
    delivered: int = 0
    """Messages (both topics) acknowledged by the broker."""
    failed: int = 0
    """Messages that could not be delivered (including those still queued at the end)."""
    labels_pending: int = 0
    """Labels scheduled but not sent (live mode's future, or an interrupted run)."""
    interrupted: bool = False
    """Stopped by ``stop_event`` or Ctrl-C rather than by the end of input or a limit."""
    elapsed_seconds: float = 0.0
    last_event_time: str | None = None
    first_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def rate(self) -> float:
        """Transactions per second so far."""
        return self.transactions / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.transactions:,} transactions and {self.labels:,} labels sent in "
             f"{self.elapsed_seconds:.1f} s ({self.rate:,.0f}/s); {self.delivered:,} delivered, "
             f"{self.failed:,} failed")
        if self.labels_pending:
            s += f"; {self.labels_pending:,} labels not yet due, not sent"
        if self.first_error:
            s += f"; first error: {self.first_error}"
        return s


class _Sender:
    """One producer with delivery accounting."""

    def __init__(self, producer: Any, stats: ProduceStats) -> None:
        self.p = producer
        self.stats = stats

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            if self.stats.first_error is None:
                self.stats.first_error = str(err)

    def send(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.p.produce(topic, value=value, key=key.encode(), on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.p.poll(0.1)
            except Exception as e:  # e.g. message too large: counted, the stream goes on
                self.stats.failed += 1
                if self.stats.first_error is None:
                    self.stats.first_error = f"{type(e).__name__}: {e}"
                return


def make_producer(settings: Settings, overrides: dict[str, Any] | None = None) -> Any:
    """An idempotent ``confluent_kafka.Producer`` on the settings' brokers."""
    from confluent_kafka import Producer

    return Producer({**settings.kafka_config(), **PRODUCER_DEFAULTS, **(overrides or {})})


def produce_stream(
    settings: Settings,
    records: Iterable[dict[str, Any]],
    rate: float | None = None,
    stop_event: threading.Event | None = None,
    on_progress: Callable[[ProduceStats], None] | None = None,
    *,
    labels: LabelPolicy | None = None,
    label_clock: Callable[[], float] | None = None,
    max_events: int | None = None,
    duration: float | None = None,
    strip_truth: bool = False,
    flush_pending_labels: bool | None = None,
    producer_config: dict[str, Any] | None = None,
    progress_interval: float = 1.0,
    flush_timeout: float = 30.0,
) -> ProduceStats:
    """Send ``records`` (transaction dicts, in order) and, with ``labels``, their labels.

    Parameters
    ----------
    records
        Transaction dicts with their final ``timestamp`` (see :mod:`producer.stream`); sent as
        compact JSON, keyed by ``user_id``. ``is_fraud``/``fraud_scenario`` are kept unless
        ``strip_truth`` (the dataflow ignores them; they serve evaluation and labels).
    rate
        At most this many transactions per second (None: as given by ``records``).
    stop_event
        Set it (e.g. from a signal handler) to stop: the producer is flushed, pending labels
        are not sent, ``interrupted`` is true. Ctrl-C (KeyboardInterrupt) does the same.
    labels, label_clock
        The label policy and the clock labels fall due on: None means the event time of the
        latest transaction sent (replay), ``time.time`` for live mode.
    max_events, duration
        Stop after this many transactions or seconds (a normal end).
    flush_pending_labels
        Send the labels not yet due at a normal end; default: yes when replaying
        (``label_clock`` None), no in live mode.
    """
    stats = ProduceStats()
    schedule = LabelSchedule()
    sender = _Sender(make_producer(settings, producer_config), stats)
    tx_topic, lb_topic = settings.transactions_topic, settings.labels_topic
    src = iter(rate_limited(records, rate, stop_event) if rate else records)
    t0 = time.monotonic()
    next_progress = t0 + progress_interval
    latest = float("-inf")

    def send_labels(due: list[Label]) -> None:
        for lb in due:
            sender.send(lb_topic, lb.user_id, label_to_json(lb))
            stats.labels += 1

    try:
        for rec in src:
            ev = epoch_of(rec["timestamp"])
            latest = max(latest, ev)
            out = {k: v for k, v in rec.items() if k not in TRUTH_FIELDS} if strip_truth else rec
            sender.send(tx_topic, str(rec["user_id"]),
                        json.dumps(out, separators=(",", ":")).encode())
            stats.transactions += 1
            stats.last_event_time = rec["timestamp"]
            if labels is not None:
                lb = labels.label_for(rec, datetime.fromtimestamp(ev, tz=UTC))
                if lb is not None:
                    schedule.push(lb)
                now = label_clock() if label_clock is not None else latest
                send_labels(schedule.pop_due(datetime.fromtimestamp(now, tz=UTC)))
            sender.p.poll(0)
            mono = time.monotonic()
            if on_progress is not None and mono >= next_progress:
                stats.elapsed_seconds = mono - t0
                on_progress(stats)
                next_progress = mono + progress_interval
            if max_events is not None and stats.transactions >= max_events:
                break
            if duration is not None and mono - t0 >= duration:
                break
            if stop_event is not None and stop_event.is_set():
                break
        stats.interrupted = stop_event is not None and stop_event.is_set()
        flush_all = label_clock is None if flush_pending_labels is None else flush_pending_labels
        if not stats.interrupted and labels is not None:
            if flush_all:
                send_labels(schedule.drain())
            elif label_clock is not None:
                send_labels(schedule.pop_due(datetime.fromtimestamp(label_clock(), tz=UTC)))
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        stats.labels_pending = len(schedule)
        left = sender.p.flush(flush_timeout)
        if left:
            stats.failed += left
            if stats.first_error is None:
                stats.first_error = f"{left} messages still queued after {flush_timeout:g} s"
        stats.elapsed_seconds = time.monotonic() - t0
        if on_progress is not None:
            on_progress(stats)
    return stats
