"""The labelled transaction simulator: the handbook's design, one day at a time, vectorised.

Each day, for all customers at once (numpy): ``Poisson(rate)`` transactions each; times
``int(N(43200, 20000))`` seconds, discarded outside (0, 86400); amounts ``N(m, m/2)``, redrawn
from ``U(0, 2m)`` when negative, rounded to cents; a terminal uniform among the customer's.
Then trips abroad (when scenario 5 is on), scenarios 1, 2, 3 in that order, then the extra
scenarios 4, 5, 6 add their transactions; the day is sorted by time and numbered.

Memory holds the populations, per-customer and per-terminal scenario state, and one day: it
does not grow with the number of days.

>>> from producer.config import SimConfig
>>> recs = list(iter_transactions(SimConfig(n_customers=100, n_terminals=200, n_days=3)))
>>> sorted(recs[0])[:4]
['amount', 'channel', 'country', 'currency']
>>> all(a["timestamp"] <= b["timestamp"] for a, b in zip(recs, recs[1:]))
True
>>> recs[0]["transaction_id"], recs[0]["timestamp"].endswith("Z")
('tx000000000', True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np

from producer import attacks
from producer.config import SimConfig
from producer.frame import DayFrame
from producer.handbook import CompromisedCards, CompromisedTerminals, amount_rule
from producer.population import (
    Customers,
    Terminals,
    link_terminals,
    make_customers,
    make_terminals,
)
from producer.travel import Trips

DAY = 86400
# random streams, one per concern, so turning a scenario off changes nothing else
_STREAMS = ("population", "base", "s2", "s3", "s4", "s5", "s6", "travel")


@dataclass(slots=True)
class DayBatch:
    """One simulated day, in time order, numbered from ``first_seq``."""

    day: int
    """Day number, 0 = ``config.start``."""
    day_start: int
    """Unix seconds of the day's midnight (UTC)."""
    first_seq: int
    frame: DayFrame
    compromised_cards: int = 0
    """Cards inside a scenario-3 window that day."""
    new_terminals: tuple[int, ...] = ()
    """Terminals compromised this day (scenario 2)."""
    new_cards: tuple[int, ...] = ()
    """Customers whose card was compromised this day (scenario 3)."""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def epochs(self) -> np.ndarray:
        """Unix seconds of each transaction."""
        return self.day_start + self.frame.t

    @property
    def date_prefix(self) -> str:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=self.day_start)).strftime(
            "%Y-%m-%dT")


_TRUTH_TAILS = ['"is_fraud":0,"fraud_scenario":0}\n'] + [
    f'"is_fraud":1,"fraud_scenario":{s}}}\n' for s in range(1, 7)]


@lru_cache(maxsize=1)
def clock_strings() -> list[str]:
    """``"HH:MM:SS"`` for each second of a day."""
    return [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]


