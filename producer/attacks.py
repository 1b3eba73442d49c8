"""Fraud scenarios 4–6 (txwatch's own; parameters in :mod:`producer.config`).

Each function adds new fraudulent transactions to a day; none changes the day's legitimate
ones. They draw from their own random generator, so turning one off changes nothing else.

* 4, card testing (:func:`card_testing`): bursts of purchases at or below the customer's 5th
  percentile, minutes apart, at e-commerce terminals the card never used, often a cash-out.
* 5, account takeover (:func:`takeover`): transactions in a city more than 1,100 km away within
  an hour of a transaction at home, in categories new to the customer.
* 6, spending spree (:func:`spree`): many transactions within hours, at the customer's own
  terminals, amounts within one standard deviation of the customer's mean.

>>> import numpy as np
>>> from producer.config import SimConfig
>>> from producer.population import make_customers, make_terminals, link_terminals
>>> cfg = SimConfig(n_customers=100, n_terminals=500)
>>> rng = np.random.default_rng(3)
>>> cust, term = make_customers(cfg, rng), make_terminals(cfg, rng)
>>> link_terminals(cust, term, cfg.radius)
>>> f = spree(cust, np.zeros(100, dtype=bool), cfg.spree, rng, n_events=1)
>>> c = int(f.cust[0])
>>> bool(np.all(np.abs(f.cents / 100 - cust.mean_amount[c]) <= cust.std_amount[c]))
True
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from producer.config import CardTesting, Spree, Takeover
from producer.frame import DayFrame
from producer.population import Customers, Terminals

IntArray = npt.NDArray[np.int64]
DAY = 86400


def n_events(per_1000: float, n_customers: int, rng: np.random.Generator) -> int:
    """How many customers a scenario hits today: ``Poisson(per_1000 × customers / 1000)``."""
    lam = per_1000 * n_customers / 1000
    return int(rng.poisson(lam)) if lam > 0 else 0


def _frame(cust: list[int], t: list[int], cents: list[int], term: list[int],
           scen: int) -> DayFrame:
    a = np.array
    return DayFrame(cust=a(cust, dtype=np.int64), t=a(t, dtype=np.int64),
                    cents=a(cents, dtype=np.int64), term=a(term, dtype=np.int64),
                    scen=np.full(len(t), scen, dtype=np.int64))


def _unused_ecom(cust: Customers, term: Terminals, c: int, radius: float) -> IntArray:
    """Grid terminals outside customer ``c``'s radius (never used by it), e-commerce first."""
    g = term.n_grid
    far = (term.x[:g] - cust.x[c]) ** 2 + (term.y[:g] - cust.y[c]) ** 2 >= radius * radius
    cand = np.flatnonzero(far & term.ecom[:g])
    if len(cand) == 0:
        cand = np.flatnonzero(far)
    if len(cand) == 0:  # a grid smaller than the radius: fall back on foreign terminals
        cand = np.arange(g, len(term))
    return cand


def card_testing(cust: Customers, term: Terminals, radius: float, p: CardTesting,
                 rng: np.random.Generator, n_events: int) -> DayFrame:
    """Scenario 4: ``n_events`` cards tested today."""
    eligible = np.flatnonzero(cust.n_avail > 0)
    if n_events == 0 or len(eligible) == 0:
        return DayFrame.empty()
    who = rng.choice(eligible, size=min(n_events, len(eligible)), replace=False)
    cs: list[int] = []
    ts: list[int] = []
    am: list[int] = []
    tm: list[int] = []
    for c in who.tolist():
        n = int(rng.integers(p.burst_min, p.burst_max + 1))
        gaps = np.maximum(rng.exponential(p.gap_mean_seconds, n - 1), p.gap_min_seconds)
        offsets = np.concatenate([[0.0], np.cumsum(gaps)]).astype(np.int64)
        t0 = int(rng.integers(0, max(1, DAY - 3 * 3600)))  # leaves room for burst + cash-out
        cand = _unused_ecom(cust, term, c, radius)
        shops = rng.choice(cand, size=min(len(cand), int(rng.integers(1, 3))), replace=False)
        p5_cents = math.floor(float(cust.p5_amount[c]) * 100)
        cents = np.floor(rng.uniform(p.amount_low, 1.0, n) * p5_cents).astype(np.int64)
        cents = np.clip(cents, 1, max(1, p5_cents))
        burst_t = (t0 + offsets).tolist()
        cs += [c] * n
        ts += burst_t
        am += cents.tolist()
        tm += rng.choice(shops, size=n).tolist()
        if rng.random() < p.cashout_probability:
            t_out = burst_t[-1] + int(rng.integers(300, 3601))
            lo, hi = p.cashout_factor
            cs.append(c)
            ts.append(min(t_out, DAY - 1))
            am.append(round(float(rng.uniform(lo, hi)) * float(cust.mean_amount[c]) * 100))
            tm.append(int(rng.choice(cand)))
    return _frame(cs, ts, am, tm, 4)


