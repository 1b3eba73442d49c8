"""Counts of a simulation, printed next to the handbook's reference figures.

>>> from producer.config import SimConfig
>>> from producer.simulator import Simulation
>>> sim = Simulation(SimConfig(n_customers=100, n_terminals=200, n_days=3))
>>> st = SimStats()
>>> for b in sim.days():
...     st.add(b)
>>> st.transactions == sum(st.per_day) and st.frauds == sum(st.by_scenario[1:])
True
>>> "scenario 2" in st.report(sim.config)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from producer.config import SCENARIO_NAMES, SimConfig
from producer.simulator import DayBatch

REFERENCE_TRANSACTIONS = 1_754_155
REFERENCE_BY_SCENARIO = {1: 973, 2: 9_077, 3: 4_631}
"""The handbook's totals for its reference run (5,000 customers, 10,000 terminals, 183 days)."""
REFERENCE_FRAUDS = 14_681


@dataclass(slots=True)
class SimStats:
    """What a simulation produced; per-day lists hold one number per day."""

    transactions: int = 0
    by_scenario: list[int] = field(default_factory=lambda: [0] * 7)
    per_day: list[int] = field(default_factory=list)
    frauds_per_day: list[int] = field(default_factory=list)
    fraud_cards_per_day: list[int] = field(default_factory=list)
    """Distinct cards with at least one fraudulent transaction that day."""
    compromised_cards_per_day: list[int] = field(default_factory=list)
    """Cards inside a scenario-3 window that day."""
    labels_fraud: int = 0
    labels_legit: int = 0
    elapsed_seconds: float = 0.0

    @property
    def frauds(self) -> int:
        return sum(self.by_scenario[1:])

    def add(self, batch: DayBatch) -> None:
        f = batch.frame
        self.transactions += len(f)
        counts = np.bincount(f.scen, minlength=7)
        for i in range(7):
            self.by_scenario[i] += int(counts[i])
        fraud = f.scen > 0
        self.per_day.append(len(f))
        self.frauds_per_day.append(int(fraud.sum()))
        self.fraud_cards_per_day.append(len(np.unique(f.cust[fraud])))
        self.compromised_cards_per_day.append(batch.compromised_cards)

    def report(self, config: SimConfig) -> str:
        """A plain-text summary; the reference column applies to the reference run only."""
        days = max(1, len(self.per_day))
        ref = config.is_reference

        def vs(n: int, r: int) -> str:
            return f"{r:>10,}  {100 * (n - r) / r:+6.1f} %" if ref else ""

        lines = [
            f"customers {config.n_customers:,}, terminals {config.n_terminals:,}, "
            f"days {len(self.per_day)} from {config.start}, seed {config.seed}, "
            f"scenarios {','.join(map(str, sorted(config.scenarios))) or 'none'}",
            f"{'':34}{'count':>10}" + (f"  {'handbook':>10}  {'diff':>8}" if ref else ""),
            f"{'transactions':34}{self.transactions:>10,}  "
            + vs(self.transactions, REFERENCE_TRANSACTIONS),
            f"{'transactions per day (mean)':34}{self.transactions / days:>10,.0f}  "
            f"(min {min(self.per_day, default=0):,}, max {max(self.per_day, default=0):,})",
        ]
        for s in range(1, 7):
            if s not in config.scenarios:
                continue
            name = f"scenario {s}: {SCENARIO_NAMES[s]}"
            r = REFERENCE_BY_SCENARIO.get(s)
            lines.append(f"{name[:34]:34}{self.by_scenario[s]:>10,}  "
                         + (vs(self.by_scenario[s], r) if r else ""))
        share = 100 * self.frauds / max(1, self.transactions)
        hb = sum(self.by_scenario[1:4])
        lines += [
            f"{'frauds, scenarios 1-3':34}{hb:>10,}  " + vs(hb, REFERENCE_FRAUDS),
            f"{'frauds, all scenarios':34}{self.frauds:>10,}  ({share:.3f} % of transactions)",
            f"{'frauds per day (mean)':34}{self.frauds / days:>10,.1f}",
            f"{'cards with fraud per day (mean)':34}"
            f"{sum(self.fraud_cards_per_day) / days:>10,.1f}",
            f"{'cards in a scenario-3 window/day':34}"
            f"{sum(self.compromised_cards_per_day) / days:>10,.1f}",
        ]
        if self.labels_fraud or self.labels_legit:
            lines.append(f"{'labels (fraud / legit)':34}{self.labels_fraud:>10,} / "
                         f"{self.labels_legit:,}")
        if self.elapsed_seconds:
            lines.append(f"{'elapsed':34}{self.elapsed_seconds:>10.1f} s")
        return "\n".join(line.rstrip() for line in lines)
