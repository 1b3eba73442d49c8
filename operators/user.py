"""Per-user behaviour: the features that carry a user's own baseline, and how they learn.

``features()`` is computed *before* ``learn()`` sees the transaction, so a transaction is
always judged against the history before it. State is compact (see ``__slots__`` and
:meth:`UserState.__getstate__`): about 2.3 KB pickled for a user with 30 days of history,
models included.

>>> from datetime import datetime, UTC
>>> u = UserState()
>>> for i in range(20):
...     f = u.features(1000.0 + i * 3600, 20.0 + i % 3, terminal="T1")
...     u.learn(1000.0 + i * 3600, 20.0 + i % 3, terminal="T1")
>>> f = u.features(1000.0 + 21 * 3600, 500.0, terminal="T2")
>>> f["amt_robust_z"] > 10, f["new_terminal"]
(True, 1.0)
"""

from __future__ import annotations

import math
import zlib
from array import array
from bisect import bisect_left, bisect_right
from typing import Any

HOUR = 3600.0
DAY = 86_400.0
RING = 32
"""Amounts kept for the robust statistics (median, MAD, percentile)."""
RECENT_MAX = 64
"""Most transactions kept for the 1-hour and 1-day windows."""
REC = 5
"""Values per transaction in ``UserState.recent``: ``ts, amount, km from home, card not
present, learnt`` (see ``UserState.__init__``)."""
DAYS = 30
"""Day buckets kept for the 7- and 30-day windows: ``UserState.days`` is a ring of
``(day, count, sum)`` triples in one ``array('d')``, slot ``day % DAYS`` (720 bytes, where a
dict of lists took about 5 KiB in memory)."""
BLOOM_BITS = 1024
EARTH_KM = 6371.0
HOME_RADIUS_KM = 300.0
"""Transactions farther than this from the user's home do not move it (trips, takeovers)."""
RELOCATE_DAYS = 30.0
"""Days spent away from home (every transaction farther than the radius) before home moves."""
_LOG24 = math.log(24)
DIST_EDGES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, HOME_RADIUS_KM)
"""Bins of the distance from home (km) in ``UserState.dists``, a histogram of the user's
transactions by distance; beyond ``HOME_RADIUS_KM`` is a trip (judged by ``travel``)."""
DIST_MIN_N = 10
"""Distances a user needs before their distance p-value (``dist_p``) counts."""
PACE_SECS = 4 * HOUR
"""How far back the pace of a run of transactions is measured (``pace_p``)."""
PACE_RUN = 16
"""Most earlier transactions a run may take in (``pace_p``)."""
PACE_DAYTIME = 2.0
"""Purchases cluster in the day: the rate a run is judged against is this many times the
user's mean daily rate spread over 24 hours."""
CARD_NOT_PRESENT = frozenset({"ecom", "online", "web", "cnp", "card_not_present", "moto"})
"""``channel`` values of a card-not-present transaction (lower case)."""


def _bits(value: str, salt: int) -> int:
    """The two bits of ``value`` in a 1,024-bit Bloom set of kind ``salt`` (1-4): two
    stable hashes (crc32, never Python's randomised hash()).

    >>> _bits("T042", 1) == _bits("T042", 1) != _bits("T042", 2)
    True
    """
    # (memoised per kind in plain dicts: functools.lru_cache made each call a Python-level
    # call with a tuple key, about 700 instructions; this is one dict look-up)
    memo = _BITS_MEMO[salt]
    b = memo.get(value)
    if b is None:
        if len(memo) >= _BITS_MEMO_MAX:  # bounded: the hot ids come back at once
            memo.clear()
        h = zlib.crc32(value.encode(), salt)
        b = memo[value] = (1 << (h % BLOOM_BITS)) | (1 << ((h >> 10) % BLOOM_BITS))
    return b


_BITS_MEMO: list[dict[str, int]] = [{} for _ in range(5)]
_BITS_MEMO_MAX = 65_536

