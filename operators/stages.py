"""The two stateful stages of the flow, as Bytewax ``StatefulBatchLogic`` classes.

``TerminalStage`` (keyed by terminal shard) and ``UserStage`` (keyed by user shard) both
process their input in event-time order through an :class:`~operators.ordering.
EventTimeBuffer`, so the same input gives the same scores whatever the number of workers.

A whole batch of a key's items goes through one ``on_batch`` call (taken in arrival order,
exactly as one item at a time would be); metrics are counted during the batch and added at
its end.

Shapes (see :mod:`dataflow.build`)::

    TerminalStage in:  Txn | Label | Control | Watermark | ("w", shard key, Watermark)
    TerminalStage out: ("t", Txn, terminal features) | ("l", Label) | ("c", Control)
                       | ("w", Watermark)   (at most one per batch, last)
    UserStage in:      the above | ("w", shard key, Watermark)
    UserStage out:     Decision

State is snapshotted as pickled bytes: immutable, and its size is the snapshot size.
"""

from __future__ import annotations

import pickle
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from bytewax.operators import StatefulBatchLogic

from operators import heap
from operators.decision import decide_severity
from operators.errors import IncompatibleSnapshot
from operators.ordering import NEVER_EXPIRES, EventTimeBuffer, Watermark
from operators.reasons import explain
from operators.records import Control, Decision, Label, Reason, Txn
from operators.scoring import Detector
from operators.terminal import HORIZON_DAYS, TerminalState
from operators.user import UserState
from txwatch.metrics import child, get_metrics

STATE_VERSION = 11
"""Layout version of the stages' snapshots. A release that changes the layout bumps it; an
older snapshot is migrated when :data:`READABLE` lists it, else refused with instructions for
a warm start (see README, Recovery).
3: the terminal's latest labels and the user's trip flag (model txw-1.2); 4: event times
stored in ``Txn`` and ``Label`` (the batch stages); 5: the alert budget's histogram pickles
by its constructor's arguments (the compiled modules, ``operators.native``); 6: a user's day
buckets are a ring in one array (``operators.user.DAYS``); 7: a user's histogram of distances
from home, counts of channels, and the distance and channel of each recent transaction (model
txw-1.4); 8: whether each recent transaction was learnt (model txw-1.6); 9: where the alert
budgets counted each transaction that waits for its label (model txw-1.9); 10: a user's
recent transactions in one flat array, home and the last location as plain fields, the window
cache no longer snapshotted (the same model); 11: the supervised model is
``operators.models.logistic.OnlineLogistic``, no longer river's object (the same model)."""

READABLE = (5, 6, 7, 8, 9, 10, STATE_VERSION)
"""Snapshot versions this release restores: 5 to 10 are migrated as they are read (a user's
day buckets, distances, channels and recent transactions, ``UserState.__setstate__``; the kept
inputs of pending labels, ``TxwDetector.learn_label``; river's logistic regression, carried
over weight for weight, ``TxwDetector.__init__``). A user migrated from 5 or 6 starts with
an empty distance histogram and channel counts: they count as evidence again after 10
transactions (``operators.user.DIST_MIN_N``). A recent transaction of 7 or before counts as
learnt (most are; the flagged ones were not). A transaction of 8 or before that waits for its
label was counted by the budgets without saying where: its fraud label leaves them as they are."""

KIND_LABEL = 0  # labels sort before transactions of the same instant
KIND_TXN = 1
LABEL_MEMORY = (HORIZON_DAYS + 1) * 86_400.0
"""Seconds of label time for which the terminal stage remembers that a transaction has a label
(and which), so that a later label for it replaces the earlier one; a transaction labelled
longer ago has left every terminal window (``operators.terminal.HORIZON_DAYS``)."""


def _is_label(key: tuple[float, int, str]) -> bool:
    return key[1] == KIND_LABEL


def load_snapshot(resume: bytes, step: str) -> dict[str, Any]:
    """Unpickle a stage's snapshot and check its state version."""
    snap: dict[str, Any] = pickle.loads(resume)  # noqa: S301 - our own recovery store
    _check_version(snap, step)
    return snap


def dump_snapshot(state: dict[str, Any]) -> bytes:
    """Pickle a stage's state with the current state version."""
    return pickle.dumps({"version": STATE_VERSION, **state}, protocol=pickle.HIGHEST_PROTOCOL)


