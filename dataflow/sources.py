"""Where transactions, labels and controls enter the flow.

Sources parse in place (with :mod:`operators.parse`) so that each partition can emit
:class:`~operators.ordering.Watermark` items derived from the event times it has read: "no
later transaction from this partition will be earlier than ts, except late ones". Parse
failures come out as :class:`~operators.records.DeadLetter` items (a stream of errors, not a
crash). Kafka offsets (and the watermark) are the partitions' recovery state.

* :class:`TransactionSource` — the ``transactions`` topic (Txn | DeadLetter | Watermark)
* :class:`LabelSource` — the ``labels`` topic (Label | DeadLetter)
* :class:`ControlSource` — the ``controls`` topic (Control | DeadLetter)
* :class:`ReplaySource` — a JSONL file in event-time order, with labels derived from its
  ``is_fraud`` after a delay (``txwatch replay``)
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING

from operators.ordering import Watermark
from operators.parse import InvalidMessage, TxnParser, parse_control, parse_label
from operators.records import DeadLetter, label_of
from txwatch.metrics import child, get_metrics
from txwatch.settings import Settings

MARK_EVERY = 0.02
"""Seconds (wall clock) between two watermarks of a partition: bounds their overhead."""


def _dead(raw: bytes | None, reason: str, topic: str | None, part: int | None,
          offset: int | None) -> DeadLetter:
    return DeadLetter(raw or b"", reason, topic, part, offset, datetime.now(UTC))


class _ParsingPartition(StatefulSourcePartition[Any, tuple[int | None, float]]):
    """Wraps a Bytewax Kafka partition: parses each message, adds watermarks."""

    def __init__(self, inner: Any, name: str, parts: int, parse: Callable[..., Any],
                 input_name: str, lateness: float, resume_wm: float, marks: bool,
                 max_rate: float = 0.0) -> None:
        self.inner = inner
        self.name = name
        self.parts = parts
        self.parse = parse
        self.input_name = input_name
        self.lateness = lateness
        self.max_ts = resume_wm
        self.marks = marks
        self.last_mark = 0.0
        self.sent = float("-inf")
        self.max_rate = max_rate
        self.not_before = 0.0  # wall clock: when the rate limit lets the next batch in

    def next_batch(self) -> list[Any]:
        now = time.time()
        if self.max_rate and now < self.not_before:
            return []
        msgs = self.inner.next_batch()
        if self.max_rate:
            # a token bucket of one batch: the next read waits until this one is "paid for"
            self.not_before = max(now, self.not_before) + len(msgs) / self.max_rate
        out: list[Any] = []
        m = get_metrics()
        for msg in msgs:
            kmsg = getattr(msg, "msg", msg)  # KafkaError wraps the message
            if msg is not kmsg:
                out.append(_dead(kmsg.value, f"kafka error: {msg.err}", kmsg.topic,
                                 kmsg.partition, kmsg.offset))
                continue
            _ts_type, ts_ms = kmsg.timestamp
            try:
                item = self.parse(kmsg.value or b"", now, ts_ms / 1000.0 if ts_ms > 0 else None)
            except InvalidMessage as e:
                child(m.invalid, self.input_name).inc()
                if self.input_name == "transactions":
                    child(m.consumed, "invalid").inc()
                out.append(_dead(kmsg.value, str(e), kmsg.topic, kmsg.partition, kmsg.offset))
                continue
            out.append(item)
            if self.marks:
                ts = item.ts_seconds
                if ts > self.max_ts:
                    self.max_ts = ts
        if self.marks and now - self.last_mark >= MARK_EVERY:
            wm = self.max_ts - self.lateness
            if wm > self.sent:
                self.sent = wm
                self.last_mark = now
                out.append(Watermark(self.name, wm, self.parts))
        return out

    def next_awake(self) -> datetime | None:
        if self.max_rate and self.not_before > time.time():
            return datetime.fromtimestamp(self.not_before, UTC)
        return self.inner.next_awake()

    def snapshot(self) -> tuple[int | None, float]:
        return (self.inner.snapshot(), self.max_ts)

    def close(self) -> None:
        self.inner.close()


class _ParsingKafkaSource(FixedPartitionedSource[Any, tuple[int | None, float]]):
    input_name = "transactions"
    marks = False

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        cfg = settings.kafka_config()
        brokers = cfg.pop("bootstrap.servers").split(",")
        self.kafka = KafkaSource(
            brokers,
            [topic],
            tail=settings.kafka_tail,
            starting_offset=OFFSET_BEGINNING,
            add_config=cfg,
            batch_size=settings.kafka_batch_size,
            raise_on_errors=False,
        )
        self._parts: list[str] | None = None

    def list_parts(self) -> list[str]:
        if self._parts is None:
            self._parts = self.kafka.list_parts()
            if not self._parts:
                raise RuntimeError(
                    f"topic {self.topic!r} not found on {self.settings.kafka_brokers}: "
                    "create it (txwatch creates topics in the demo; see README)"
                )
        return self._parts

    def _parser(self) -> Callable[..., Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_part(self, step_id: str, for_part: str,
                   resume_state: tuple[int | None, float] | None) -> _ParsingPartition:
        from txwatch.observability import ensure_metrics_server

        ensure_metrics_server(self.settings)
        offset, wm = resume_state if resume_state is not None else (None, float("-inf"))
        inner = self.kafka.build_part(step_id, for_part, offset)
        return _ParsingPartition(inner, for_part, len(self.list_parts()), self._parser(),
                                 self.input_name, self.settings.lateness_seconds, wm,
                                 self.marks,
                                 self.settings.kafka_max_rate
                                 if self.input_name == "transactions" else 0.0)


class TransactionSource(_ParsingKafkaSource):
    """The transactions topic, parsed, with watermarks."""

    input_name = "transactions"
    marks = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.transactions_topic)

    def _parser(self) -> Callable[..., Any]:
        return TxnParser(self.settings).parse


class LabelSource(_ParsingKafkaSource):
    """The labels topic, parsed. Labels take part in no watermark: they are applied when the
    transactions' watermark passes their ``label_time`` (or on arrival, if later)."""

    input_name = "labels"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.labels_topic)

    def _parser(self) -> Callable[..., Any]:
        mx = self.settings.max_message_bytes
        return lambda raw, now, kts: parse_label(raw, mx)


