"""Reasons: the top factors of a decision, in plain words, from a small fixed vocabulary.

Each candidate has a *salience* (how unusual the factor is, roughly in standard deviations);
the most salient ones above :data:`MIN_SALIENCE` become the decision's reasons.

>>> [r.code for r in explain({"amt_ratio_mean": 5.3, "u_n": 40, "new_terminal": 1.0,
...                           "amt_robust_z": 9.0}, {})]
['amount_vs_user_median', 'amount_vs_user_mean', 'new_terminal']
>>> explain({"amt_ratio_mean": 5.3, "u_n": 40}, {})[0].text
"amount 5.3× this user's 30-day mean"
"""

from __future__ import annotations

import math
from collections.abc import Callable

from operators.records import Reason

CODES: dict[str, str] = {
    "amount_vs_user_mean": "amount far above the user's 30-day mean",
    "amount_vs_user_median": "amount far above the user's usual amounts (robust z-score)",
    "amount_percentile": "amount above every recent amount of the user",
    "small_amounts": "a run of small amounts within an hour (card testing)",
    "new_terminal": "first transaction at this terminal",
    "new_merchant": "first transaction at this merchant",
    "new_category": "first transaction in this merchant category",
    "new_country": "first transaction in this country",
    "card_not_present": "online (card-not-present) purchases, rare for this user",
    "terminal_risk": "share of known fraud at this terminal",
    "terminal_recent_fraud": "fraud confirmed at this terminal recently",
    "terminal_fraud_run": "the terminal's latest labelled transactions were all fraud",
    "travel_speed": "implied travel speed since the previous transaction",
    "far_from_home": "distance from the user's usual area",
    "unusual_distance": "farther from home than this user usually transacts (within the region)",
    "probe": "a small amount farther from home than the user has ever gone (card testing)",
    "pace": "transactions in faster succession than this user's usual pace",
    "velocity_10m": "a burst of transactions within minutes",
    "velocity_1h": "many transactions in the last hour",
    "velocity_3h": "many transactions in the last three hours",
    "velocity_1d": "many transactions in the last day",
    "unusual_hour": "unusual hour of day for this user",
    "cold_start": "new user: judged against the population",
    "supervised": "resembles transactions labelled as fraud",
    "confirmed_anomaly": "flagged by the behaviour models, whose flags labels found mostly fraud",
    "anomaly_model": "unusual combination of features for this user",
}
"""The reason-code vocabulary (code → meaning). Metrics label alerts by these codes only."""

MIN_SALIENCE = 1.0
MAX_REASONS = 4

Candidate = tuple[float, Reason]


def _rare(p: float, code: str, text: str) -> Candidate:
    """A reason from a p-value: salience -log10(p), at most 4."""
    return (min(4.0, -math.log10(p)), Reason(code, text, p))