class Simulation:
    """A seeded simulation; :meth:`days` can be iterated several times with the same output.

    >>> sim = Simulation(SimConfig(n_customers=50, n_terminals=100, n_days=2, seed=1))
    >>> [len(b) > 0 for b in sim.days()]
    [True, True]
    >>> [len(b) for b in sim.days()] == [len(b) for b in sim.days()]
    True
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._seeds = dict(zip(_STREAMS, np.random.SeedSequence(config.seed).spawn(
            len(_STREAMS)), strict=True))
        pop = np.random.default_rng(self._seeds["population"])
        self.customers: Customers = make_customers(config, pop)
        self.terminals: Terminals = make_terminals(config, pop)
        link_terminals(self.customers, self.terminals, config.radius)
        self._term_fields: list[tuple[str, str, str, str, float, float, str]] | None = None
        self._term_fragments: list[str] | None = None

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self._seeds[name])

    def _base(self, rng: np.random.Generator) -> DayFrame:
        """The day's legitimate transactions, handbook style, all customers at once."""
        cu = self.customers
        counts = rng.poisson(cu.rate)
        counts[cu.n_avail == 0] = 0
        cust = np.repeat(np.arange(len(cu), dtype=np.int64), counts)
        t = rng.normal(43200.0, 20000.0, len(cust)).astype(np.int64)  # int(): towards zero
        keep = (t > 0) & (t < DAY)
        cust, t = cust[keep], t[keep]
        mu = cu.mean_amount[cust]
        amount = rng.normal(mu, mu / 2)
        neg = amount < 0
        if neg.any():
            amount[neg] = rng.uniform(0.0, 2 * mu[neg])
        cents = np.rint(amount * 100).astype(np.int64)
        pick = (rng.random(len(cust)) * cu.n_avail[cust]).astype(np.int64)
        term = cu.avail[cu.avail_start[cust] + pick]
        return DayFrame(cust=cust, t=t, cents=cents, term=term,
                        scen=np.zeros(len(cust), dtype=np.int64))

    def days(self) -> Iterator[DayBatch]:
        """The simulated days in order, each a :class:`DayBatch` sorted by time."""
        cfg = self.config
        on = cfg.scenarios
        cu, te = self.customers, self.terminals
        base_rng, s3_rng = self._rng("base"), self._rng("s3")
        s4, s5, s6 = self._rng("s4"), self._rng("s5"), self._rng("s6")
        terminals = CompromisedTerminals(te.n_grid, len(te), cfg.handbook, self._rng("s2"))
        cards = CompromisedCards(len(cu), cfg.handbook, s3_rng)
        trips = Trips(cu, te, cfg.travel, self._rng("travel")) if 5 in on else None
        categories = np.zeros(len(cu), dtype=np.int64)
        n = len(cu)
        seq = 0
        for day in range(cfg.n_days):
            frame = self._base(base_rng)
            u3 = s3_rng.random(len(frame)) if 3 in on else None
            away = np.zeros(n, dtype=bool)
            if trips is not None:
                trips.new_trips(day, n)
                away = trips.away(day)
                keep = trips.move(day, frame)
                if not keep.all():
                    frame = frame.take(keep)
                    u3 = u3[keep] if u3 is not None else None
            if 1 in on:
                amount_rule(frame, cfg.handbook)
            new_t: tuple[int, ...] = ()
            new_c: tuple[int, ...] = ()
            if 2 in on:
                new_t = tuple(terminals.step(day, frame).tolist())
            if 3 in on and u3 is not None:
                new_c = tuple(cards.step(day, frame, u3).tolist())
            parts = [frame]
            if 5 in on:
                np.bitwise_or.at(categories, frame.cust, np.left_shift(1, te.mcc[frame.term]))
            if 4 in on:
                k = attacks.n_events(cfg.card_testing.per_1000_customers, n, s4)
                parts.append(attacks.card_testing(cu, te, cfg.radius, cfg.card_testing, s4, k))
            if 5 in on:
                k = attacks.n_events(cfg.takeover.per_1000_customers, n, s5)
                parts.append(attacks.takeover(cu, te, frame, away, categories, cfg.takeover,
                                              s5, k))
            if 6 in on:
                k = attacks.n_events(cfg.spree.per_1000_customers, n, s6)
                parts.append(attacks.spree(cu, away, cfg.spree, s6, k))
            merged = DayFrame.concat(parts).sorted_by_time()
            yield DayBatch(day=day, day_start=cfg.start_epoch + day * DAY, first_seq=seq,
                           frame=merged, compromised_cards=cards.active(day) if 3 in on else 0,
                           new_terminals=new_t, new_cards=new_c)
            seq += len(merged)

    # --- records ------------------------------------------------------------------------------
    def _fields(self) -> list[tuple[str, str, str, str, float, float, str]]:
        if self._term_fields is None:
            self._term_fields = [self.terminals.fields(k) for k in range(len(self.terminals))]
        return self._term_fields

    def _fragments(self) -> list[str]:
        if self._term_fragments is None:
            self._term_fragments = self.terminals.json_fragments()
        return self._term_fragments

    def transaction_ids(self, batch: DayBatch) -> list[str]:
        p = self.config.id_prefix
        return [f"{p}{s:09d}" for s in range(batch.first_seq, batch.first_seq + len(batch))]

    def records(self, batch: DayBatch) -> list[dict[str, Any]]:
        """The day's transactions as dicts in the input contract (plus the truth fields)."""
        fields = self._fields()
        uid = self.customers.ids
        hms = clock_strings()
        date = batch.date_prefix
        f = batch.frame
        out = []
        for tx, c, t, a, k, s in zip(self.transaction_ids(batch), f.cust.tolist(), f.t.tolist(),
                                     f.cents.tolist(), f.term.tolist(), f.scen.tolist(),
                                     strict=True):
            tid, mid, mcc, country, lat, lon, channel = fields[k]
            out.append({
                "transaction_id": tx, "user_id": uid[c], "amount": a / 100,
                "timestamp": f"{date}{hms[t]}Z", "currency": "EUR", "terminal_id": tid,
                "merchant_id": mid, "merchant_category": mcc, "country": country,
                "lat": lat, "lon": lon, "channel": channel,
                "is_fraud": 1 if s else 0, "fraud_scenario": s,
            })
        return out

    def lines(self, batch: DayBatch) -> list[str]:
        """The day's transactions as JSON lines (same content as :meth:`records`), fast."""
        frag = self._fragments()
        uid = self.customers.ids
        hms = clock_strings()
        date = batch.date_prefix
        p = self.config.id_prefix
        f = batch.frame
        tail = _TRUTH_TAILS
        return [
            f'{{"transaction_id":"{p}{i:09d}","user_id":"{uid[c]}","amount":{a // 100}.'
            f'{a % 100:02d},"timestamp":"{date}{hms[t]}Z",{frag[k]},{tail[s]}'
            for i, c, t, a, k, s in zip(
                range(batch.first_seq, batch.first_seq + len(batch)), f.cust.tolist(),
                f.t.tolist(), f.cents.tolist(), f.term.tolist(), f.scen.tolist(), strict=True)
        ]


def iter_transactions(config: SimConfig) -> Iterator[dict[str, Any]]:
    """Every simulated transaction as a dict, in time order (one day in memory at a time).

    >>> from producer.config import SimConfig
    >>> cfg = SimConfig(n_customers=100, n_terminals=200, n_days=2, seed=3, scenarios=frozenset())
    >>> sum(r["is_fraud"] for r in iter_transactions(cfg))
    0
    """
    sim = Simulation(config)
    for batch in sim.days():
        yield from sim.records(batch)