def _check_version(snap: dict[str, Any], step: str) -> None:
    v = snap.get("version")
    if v not in READABLE:
        raise IncompatibleSnapshot(
            f"step {step!r}: recovery snapshot has state version {v}, this release reads "
            f"{', '.join(map(str, READABLE[:-1]))} and {READABLE[-1]}. Warm start: point "
            "TXWATCH_RECOVERY_DIR at a fresh directory (python -m bytewax.recovery DIR N) and "
            "replay history into it; see README, Recovery."
        )


@dataclass(frozen=True)
class StageConfig:
    """What the stages need from the settings."""

    lateness: float = 0.25
    max_hold: float = 1.0
    terminal_shards: int = 8
    user_shards: int = 8
    source_partitions: int = 1
    dedupe_horizon: float = 2 * 86400.0
    dedupe_max_ids: int = 2_000_000
    """Most transaction ids kept for de-duplication over all terminal shards (the oldest go
    first): memory is bounded whatever the rate."""
    threshold: float = 3.5
    block_threshold: float = 8.0
    user_ttl: float = 90 * 86400.0
    label_horizon: float = 35 * 86400.0
    max_pending_labels: int = 2_000_000
    detector_factory: Callable[[Any], Detector] = field(default=lambda state: _default(state))
    labels: bool = True
    """Whether labels can reach the flow (it has a label input): without, the user stage keeps
    nothing of a scored transaction for its label (``txwatch replay --no-labels``)."""
    snapshots: bool = True
    """Bytewax asks for snapshots at every epoch even without recovery; when recovery is off
    the stages answer with an empty marker instead of pickling all their state."""


def _default(state: Any) -> Detector:
    from operators.scoring import ZScoreDetector

    return ZScoreDetector(state=state)


def _wall_clock() -> float:
    return time.time()


_now: Callable[[], float] = _wall_clock
"""The wall clock of holds and decisions: a variable, not a function, so that tests can set it
(the compiled module looks a module variable up at each use)."""


class _ProcessState:
    """Per-process totals over the shards this process holds (gauges are per process)."""

    # (process-wide on purpose: class variables, the compiled class's as the plain one's)
    users: ClassVar[dict[str, int]] = {}
    terminals: ClassVar[dict[str, int]] = {}
    bytes: ClassVar[dict[tuple[str, str], int]] = {}
    bytes_at: ClassVar[dict[tuple[str, str], float]] = {}
    BYTES_EVERY: ClassVar[float] = 10.0
    """Wall-clock seconds between two size estimates of a shard (each pickles a sample)."""

    @classmethod
    def bytes_due(cls, stage: str, key: str) -> bool:
        """Whether the shard's size is due for a new estimate (always true the first time)."""
        now = time.monotonic()
        last = cls.bytes_at.get((stage, key))
        if last is not None and now - last < cls.BYTES_EVERY:
            return False
        cls.bytes_at[(stage, key)] = now
        return True

    @classmethod
    def report(cls, stage: str, key: str, count: int, nbytes: int | None) -> None:
        m = get_metrics()
        if stage == "user":
            cls.users[key] = count
            m.users_in_state.set(sum(cls.users.values()))
        else:
            cls.terminals[key] = count
            m.terminals_in_state.set(sum(cls.terminals.values()))
        if nbytes is not None:
            cls.bytes[(stage, key)] = nbytes
            child(m.state_bytes, stage).set(
                sum(v for (st, _), v in cls.bytes.items() if st == stage)
            )


def estimate_bytes(items: dict[str, Any], sample: int = 32) -> int:
    """Approximate pickled size of a dict of states from a deterministic sample."""
    n = len(items)
    if n == 0:
        return 0
    step = max(1, n // sample)
    vals = list(items.values())[::step]
    return int(sum(len(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)) for v in vals)
               * n / len(vals))


