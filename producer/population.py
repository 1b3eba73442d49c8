"""Customers and terminals: the handbook's profiles, plus merchants, categories and places.

Customers (handbook): home ``x, y ~ U(0, 100)``; ``mean_amount ~ U(5, 100)``;
``std_amount = mean_amount / 2``; ``rate ~ U(0, 4)`` transactions a day. Each customer uses
the grid terminals strictly within ``radius`` of home.

Terminals: ``n_terminals`` grid terminals (handbook: ``x, y ~ U(0, 100)``), each belonging to a
merchant with one merchant category (MCC); a share are e-commerce. Then
``foreign_terminals_per_city`` terminals in each of :data:`producer.geo.FOREIGN_CITIES`,
the first ones with tourist categories, the others with risky ones.

>>> import numpy as np
>>> from producer.config import SimConfig
>>> cfg = SimConfig(n_customers=50, n_terminals=300, n_days=1)
>>> rng = np.random.default_rng(0)
>>> cust = make_customers(cfg, rng)
>>> term = make_terminals(cfg, rng)
>>> link_terminals(cust, term, cfg.radius)
>>> bool(np.all(cust.p5_amount < cust.mean_amount))
True
>>> c = int(np.argmax(cust.n_avail))
>>> t = cust.avail[cust.avail_start[c]:cust.avail_start[c] + cust.n_avail[c]]
>>> bool(np.all(np.hypot(term.x[t] - cust.x[c], term.y[t] - cust.y[c]) < cfg.radius))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from producer.config import SimConfig
from producer.geo import FOREIGN_CITIES, HOME_COUNTRY, grid_to_latlon

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# (MCC, description, weight among grid merchants)
GRID_CATEGORIES: tuple[tuple[str, str, float], ...] = (
    ("5411", "grocery stores, supermarkets", 0.22),
    ("5812", "restaurants", 0.14),
    ("5814", "fast food", 0.09),
    ("5541", "service stations", 0.08),
    ("5912", "pharmacies", 0.06),
    ("5311", "department stores", 0.05),
    ("5651", "clothing", 0.07),
    ("5999", "miscellaneous retail", 0.07),
    ("5499", "miscellaneous food stores", 0.05),
    ("4111", "local transport", 0.05),
    ("5942", "book stores", 0.03),
    ("7832", "cinemas", 0.02),
    ("5732", "electronics", 0.04),
    ("5944", "jewellery", 0.03),
)
TOURIST_CATEGORIES: tuple[str, ...] = ("7011", "5812", "5814", "4111", "5411", "5999", "7011")
"""Categories of the first terminals of each foreign city (``7011`` = hotels), in order."""
RISKY_CATEGORIES: tuple[str, ...] = ("5732", "5944", "4829", "7995", "6051")
"""Categories of the other foreign terminals: electronics, jewellery, money transfer,
gambling, quasi-cash."""

MCCS: tuple[str, ...] = tuple(
    dict.fromkeys([c for c, _, _ in GRID_CATEGORIES] + list(TOURIST_CATEGORIES)
                  + list(RISKY_CATEGORIES))
)
"""Every category in use; a customer's categories are a bit mask over this tuple."""
MCC_INDEX: dict[str, int] = {c: i for i, c in enumerate(MCCS)}
assert len(MCCS) <= 63