class ControlSource(_ParsingKafkaSource):
    """The controls topic (snoozes from the review page)."""

    input_name = "controls"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.controls_topic)

    def _parser(self) -> Callable[..., Any]:
        return lambda raw, now, kts: parse_control(raw)


# --------------------------------------------------------------------------------------------
_BLANK = object()
"""A blank line of a replayed file (skipped)."""


class _LabelQueue:
    """The labels waiting in a replay, in (label time, transaction id) order.

    A file in event-time order makes them in that order, so they queue in a deque (appended
    and taken in constant time); one made out of order goes to a heap, and the earlier head of
    the two goes first. (Hand-rolled: a heap alone paid a logarithmic pop for the week of
    labels waiting, about a microsecond each; a sequence number breaks ties, so two labels
    of one transaction id at one time are never compared themselves.)

    >>> q = _LabelQueue()
    >>> for ts, tid in [(5.0, "b"), (7.0, "c"), (6.0, "a"), (9.0, "d")]:
    ...     q.push(ts, tid, tid.upper())
    >>> out: list[str] = []
    >>> q.pop_due(7.0, out), out, len(q)
    (None, ['B', 'A', 'C'], 1)
    """

    __slots__ = ("fifo", "heap", "seq")

    def __init__(self) -> None:
        self.fifo: deque[tuple[float, str, int, Any]] = deque()
        self.heap: list[tuple[float, str, int, Any]] = []
        self.seq = 0

    def __len__(self) -> int:
        return len(self.fifo) + len(self.heap)

    def push(self, ts: float, tid: str, label: Any) -> None:
        self.seq += 1
        fifo = self.fifo
        if fifo:
            last = fifo[-1]
            if ts < last[0] or (ts == last[0] and tid < last[1]):
                heapq.heappush(self.heap, (ts, tid, self.seq, label))
                return
        fifo.append((ts, tid, self.seq, label))

    def pop_due(self, ts: float, out: list[Any]) -> None:
        """Append to ``out``, in order, every label due at ``ts`` or before."""
        fifo, heap = self.fifo, self.heap
        while True:
            if heap and (not fifo or heap[0] < fifo[0]):
                if heap[0][0] > ts:
                    return
                out.append(heapq.heappop(heap)[3])
            elif fifo and fifo[0][0] <= ts:
                out.append(fifo.popleft()[3])
            else:
                return

    def clear(self) -> None:
        self.fifo.clear()
        self.heap.clear()


