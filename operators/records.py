"""The records that flow between txwatch's steps.

Compiled by mypyc (``operators.native.COMPILED``) into native classes, so that the compiled
stages read their fields directly rather than through Python's attribute look-up. Compiled,
a record checks its fields' types, and a frozen one pickles through its constructor
(``__reduce__``): records cross between a cluster's processes pickled.

>>> from datetime import datetime, UTC
>>> from decimal import Decimal
>>> t = Txn("t1", "u1", Decimal("12.50"), datetime(2018, 4, 1, tzinfo=UTC), "EUR", Decimal("12.50"))
>>> t.ts_seconds
1522540800.0
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

Severity = Literal["allow", "review", "block"]
LabelValue = Literal["fraud", "legit"]


class _Record:
    """Pickling of the per-event records as a list of their field values, the format the
    frozen dataclasses of earlier releases wrote into snapshots (both read each other's).

    Txn, Label and Decision are made once per event and never changed afterwards, but they
    are not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``,
    and constructing a Txn took 5.8 µs against 0.7 µs (timeit, 16 fields).
    """

    __slots__ = ()

    def __getstate__(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]

    def __setstate__(self, state: list[Any]) -> None:
        for f, value in zip(fields(self), state, strict=True):  # type: ignore[arg-type]
            setattr(self, f.name, value)


@dataclass(slots=True)
class Txn(_Record):
    """A validated transaction. ``amount_base`` is the amount in the base currency."""

    transaction_id: str
    user_id: str
    amount: Decimal
    timestamp: datetime
    currency: str
    amount_base: Decimal
    merchant_id: str | None = None
    terminal_id: str | None = None
    merchant_category: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    channel: str | None = None
    utc_offset_minutes: int | None = None
    """The offset the timestamp carried (for local hour of day), None when it carried none."""
    received_at: float = 0.0
    """Wall-clock seconds when the message reached the flow (for decision latency)."""
    kafka_ts: float | None = None
    """The Kafka message timestamp in seconds, when read from Kafka."""
    ts_seconds: float = field(init=False, repr=False, compare=False)
    """``timestamp`` in seconds since the epoch, computed once (every stage orders by it)."""

    def __post_init__(self) -> None:
        self.ts_seconds = self.timestamp.timestamp()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Bytewax pickles every item that crosses between processes, one at a time: a Decimal
        # or a datetime pickles as a class looked up by name and a constructor call (a Txn
        # took 7.7 µs to pickle, 5.2 to unpickle); as strings they pickle as bytes. (Pickles
        # of the earlier format, in older snapshots, still load through __setstate__.)
        return (_txn, (self.transaction_id, self.user_id, str(self.amount),
                       self.timestamp.isoformat(), self.currency, str(self.amount_base),
                       self.merchant_id, self.terminal_id, self.merchant_category, self.country,
                       self.lat, self.lon, self.channel, self.utc_offset_minutes,
                       self.received_at, self.kafka_ts, self.ts_seconds))


def _txn(transaction_id: str, user_id: str, amount: str, timestamp: str, currency: str,
         amount_base: str, merchant_id: str | None, terminal_id: str | None,
         merchant_category: str | None, country: str | None, lat: float | None,
         lon: float | None, channel: str | None, utc_offset_minutes: int | None,
         received_at: float, kafka_ts: float | None, ts_seconds: float) -> Txn:
    """A Txn from the fields :meth:`Txn.__reduce__` pickles."""
    t = Txn.__new__(Txn)
    t.transaction_id, t.user_id, t.amount = transaction_id, user_id, Decimal(amount)
    t.timestamp, t.currency = datetime.fromisoformat(timestamp), currency
    t.amount_base, t.merchant_id, t.terminal_id = Decimal(amount_base), merchant_id, terminal_id
    t.merchant_category, t.country, t.lat, t.lon = merchant_category, country, lat, lon
    t.channel, t.utc_offset_minutes, t.received_at = channel, utc_offset_minutes, received_at
    t.kafka_ts, t.ts_seconds = kafka_ts, ts_seconds
    return t


@dataclass(slots=True)
class Label(_Record):
    """A delayed fraud label (chargeback, analyst review), the producer's and web's format."""

    transaction_id: str
    user_id: str
    terminal_id: str | None
    label: LabelValue
    transaction_time: datetime
    label_time: datetime
    txn_ts: float = field(init=False, repr=False, compare=False)
    """``transaction_time`` in seconds since the epoch, computed once."""
    label_ts: float = field(init=False, repr=False, compare=False)
    """``label_time`` in seconds since the epoch, computed once (the stages order by it)."""

    def __post_init__(self) -> None:
        self.txn_ts = self.transaction_time.timestamp()
        self.label_ts = self.label_time.timestamp()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # as Txn.__reduce__: the times as strings, no class looked up by name
        return (_label, (self.transaction_id, self.user_id, self.terminal_id, self.label,
                         self.transaction_time.isoformat(), self.label_time.isoformat(),
                         self.txn_ts, self.label_ts))

    @property
    def is_fraud(self) -> bool:
        return self.label == "fraud"


def label_of(t: Txn, label: LabelValue, label_time: datetime) -> Label:
    """The label of transaction ``t`` (the replay's, made for every transaction: built as
    :func:`_label` builds one, without the dataclass' constructor, its times taken from the
    transaction rather than converted again).

    >>> from datetime import UTC, timedelta
    >>> t = Txn("t1", "u1", Decimal("9"), datetime(2018, 4, 1, tzinfo=UTC), "EUR", Decimal("9"))
    >>> lb = label_of(t, "fraud", t.timestamp + timedelta(days=7))
    >>> lb == Label("t1", "u1", None, "fraud", t.timestamp, t.timestamp + timedelta(days=7))
    True
    >>> lb.label_ts - lb.txn_ts
    604800.0
    """
    lb = Label.__new__(Label)
    lb.transaction_id, lb.user_id, lb.terminal_id = t.transaction_id, t.user_id, t.terminal_id
    lb.label, lb.transaction_time, lb.label_time = label, t.timestamp, label_time
    lb.txn_ts, lb.label_ts = t.ts_seconds, label_time.timestamp()
    return lb


def _label(transaction_id: str, user_id: str, terminal_id: str | None, label: LabelValue,
           transaction_time: str, label_time: str, txn_ts: float, label_ts: float) -> Label:
    """A Label from the fields :meth:`Label.__reduce__` pickles."""
    lb = Label.__new__(Label)
    lb.transaction_id, lb.user_id, lb.terminal_id, lb.label = (transaction_id, user_id,
                                                               terminal_id, label)
    lb.transaction_time = datetime.fromisoformat(transaction_time)
    lb.label_time = datetime.fromisoformat(label_time)
    lb.txn_ts, lb.label_ts = txn_ts, label_ts
    return lb


@dataclass(frozen=True, slots=True)
class Control:
    """An operator control, e.g. a snooze of a user or terminal until ``until``."""

    kind: Literal["snooze"]
    scope: Literal["user", "terminal"]
    target: str
    until: datetime
    issued_at: datetime

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # (the constructor with the field values: a frozen dataclass unpickles by assigning
        # its fields one by one, which a compiled frozen class refuses)
        return (Control, (self.kind, self.scope, self.target, self.until, self.issued_at))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be accepted, with the reason, as written to the DLQ."""

    payload: bytes
    reason: str
    topic: str | None
    partition: int | None
    offset: int | None
    received_at: datetime

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # (see Control.__reduce__)
        return (DeadLetter, (self.payload, self.reason, self.topic, self.partition,
                             self.offset, self.received_at))


@dataclass(frozen=True, slots=True)
class Reason:
    """One factor of a decision: a code from :data:`operators.reasons.CODES`, words, a value."""

    code: str
    text: str
    value: float

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # (see Control.__reduce__: a Decision's reasons cross between processes with it)
        return (Reason, (self.code, self.text, self.value))

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "value": self.value}


@dataclass(slots=True)
class Decision(_Record):
    """The decision on one transaction."""

    txn: Txn
    score: float
    threshold: float
    severity: Severity
    reasons: tuple[Reason, ...]
    features: dict[str, float]
    components: dict[str, float]
    model_version: str
    worker: str = ""
    decided_at: float = 0.0
    snoozed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_alert(self) -> bool:
        return self.severity != "allow" and not self.snoozed
