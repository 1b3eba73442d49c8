"""Per-terminal state: transaction counts and fraud risk from delayed labels.

Processed in event-time order (see :mod:`operators.ordering`), so a transaction's features
depend only on what happened at its terminal before it, and on labels whose ``label_time``
is not later than its own time. Counts are kept in day buckets (UTC days) for the last
``HORIZON_DAYS`` days; a window of ``W`` days covers the current day so far and the ``W-1``
days before it, as in the handbook's features.

>>> st = TerminalState()
>>> st.features(86400.0 * 10)["term_n_7d"]
0.0
>>> st.learn_txn(86400.0 * 10)
>>> st.apply_label(86400.0 * 10, True)
>>> f = st.features(86400.0 * 10 + 60)
>>> (f["term_n_1d"], f["term_risk_1d"], round(f["term_days_since_fraud"], 3))
(1.0, 1.0, 0.001)
"""

from __future__ import annotations

from bisect import insort
from contextlib import suppress
from dataclasses import dataclass, field

DAY = 86_400.0
HORIZON_DAYS = 31
WINDOWS = (1, 7, 30)
"""Terminal windows in days (unrolled in :meth:`TerminalState.features`)."""
NO_FRAUD_DAYS = 60.0
EPISODE_GAP_DAYS = 7.0
LAST_LABELS = 5
"""How many of the terminal's latest labelled transactions are kept (see
``term_last3_frauds`` and ``term_fraud_run``)."""