def takeover(cust: Customers, term: Terminals, frame: DayFrame, away: npt.NDArray[np.bool_],
             categories: npt.NDArray[np.int64], p: Takeover, rng: np.random.Generator,
             n_events: int) -> DayFrame:
    """Scenario 5: ``n_events`` customers shopping at home today are taken over.

    ``frame`` is today's legitimate traffic, ``away`` flags customers on a trip today and
    ``categories`` holds each customer's bit mask of merchant categories used so far.
    """
    home_rows = (frame.term < term.n_grid) & ~away[frame.cust]
    present = np.unique(frame.cust[home_rows])
    if n_events == 0 or len(present) == 0:
        return DayFrame.empty()
    who = rng.choice(present, size=min(n_events, len(present)), replace=False)
    cs: list[int] = []
    ts: list[int] = []
    am: list[int] = []
    tm: list[int] = []
    n_cities = int(term.city.max()) + 1
    w = p.window_seconds
    for c in who.tolist():
        home_t = frame.t[home_rows & (frame.cust == c)]
        first, last = int(home_t.min()), int(home_t.max())
        before = rng.random() < 0.5
        if before and first == 0:
            before = False
        if not before and last >= DAY - 1:
            before = True
        if before:
            lo, hi = max(0, first - w), first - 1
        else:
            lo, hi = last + 1, min(DAY - 1, last + w)
        n = int(rng.integers(p.tx_min, p.tx_max + 1))
        city = int(rng.integers(n_cities))
        in_city = term.foreign_of(city)
        mask = int(categories[c])
        new = in_city[[(mask >> int(term.mcc[k])) & 1 == 0 for k in in_city]]
        if len(new) == 0:
            new = in_city
        lo_f, hi_f = p.amount_factor
        cs += [c] * n
        ts += np.sort(rng.integers(lo, hi + 1, n)).tolist()
        am += np.rint(rng.uniform(lo_f, hi_f, n) * cust.mean_amount[c] * 100).astype(
            np.int64).tolist()
        tm += rng.choice(new, size=n).tolist()
    return _frame(cs, ts, am, tm, 5)


def spree(cust: Customers, away: npt.NDArray[np.bool_], p: Spree, rng: np.random.Generator,
          n_events: int) -> DayFrame:
    """Scenario 6: ``n_events`` customers at home get a spending spree today."""
    eligible = np.flatnonzero((cust.n_avail > 0) & ~away)
    if n_events == 0 or len(eligible) == 0:
        return DayFrame.empty()
    who = rng.choice(eligible, size=min(n_events, len(eligible)), replace=False)
    cs: list[int] = []
    ts: list[int] = []
    am: list[int] = []
    tm: list[int] = []
    for c in who.tolist():
        n = int(rng.integers(p.tx_min, p.tx_max + 1))
        span = int(rng.uniform(p.hours_min, p.hours_max) * 3600)
        start = int(rng.integers(6 * 3600, max(6 * 3600 + 1, DAY - span)))
        mean, std = float(cust.mean_amount[c]), float(cust.std_amount[c])
        lo, hi = math.ceil((mean - std) * 100), math.floor((mean + std) * 100)
        avail = cust.avail[cust.avail_start[c]: cust.avail_start[c] + cust.n_avail[c]]
        cs += [c] * n
        ts += np.sort(start + rng.integers(0, span + 1, n)).tolist()
        am += rng.integers(lo, hi + 1, n).tolist()
        tm += rng.choice(avail, size=n).tolist()
    return _frame(cs, ts, am, tm, 6)
