"""What to simulate: populations, period, seed, and every scenario's parameters.

The defaults are the handbook's reference run (5,000 customers, 10,000 terminals, 183 days from
2018-04-01, radius 5) with all six fraud scenarios on.

>>> cfg = SimConfig(n_customers=200, n_terminals=400, n_days=30, seed=7)
>>> cfg.end_epoch - cfg.start_epoch == 30 * 86400
True
>>> parse_scenarios("1,2,3")
frozenset({1, 2, 3})
>>> sorted(parse_scenarios("all"))
[1, 2, 3, 4, 5, 6]
>>> parse_scenarios("7")
Traceback (most recent call last):
...
ValueError: unknown fraud scenario 7 (choose among 1..6)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

ALL_SCENARIOS: frozenset[int] = frozenset({1, 2, 3, 4, 5, 6})
SCENARIO_NAMES: dict[int, str] = {
    0: "legitimate",
    1: "amount > 220",
    2: "compromised terminal",
    3: "compromised card (CNP)",
    4: "card testing",
    5: "account takeover / impossible travel",
    6: "spending spree",
}


def parse_scenarios(text: str) -> frozenset[int]:
    """Scenario numbers from ``"1,2,3"``, ``"all"`` or ``"none"`` (legitimate traffic only)."""
    t = text.strip().lower()
    if t in ("all", ""):
        return ALL_SCENARIOS if t == "all" else frozenset()
    if t in ("none", "0"):
        return frozenset()
    out = set()
    for part in t.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"not a scenario number: {part!r}")
        n = int(part)
        if n not in ALL_SCENARIOS:
            raise ValueError(f"unknown fraud scenario {n} (choose among 1..6)")
        out.add(n)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Handbook:
    """Scenarios 1–3, as published (chapter 3.2). Counts are absolute, per day."""

    amount_threshold: float = 220.0
    """Scenario 1: every transaction above this amount is fraud."""
    terminals_per_day: int = 2
    """Scenario 2: terminals compromised each day."""
    terminal_window_days: int = 28
    """Scenario 2: a compromised terminal's transactions are fraud for this many days."""
    cards_per_day: int = 3
    """Scenario 3: customers (cards) compromised each day."""
    card_window_days: int = 14
    """Scenario 3: length of a compromised card's window, in days."""
    card_fraud_share: float = 1 / 3
    """Scenario 3: share of the card's transactions in its window that become fraud."""
    card_amount_factor: float = 5.0
    """Scenario 3: those transactions' amount is multiplied by this."""


@dataclass(frozen=True, slots=True)
class CardTesting:
    """Scenario 4: a stolen card number is checked with tiny purchases, then cashed out.

    Each day ``Poisson(per_1000_customers × customers / 1000)`` cards are tested. A test is a
    burst of ``burst_min..burst_max`` purchases ``gap_mean_seconds`` apart on average
    (exponential, at least ``gap_min_seconds``), so a burst lasts a few minutes, at one or two
    e-commerce terminals outside the customer's radius (terminals the card never used), for
    amounts between ``amount_low`` and 1 times the customer's own 5th percentile (floored to
    the cent, so never above it). With probability ``cashout_probability`` a cash-out follows
    5–60 minutes later at another such terminal, for ``cashout_factor`` × the customer's mean.
    """

    per_1000_customers: float = 0.4
    burst_min: int = 3
    burst_max: int = 8
    gap_mean_seconds: float = 45.0
    gap_min_seconds: float = 3.0
    amount_low: float = 0.05
    """Lowest test amount, as a fraction of the customer's 5th percentile."""
    cashout_probability: float = 0.6
    cashout_factor: tuple[float, float] = (2.0, 5.0)


@dataclass(frozen=True, slots=True)
class Takeover:
    """Scenario 5: someone abroad takes over the account while the customer shops at home.

    Each day ``Poisson(per_1000_customers × customers / 1000)`` customers that shop at home that
    day (not travelling) are taken over: ``tx_min..tx_max`` transactions in one foreign city,
    all within ``window_seconds`` of the customer's first home transaction of the day (before
    it) or of the last one (after it), which pushes them towards early mornings and late
    evenings. Terminals are chosen among the city's terminals whose merchant category the
    customer has never used; amounts are ``amount_factor`` × the customer's mean.
    """

    per_1000_customers: float = 0.4
    tx_min: int = 1
    tx_max: int = 4
    window_seconds: int = 3600
    amount_factor: tuple[float, float] = (1.0, 3.0)