class _ReplayPartition(StatefulSourcePartition[Any, tuple[int, float]]):
    def __init__(self, path: str, settings: Settings, label_delay: float | None,
                 resume: tuple[int, float] | None, batch: int, progress: Any,
                 owner: ReplaySource | None = None) -> None:
        self.owner = owner
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.parser = TxnParser(settings)
        self.label_delay = label_delay
        self.batch = batch
        self.progress = progress
        self.lateness = settings.lateness_seconds
        self.max_ts = float("-inf")
        self.labels = _LabelQueue()
        self.delay = timedelta(seconds=label_delay or 0.0)
        self.not_due = 0  # labels still waiting at the end of the file (not emitted)
        self.line = 0
        self.eof = False
        self.pos = 0  # byte offset of the next line (kept, not asked: tell() is a syscall)
        if resume is not None:
            if label_delay is not None:
                self._requeue_labels(resume[0])
            self.f.seek(resume[0])
            self.pos = resume[0]
            self.max_ts = resume[1]
            self.line = 0

    def _read_line(self, now: float) -> Any:
        """The next line: ``(its object, its Txn)``, a :class:`DeadLetter`, :data:`_BLANK`,
        or ``None`` at the end of the file."""
        pos = self.pos
        raw = self.f.readline()
        if not raw:
            return None
        self.pos = pos + len(raw)
        self.line += 1
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            return _BLANK
        try:
            obj = self.parser.load(raw)
            return obj, self.parser.from_object(obj, now)
        except InvalidMessage as e:
            return _dead(raw, str(e), "file", 0, pos)

    def _requeue_labels(self, end: int) -> None:
        """The labels still waiting at a snapshot are not in it (a week of labels would make
        every snapshot megabytes): they are queued again by reading the file up to the
        snapshot's offset, released as the first pass released them, nothing emitted."""
        now = time.time()
        while self.pos < end:
            r = self._read_line(now)
            if r is None:
                break
            if type(r) is tuple:
                obj, t = r
                self.labels.pop_due(t.ts_seconds, [])
                self._label_for(obj, t)

    def next_batch(self) -> list[Any]:
        if self.eof:
            raise StopIteration
        out: list[Any] = []
        labels = self.labels
        with_labels = self.label_delay is not None
        m = get_metrics()
        now = time.time()
        for _ in range(self.batch):
            r = self._read_line(now)
            if r is None:
                self.eof = True
                break
            if type(r) is not tuple:
                if r is not _BLANK:
                    child(m.invalid, "transactions").inc()
                    child(m.consumed, "invalid").inc()
                    out.append(r)
                continue
            obj, t = r
            ts = t.ts_seconds
            # labels whose time has come go out before the transaction that passes them
            if with_labels:
                labels.pop_due(ts, out)
            out.append(t)
            if ts > self.max_ts:
                self.max_ts = ts
            if with_labels:
                self._label_for(obj, t)
        if self.eof:
            # the replayed stream's event time ends at its latest transaction: a label is
            # applied once event time passes its label time (as in the Kafka flow), so the
            # labels due by then go out and the later ones never arrive (they could change
            # no score: counted, ReplaySource.labels_not_due)
            labels.pop_due(self.max_ts, out)
            self.not_due = len(labels)
            labels.clear()
            if self.owner is not None:
                self.owner.labels_not_due += self.not_due
        out.append(Watermark("replay", self.max_ts - self.lateness, 1))
        if self.progress is not None:
            self.progress(self.line)
        return out

    def _label_for(self, obj: dict[str, Any], t: Any) -> None:
        # the handbook's protocol: every transaction is labelled from the file's ground
        # truth, `label_delay` after it happened. Only this source reads `is_fraud`.
        lb = label_of(t, "fraud" if obj.get("is_fraud", 0) else "legit",
                      t.timestamp + self.delay)
        self.labels.push(lb.label_ts, lb.transaction_id, lb)

    def snapshot(self) -> tuple[int, float]:
        return (self.pos, self.max_ts)

    def close(self) -> None:
        self.f.close()


class ReplaySource(FixedPartitionedSource[Any, tuple[int, float]]):
    """A JSONL file of transactions in event-time order, as one partition.

    With ``label_delay`` (seconds), every transaction is labelled from the file's
    ``is_fraud`` and the label enters the flow ``label_delay`` after the transaction, through
    the same label path as the Kafka ``labels`` topic, once the file's event time reaches it
    (the labels due after the file's latest transaction never do: :attr:`labels_not_due`
    counts them). Its snapshot is the byte offset of the
    next line and the latest event time; a resumed partition queues the labels still waiting
    again by reading the file up to that offset.
    """

    def __init__(self, path: str, settings: Settings, label_delay: float | None = None,
                 batch: int = 1000, progress: Any = None) -> None:
        self.path = path
        self.settings = settings
        self.label_delay = label_delay
        self.batch = batch
        self.progress = progress
        self.labels_not_due = 0
        """Labels due after the file's latest transaction: the replayed stream ends before
        they would arrive, so they are not emitted (counted here at the end of the file)."""

    def list_parts(self) -> list[str]:
        return ["replay"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: tuple[int, float] | None) -> _ReplayPartition:
        return _ReplayPartition(self.path, self.settings, self.label_delay, resume_state,
                                self.batch, self.progress, self)