class _BatchMetrics:
    """Per-decision metrics counted in plain numbers during a batch and handed to the
    Prometheus objects once at its end (one lock per metric and batch, not per event)."""

    __slots__ = ("alerts", "cold", "dups", "label_lags", "labelled_alerts", "labels", "late",
                 "latencies", "reasons", "scores", "severities")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # (not a second call of __init__: compiled, that one does not release what it replaces)
        self.scores: list[float] = []
        self.latencies: list[float] = []
        self.severities: dict[str, int] = {}
        self.alerts: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.labels: dict[str, int] = {}
        self.label_lags: list[float] = []
        self.labelled_alerts: dict[str, int] = {}
        self.cold = 0
        self.dups = 0
        self.late = 0

    def decision(self, d: Decision) -> None:
        """Count one decision (score, latency, severity, alert and its reasons)."""
        sev = d.severity
        self.severities[sev] = self.severities.get(sev, 0) + 1
        self.scores.append(d.score)
        t = d.txn
        start = t.kafka_ts or t.received_at
        if start:
            self.latencies.append(max(0.0, d.decided_at - start))
        if d.is_alert:
            self.alerts[sev] = self.alerts.get(sev, 0) + 1
            for r in d.reasons:
                self.reasons[r.code] = self.reasons.get(r.code, 0) + 1

    def flush(self, stage: str) -> None:
        """Add what was counted to the process' metrics and start again."""
        m = get_metrics()
        if self.late:
            child(m.late_events, stage).inc(self.late)
            self.late = 0
        if self.dups:
            child(m.consumed, "duplicate").inc(self.dups)
            self.dups = 0
        if self.labels:
            for label, k in self.labels.items():
                child(m.labels_received, label).inc(k)
            observe_all(m.label_lag, self.label_lags)
            self.labels = {}
            self.label_lags = []
        if self.labelled_alerts:
            for label, k in self.labelled_alerts.items():
                child(m.labelled_alerts, label).inc(k)
            self.labelled_alerts = {}
        if not self.scores:
            return
        n = len(self.scores)
        # alert rate over roughly the last 5,000 decisions of this process (exponential decay)
        a = sum(self.alerts.values())
        _rate_update(n, a)
        child(m.consumed, "scored").inc(n)
        for sev, k in self.severities.items():
            child(m.decisions, sev).inc(k)
        for sev, k in self.alerts.items():
            child(m.alerts, sev).inc(k)
        for code, k in self.reasons.items():
            child(m.alert_reasons, code).inc(k)
        if self.cold:
            m.cold_start_scores.inc(self.cold)
        observe_all(m.score, self.scores)
        observe_all(m.decision_latency, self.latencies)
        self._reset()


_RATE = {"alerts": 0.0, "all": 0.0, "n": 0.0}
_DECAY = 0.9998


def _rate_update(n: int, alerts: int) -> None:
    """The decayed alert rate after ``n`` more decisions of which ``alerts`` were alerts
    (the alerts taken as the batch's last: the rate is a gauge, not a result)."""
    keep = _DECAY**n
    _RATE["all"] = _RATE["all"] * keep + (1.0 - keep) / (1.0 - _DECAY)
    ka = _DECAY**alerts
    _RATE["alerts"] = _RATE["alerts"] * keep + (1.0 - ka) / (1.0 - _DECAY)
    before = _RATE["n"]
    _RATE["n"] = before + n
    if int(_RATE["n"]) // 256 != int(before) // 256:
        get_metrics().alert_rate.set(1000.0 * _RATE["alerts"] / _RATE["all"])


def observe_all(hist: Any, values: list[float]) -> None:
    """``hist.observe(v)`` for every ``v``, with one increment per bucket: prometheus-client
    takes a lock for each increment, so a batch is binned here first."""
    if not values:
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another client version
        for v in values:
            hist.observe(v)
        return
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    for i, k in enumerate(counts):
        if k:
            buckets[i].inc(k)
    total.inc(sum(values))


def observe_decision(d: Decision) -> None:
    """Per-decision metrics (score, latency, severities, reasons, recent alert rate)."""
    bm = _BatchMetrics()
    bm.decision(d)
    bm.flush("user")