FEATURE_NAMES = (
    "amount", "log_amount", "u_n", "u_days", "u_cnt_10m", "u_cnt_1h", "u_sum_1h", "u_cnt_3h",
    "u_cnt_1d", "u_sum_1d", "u_cnt_7d", "u_sum_7d", "u_cnt_30d", "u_sum_30d", "u_mean_1d",
    "u_mean_7d", "u_mean_30d", "u_per_day", "pace_p", "pace_n", "pace_secs", "amt_z_log",
    "amt_z", "amt_ratio_mean", "amt_robust_z", "amt_pctl", "amt_p_burst", "secs_since_prev",
    "new_terminal", "new_merchant", "new_category", "new_country", "dist_home_km", "dist_p",
    "dist_range_km", "hop_km", "speed_kmh", "hour_rarity", "hour_p", "new_terminal_rate",
    "cnp_p", "dist_typical",
)
"""The names of :meth:`UserState.features`, in the order it gives them (it sets every one)."""

_FEATURES: dict[str, float] = dict.fromkeys(FEATURE_NAMES, 0.0)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km.

    >>> round(haversine_km(48.85, 2.35, 51.51, -0.13))
    344
    """
    # (the same arithmetic as math.radians and `** 2`, in the forms mypyc compiles inline:
    # it calls math.radians, and a float's power, through Python)
    p1, p2 = lat1 * _RAD, lat2 * _RAD
    dp = p2 - p1
    dl = (lon2 - lon1) * _RAD
    a = (math.pow(math.sin(dp / 2), 2.0)
         + math.cos(p1) * math.cos(p2) * math.pow(math.sin(dl / 2), 2.0))
    s = math.sqrt(a)
    return 2 * EARTH_KM * math.asin(s if s < 1.0 else 1.0)


_RAD = math.pi / 180.0
"""Radians per degree: ``math.radians(x)`` is ``x * (pi / 180)``."""


_FIELDS = (
    "abroad_trip",
    "amounts",
    "amt_m2",
    "amt_mean",
    "days",
    "dist_mean",
    "dists",
    "far_since",
    "first_ts",
    "has_loc",
    "home_lat",
    "home_lon",
    "home_w",
    "hours",
    "last_lat",
    "last_lon",
    "last_ts",
    "log_m2",
    "log_mean",
    "model",
    "n",
    "n_amounts",
    "n_channel",
    "n_cnp",
    "n_new_terminal",
    "prev_travel",
    "recent",
    "score_q",
    "seen",
)
"""UserState's slots, in snapshot order (a compiled class has no ``__slots__`` to read)."""

_CACHE = ("win_c30", "win_c7", "win_day", "win_s30", "win_s7")
"""UserState's slots that are not snapshotted: the 7- and 30-day sums of the days before
``win_day``, recomputed from ``days`` when they are needed and missing."""

_NO_DAY = -(2**60)
"""``win_day`` when nothing is cached (no event time is that day)."""

_FIELDS_9 = (
    "abroad_trip", "amounts", "amt_m2", "amt_mean", "days", "dist_mean", "dists", "far_since",
    "first_ts", "home", "hours", "last_loc", "last_ts", "log_m2", "log_mean", "model", "n",
    "n_amounts", "n_channel", "n_cnp", "n_new_terminal", "past_days", "prev_travel", "recent",
    "score_q", "seen",
)
"""The snapshot order of state versions 7 to 9 (and of 5 and 6, less three fields): ``home``
was a ``(lat, lon, weight)`` tuple and ``last_loc`` a ``(lat, lon)`` one (or ``None``), the
window cache a ``past_days`` tuple, kept, and ``recent`` a list of tuples."""


