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

    def features(self, ts: float) -> dict[str, float]:
        today = int(ts // DAY)
        out: dict[str, float] = {}
        days = self.days
        past = self._past
        if past is None or past[0] != today:
            sums: list[int] = []
            for w in WINDOWS:
                n = lab = fr = 0
                for d in range(today - w + 1, today):
                    b = days.get(d)
                    if b is not None:
                        n += b[0]
                        lab += b[1]
                        fr += b[2]
                sums += (n, lab, fr)
            past = self._past = (today, tuple(sums))
        cur = days.get(today) or (0, 0, 0)
        for i, w in enumerate(WINDOWS):
            n = past[1][3 * i] + cur[0]
            lab = past[1][3 * i + 1] + cur[1]
            fr = past[1][3 * i + 2] + cur[2]
            out[f"term_n_{w}d"] = float(n)
            out[f"term_risk_{w}d"] = fr / n if n else 0.0
            if w == 30:
                out["term_lab_risk_30d"] = fr / lab if lab else 0.0
        recent = [self.label_days.get(d) for d in (today - 1, today)]
        labs = sum(b[0] for b in recent if b)
        out["term_recent_lab_risk"] = sum(b[1] for b in recent if b) / labs if labs else 0.0
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
        out["term_last3_frauds"] = float(sum(1 for _, fr in last[-3:] if fr))
        run = 0
        for _, fr in reversed(last):
            if not fr:
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
        self._past = None
        b = self.days.get(day)
        if b is None:
            if day < int(self.last_seen // DAY) - HORIZON_DAYS:
                return  # too old to matter
            b = self.days[day] = [0, 0, 0]
        b[1] += 1
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
            for d in [d for d in self.days if d <= today - HORIZON_DAYS]:
                del self.days[d]

    def idle_since(self, ts: float) -> float:
        return ts - self.last_seen
