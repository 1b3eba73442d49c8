"""Legitimate trips abroad (see :class:`producer.config.Travel`).

A traveller's transactions move to the tourist terminals of their destination; those made
while flying are dropped. The flight takes :func:`producer.geo.flight_seconds`, so a genuine
traveller never moves faster than an airliner: only account takeovers (scenario 5) do.
State: a handful of numbers per customer, whatever the number of days.

>>> import numpy as np
>>> from producer.config import SimConfig
>>> from producer.frame import DayFrame
>>> from producer.population import make_customers, make_terminals
>>> cfg = SimConfig(n_customers=10, n_terminals=50)
>>> rng = np.random.default_rng(1)
>>> cust, term = make_customers(cfg, rng), make_terminals(cfg, rng)
>>> trips = Trips(cust, term, cfg.travel, rng)
>>> trips.start_trip(customer=3, day=0, city=0, days=3, depart=8 * 3600, back=9 * 3600)
>>> f = DayFrame(cust=np.array([3, 3, 3, 4]), t=np.array([3600, 9 * 3600, 20 * 3600, 9]),
...              cents=np.ones(4, dtype=np.int64), term=np.zeros(4, dtype=np.int64),
...              scen=np.zeros(4, dtype=np.int64))
>>> keep = trips.move(0, f)       # before departure: home; in flight: dropped; after: abroad
>>> g = f.take(keep)
>>> g.t.tolist(), [term.countries[k] for k in g.term]
([3600, 72000, 9], ['BE', 'IT', 'BE'])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from producer.config import Travel
from producer.frame import DayFrame
from producer.geo import FOREIGN_CITIES, flight_seconds
from producer.population import Customers, Terminals


class Trips:
    """Who is abroad, where, and when they fly."""

    def __init__(self, cust: Customers, term: Terminals, p: Travel,
                 rng: np.random.Generator) -> None:
        self.p = p
        self.rng = rng
        self.term = term
        self.n = len(cust)
        self.eligible = np.flatnonzero(cust.n_avail > 0)
        self.flight = np.array([flight_seconds(c) for c in FOREIGN_CITIES], dtype=np.int64)
        self.city = np.full(self.n, -1, dtype=np.int64)
        self.first = np.full(self.n, -1, dtype=np.int64)
        """Day of departure."""
        self.last = np.full(self.n, -2, dtype=np.int64)
        """Day of return."""
        self.depart = np.zeros(self.n, dtype=np.int64)
        """Seconds of day of the departure (on ``first``)."""
        self.back = np.zeros(self.n, dtype=np.int64)
        """Seconds of day of the return flight's departure (on ``last``)."""

    def start_trip(self, customer: int, day: int, city: int, days: int, depart: int,
                   back: int) -> None:
        """Send ``customer`` to ``city`` from ``day`` (leaving at ``depart`` seconds) until
        ``day + days`` (flying back at ``back`` seconds)."""
        self.city[customer] = city
        self.first[customer] = day
        self.last[customer] = day + days
        self.depart[customer] = depart
        self.back[customer] = back

    def _latest_departure(self, city: int) -> int:
        # arrive at least an hour before midnight, leave no earlier than 06:00 when possible
        return max(6 * 3600, 86400 - 3600 - int(self.flight[city]))

    def new_trips(self, day: int, n_customers: int) -> None:
        """Draw today's departures."""
        lam = self.p.per_1000_customers * n_customers / 1000
        k = int(self.rng.poisson(lam)) if lam > 0 else 0
        if k == 0 or len(self.eligible) == 0:
            return
        home = self.eligible[self.last[self.eligible] < day]
        if len(home) == 0:
            return
        who = self.rng.choice(home, size=min(k, len(home)), replace=False)
        for c in who.tolist():
            city = int(self.rng.integers(len(FOREIGN_CITIES)))
            latest = self._latest_departure(city)
            dep = int(self.rng.integers(6 * 3600, latest + 1))
            back = int(self.rng.integers(6 * 3600, latest + 1))
            days = int(self.rng.integers(self.p.days_min, self.p.days_max + 1))
            self.start_trip(c, day, city, days, dep, back)

    def away(self, day: int) -> npt.NDArray[np.bool_]:
        """Per customer: is any part of ``day`` spent on a trip."""
        return (self.first <= day) & (day <= self.last)

    def move(self, day: int, frame: DayFrame) -> npt.NDArray[np.bool_]:
        """Move today's travellers' transactions abroad (in place); returns the rows to keep
        (those not made in flight)."""
        c = frame.cust
        on = (self.first[c] <= day) & (day <= self.last[c])
        if not on.any():
            return np.ones(len(frame), dtype=bool)
        t = frame.t
        city = self.city[c]
        fl = self.flight[np.maximum(city, 0)]
        first, last = self.first[c] == day, self.last[c] == day
        dep, back = self.depart[c], self.back[c]
        abroad = on & (
            (first & (t >= dep + fl)) | (last & (t < back)) | (~first & ~last))
        flying = on & (
            (first & (t >= dep) & (t < dep + fl)) | (last & (t >= back) & (t < back + fl)))
        rows = np.flatnonzero(abroad)
        if len(rows):
            tour = self.term.tourist
            pick = self.rng.integers(0, tour.shape[1], len(rows))
            frame.term[rows] = tour[city[rows], pick]
        return ~flying