class UserState:
    """Everything txwatch remembers about one user (models' state included by the scorer)."""

    __slots__ = (*_FIELDS, *_CACHE)

    def __init__(self) -> None:
        self.n = 0
        self.n_amounts = 0
        self.n_new_terminal = 0
        self.n_channel = 0  # transactions with a channel, and those card-not-present
        self.n_cnp = 0
        self.win_day = _NO_DAY  # window cache (_CACHE)
        self.win_c7 = self.win_s7 = self.win_c30 = self.win_s30 = 0.0
        self.dist_mean = 0.0
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.log_mean = 0.0
        self.log_m2 = 0.0
        self.amt_mean = 0.0
        self.amt_m2 = 0.0
        self.amounts = array("f")  # ring of the last RING amounts
        # ts, amount, km from home, card not present 1.0 / present 0.0, learnt 1.0 / 0.0 of
        # each transaction of the last 24 h (REC values each, one flat array: no object per
        # transaction), -1.0 for what is unknown; learnt is 0.0 for a flagged one, kept out of
        # the baselines
        self.recent = array("d")
        self.days = _new_days()  # ring of (day, count, sum), the last DAYS days
        self.seen = [0, 0, 0, 0]  # Bloom sets: terminal, merchant, category, country
        # home: the running mean location of local transactions, home_w its weight (0.0 until
        # the user has a location; at least 1.0 after)
        self.home_lat = self.home_lon = self.home_w = 0.0
        self.last_lat = self.last_lon = 0.0  # the latest location, when has_loc
        self.has_loc = False
        self.far_since = 0.0  # event time since when every transaction was far from home
        self.prev_travel = 0.0  # travel score of the previous transaction if it was flagged
        self.abroad_trip = False  # on a trip far from home that looked like a takeover
        self.hours = array("H", bytes(48))
        self.dists = array("H", bytes(2 * (len(DIST_EDGES) + 1)))  # see DIST_EDGES
        self.model: Any = None  # the per-user model's state (see operators.scoring)
        self.score_q: Any = None  # running quantile of this user's scores

    # --- pickling: compact tuples, no per-attribute dict ------------------------------------
    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in _FIELDS)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        if len(st) == len(_FIELDS_9) - 3:  # state versions 5 and 6: no distances nor channels
            st = _add_fields(st, {"dists": array("H", bytes(2 * (len(DIST_EDGES) + 1))),
                                  "n_channel": 0, "n_cnp": 0}, _FIELDS_9)
        if len(st) == len(_FIELDS_9):  # versions 5 to 9: recent as tuples, a window cache
            old = dict(zip(_FIELDS_9, st, strict=True))
            old["recent"] = _recent_from_tuples(old["recent"])
            home, last = old["home"], old["last_loc"]
            old["home_lat"], old["home_lon"], old["home_w"] = home or (0.0, 0.0, 0.0)
            old["last_lat"], old["last_lon"] = last or (0.0, 0.0)
            old["has_loc"] = last is not None
            if isinstance(old["days"], dict):
                old["days"] = _days_from_dict(old["days"])  # state version 5: {day: [n, sum]}
            st = tuple(old[s] for s in _FIELDS)
        for s, v in zip(_FIELDS, st, strict=True):
            setattr(self, s, v)
        self.win_day = _NO_DAY
        self.win_c7 = self.win_s7 = self.win_c30 = self.win_s30 = 0.0

    # --- features ---------------------------------------------------------------------------
    def features(
        self,
        ts: float,
        amount: float,
        *,
        terminal: str | None = None,
        merchant: str | None = None,
        category: str | None = None,
        country: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        local_hour: int | None = None,
        channel: str | None = None,
    ) -> dict[str, float]:
        """Features of a transaction against this user's history (which it does not change)."""
        n = self.n
        la = math.log1p(amount)
        # (a copy of a dict that has every key already, in order: setting its 42 values is
        # cheaper than inserting them, which resized the dict four times)
        f = _FEATURES.copy()
        f["amount"], f["log_amount"], f["u_n"] = amount, la, float(n)
        f["u_days"] = (ts - self.first_ts) / DAY if n else 0.0
        # windows: 10 min to 1 d from the recent list, 7 d and 30 d from day buckets
        c10m = c1h = s1h = c3h = c1d = s1d = 0.0
        hour_amounts: list[float] = []
        hour_dists: list[float] = []
        hour_k = hour_cnp = 0  # the last hour's transactions with a channel, card not present
        # what the last hour's transactions taught the baselines (their amounts, distance bins
        # and channels): a run is judged against the history before it, not against itself
        run_amounts: list[float] = []
        run_bins: list[int] = []
        run_k = run_cnp = 0
        spans: list[float] = []  # seconds back to each transaction of the last PACE_SECS
        rec = self.recent
        for j in range(0, len(rec), REC):
            t: float = rec[j]
            a: float = rec[j + 1]
            dk: float = rec[j + 2]
            cnp: float = rec[j + 3]
            learnt = rec[j + 4] > 0.0
            dt = ts - t
            if dt < DAY:
                c1d += 1
                s1d += a
                if dt < PACE_SECS:
                    spans.append(dt if dt > 0.0 else 0.0)
                if dt < 3 * HOUR:
                    c3h += 1
                    if dt < HOUR:
                        c1h += 1
                        s1h += a
                        hour_amounts.append(a)
                        if dk >= 0.0:
                            hour_dists.append(dk)
                        if cnp >= 0.0:
                            hour_k += 1
                            hour_cnp += cnp > 0.0
                        if learnt:
                            run_amounts.append(a)
                            if dk >= 0.0:
                                run_bins.append(bisect_right(DIST_EDGES, dk))
                            if cnp >= 0.0:
                                run_k += 1
                                run_cnp += cnp > 0.0
                        if dt < 600.0:
                            c10m += 1
        today = int(ts // DAY)
        if self.win_day != today:
            c7 = s7 = c30 = s30 = 0.0
            days = self.days
            for d in range(today - 29, today):  # oldest first: the sums add in day order
                i = 3 * (d % DAYS)
                if days[i] == d:
                    c30 += days[i + 1]
                    s30 += days[i + 2]
                    if today - d < 7:
                        c7 += days[i + 1]
                        s7 += days[i + 2]
            self.win_day = today
            self.win_c7, self.win_s7, self.win_c30, self.win_s30 = c7, s7, c30, s30
        i = 3 * (today % DAYS)
        days = self.days
        cc, cs = (days[i + 1], days[i + 2]) if days[i] == today else (0.0, 0.0)
        c7, s7 = self.win_c7 + cc, self.win_s7 + cs
        c30, s30 = self.win_c30 + cc, self.win_s30 + cs
        f["u_cnt_10m"] = c10m
        f["u_cnt_1h"], f["u_sum_1h"] = c1h, s1h
        f["u_cnt_3h"] = c3h
        f["u_cnt_1d"], f["u_sum_1d"] = c1d, s1d
        f["u_cnt_7d"], f["u_sum_7d"] = c7, s7
        f["u_cnt_30d"], f["u_sum_30d"] = c30, s30
        f["u_mean_1d"] = s1d / c1d if c1d else 0.0
        f["u_mean_7d"] = s7 / c7 if c7 else 0.0
        f["u_mean_30d"] = s30 / c30 if c30 else 0.0
        # pace: the least likely run of this transaction and the ones just before it, at the
        # user's usual daily count
        per_day = f["u_per_day"] = c30 / max(1.0, min(30.0, f["u_days"]))
        if spans:
            spans.sort()
            f["pace_p"], f["pace_n"], f["pace_secs"] = pace(spans, per_day)
        else:
            f["pace_p"], f["pace_n"], f["pace_secs"] = 1.0, 1.0, 0.0
        # amount against the user's own history
        na = self.n_amounts
        if na >= 2:
            var = self.log_m2 / (na - 1)
            sd = math.sqrt(var) if var > 1e-12 else 0.0
            f["amt_z_log"] = (la - self.log_mean) / max(sd, 0.05)
            va = self.amt_m2 / (na - 1)
            sda = max(math.sqrt(va) if va > 0 else 0.0, 0.1 * self.amt_mean, 1.0)
            f["amt_z"] = (amount - self.amt_mean) / sda
        else:
            f["amt_z_log"] = 0.0
            f["amt_z"] = 0.0
        mean_ref = f["u_mean_30d"] or (math.expm1(self.log_mean) if na else 0.0)
        f["amt_ratio_mean"] = amount / mean_ref if mean_ref > 0 else 1.0
        ring = self.amounts
        k = len(ring)
        if k >= 3:
            srt = sorted(ring)
            med = srt[k // 2] if k % 2 else 0.5 * (srt[k // 2 - 1] + srt[k // 2])
            # robust scale from the interquartile range (one sort: cheaper than the MAD)
            iqr = srt[(3 * k) // 4] - srt[k // 4]
            scale = max(iqr / 1.349, 0.05 * med, 0.5)
            f["amt_robust_z"] = (amount - med) / scale
            below = bisect_left(srt, amount)
            equal = bisect_right(srt, amount) - below
            pctl = f["amt_pctl"] = (below + 0.5 * equal) / k
            # (alone, the amount's p-value is its percentile plus one ring slot: no second
            # search of the ring)
            if hour_amounts:
                f["amt_p_burst"] = _burst_p(_without(srt, run_amounts) if run_amounts else srt,
                                            amount, hour_amounts)
            else:
                f["amt_p_burst"] = min(1.0, pctl + 1.0 / (RING + 1))
        else:
            f["amt_robust_z"] = 0.0
            f["amt_pctl"] = 0.5
            f["amt_p_burst"] = 1.0
        f["secs_since_prev"] = ts - self.last_ts if n else -1.0
        # novelty (Bloom sets: a false "seen" is possible, a false "new" is not)
        seen = self.seen
        f["new_terminal"] = _new(seen[0], terminal, 1) if n else 0.0
        f["new_merchant"] = _new(seen[1], merchant, 2) if n else 0.0
        f["new_category"] = _new(seen[2], category, 3) if n else 0.0
        f["new_country"] = _new(seen[3], country, 4) if n else 0.0
        # location and travel
        dist = speed = hop = 0.0
        if lat is not None and lon is not None:
            if self.home_w > 0.0:
                dist = haversine_km(lat, lon, self.home_lat, self.home_lon)
            if self.has_loc and n:
                hop = haversine_km(lat, lon, self.last_lat, self.last_lon)
                took = max((ts - self.last_ts) / HOUR, 1.0 / 60)  # at least a minute
                speed = hop / took
        f["dist_home_km"] = dist
        # how unusual this distance from home is for the user (trips are judged by travel)
        if self.home_w > 0.0 and dist <= HOME_RADIUS_KM:
            dists = self.dists
            if run_bins:
                dists = array("H", dists)
                for b in run_bins:
                    if dists[b]:
                        dists[b] -= 1
            f["dist_p"] = _dist_p(dists, dist, hour_dists)
            f["dist_range_km"] = _range_km(dists)
        else:
            f["dist_p"] = 1.0
            f["dist_range_km"] = 0.0
        f["hop_km"] = hop
        f["speed_kmh"] = speed
        # hour of day against habit
        hour = local_hour if local_hour is not None else int(ts // HOUR) % 24
        hours = self.hours
        total = sum(hours)
        ph = hours[hour]
        f["hour_rarity"] = -math.log((ph + 1) / (total + 24)) - _LOG24
        # p-value of the hour: the probability mass of hours at most as likely as this one
        # (sum of h + 1 over the hours with h <= ph, in integers; one pass, no sorted copy)
        mass = 0
        for h in hours:
            if h <= ph:
                mass += h + 1
        f["hour_p"] = mass / (total + 24)
        f["new_terminal_rate"] = (self.n_new_terminal + 1) / (n + 2)
        # card not present: how unusual that many are in the hour for this user
        f["cnp_p"] = (_cnp_p(max(0, self.n_cnp - run_cnp), max(0, self.n_channel - run_k),
                             hour_cnp + 1, hour_k + 1)
                      if _is_cnp(channel) else 1.0)
        f["dist_typical"] = self.dist_mean
        return f

    def learn(
        self,
        ts: float,
        amount: float,
        *,
        terminal: str | None = None,
        merchant: str | None = None,
        category: str | None = None,
        country: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        local_hour: int | None = None,
        protect: bool = False,
        dist_home: float | None = None,
        channel: str | None = None,
    ) -> None:
        """Add a transaction to the history (after it was scored). With ``protect`` (the
        transaction was flagged), its amount, its distance from home and its channel do not
        enter the user's baselines (it still counts in the windows)."""
        if self.n == 0:
            self.first_ts = ts
        self.n += 1
        if not protect:
            self.n_amounts += 1
            la = math.log1p(amount)
            d = la - self.log_mean
            self.log_mean += d / self.n_amounts
            self.log_m2 += d * (la - self.log_mean)
            da = amount - self.amt_mean
            self.amt_mean += da / self.n_amounts
            self.amt_m2 += da * (amount - self.amt_mean)
            ring = self.amounts
            if len(ring) < RING:
                ring.append(amount)
            else:
                ring[self.n_amounts % RING] = amount
        recent = self.recent
        # drop what is a day old (nothing is when the oldest is not: the test is exact)
        if recent and (ts - recent[0] >= DAY or ts - min(recent[::REC]) >= DAY):
            kept = array("d")
            for j in range(0, len(recent), REC):
                if ts - recent[j] < DAY:
                    kept.extend(recent[j:j + REC])
            recent = self.recent = kept
        dk = -1.0  # km from home, unknown without a location or a home
        if lat is not None and lon is not None and self.home_w > 0.0:
            dk = (dist_home if dist_home is not None
                  else haversine_km(lat, lon, self.home_lat, self.home_lon))
        cnp = -1.0
        if channel:
            cnp = 1.0 if _is_cnp(channel) else 0.0
            if not protect:  # (a flagged one does not teach the user's share)
                self.n_channel += 1
                self.n_cnp += cnp > 0.0
        recent.extend((ts, amount, dk, cnp, 0.0 if protect else 1.0))
        if len(recent) > REC * RECENT_MAX:
            del recent[:-REC * RECENT_MAX]
        day = int(ts // DAY)
        if day < self.win_day:  # (a late one: the days before the cached day change)
            self.win_day = _NO_DAY
        days = self.days
        i = 3 * (day % DAYS)
        if days[i] == day:
            days[i + 1] += 1
            days[i + 2] += amount
        elif days[i] < day:  # a new day: days out of every window leave the ring
            for j in range(0, 3 * DAYS, 3):
                if 0.0 <= days[j] <= day - DAYS:
                    days[j] = -1.0
                    days[j + 1] = days[j + 2] = 0.0
            days[i] = day
            days[i + 1] = 1.0
            days[i + 2] = amount
        # (else: a transaction DAYS days older than one already counted: out of every window)
        seen = self.seen
        if terminal and _add(seen, 0, terminal, 1):
            self.n_new_terminal += 1
        if merchant:
            _add(seen, 1, merchant, 2)
        if category:
            _add(seen, 2, category, 3)
        if country:
            _add(seen, 3, country, 4)
        if lat is not None and lon is not None:
            if self.home_w <= 0.0:
                self.home_lat, self.home_lon, self.home_w = lat, lon, 1.0
            else:
                d = dk  # (measured above, for the recent list)
                if not protect:  # typical distance from home (running mean, then slow)
                    self.dist_mean += (d - self.dist_mean) / min(self.n, 50)
                hl, ho, w = self.home_lat, self.home_lon, self.home_w
                if d <= HOME_RADIUS_KM or w < 3.0:
                    # a local transaction: running mean, then a slow moving average. Far ones
                    # (a trip, a takeover) never drag home towards them (a mean of Brussels
                    # and Mexico City is in the Atlantic)...
                    w2 = min(w + 1.0, 50.0)
                    self.home_lat, self.home_lon = hl + (lat - hl) / w2, ho + (lon - ho) / w2
                    self.home_w = w2
                    self.far_since = 0.0
                elif not self.far_since:
                    self.far_since = ts
                elif ts - self.far_since > RELOCATE_DAYS * DAY:
                    # ...unless the user has lived there for a month: they moved
                    self.home_lat, self.home_lon, self.home_w = lat, lon, 1.0
                    self.far_since = 0.0
            self.last_lat, self.last_lon, self.has_loc = lat, lon, True
            if dk >= 0.0 and not protect:
                dists = self.dists
                b = bisect_right(DIST_EDGES, dk)
                if dists[b] >= 60000:
                    dists = self.dists = array("H", (c // 2 for c in dists))
                dists[b] += 1
        hour = local_hour if local_hour is not None else int(ts // HOUR) % 24
        if self.hours[hour] >= 60000:
            self.hours = array("H", (h // 2 for h in self.hours))
        self.hours[hour] += 1
        self.last_ts = max(self.last_ts, ts)


def _new_days() -> array:
    return array("d", [-1.0, 0.0, 0.0] * DAYS)


def _days_from_dict(days: dict[int, list[float]]) -> array:
    """The ring of a state-version-5 ``{day: [count, sum]}`` (the latest days win a slot)."""
    ring = _new_days()
    for d in sorted(days):
        i = 3 * (d % DAYS)
        ring[i], ring[i + 1], ring[i + 2] = float(d), float(days[d][0]), float(days[d][1])
    return ring


def poisson_tail(k: int, lam: float) -> float:
    """P(N >= k) for N ~ Poisson(lam). For ``k`` above the mean it is summed from ``k``
    upwards, not taken as ``1 - cdf``, so the tiny tails of a fast run keep their precision.

    >>> round(poisson_tail(2, 0.1), 6), f"{poisson_tail(5, 1e-3):.4e}"  # (scipy: 8.3264e-18)
    (0.004679, '8.3264e-18')
    >>> poisson_tail(0, 1.0), round(poisson_tail(3, 5.0), 4)
    (1.0, 0.8753)
    """
    if k <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    if lam < k:
        term = math.exp(k * math.log(lam) - lam - math.lgamma(k + 1.0))
        tail = 0.0
        i = k
        while term > tail * 1e-17:
            tail += term
            i += 1
            term *= lam / i
        return min(1.0, tail)
    term = math.exp(-lam)
    cdf = term
    for i in range(1, k):
        term *= lam / i
        cdf += term
    return max(0.0, 1.0 - cdf)


def pace(spans: list[float], per_day: float) -> tuple[float, float, float]:
    """How unusual the pace of a run is: ``(p, n, seconds)``, what ``UserState.features``
    reports as ``pace_p``, ``pace_n`` and ``pace_secs``.

    ``spans`` are the seconds back to the user's earlier transactions within
    :data:`PACE_SECS`, sorted, and ``per_day`` the user's usual daily count (at least 0.5).
    For each ``j <= PACE_RUN``, the chance that a Poisson stream at the user's daytime rate
    (:data:`PACE_DAYTIME`) puts ``j`` transactions within the ``j``-th span (at least a
    minute); ``p`` is the smallest, ``n = j + 1`` the run's length with this transaction,
    ``seconds`` its span. A run's own span, unlike a fixed window, fits a spree of any pace.

    >>> p, n, secs = pace([1500.0, 3000.0, 4500.0], 2.0)  # three before it, 25 minutes apart
    >>> f"{p:.3g}", n, secs
    ('0.00129', 4.0, 4500.0)
    >>> pace([7200.0], 2.0)[0] > 0.2  # two purchases two hours apart: nothing unusual
    True
    """
    per_sec = max(per_day, 0.5) * PACE_DAYTIME / DAY
    best, n, secs = 1.0, 1.0, 0.0
    for j in range(1, min(len(spans), PACE_RUN) + 1):
        span = spans[j - 1]
        p = poisson_tail(j, per_sec * max(span, 60.0))
        if p < best:
            best, n, secs = p, float(j + 1), span
    return best, n, secs


def _burst_p(srt: list[float], amount: float, hour_amounts: list[float]) -> float:
    """One-sided p-value of a small amount, pooled over the user's amounts of the last hour
    (``hour_amounts``): how likely a run this long is to be all this small.

    Alone, the amount's mid-rank percentile among the user's recent amounts ``srt`` (sorted)
    plus one ring slot. With ``k - 1`` amounts before it in the hour, the permutation p-value
    of the run: if ``r`` recent amounts are below the run's largest, the chance that ``k``
    amounts of the user's own kind all have at most ``r`` below them is
    ``C(r + k, k) / C(n + k, k)``. Ordinary pairs of purchases are not flagged more often
    than the level says; a run of small amounts (card testing) is strong evidence.

    >>> srt = sorted([10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0] * 4)
    >>> round(_burst_p(srt, 1.0, []), 3), round(_burst_p(srt, 1.0, [1.0, 2.0]), 6)
    (0.03, 0.000153)
    >>> _burst_p(srt, 1.0, [35.0]) > 0.5  # an ordinary amount in the hour: no run
    True
    """
    n = len(srt)
    if not hour_amounts:
        below = bisect_left(srt, amount)
        equal = bisect_right(srt, amount) - below
        return min(1.0, (below + 0.5 * equal) / n + 1.0 / (RING + 1))
    r = bisect_right(srt, max(amount, max(hour_amounts)))  # ties count as below
    k = len(hour_amounts) + 1
    return math.comb(r + k, k) / math.comb(n + k, k)


def _without(srt: list[float], amounts: list[float]) -> list[float]:
    """The sorted ring ``srt`` without one occurrence of each of ``amounts`` (as the ring
    stores them, in single precision); an amount no longer in the ring is skipped.

    >>> _without([1.0, 2.5, 2.5, 7.0], [2.5, 9.0])
    [1.0, 2.5, 7.0]
    """
    out = list(srt)
    for v in array("f", amounts):
        i = bisect_left(out, v)
        if i < len(out) and out[i] == v:
            del out[i]
    return out


def _dist_p(dists: array, dist: float, hour_dists: list[float]) -> float:
    """One-sided p-value of a distance from home, pooled over the user's transactions of the
    last hour (``hour_dists``, their distances), from the histogram ``dists`` of the user's
    past distances (bins :data:`DIST_EDGES`): the permutation p-value of :func:`_burst_p`
    with ``r`` past distances in the run's nearest bin or beyond, ties counted as extreme.
    1.0 until the user has :data:`DIST_MIN_N` distances.

    >>> h = array("H", [0, 0, 30, 20, 0, 0, 0, 0, 0, 0])  # all within 2..8 km
    >>> round(_dist_p(h, 3.0, []), 2), round(_dist_p(h, 50.0, []), 3)
    (1.0, 0.02)
    >>> h[6] += 1  # the first of two far ones was learnt: pooled, the second is still rare
    >>> round(_dist_p(h, 50.0, [45.0]), 4)
    0.0022
    """
    n = sum(dists)
    if n < DIST_MIN_N:
        return 1.0
    near = min(dist, min(hour_dists)) if hour_dists else dist
    r = sum(dists[bisect_right(DIST_EDGES, near):])
    k = len(hour_dists) + 1
    return min(1.0, math.comb(r + k, k) / math.comb(n + k, k))


def _range_km(dists: array) -> float:
    """The user's range within the home region: the upper edge (km) of the farthest bin of
    :data:`DIST_EDGES` holding one of the user's past distances, 0.0 until the user has
    :data:`DIST_MIN_N` of them.

    >>> _range_km(array("H", [0, 0, 30, 20, 0, 0, 0, 0, 0, 4]))  # 2-8 km, trips beyond 300 km
    8.0
    """
    home = len(DIST_EDGES) - 1  # (the last bin, beyond the region, holds trips)
    if sum(dists[:home + 1]) < DIST_MIN_N:
        return 0.0
    for b in range(home, -1, -1):
        if dists[b]:
            return DIST_EDGES[b]
    return 0.0


def _is_cnp(channel: str | None) -> bool:
    return bool(channel) and (channel in CARD_NOT_PRESENT
                              or channel.lower() in CARD_NOT_PRESENT)  # type: ignore[union-attr]


def _cnp_p(n_cnp: int, n_channel: int, m: int, k: int) -> float:
    """One-sided p-value of ``m`` card-not-present transactions among the user's ``k`` of the
    last hour (this one included): the binomial tail at the user's own share of them
    (``n_cnp`` of ``n_channel``, Laplace-smoothed). 1.0 until the user has 10 channels.

    >>> round(_cnp_p(12, 100, 1, 1), 3), round(_cnp_p(12, 100, 2, 2), 4)  # one, then two
    (0.127, 0.0162)
    >>> _cnp_p(60, 100, 1, 1) > 0.5  # a user who mostly shops online
    True
    """
    if n_channel < 10:
        return 1.0
    q = (n_cnp + 1) / (n_channel + 2)
    # P(Bin(k, q) >= m), summed from the top (k is the hour's count: small)
    return min(1.0, sum(math.comb(k, i) * q ** i * (1.0 - q) ** (k - i) for i in range(m, k + 1)))


def _recent_from_tuples(v: list[tuple[Any, ...]]) -> array:
    """``recent`` of state versions 5 to 9, a list of tuples, as one flat array: ``(ts, amount,
    km, card not present, learnt)`` up to version 9, ``(ts, amount, km, card not present)`` in
    7 and ``(ts, amount)`` in 5 and 6 (older versions did not keep whether a transaction was
    learnt: as most are, it counts as learnt).

    >>> list(_recent_from_tuples([(60.0, 9.5), (70.0, 3.0, 2.5, 1.0, False)]))
    [60.0, 9.5, -1.0, -1.0, 1.0, 70.0, 3.0, 2.5, 1.0, 0.0]
    """
    out = array("d")
    for r in v:
        if len(r) == 2:
            out.extend((r[0], r[1], -1.0, -1.0, 1.0))
        elif len(r) == 4:
            out.extend((r[0], r[1], r[2], r[3], 1.0))
        else:
            out.extend((r[0], r[1], r[2], r[3], 1.0 if r[4] else 0.0))
    return out


def _add_fields(st: tuple[Any, ...], new: dict[str, Any],
                fields: tuple[str, ...]) -> tuple[Any, ...]:
    """An older snapshot's tuple with the fields it lacks (``new``) at their places in
    ``fields``."""
    out = list(st)
    for i, name in enumerate(fields):
        if name in new:
            out.insert(i, new[name])
    return tuple(out)


def _add(seen: list[int], i: int, value: str, salt: int) -> bool:
    """Add ``value`` to Bloom set ``seen[i]`` (of kind ``salt``); whether it was new there.
    (The set is replaced only when it changes: most values are known ones, and each ``|``
    makes a new 1,024-bit int.)"""
    b = _bits(value, salt)
    s = seen[i]
    if s & b == b:
        return False
    seen[i] = s | b
    return True


def _new(bits: int, value: str | None, salt: int) -> float:
    if not value:
        return 0.0
    b = _bits(value, salt)
    return 0.0 if bits & b == b else 1.0