class _OrderedStage:
    """Common buffering: push, release by watermark, hold timeout, drain at EOF.

    A Bytewax ``StatefulBatchLogic`` by registration, not inheritance (below the classes): the
    stages are compiled by mypyc into native classes, which cannot derive from a Python class
    (an attempt crashed the garbage collector), and they implement every method Bytewax calls.

    A whole batch of a key's items goes through :meth:`on_batch` in one call; items are
    taken in arrival order exactly as one at a time (:meth:`on_item` is a batch of one).
    """

    stage = ""

    def __init__(self, cfg: StageConfig, buf: EventTimeBuffer) -> None:
        self.cfg = cfg
        self.buf = buf
        self.bm = _BatchMetrics()
        # wall clock of the last advance of the origins' watermark (``buf.settled``): the
        # hold releases nothing while it keeps advancing (see on_notify)
        self.settled_at = _now()

    def _take(self, item: Any, out: list[Any]) -> None:  # pragma: no cover - abstract
        """Process one released (or unordered, or late) item, appending what it emits."""
        raise NotImplementedError

    def _process(self, item: Any) -> list[Any]:
        """Process one item and return what it emits (for tests and direct use)."""
        out: list[Any] = []
        self._take(item, out)
        self.bm.flush(self.stage)
        return out

    def _sort_key(self, item: Any) -> tuple[float, int, str] | None:  # pragma: no cover
        raise NotImplementedError

    def _watermark_of(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_watermark(self, wm: Watermark, out: list[Any]) -> None:
        return None

    def _ready(self, label: Any) -> bool:
        """Whether a label behind the hold's release limit (but not yet behind the origins'
        watermark) may be processed now. Here always: a label reaches the user stage after
        its transaction, through the same terminal shard (see :class:`TerminalStage`)."""
        return True

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        buf = self.buf
        process = self._take
        now: float | None = None
        last_wm: Watermark | None = None
        settled = buf.settled
        for value in values:
            wm: Any = self._watermark_of(value)  # (a Watermark, or packed ones)
            if wm is not None:
                if type(wm) is tuple:  # several origins' (origin, ts, origins), packed
                    for it in buf.advance_many(wm):
                        process(it, out)
                    last_wm = Watermark(*wm[-1])
                    continue
                for it in buf.advance(wm.origin, wm.ts, wm.origins):
                    process(it, out)
                last_wm = wm
                continue
            key = self._sort_key(value)
            if key is None:  # not ordered (controls)
                process(value, out)
            elif key[0] < buf.watermark and (
                key[1] != KIND_LABEL or key[0] < buf.settled or self._ready(value)
            ):  # late: counted, processed at once
                self.bm.late += 1
                process(value, out)
            elif key[1] == KIND_LABEL:  # released by watermarks (or _ready) only, see push
                buf.push(key, value, NEVER_EXPIRES)
            else:
                if now is None:
                    now = _now()
                buf.push(key, value, now)
        if last_wm is not None:
            if buf.settled > settled:
                self.settled_at = _now() if now is None else now
            # one watermark out per batch, after everything it covers: the ones between
            # would only make the next stage release the same items in more steps
            self._on_watermark(last_wm, out)
        self.bm.flush(self.stage)
        heap.tick()
        return out, StatefulBatchLogic.RETAIN

    def on_item(self, value: Any) -> tuple[Iterable[Any], bool]:
        """One item (a batch of one): for tests and direct use."""
        return self.on_batch([value])

    def notify_at(self) -> datetime | None:
        if self.cfg.max_hold >= 1e8:
            return None
        oldest = self.buf.oldest_arrival()
        if oldest is None:
            return None
        return datetime.fromtimestamp(max(oldest, self.settled_at) + self.cfg.max_hold, tz=UTC)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        """The hold: once the origins' watermark has stood still for ``max_hold`` seconds of
        wall clock (an origin gone quiet), release what has waited that long. While every
        origin keeps advancing, as when the flow catches up on a backlog with one partition
        behind the others in event time, the watermarks alone release, in event-time order,
        and the scores do not depend on the wall clock."""
        out: list[Any] = []
        cutoff = _now() - self.cfg.max_hold + 1e-3
        if self.settled_at >= cutoff:
            return out, StatefulBatchLogic.RETAIN
        for it in self.buf.expire(cutoff, self._ready):
            self._take(it, out)
        self._on_watermark(Watermark("hold", self.buf.watermark, 0), out)
        self.bm.flush(self.stage)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        for it in self.buf.drain():
            self._take(it, out)
        self.bm.flush(self.stage)
        return out, StatefulBatchLogic.RETAIN


# --------------------------------------------------------------------------------------------
class TerminalStage(_OrderedStage):
    """Per terminal shard: dedupe, terminal windows and delayed-label risk.

    Takes ``Txn``, ``Label``, ``Control``, ``Watermark`` and ``("w", shard key, Watermark)``
    (a watermark broadcast to this shard: the stage learns its key from it)."""

    stage = "terminal"

    def __init__(self, key: str, cfg: StageConfig, resume: bytes | None) -> None:
        self.key = key
        if not resume:
            buf = EventTimeBuffer(cfg.source_partitions)
            self.terminals: dict[str, TerminalState] = {}
            self.seen: dict[str, float] = {}
            self.seen_order: deque[tuple[float, str]] = deque()
            self.labels: dict[str, bool] = {}
            self.old_labels: dict[str, bool] = {}
            self.labels_since = float("-inf")
            self.sent_wm = float("-inf")
        else:
            snap = load_snapshot(resume, "terminal")
            buf = EventTimeBuffer.restore(snap["buf"], _is_label)
            self.terminals = snap["terminals"]
            self.seen = snap["seen"]
            self.seen_order = deque(snap["seen_order"])
            self.labels = snap["labels"]
            # (earlier snapshots kept one generation: restored as the current one)
            self.old_labels = snap.get("old_labels", {})
            self.labels_since = snap.get("labels_since", float("-inf"))
            self.sent_wm = snap["sent_wm"]
        super().__init__(cfg, buf)
        self._n_wm = 0
        self._seen_cap = max(1, cfg.dedupe_max_ids // max(1, cfg.terminal_shards))
        self._labels_cap = max(1, 2 * cfg.max_pending_labels // max(1, cfg.terminal_shards))

    def _watermark_of(self, value: Any) -> Any:
        tp = type(value)
        if tp is tuple:  # ("w", shard key, Watermark or packed watermarks, see dataflow.build)
            self.key = value[1]
            return value[2]
        if tp is Watermark:
            return value  # type: ignore[no-any-return]
        return None

    def _sort_key(self, item: Any) -> tuple[float, int, str] | None:
        tp = type(item)
        if tp is Txn:
            return (item.ts_seconds, KIND_TXN, item.transaction_id)
        if tp is Label:
            return (item.label_ts, KIND_LABEL, item.transaction_id)
        return None

    def _ready(self, label: Any) -> bool:
        """A label is processed before the origins' watermark passes its label time only if
        this stage has counted its transaction (a transaction from a lagging partition may
        be behind it: counting the label first put a terminal's fraud ratio above 100 %)."""
        return f"{label.user_id}\x00{label.transaction_id}" in self.seen

    def _take(self, item: Any, out: list[Any]) -> None:
        tp = type(item)
        if tp is Txn:
            self._txn(item, out)
        elif tp is Label:
            self._label(item)
            out.append(("l", item))
        elif tp is Control:
            out.append(("c", item))

    def _txn(self, item: Txn, out: list[Any]) -> None:
        ts = item.ts_seconds
        dkey = f"{item.user_id}\x00{item.transaction_id}"
        seen = self.seen
        if dkey in seen:
            self.bm.dups += 1
            return
        seen[dkey] = ts
        so = self.seen_order
        so.append((ts, dkey))
        horizon = ts - self.cfg.dedupe_horizon
        while so[0][0] < horizon:
            seen.pop(so.popleft()[1], None)
        while len(so) > self._seen_cap:  # bounded on insert: the oldest go first
            seen.pop(so.popleft()[1], None)
        tid = item.terminal_id or ""
        term = self.terminals.get(tid)
        if term is None:
            term = self.terminals[tid] = TerminalState()
        feats = term.features(ts) if item.terminal_id else {}
        term.learn_txn(ts)
        out.append(("t", item, feats))

    def _label(self, item: Label) -> None:
        bm = self.bm
        bm.labels[item.label] = bm.labels.get(item.label, 0) + 1
        bm.label_lags.append(max(0.0, item.label_ts - item.txn_ts))
        tid = item.terminal_id or ""
        term = self.terminals.get(tid)
        if term is None:
            term = self.terminals[tid] = TerminalState()
        tts = item.txn_ts
        txid = item.transaction_id
        prev = self.labels.get(txid)
        if prev is None:
            prev = self.old_labels.get(txid)
        if prev is not None:  # a later label replaces an earlier one
            term.remove_label(tts, prev)
        term.apply_label(tts, item.is_fraud, item.label_ts)
        labels = self.labels
        labels[txid] = item.is_fraud
        # Which transactions have a label, so that a later label replaces it: two generations
        # of LABEL_MEMORY each, the older dropped as a new one starts, so a label is
        # remembered for at least that long (beyond it, its transaction has left every
        # terminal window) and memory stays bounded by time; a generation that reaches the
        # count cap starts the next one early. (Hand-rolled: an OrderedDict evicting the
        # oldest one at a time would add a linked node to every id.)
        if (item.label_ts - self.labels_since >= LABEL_MEMORY
                or len(labels) > self._labels_cap):
            self.old_labels = labels
            self.labels = {}
            self.labels_since = item.label_ts

    def _on_watermark(self, wm: Watermark, out: list[Any]) -> None:
        w = self.buf.watermark
        if w > self.sent_wm:
            self.sent_wm = w
            self._n_wm += 1
            if self._n_wm % 64 == 1:
                size = (estimate_bytes(self.terminals)
                        if _ProcessState.bytes_due("terminal", self.key) else None)
                _ProcessState.report("terminal", self.key, len(self.terminals), size)
            out.append(("w", Watermark(self.key, w, self.cfg.terminal_shards)))

    def snapshot(self) -> bytes:
        if not self.cfg.snapshots:
            return b""
        return dump_snapshot(
            {
                "buf": self.buf.snapshot(),
                "terminals": self.terminals,
                "seen": self.seen,
                "seen_order": list(self.seen_order),
                "labels": self.labels,
                "old_labels": self.old_labels,
                "labels_since": self.labels_since,
                "sent_wm": self.sent_wm,
            }
        )


# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Pending:
    """What is kept of a scored transaction until its label arrives."""

    ts: float
    kept: Any
    alerted: bool


class UserStage(_OrderedStage):
    """Per user shard: user features, models, decision, learning, labels, snoozes.

    Takes the terminal stage's output, ``("w", Watermark)`` or ``("w", shard key, Watermark)``
    (a watermark broadcast to this shard: the stage learns its key from it)."""

    stage = "user"

    def __init__(self, key: str, cfg: StageConfig, resume: bytes | None, worker: str = "") -> None:
        self.key = key
        self.worker = worker
        if not resume:
            buf = EventTimeBuffer(cfg.terminal_shards)
            self.users: dict[str, UserState] = {}
            self.pending: OrderedDict[str, Pending] = OrderedDict()
            self.snoozes: dict[tuple[str, str], float] = {}
            self.detector = cfg.detector_factory(None)
            self.clock = float("-inf")
            self.last_evict = float("-inf")
        else:
            snap = load_snapshot(resume, "user")
            buf = EventTimeBuffer.restore(snap["buf"], _is_label)
            self.users = snap["users"]
            self.pending = snap["pending"]
            self.snoozes = snap["snoozes"]
            self.detector = cfg.detector_factory(snap["detector"])
            self.clock = snap["clock"]
            self.last_evict = snap["last_evict"]
        super().__init__(cfg, buf)
        self._pending_cap = max(1, cfg.max_pending_labels // max(1, cfg.user_shards))

    def _watermark_of(self, value: Any) -> Any:
        # a Watermark, or a tuple of (origin, ts, origins): the terminal shards' watermarks of
        # one batch, packed by the routing step (see dataflow.build)
        if value[0] != "w":
            return None
        if len(value) == 3:  # ("w", shard key, Watermark or packed watermarks)
            self.key = value[1]
            return value[2]
        return value[1]

    def _sort_key(self, item: Any) -> tuple[float, int, str] | None:
        kind = item[0]
        if kind == "t":
            t: Txn = item[1]
            return (t.ts_seconds, KIND_TXN, t.transaction_id)
        if kind == "l":
            lb: Label = item[1]
            return (lb.label_ts, KIND_LABEL, lb.transaction_id)
        return None

    def _take(self, item: Any, out: list[Any]) -> None:
        kind = item[0]
        if kind == "t":
            out.append(self._txn(item[1], item[2]))
        elif kind == "l":
            self._label(item[1])
        elif kind == "c":
            c: Control = item[1]
            self.snoozes[(c.scope, c.target)] = c.until.timestamp()

    def _txn(self, t: Txn, term_feats: dict[str, float]) -> Decision:
        cfg = self.cfg
        ts = t.ts_seconds
        if ts > self.clock:
            self.clock = ts
        user = self.users.get(t.user_id)
        if user is None:
            user = self.users[t.user_id] = UserState()
        amount = float(t.amount_base)
        local_hour = None
        if t.utc_offset_minutes is not None:
            local_hour = int(((ts + t.utc_offset_minutes * 60) // 3600) % 24)
        terminal, merchant, category = t.terminal_id, t.merchant_id, t.merchant_category
        country, lat, lon = t.country, t.lat, t.lon
        feats = user.features(ts, amount, terminal=terminal, merchant=merchant,
                              category=category, country=country, lat=lat, lon=lon,
                              local_hour=local_hour, channel=t.channel)
        feats.update(term_feats)
        detector = self.detector
        score, comps = detector.score(user, feats)
        threshold = comps.pop("threshold", cfg.threshold)
        severity = decide_severity(score, threshold, max(cfg.block_threshold, threshold))
        reasons: tuple[Reason, ...] = ()
        snoozed = False
        if severity != "allow":
            reasons = tuple(explain(feats, comps))
            snoozes = self.snoozes
            if snoozes:
                for scope, target in (("user", t.user_id), ("terminal", t.terminal_id or "")):
                    until = snoozes.get((scope, target))
                    if until is not None and ts < until:
                        snoozed = True
        d = Decision(
            txn=t,
            score=score,
            threshold=threshold,
            severity=severity,
            reasons=reasons,
            features=feats,
            components=comps,
            model_version=detector.version,
            worker=self.worker,
            decided_at=_now(),
            snoozed=snoozed,
        )
        detector.learn(user, feats, score)
        user.learn(ts, amount, terminal=terminal, merchant=merchant, category=category,
                   country=country, lat=lat, lon=lon, local_hour=local_hour, channel=t.channel,
                   protect=score >= threshold, dist_home=feats["dist_home_km"])
        if cfg.labels:
            pending = self.pending
            pending[t.transaction_id] = Pending(ts, detector.keep(feats, comps), d.is_alert)
            if len(pending) > self._pending_cap:  # bounded on insert: the oldest go first
                pending.popitem(last=False)
        bm = self.bm
        bm.decision(d)
        if comps.get("maturity", 1.0) < 0.5:
            bm.cold += 1
        if ts - self.last_evict > 6 * 3600.0:
            self._evict(ts)
        return d

    def _label(self, lb: Label) -> None:
        p = self.pending.pop(lb.transaction_id, None)
        if p is None:
            return
        if p.kept is not None:
            self.detector.learn_label(p.kept, lb.is_fraud)
        if p.alerted:
            la = self.bm.labelled_alerts
            la[lb.label] = la.get(lb.label, 0) + 1

    def _evict(self, now: float) -> None:
        self.last_evict = now
        cutoff = now - self.cfg.user_ttl
        idle = [u for u, s in self.users.items() if s.last_ts < cutoff]
        for u in idle:
            del self.users[u]
        if idle:
            get_metrics().evicted_users.inc(len(idle))
        # pending is in insertion (event-time) order: drop from the front
        lcut = now - self.cfg.label_horizon
        cap = self.cfg.max_pending_labels // max(1, self.cfg.user_shards)
        pending = self.pending
        while pending:
            _k, p = next(iter(pending.items()))
            if p.ts >= lcut and len(pending) <= cap:
                break
            pending.popitem(last=False)
        self.snoozes = {k: v for k, v in self.snoozes.items() if v > now}
        size = estimate_bytes(self.users) if _ProcessState.bytes_due("user", self.key) else None
        _ProcessState.report("user", self.key, len(self.users), size)

    def snapshot(self) -> bytes:
        if not self.cfg.snapshots:
            return b""
        return dump_snapshot(
            {
                "buf": self.buf.snapshot(),
                "users": self.users,
                "pending": self.pending,
                "snoozes": self.snoozes,
                "detector": self.detector.snapshot(),
                "clock": self.clock,
                "last_evict": self.last_evict,
            }
        )


StatefulBatchLogic.register(_OrderedStage)


def in_future(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