def _p5_factor() -> float:
    """5th percentile of a handbook amount, as a multiple of the customer's mean.

    Amounts are ``N(m, m/2)``, redrawn from ``U(0, 2m)`` when negative, so with ``u = a/m``:
    ``F(u) = Φ(2(u - 1)) - Φ(-2) + Φ(-2) u / 2`` on ``[0, 2]``. Solved by bisection.
    """
    def phi(z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    neg = phi(-2.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if phi(2 * (mid - 1)) - neg + neg * mid / 2 < 0.05:
            lo = mid
        else:
            hi = mid
    return lo


P5_FACTOR = _p5_factor()
"""About 0.261: a customer's 5th-percentile amount is 0.261 × their mean amount."""


@dataclass(slots=True)
class Customers:
    """Customer profiles (arrays indexed by customer) and the terminals each one uses."""

    x: FloatArray
    y: FloatArray
    mean_amount: FloatArray
    std_amount: FloatArray
    rate: FloatArray
    """Mean number of transactions a day."""
    p5_amount: FloatArray
    """The 5th percentile of the customer's legitimate amounts (theoretical)."""
    lat: FloatArray
    lon: FloatArray
    ids: list[str]
    avail: IntArray
    """Terminal indices, customer after customer (CSR layout with ``avail_start``/``n_avail``)."""
    avail_start: IntArray
    n_avail: IntArray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(slots=True)
class Terminals:
    """Terminals: the grid ones first (``0..n_grid-1``), then the foreign ones."""

    x: FloatArray
    """Grid coordinates (NaN for foreign terminals)."""
    y: FloatArray
    lat: FloatArray
    lon: FloatArray
    mcc: IntArray
    """Index into :data:`MCCS`."""
    ecom: npt.NDArray[np.bool_]
    city: IntArray
    """Index into :data:`FOREIGN_CITIES`, -1 on the grid."""
    ids: list[str]
    merchant_ids: list[str]
    countries: list[str]
    n_grid: int
    tourist: IntArray
    """Per city, the indices of its tourist terminals (a ``cities × k`` array)."""

    def __len__(self) -> int:
        return len(self.x)

    def foreign_of(self, city: int) -> IntArray:
        """Indices of the terminals of one foreign city."""
        return np.flatnonzero(self.city == city)

    def fields(self, k: int) -> tuple[str, str, str, str, float, float, str]:
        """``(terminal_id, merchant_id, merchant_category, country, lat, lon, channel)``."""
        return (self.ids[k], self.merchant_ids[k], MCCS[int(self.mcc[k])], self.countries[k],
                round(float(self.lat[k]), 5), round(float(self.lon[k]), 5),
                "ecom" if self.ecom[k] else "pos")

    def json_fragments(self) -> list[str]:
        """Per terminal, its fields as a ready-made JSON fragment (for the fast writer)."""
        out = []
        for k in range(len(self)):
            tid, mid, mcc, country, lat, lon, channel = self.fields(k)
            out.append(
                f'"currency":"EUR","terminal_id":"{tid}","merchant_id":"{mid}",'
                f'"merchant_category":"{mcc}","country":"{country}","lat":{lat},"lon":{lon},'
                f'"channel":"{channel}"'
            )
        return out


def _width(n: int) -> int:
    return max(5, len(str(max(n - 1, 0))))


def make_customers(cfg: SimConfig, rng: np.random.Generator) -> Customers:
    """Customer profiles as the handbook draws them (terminal links come later)."""
    n = cfg.n_customers
    x = rng.uniform(0, 100, n)
    y = rng.uniform(0, 100, n)
    mean = rng.uniform(5, 100, n)
    rate = rng.uniform(0, 4, n)
    lat, lon = grid_to_latlon(x, y)
    w = _width(n)
    empty = np.zeros(0, dtype=np.int64)
    return Customers(
        x=x, y=y, mean_amount=mean, std_amount=mean / 2, rate=rate,
        p5_amount=mean * P5_FACTOR, lat=lat, lon=lon,
        ids=[f"C{i:0{w}d}" for i in range(n)],
        avail=empty, avail_start=np.zeros(n, dtype=np.int64), n_avail=np.zeros(n, dtype=np.int64),
    )


def make_terminals(cfg: SimConfig, rng: np.random.Generator) -> Terminals:
    """Grid terminals (handbook locations, plus merchants, categories, channels), then abroad."""
    n = cfg.n_terminals
    gx = rng.uniform(0, 100, n)
    gy = rng.uniform(0, 100, n)
    n_merchants = max(1, round(n * cfg.merchants_per_terminal))
    weights = np.array([w for _, _, w in GRID_CATEGORIES])
    merchant_mcc = rng.choice(len(GRID_CATEGORIES), size=n_merchants, p=weights / weights.sum())
    # every merchant owns at least one terminal when there are enough terminals
    owner = np.concatenate([np.arange(min(n, n_merchants)),
                            rng.integers(0, n_merchants, max(0, n - n_merchants))])
    owner = rng.permutation(owner)
    grid_mcc = np.array([MCC_INDEX[GRID_CATEGORIES[m][0]] for m in merchant_mcc[owner]],
                        dtype=np.int64)
    ecom = rng.random(n) < cfg.ecom_share
    glat, glon = grid_to_latlon(gx, gy)

    k = cfg.foreign_terminals_per_city
    n_cities = len(FOREIGN_CITIES)
    n_tourist = min(k, len(TOURIST_CATEGORIES))
    f_lat, f_lon, f_mcc, f_ecom, f_city, f_country = [], [], [], [], [], []
    for ci, city in enumerate(FOREIGN_CITIES):
        # within about 8 km of the city centre
        dlat = rng.uniform(-0.07, 0.07, k)
        dlon = rng.uniform(-0.07, 0.07, k) / max(0.2, math.cos(math.radians(city.lat)))
        f_lat.append(city.lat + dlat)
        f_lon.append(city.lon + dlon)
        cats = [TOURIST_CATEGORIES[j] if j < n_tourist
                else RISKY_CATEGORIES[(j - n_tourist) % len(RISKY_CATEGORIES)] for j in range(k)]
        f_mcc.extend(MCC_INDEX[c] for c in cats)
        f_ecom.extend(j >= n_tourist and j % 2 == 1 for j in range(k))
        f_city.extend([ci] * k)
        f_country.extend([city.country] * k)
    n_foreign = n_cities * k
    tw = _width(n)
    mw = _width(n_merchants + n_foreign)
    ids = [f"T{i:0{tw}d}" for i in range(n)] + [f"F{j:04d}" for j in range(n_foreign)]
    merchant_ids = [f"M{m:0{mw}d}" for m in owner] + [
        f"M{n_merchants + j:0{mw}d}" for j in range(n_foreign)]
    nan = np.full(n_foreign, np.nan)
    tourist = (n + np.arange(n_cities)[:, None] * k + np.arange(n_tourist)[None, :]).astype(
        np.int64)
    return Terminals(
        x=np.concatenate([gx, nan]), y=np.concatenate([gy, nan]),
        lat=np.concatenate([glat, *f_lat]) if n_foreign else glat,
        lon=np.concatenate([glon, *f_lon]) if n_foreign else glon,
        mcc=np.concatenate([grid_mcc, np.array(f_mcc, dtype=np.int64)]),
        ecom=np.concatenate([ecom, np.array(f_ecom, dtype=bool)]),
        city=np.concatenate([np.full(n, -1, dtype=np.int64), np.array(f_city, dtype=np.int64)]),
        ids=ids, merchant_ids=merchant_ids,
        countries=[HOME_COUNTRY] * n + f_country,
        n_grid=n, tourist=tourist,
    )


def link_terminals(cust: Customers, term: Terminals, radius: float, block: int = 512) -> None:
    """Fill each customer's available grid terminals (distance < radius), in blocks of
    customers so memory stays at ``block × n_grid`` floats."""
    gx, gy = term.x[: term.n_grid], term.y[: term.n_grid]
    r2 = radius * radius
    parts: list[IntArray] = []
    counts = np.zeros(len(cust), dtype=np.int64)
    for lo in range(0, len(cust), block):
        hi = min(lo + block, len(cust))
        d2 = (cust.x[lo:hi, None] - gx[None, :]) ** 2 + (cust.y[lo:hi, None] - gy[None, :]) ** 2
        rows, cols = np.nonzero(d2 < r2)
        counts[lo:hi] = np.bincount(rows, minlength=hi - lo)
        parts.append(cols.astype(np.int64))
    cust.avail = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    cust.n_avail = counts
    cust.avail_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
