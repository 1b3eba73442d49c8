"""Delayed fraud labels: which transactions get one, when, and in what order they go out.

Every fraud is labelled ``fraud``; a share of legitimate transactions (those an analyst
investigated) is labelled ``legit``. A label becomes known ``delay_seconds`` after its
transaction (the handbook's 7 days by default), on the transactions' clock: simulated time
when replaying, wall-clock time in live mode. A later label for the same transaction replaces
an earlier one that has not gone out yet.

>>> from datetime import UTC, datetime
>>> policy = LabelPolicy(delay_seconds=7 * 86400, legit_share=0.0)
>>> rec = {"transaction_id": "tx1", "user_id": "C1", "terminal_id": "T1", "is_fraud": 1,
...        "timestamp": "2018-04-01T10:00:00Z"}
>>> lb = policy.label_for(rec, datetime(2018, 4, 1, 10, tzinfo=UTC))
>>> lb.label, lb.label_time.isoformat()
('fraud', '2018-04-08T10:00:00+00:00')
>>> policy.label_for({**rec, "is_fraud": 0}, datetime(2018, 4, 1, tzinfo=UTC)) is None
True
>>> s = LabelSchedule()
>>> s.push(lb)
>>> s.pop_due(datetime(2018, 4, 8, 9, tzinfo=UTC)), len(s.pop_due(lb.label_time))
([], 1)
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from operators.records import Label

DEFAULT_DELAY_SECONDS = 7 * 86400.0
"""The handbook's label delay."""
DEFAULT_LEGIT_SHARE = 0.05


def investigated(transaction_id: str, share: float) -> bool:
    """Whether a legitimate transaction was investigated (and so gets a ``legit`` label).

    Decided by a hash of the id, so the same transaction gets the same answer in every run
    and in every mode (file, replay, live).

    >>> investigated("tx000000001", 0.0), investigated("tx000000001", 1.0)
    (False, True)
    >>> share = sum(investigated(f"tx{i:09d}", 0.05) for i in range(20000)) / 20000
    >>> 0.04 < share < 0.06
    True
    """
    if share <= 0:
        return False
    if share >= 1:
        return True
    return zlib.crc32(transaction_id.encode()) < share * 4294967296.0


@dataclass(frozen=True, slots=True)
class LabelPolicy:
    """Which transactions get a label and how long after them it becomes known."""

    delay_seconds: float = DEFAULT_DELAY_SECONDS
    legit_share: float = DEFAULT_LEGIT_SHARE
    """Share of legitimate transactions labelled ``legit`` (investigated)."""

    def __post_init__(self) -> None:
        if self.delay_seconds < 0:
            raise ValueError("label delay must not be negative")
        if not 0.0 <= self.legit_share <= 1.0:
            raise ValueError("legit_share must be within [0, 1]")

    def wants(self, transaction_id: str, is_fraud: bool) -> bool:
        return is_fraud or investigated(transaction_id, self.legit_share)

    def label_for(self, record: dict[str, Any], transaction_time: datetime) -> Label | None:
        """The label of ``record`` (a transaction dict with ``is_fraud``) or None."""
        truth = record.get("is_fraud")
        if truth is None:
            return None
        fraud = bool(truth)
        tx_id = record["transaction_id"]
        if not self.wants(tx_id, fraud):
            return None
        return Label(
            transaction_id=tx_id,
            user_id=record["user_id"],
            terminal_id=record.get("terminal_id"),
            label="fraud" if fraud else "legit",
            transaction_time=transaction_time,
            label_time=transaction_time + timedelta(seconds=self.delay_seconds),
        )


class LabelSchedule:
    """Labels waiting for their ``label_time``; memory holds one delay's worth of labels.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2018, 4, 1, tzinfo=UTC)
    >>> s = LabelSchedule()
    >>> s.push(Label("tx1", "C1", "T1", "legit", t0, t0 + timedelta(days=7)))
    >>> s.push(Label("tx1", "C1", "T1", "fraud", t0, t0 + timedelta(days=9)))  # replaces it
    >>> len(s), [lb.label for lb in s.drain()]
    (1, ['fraud'])
    """

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str]] = []
        self._live: dict[str, tuple[int, Label]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def push(self, label: Label) -> None:
        """Schedule ``label``; an earlier pending label of the same transaction is dropped."""
        n = next(self._seq)
        self._live[label.transaction_id] = (n, label)
        heapq.heappush(self._heap, (label.label_time, n, label.transaction_id))

    def next_time(self) -> datetime | None:
        """``label_time`` of the next label due, or None."""
        self._skip_stale()
        return self._heap[0][0] if self._heap else None

    def _skip_stale(self) -> None:
        h = self._heap
        while h and self._live.get(h[0][2], (None,))[0] != h[0][1]:
            heapq.heappop(h)

    def pop_due(self, now: datetime) -> list[Label]:
        """Labels with ``label_time <= now``, in ``label_time`` order."""
        out = []
        while True:
            self._skip_stale()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, _, tx = heapq.heappop(self._heap)
            out.append(self._live.pop(tx)[1])

    def drain(self) -> list[Label]:
        """Every pending label, in ``label_time`` order."""
        out = []
        while True:
            self._skip_stale()
            if not self._heap:
                return out
            _, _, tx = heapq.heappop(self._heap)
            out.append(self._live.pop(tx)[1])