@dataclass(slots=True)
class TerminalState:
    """Day buckets ``day -> [transactions, labelled, known frauds]`` and the last fraud."""

    days: dict[int, list[int]] = field(default_factory=dict)
    last_fraud_ts: float | None = None
    last_seen: float = 0.0
    episode_start: float | None = None
    """Transaction time of the first known fraud of the current fraud episode (known frauds
    no more than ``EPISODE_GAP_DAYS`` apart)."""
    label_days: dict[int, list[int]] = field(default_factory=dict)
    """``label day -> [labels, frauds]`` for labels received in the last days."""
    last_labels: list[tuple[float, bool]] = field(default_factory=list)
    """The ``LAST_LABELS`` labelled transactions latest in transaction time: ``(ts, fraud)``.
    A terminal sees about one transaction a day, so day-bucket ratios are mostly empty or
    0/1; the last few labels say whether it is being used by fraudsters *now*."""
    _past: tuple[int, tuple[int, ...]] | None = None
    """Cache: (day, window sums of the days before it); reset when a label changes them."""

    # explicit, so that a compiled (mypyc) class and the plain one pickle alike
    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in _FIELDS)

    def __setstate__(self, st: tuple[object, ...]) -> None:
        for s, v in zip(_FIELDS, st, strict=True):
            setattr(self, s, v)

    def features(self, ts: float) -> dict[str, float]:
        today = int(ts // DAY)
        out: dict[str, float] = {}
        days = self.days
        past = self._past
        if past is None or past[0] != today:
            past = self._past = (today, _past_sums(days, today, past))
        # the windows of WINDOWS (1, 7, 30 days), unrolled: the current day plus the cached
        # sums of the days before it
        p = past[1]
        cur = days.get(today)
        c0, c1, c2 = cur if cur is not None else (0, 0, 0)
        n = p[0] + c0
        out["term_n_1d"] = float(n)
        out["term_risk_1d"] = (p[2] + c2) / n if n else 0.0
        n = p[3] + c0
        out["term_n_7d"] = float(n)
        out["term_risk_7d"] = (p[5] + c2) / n if n else 0.0
        n = p[6] + c0
        fr = p[8] + c2
        lab = p[7] + c1
        out["term_n_30d"] = float(n)
        out["term_risk_30d"] = fr / n if n else 0.0
        out["term_lab_risk_30d"] = fr / lab if lab else 0.0
        labs = frauds = 0
        ld = self.label_days
        if ld:
            for b in (ld.get(today - 1), ld.get(today)):
                if b:
                    labs += b[0]
                    frauds += b[1]
        out["term_recent_lab_risk"] = frauds / labs if labs else 0.0
        out["term_recent_labels"] = float(labs)
        if (
            self.episode_start is not None
            and self.last_fraud_ts is not None
            and ts - self.last_fraud_ts < 2 * EPISODE_GAP_DAYS * DAY
        ):
            out["term_episode_days"] = max(0.0, (ts - self.episode_start) / DAY)
        else:
            out["term_episode_days"] = NO_FRAUD_DAYS
        last = self.last_labels
        out["term_last3_frauds"] = float(sum(1 for lab in last[-3:] if lab[1]))
        run = 0
        for i in range(len(last) - 1, -1, -1):  # (indexed: mypyc mistypes reversed() here)
            if not last[i][1]:
                break
            run += 1
        out["term_fraud_run"] = float(run)
        if self.last_fraud_ts is None:
            out["term_days_since_fraud"] = NO_FRAUD_DAYS
        else:
            out["term_days_since_fraud"] = min(
                NO_FRAUD_DAYS, max(0.0, (ts - self.last_fraud_ts) / DAY)
            )
        return out

    def learn_txn(self, ts: float) -> None:
        day = int(ts // DAY)
        if self._past is not None and day < self._past[0]:
            self._past = None  # a late transaction changes a past day
        b = self.days.get(day)
        if b is None:
            self.days[day] = [1, 0, 0]
            self._prune(day)
        else:
            b[0] += 1
        self.last_seen = max(self.last_seen, ts)

    def apply_label(self, txn_ts: float, is_fraud: bool, label_ts: float | None = None) -> None:
        """A label for a transaction at ``txn_ts`` (a later label for the same transaction
        replaces the earlier one: callers pass ``undo`` labels through :meth:`remove_label`)."""
        day = int(txn_ts // DAY)
        b = self.days.get(day)
        if b is None:
            if day < int(self.last_seen // DAY) - HORIZON_DAYS:
                return  # too old to matter
            b = self.days[day] = [0, 0, 0]
        # only labels of transactions the day has counted: a label of one this terminal never
        # saw (sent before the flow started, or whose transaction is still on its way) would
        # put the day's fraud ratio above 100 %
        counted = b[1] < b[0]
        if counted:
            b[1] += 1
            past = self._past
            if past is not None and day < past[0]:
                # the cached sums of the days before `past[0]` take the label in (every
                # transaction is labelled in the handbook's protocol: summing 30 days again
                # after each label cost more than the label itself)
                self._past = (past[0], _with_label(past[1], past[0], day, is_fraud))
        if label_ts is not None:
            lday = int(label_ts // DAY)
            lb = self.label_days.get(lday)
            if lb is None:
                lb = self.label_days[lday] = [0, 0]
                for old in [d for d in self.label_days if d < lday - 2]:
                    del self.label_days[old]
            lb[0] += 1
            lb[1] += 1 if is_fraud else 0
        insort(self.last_labels, (txn_ts, is_fraud))
        if len(self.last_labels) > LAST_LABELS:
            del self.last_labels[0]
        if is_fraud:
            if counted:
                b[2] += 1
            gap = EPISODE_GAP_DAYS * DAY
            if self.last_fraud_ts is None or txn_ts - self.last_fraud_ts > gap:
                if self.last_fraud_ts is None or txn_ts > self.last_fraud_ts:
                    self.episode_start = txn_ts  # a new episode
            elif self.episode_start is not None and txn_ts < self.episode_start:
                self.episode_start = txn_ts
            if self.last_fraud_ts is None or txn_ts > self.last_fraud_ts:
                self.last_fraud_ts = txn_ts

    def remove_label(self, txn_ts: float, was_fraud: bool) -> None:
        self._past = None
        with suppress(ValueError):  # unless no longer among the latest
            self.last_labels.remove((txn_ts, was_fraud))
        b = self.days.get(int(txn_ts // DAY))
        if b is None:
            return
        b[1] = max(0, b[1] - 1)
        if was_fraud:
            b[2] = max(0, b[2] - 1)

    def _prune(self, today: int) -> None:
        if len(self.days) > HORIZON_DAYS + 8:
            self._past = None  # (only days outside every window go, but never rely on it)
            for d in [d for d in self.days if d <= today - HORIZON_DAYS]:
                del self.days[d]

    def idle_since(self, ts: float) -> float:
        return ts - self.last_seen


_FIELDS = ("days", "last_fraud_ts", "last_seen", "episode_start", "label_days", "last_labels",
           "_past")
"""TerminalState's fields in snapshot order."""


def _with_label(sums: tuple[int, ...], today: int, day: int, is_fraud: bool
                ) -> tuple[int, ...]:
    """``sums`` (of :func:`_past_sums` for ``today``) with one more labelled transaction of
    ``day`` (a fraud if ``is_fraud``) in every window that holds that day."""
    out = list(sums)
    for i, w in enumerate(WINDOWS):
        if day >= today - w + 1:
            out[3 * i + 1] += 1
            if is_fraud:
                out[3 * i + 2] += 1
    return tuple(out)


def _past_sums(days: dict[int, list[int]], today: int,
               prev: tuple[int, tuple[int, ...]] | None) -> tuple[int, ...]:
    """``(transactions, labelled, frauds)`` of each window's days before ``today``.

    From the sums cached for an earlier day when there are some (the days that left each
    window subtracted, those that entered added: integers, so exactly the full sums), else
    by summing the window. A label updates the cache (:func:`_with_label`); a late
    transaction or a replaced label drops it; a new bucket prunes only days older than
    every window.
    """
    sums: list[int] = []
    for i, w in enumerate(WINDOWS):
        lo = today - w + 1
        if prev is not None and prev[0] < today and today - prev[0] < w:
            old = prev[0]
            n, lab, fr = prev[1][3 * i : 3 * i + 3]
            for d in range(old - w + 1, lo):  # left the window
                b = days.get(d)
                if b is not None:
                    n -= b[0]
                    lab -= b[1]
                    fr -= b[2]
            for d in range(old, today):  # entered it
                b = days.get(d)
                if b is not None:
                    n += b[0]
                    lab += b[1]
                    fr += b[2]
        else:
            n = lab = fr = 0
            for d in range(lo, today):
                b = days.get(d)
                if b is not None:
                    n += b[0]
                    lab += b[1]
                    fr += b[2]
        sums += (n, lab, fr)
    return tuple(sums)
