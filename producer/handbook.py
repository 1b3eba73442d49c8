"""Fraud scenarios 1–3 as the handbook describes them, applied one day at a time.

The state kept between days is one "compromised until day" number per terminal (scenario 2)
and per customer (scenario 3): memory does not grow with the number of days.

>>> import numpy as np
>>> from producer.config import Handbook
>>> from producer.frame import DayFrame
>>> f = DayFrame(cust=np.array([0, 1]), t=np.array([10, 20]), cents=np.array([22001, 22000]),
...              term=np.array([0, 1]), scen=np.array([0, 0]))
>>> amount_rule(f, Handbook())
>>> f.scen.tolist()
[1, 0]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from producer.config import Handbook
from producer.frame import DayFrame


def amount_rule(frame: DayFrame, p: Handbook) -> None:
    """Scenario 1: every transaction with amount > ``amount_threshold`` is fraud."""
    frame.scen[frame.cents > round(p.amount_threshold * 100)] = 1


class CompromisedTerminals:
    """Scenario 2: each day, ``terminals_per_day`` random grid terminals are compromised; all
    their transactions in days ``[d, d + terminal_window_days)`` are fraud."""

    def __init__(self, n_grid: int, n_all: int, p: Handbook, rng: np.random.Generator) -> None:
        self.p = p
        self.n_grid = n_grid
        self.rng = rng
        self.until = np.full(n_all, -1, dtype=np.int64)
        """Per terminal, the first day it is no longer compromised (-1: never was)."""

    def step(self, day: int, frame: DayFrame) -> npt.NDArray[np.int64]:
        """Compromise today's terminals, mark today's frauds; returns the new terminals."""
        k = min(self.p.terminals_per_day, self.n_grid)
        new = self.rng.choice(self.n_grid, size=k, replace=False).astype(np.int64)
        self.until[new] = np.maximum(self.until[new], day + self.p.terminal_window_days)
        frame.scen[self.until[frame.term] > day] = 2
        return new


class CompromisedCards:
    """Scenario 3 (card-not-present): each day, ``cards_per_day`` random customers are
    compromised; in days ``[d, d + card_window_days)`` each of their transactions becomes fraud
    with probability ``card_fraud_share`` (the handbook samples exactly a third of them) and
    its amount is multiplied by ``card_amount_factor``. A customer compromised again while
    compromised has its window extended."""

    def __init__(self, n_customers: int, p: Handbook, rng: np.random.Generator) -> None:
        self.p = p
        self.n = n_customers
        self.rng = rng
        self.until = np.full(n_customers, -1, dtype=np.int64)

    def step(self, day: int, frame: DayFrame,
             u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Compromise today's cards and mark today's frauds; returns the new customers.
        ``u`` holds one ``U(0, 1)`` draw per row of ``frame``."""
        k = min(self.p.cards_per_day, self.n)
        new = self.rng.choice(self.n, size=k, replace=False)
        self.until[new] = np.maximum(self.until[new], day + self.p.card_window_days)
        hit = (self.until[frame.cust] > day) & (u < self.p.card_fraud_share)
        frame.cents[hit] = np.rint(frame.cents[hit] * self.p.card_amount_factor).astype(np.int64)
        frame.scen[hit] = 3
        return new.astype(np.int64)

    def active(self, day: int) -> int:
        """Number of cards in a scenario-3 window on ``day``."""
        return int(np.count_nonzero(self.until > day))