def _amount(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    if f.get("u_n", 0) < 3:
        return out
    r = f.get("amt_ratio_mean", 1.0)
    if r >= 2.0:
        text = f"amount {r:.1f}× this user's 30-day mean"
        out.append((r, Reason("amount_vs_user_mean", text, r)))
    z = f.get("amt_robust_z", 0.0)
    if z >= 3.0:
        out.append((z / 1.5, Reason(
            "amount_vs_user_median", f"amount {z:.1f} robust deviations above this user's median", z
        )))
    p = f.get("amt_pctl", 0.5)
    if p >= 1.0 and f.get("u_n", 0) >= 10:
        text = "largest amount among this user's last 32"
        out.append((1.2, Reason("amount_percentile", text, p)))
    k = f.get("u_cnt_1h", 0.0) + 1
    pb = f.get("amt_p_burst", 1.0)
    if k >= 2 and 0.0 < pb < 0.01 and f.get("u_n", 0) >= 5:
        # pb: the run's permutation p-value (operators.user._burst_p); pb ** (1 / k) is at
        # least the share of recent amounts below the run's largest
        share = 100 * pb ** (1 / k)
        text = f"{k:.0f} amounts within an hour, each among this user's smallest {share:.0f} %"
        out.append(_rare(pb, "small_amounts", text))
    return out


def _novelty(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    if f.get("u_n", 0) < 5:
        return out
    for key, code, text, sal in (
        ("new_terminal", "new_terminal", "first transaction at this terminal", 1.1),
        ("new_merchant", "new_merchant", "first transaction at this merchant", 1.05),
        ("new_category", "new_category", "first transaction in this merchant category", 1.3),
        ("new_country", "new_country", "first transaction in this country", 2.0),
    ):
        if f.get(key, 0.0) >= 1.0:
            out.append((sal, Reason(code, text, 1.0)))
    cp = f.get("cnp_p", 1.0)
    if cp < 0.05:
        # cp: the binomial tail of the hour's online purchases at the user's own share
        # (operators.user._cnp_p)
        out.append(_rare(cp, "card_not_present",
                         f"online (card-not-present) purchase, rare for this user (p = {cp:.2g})"))
    return out


def _terminal(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    for w in (1, 7, 30):
        risk = f.get(f"term_risk_{w}d", 0.0)
        if risk >= 0.05:
            out.append((1.0 + 10 * risk, Reason(
                "terminal_risk", f"terminal fraud risk {100 * risk:.0f} % over {w} days", risk
            )))
            break
    run = f.get("term_fraud_run", 0.0)
    if run >= 2:
        out.append((2.0 + run, Reason(
            "terminal_fraud_run",
            f"the terminal's last {run:.0f} labelled transactions were fraud", run
        )))
    age = f.get("term_days_since_fraud", 60.0)
    if age < 30:
        out.append((3.0 - age / 15, Reason(
            "terminal_recent_fraud", f"fraud confirmed at this terminal {age:.0f} days before", age
        )))
    return out


def _travel(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    v = f.get("speed_kmh", 0.0)
    if v >= 300 and c.get("travel", 1.0) > 0:
        text = f"implied travel speed {v:.0f} km/h"
        out.append((min(6.0, v / 200), Reason("travel_speed", text, v)))
    d = f.get("dist_home_km", 0.0)
    pz = f.get("probe_z", 0.0)
    if pz > 0.0:
        # pz: the detector's probe rule (operators.detector.PROBE_Z), a small amount beyond
        # the farthest distance bin the user has used within the home region
        out.append((pz, Reason(
            "probe", f"small amount {d:,.0f} km from home, beyond this user's range of "
                     f"{f.get('dist_range_km', 0.0):,.0f} km", d)))
    dp = f.get("dist_p", 1.0)
    if dp < 0.01:
        # dp: the permutation p-value of the distance (operators.user._dist_p), pooled with
        # the user's other transactions of the last hour
        out.append(_rare(dp, "unusual_distance",
                         f"{d:,.0f} km from home, farther than this user usually goes"))
    if d >= 100 and f.get("u_n", 0) >= 3 and c.get("travel", 1.0) > 0:
        out.append((min(5.0, d / 200), Reason(
            "far_from_home", f"{d:,.0f} km from this user's usual area", d
        )))
    return out


def _velocity(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    pp = f.get("pace_p", 1.0)
    if pp < 0.01 and c.get("velocity", 0.0) > 0:
        secs = f.get("pace_secs", 0.0)
        within = f"{secs:.0f} seconds" if secs < 120 else f"{secs / 60:.0f} minutes"
        out.append(_rare(pp, "pace", f"{f.get('pace_n', 1.0):.0f} transactions within "
                                     f"{within}; this user makes "
                                     f"{f.get('u_per_day', 0.0):.1f} a day"))
    n10m = f.get("u_cnt_10m", 0.0)
    if n10m >= 2:
        out.append((n10m / 1.5, Reason(
            "velocity_10m", f"{n10m:.0f} earlier transactions in the last 10 minutes", n10m
        )))
    n1h = f.get("u_cnt_1h", 0.0)
    if n1h >= 3:
        out.append((n1h / 2, Reason(
            "velocity_1h", f"{n1h:.0f} earlier transactions in the last hour", n1h
        )))
    n3h = f.get("u_cnt_3h", 0.0)
    if n3h >= 5:
        out.append((n3h / 3, Reason(
            "velocity_3h", f"{n3h:.0f} earlier transactions in the last 3 hours", n3h
        )))
    n1d = f.get("u_cnt_1d", 0.0)
    usual = f.get("u_cnt_30d", 0.0) / 30
    if n1d >= 6 and n1d >= 3 * max(usual, 1.0):
        out.append((n1d / max(usual, 1.0) / 2, Reason(
            "velocity_1d", f"{n1d:.0f} transactions in the last day (usual {usual:.1f})", n1d
        )))
    return out


def _habit(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    r = f.get("hour_rarity", 0.0)
    if r >= 1.5 and f.get("u_n", 0) >= 20:
        return [(r, Reason("unusual_hour", "unusual hour of day for this user", r))]
    return []


def _models(f: dict[str, float], c: dict[str, float]) -> list[Candidate]:
    out: list[Candidate] = []
    if c.get("maturity", 1.0) < 0.5:
        out.append((1.0, Reason("cold_start", "new user: judged against the population",
                                c.get("maturity", 0.0))))
    p = c.get("supervised")
    if p is not None and p >= 0.5:
        out.append((2.0 + 3 * p, Reason(
            "supervised", f"resembles transactions labelled as fraud (p = {p:.2f})", p
        )))
    pp = c.get("anomaly_path")  # (the anomaly path's share of fraud, detector 1.7)
    if pp is not None and pp >= 0.5 and pp > (p or 0.0):
        out.append((2.0 + 3 * pp, Reason(
            "confirmed_anomaly",
            f"flagged by the behaviour models: {pp:.0%} of such flags were fraud (labels)", pp
        )))
    return out


RULES: tuple[Callable[[dict[str, float], dict[str, float]], list[Candidate]], ...] = (
    _amount, _novelty, _terminal, _travel, _velocity, _habit, _models,
)


_COMPONENT_WORDS = {
    "velocity": "pace",
    "behaviour": "timing, terminal, amount, hour",
    "user_amount": "amount",
    "pop_amount": "amount for the population",
    "travel": "location",
}
"""The z-like components, in words, for an alert that no single factor explains."""


def _combined(components: dict[str, float]) -> Reason | None:
    top = sorted(((v, k) for k, v in components.items() if k in _COMPONENT_WORDS and v > 0),
                 reverse=True)[:2]
    if not top:
        return None
    text = "unusual for this user: " + ", ".join(
        f"{_COMPONENT_WORDS[k]} (z {v:.1f})" for v, k in top)
    return Reason("anomaly_model", text, components.get("anomaly", top[0][0]))


def explain(features: dict[str, float], components: dict[str, float]) -> list[Reason]:
    """The most salient reasons, most salient first (at most :data:`MAX_REASONS`). An alert
    that no single factor explains (several moderate ones together) gets ``anomaly_model``
    with the strongest components:

    >>> [r] = explain({"u_n": 40}, {"velocity": 2.7, "behaviour": 2.9})
    >>> r.code, r.text
    ('anomaly_model', 'unusual for this user: timing, terminal, amount, hour (z 2.9), pace (z 2.7)')
    """
    cands: list[Candidate] = []
    for rule in RULES:
        cands.extend(rule(features, components))
    cands.sort(key=lambda c: -c[0])
    seen: set[str] = set()
    out: list[Reason] = []
    for sal, r in cands:
        if sal < MIN_SALIENCE or r.code in seen:
            continue
        seen.add(r.code)
        out.append(r)
        if len(out) == MAX_REASONS:
            break
    if not out:
        combined = _combined(components)
        if combined is not None:
            out.append(combined)
    return out