@dataclass(frozen=True, slots=True)
class Travel:
    """Legitimate trips abroad, on whenever scenario 5 is (they are what makes it hard).

    Each day ``Poisson(per_1000_customers × customers / 1000)`` customers not already away
    leave for ``days_min..days_max`` days to a random foreign city. On the day they leave, their
    transactions before departure stay at home, those during the flight (2 h + distance at
    800 km/h) are dropped, those after arrival are abroad; the return day mirrors it. Abroad,
    they use the city's tourist terminals (hotels, restaurants, food, transport, retail).
    """

    per_1000_customers: float = 2.0
    days_min: int = 2
    days_max: int = 10


@dataclass(frozen=True, slots=True)
class Spree:
    """Scenario 6: a stolen card spent locally, fast, at ordinary prices.

    Each day ``Poisson(per_1000_customers × customers / 1000)`` customers at home get a spree of
    ``tx_min..tx_max`` transactions within ``hours_min..hours_max`` hours between 06:00 and
    midnight, at the customer's own terminals, with amounts uniform in the customer's
    ``[mean - std, mean + std]``: only the rate gives it away.
    """

    per_1000_customers: float = 0.4
    tx_min: int = 8
    tx_max: int = 20
    hours_min: float = 1.0
    hours_max: float = 4.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A simulation: populations, period, seed, scenarios on, and their parameters.

    Same config (seed included) → same output, byte for byte. Turning a scenario off leaves the
    legitimate traffic unchanged, except that turning 5 off also turns off the trips abroad.
    """

    n_customers: int = 5000
    n_terminals: int = 10_000
    n_days: int = 183
    start: date = date(2018, 4, 1)
    radius: float = 5.0
    """A customer uses the terminals within this Euclidean distance (grid units = km)."""
    seed: int = 0
    scenarios: frozenset[int] = ALL_SCENARIOS
    id_prefix: str = "tx"
    """Transaction ids are ``id_prefix`` + a 9-digit sequence number."""
    ecom_share: float = 0.12
    """Share of grid terminals that are e-commerce (``channel = "ecom"``)."""
    merchants_per_terminal: float = 0.7
    """Grid merchants per grid terminal (a merchant may own several terminals)."""
    foreign_terminals_per_city: int = 12
    handbook: Handbook = field(default_factory=Handbook)
    card_testing: CardTesting = field(default_factory=CardTesting)
    takeover: Takeover = field(default_factory=Takeover)
    travel: Travel = field(default_factory=Travel)
    spree: Spree = field(default_factory=Spree)

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_terminals < 1 or self.n_days < 0:
            raise ValueError("need at least one customer and one terminal, and n_days >= 0")
        if self.radius <= 0:
            raise ValueError("radius must be positive")
        if not set(self.scenarios) <= ALL_SCENARIOS:
            raise ValueError(f"unknown scenarios: {sorted(set(self.scenarios) - ALL_SCENARIOS)}")
        if self.travel.days_min < 1 or self.travel.days_max < self.travel.days_min:
            raise ValueError("travel needs 1 <= days_min <= days_max")
        if len(self.id_prefix) > 64:
            raise ValueError("id_prefix too long (64 characters at most)")

    @property
    def start_epoch(self) -> int:
        """Unix seconds of the first simulated midnight (UTC)."""
        return int(datetime(self.start.year, self.start.month, self.start.day,
                            tzinfo=UTC).timestamp())

    @property
    def end_epoch(self) -> int:
        """Unix seconds just after the last simulated day."""
        return self.start_epoch + 86400 * self.n_days

    @property
    def is_reference(self) -> bool:
        """True for the handbook's reference populations and period."""
        return (self.n_customers, self.n_terminals, self.n_days, self.start, self.radius) == (
            5000, 10_000, 183, date(2018, 4, 1), 5.0)
