"""Evaluation of a replay's scores with the handbook's protocol (scikit-learn metrics).

* test week 2018-08-08..08-14 by default; cards already known to be compromised are removed
  from each test day (a card is known once one of its frauds is ``delay`` days old, counting
  from the start of the training week 2018-07-25);
* ROC-AUC and Average Precision (``sklearn.metrics``) over the test transactions;
* Card Precision@100: each day, the 100 cards with the highest (max) score; the share of them
  that had fraud that day; averaged over days;
* recall per fraud scenario at the alert decision and in the top 1 % of scores, and the alert
  rate; the same figures for each model component;
* the **operating point** at a rate of legitimate alerts (1 per 1,000 by default, the rate the
  issue's per-scenario targets allow): the recall per scenario of the score alone, alerting
  everything above the lowest cut that keeps legitimate alerts within that rate. The cut is
  chosen knowing the labels, so it measures the ranking, apart from the decision's thresholds
  and budgets (:func:`operating_point`);
* with ``--ceilings``, what orderings that know the ground truth reach: the AP of label-free
  oracles (:func:`ceilings`), the spree's recall at the operating point of the pace of its
  runs judged against each customer's true rate (:func:`spree_pace_oracle`), and the same
  when card testing and takeovers take their share of that allowance
  (:func:`spree_shared_ceiling`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86400


class EvalInputError(ValueError):
    """The files cannot be evaluated together; ``str(e)`` says why and what to do."""


def _score_row(line: bytes, n: int, path: str) -> tuple[str, float, bool, dict[str, Any]]:
    """One line of ``txwatch replay``'s scores: id, score, alert and components."""
    try:
        s = json.loads(line)
        return (str(s["transaction_id"]), float(s["score"]), bool(s["alert"]),
                s.get("components") or {})
    except (ValueError, KeyError, TypeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)[:80]
        raise EvalInputError(
            f"{path}, line {n}: not a line written by txwatch replay ({what})") from e


@dataclass
class EvalData:
    ids: list[str]
    users: np.ndarray
    days: np.ndarray
    fraud: np.ndarray
    scenario: np.ndarray
    score: np.ndarray
    alert: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)


def _day(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() // DAY)


def load(tx_path: str, scores_path: str, start: date, end: date, delay_days: int = 7,
         train_start: date = date(2018, 7, 25)) -> EvalData:
    """Join transactions (with ground truth) and scores on the evaluation window."""
    d0 = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() // DAY)
    d1 = int(datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp() // DAY)
    tr0 = int(datetime(train_start.year, train_start.month, train_start.day,
                       tzinfo=UTC).timestamp() // DAY)
    fraud_days: dict[str, list[int]] = defaultdict(list)
    rows: dict[str, tuple[str, int, int, int]] = {}
    lo = hi = None  # the days the transactions file covers (for the error below)
    with open(tx_path, "rb") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            # (lines replay sends to its dead letters are not evaluated either)
            if (not isinstance(r, dict) or "timestamp" not in r
                    or not isinstance(r.get("transaction_id"), str)
                    or not isinstance(r.get("user_id"), str)):
                continue
            try:
                day = _day(r["timestamp"]) if isinstance(r["timestamp"], str) else int(
                    r["timestamp"] // DAY)
            except (TypeError, ValueError):
                continue
            lo = day if lo is None else min(lo, day)
            hi = day if hi is None else max(hi, day)
            fr = int(r.get("is_fraud", 0) or 0)
            if fr and day >= tr0:
                fraud_days[r["user_id"]].append(day)
            if d0 <= day <= d1:
                rows[r["transaction_id"]] = (r["user_id"], day, fr,
                                             int(r.get("fraud_scenario", 0) or 0))
    if not rows:
        held = ("no valid transaction" if lo is None else
                f"transactions from {_date(lo)} to {_date(hi)}")
        raise EvalInputError(f"{tx_path} has no transaction in {start}..{end} (it holds "
                             f"{held}): choose the window with --start and --end")
    ids: list[str] = []
    users: list[str] = []
    days: list[int] = []
    fraud: list[int] = []
    scen: list[int] = []
    score: list[float] = []
    alert: list[bool] = []
    comps: dict[str, list[float]] = defaultdict(list)
    matched = 0
    with open(scores_path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            tid, sc_value, alerted, components = _score_row(line, n, scores_path)
            row = rows.get(tid)
            if row is None:
                continue
            matched += 1
            user, day, fr, sc = row
            known = any(fd <= day - delay_days - 1 for fd in fraud_days.get(user, ()))
            if known:
                continue
            ids.append(tid)
            users.append(user)
            days.append(day)
            fraud.append(fr)
            scen.append(sc)
            score.append(sc_value)
            alert.append(alerted)
            for k, v in components.items():
                if k in ("maturity", "threshold"):
                    continue
                comps[k].append(float(v))
    if matched == 0:
        raise EvalInputError(
            f"none of the {len(rows):,} transactions of {tx_path} in {start}..{end} has a "
            f"score in {scores_path}: give the scores txwatch replay wrote for this input")
    n = len(ids)
    return EvalData(ids, np.array(users), np.array(days), np.array(fraud), np.array(scen),
                    np.array(score), np.array(alert),
                    {k: np.array(v) for k, v in comps.items() if len(v) == n})


def card_precision_at_k(users: np.ndarray, days: np.ndarray, fraud: np.ndarray,
                        score: np.ndarray, k: int = 100) -> float:
    """Mean over days of the share of the day's top-``k`` cards (max score) with fraud.

    >>> u = np.array(["a", "a", "b", "c"]); d = np.array([1, 1, 1, 1])
    >>> card_precision_at_k(u, d, np.array([0, 1, 0, 0]), np.array([.1, .9, .8, .2]), k=2)
    0.5
    """
    out = []
    for day in np.unique(days):
        m = days == day
        best: dict[str, float] = {}
        fr: dict[str, int] = {}
        for u, s, f in zip(users[m].tolist(), score[m].tolist(), fraud[m].tolist(), strict=True):
            if s > best.get(u, -np.inf):
                best[u] = s
            fr[u] = max(fr.get(u, 0), f)
        top = sorted(best, key=lambda u: -best[u])[:k]
        out.append(sum(fr[u] for u in top) / k)
    return float(np.mean(out)) if out else 0.0


def figures(d: EvalData, score: np.ndarray, alert: np.ndarray | None) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = d.fraud
    res: dict[str, Any] = {"transactions": len(y), "frauds": int(y.sum())}
    if 0 < y.sum() < len(y):
        res["roc_auc"] = float(roc_auc_score(y, score))
        res["average_precision"] = float(average_precision_score(y, score))
    res["card_precision_at_100"] = card_precision_at_k(d.users, d.days, y, score)
    top = np.zeros(len(score), dtype=bool)  # the top 1 % by rank (ties broken by order)
    top[np.argsort(-score, kind="stable")[: max(1, len(score) // 100)]] = True
    for s in sorted(set(d.scenario.tolist()) - {0}):
        m = d.scenario == s
        r: dict[str, float] = {"n": int(m.sum()), "recall_top1pct": float(top[m].mean())}
        if alert is not None:
            r["recall_alert"] = float(alert[m].mean())
        res.setdefault("scenarios", {})[str(s)] = r
    if alert is not None:
        legit = y == 0
        res["alerts_per_1000"] = float(1000 * alert.mean()) if len(alert) else 0.0
        res["alerts_per_1000_legit"] = float(1000 * alert[legit].mean()) if legit.any() else 0.0
        res["alert_precision"] = float(y[alert].mean()) if alert.any() else 0.0
    return res


def operating_point(d: EvalData, score: np.ndarray, legit_per_1000: float) -> dict[str, Any]:
    """Recall per scenario when alerting every score above ``threshold``, the lowest cut that
    alerts at most ``legit_per_1000`` of every 1,000 legitimate transactions (ties at the cut
    are not alerted, so the rate is never exceeded).

    >>> d = EvalData([], np.array(["u"] * 6), np.zeros(6), np.array([0, 0, 0, 0, 1, 1]),
    ...              np.array([0, 0, 0, 0, 6, 4]), np.zeros(6), np.zeros(6, dtype=bool))
    >>> op = operating_point(d, np.array([1.0, 2.0, 3.0, 5.0, 4.0, 9.0]), 250.0)
    >>> op["threshold"], op["legit_alerts_per_1000"], op["scenarios"]
    (3.0, 250.0, {'4': 1.0, '6': 1.0})
    """
    legit = np.sort(score[d.fraud == 0])[::-1]
    k = int(legit_per_1000 * len(legit) / 1000.0 + 1e-9)  # legitimate alerts allowed
    thr = float(legit[k]) if k < len(legit) else float("-inf")
    alert = score > thr
    return {
        "legit_per_1000_allowed": legit_per_1000,
        "threshold": thr,
        "legit_alerts_per_1000": float(1000 * alert[d.fraud == 0].mean()) if len(legit) else 0.0,
        "alerts_per_1000": float(1000 * alert.mean()) if len(alert) else 0.0,
        "scenarios": {str(s): float(alert[d.scenario == s].mean())
                      for s in sorted(set(d.scenario.tolist()) - {0})},
    }


def evaluate(tx_path: str, scores_path: str, start: date = date(2018, 8, 8),
             end: date = date(2018, 8, 14), delay_days: int = 7,
             plots_dir: str | None = None, with_ceilings: bool = False,
             legit_per_1000: float = 1.0) -> dict[str, Any]:
    d = load(tx_path, scores_path, start, end, delay_days)
    res = {"window": f"{start}..{end}", **figures(d, d.score, d.alert)}
    res["operating_point"] = operating_point(d, d.score, legit_per_1000)
    res["components"] = {k: figures(d, v, None) for k, v in sorted(d.components.items())}
    for k, v in d.components.items():
        res["components"][k]["operating_point"] = operating_point(d, v, legit_per_1000)
    if with_ceilings:
        res["ceilings"] = ceilings(tx_path, d)
        pace = spree_pace_scores(tx_path, d)
        if pace is not None:
            spree = operating_point(d, pace, legit_per_1000)["scenarios"][str(SPREE)]
            res["spree_ceiling"] = {"pace_oracle": spree, "legit_per_1000": legit_per_1000,
                                    "shared": spree_shared_ceiling(d, pace, legit_per_1000)}
            if "velocity" in d.components:  # the flow's own pace in the oracle's place
                res["spree_ceiling"]["shared_velocity"] = spree_shared_ceiling(
                    d, d.components["velocity"], legit_per_1000)
    if plots_dir:
        res["plots"] = plots(d, plots_dir)
    return res


SCENARIO_1_LIMIT = 220.0
"""The handbook's scenario 1: every amount above it is fraud."""
COMPROMISED_BOOST = 2.0
COMPROMISED_DAYS = 14
_PHI_MINUS_2 = 0.5 * math.erfc(math.sqrt(2.0))
"""P(N(m, m/2) < 0): the share of the simulator's amounts redrawn from U(0, 2m)."""


def _amount_density(a: float, m: float) -> float:
    """Density of a legitimate amount of a customer whose mean is ``m`` in the simulator:
    N(m, m/2), negatives redrawn from U(0, 2m) (``producer.simulator``)."""
    s = m / 2.0
    dens = math.exp(-0.5 * ((a - m) / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
    if 0.0 <= a <= 2.0 * m:
        dens += _PHI_MINUS_2 / (2.0 * m)
    return dens + 1e-300


def compromise_posterior(rows: list[tuple[str, int, float]], means: dict[str, float],
                         hazard: float, window_days: int = COMPROMISED_DAYS,
                         share: float = 1 / 3, factor: float = 5.0,
                         limit: float = SCENARIO_1_LIMIT) -> list[float]:
    """P(fraud | the card's amounts so far) of each row ``(user, day, amount)``, in time
    order, under the simulator's own design of scenarios 1 and 3 (the handbook's): an amount
    above ``limit`` is fraud; each day a card is compromised with probability ``hazard`` for
    ``window_days`` days, in which each of its transactions is fraud with probability
    ``share`` and its amount multiplied by ``factor``; legitimate amounts are N(m, m/2) around
    the customer's mean ``means[user]``. A forward filter per card over the days left in its
    window (the hidden state) gives the probability that the card is compromised before each
    transaction, and Bayes' rule with the amount's two densities its probability of fraud.
    Only amounts carry label-free evidence in this design (scenario 2 leaves none), so this
    is the most any label-free detector knows; it needs the true means and the scenario's
    parameters, which no detector has. Rows older than ``window_days`` before the first one
    that matters change nothing (every window they could reveal has ended).

    >>> p = compromise_posterior([("a", 0, 100.0), ("a", 1, 30.0), ("b", 1, 30.0),
    ...                           ("b", 2, 230.0)], {"a": 20.0, "b": 20.0}, hazard=0.001)
    >>> p[1] > 10 * p[2], p[3]
    (True, 1.0)
    """
    W = window_days
    filt: dict[str, list[float]] = {}
    last: dict[str, int] = {}
    out: list[float] = []
    for user, day, a in rows:
        p = filt.get(user)
        if p is None:
            p = [1.0] + [0.0] * W  # p[k]: the card has k days of a window left (0: none)
        prev = last.get(user)
        for _ in range(W + 1 if prev is None else min(day - prev, W + 1)):
            p = [p[0] + p[1], *p[2:], 0.0]  # a day passes
            total = sum(p)
            p = [x * (1.0 - hazard) for x in p]
            p[W] += hazard * total  # compromised today (again: the window starts over)
        last[user] = day
        m = max(means.get(user, 1.0), 1e-6)
        legit = _amount_density(a, m)
        fraud = _amount_density(a / factor, m) / factor
        compromised = 1.0 - p[0]
        inside = share * fraud + (1.0 - share) * legit
        p3 = compromised * share * fraud / (compromised * inside + (1.0 - compromised) * legit)
        out.append(1.0 if a > limit else p3)
        p = [p[0] * legit, *(x * inside for x in p[1:])]
        total = sum(p)
        filt[user] = [x / total for x in p]
    return out


def ceilings(tx_path: str, d: EvalData) -> dict[str, float]:
    """Average precision of orderings that know what no detector knows, on the evaluated
    transactions: what a label-free score is measured against.

    - ``perfect_label_free``: every fraud of a scenario with per-user or amount evidence (all
      but scenario 2, the compromised terminals, which only labels reveal, unless the amount
      is above 220) above everything;
    - ``amount_oracle``: amounts above 220 (scenario 1) first, then the amount over the
      customer's true mean (of all their legitimate amounts in the file; a detector can only
      estimate it from the past);
    - ``amount_oracle_compromised``: the same plus 2 for a customer with a detectable
      scenario-3 fraud (more than 3 times their mean) in the 14 days before, that is, knowing
      which cards are compromised;
    - ``bayes_label_free``: each transaction's probability of fraud given its card's amounts
      so far, under the simulator's own design and each customer's true mean
      (:func:`compromise_posterior`): everything the amounts tell, which is all the
      label-free evidence of scenarios 1-3.

    The amount oracles rank scenario 3 by the likelihood ratio of its ×5 amounts, which grows
    with amount / mean; the ×5 of a small draw stays inside the customer's range, so even
    they fall short of the first. The Bayes ordering also raises a card's later amounts once
    one of them has shown it compromised; ranking by the probability of fraud is the best an
    ordering can do in expectation (the probability ranking principle), so a label-free
    score's AP is measured against it.
    """
    from sklearn.metrics import average_precision_score

    y = d.fraud
    if not 0 < y.sum() < len(y):
        return {}
    from producer.config import Handbook

    hb = Handbook()
    wanted = {tid: i for i, tid in enumerate(d.ids)}
    amount = np.zeros(len(y))
    when = np.zeros(len(y))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    s3: dict[str, list[tuple[float, float]]] = defaultdict(list)  # user -> (ts, amount)
    # the rows the Bayes ordering's filter needs: from a window's length before the first
    # evaluated day
    first, last = int(d.days.min()) - hb.card_window_days - 1, int(d.days.max())
    recent: list[tuple[str, int, float]] = []
    recent_ids: list[Any] = []
    seen: set[str] = set()
    with open(tx_path, "rb") as f:
        for line in f:
            try:
                r = json.loads(line)
                a = float(r["amount"])
                ts = datetime.fromisoformat(r["timestamp"]).timestamp()
                user = r["user_id"]
            except (ValueError, KeyError, TypeError):
                continue
            seen.add(user)
            if not int(r.get("is_fraud", 0) or 0):
                sums[user] += a
                counts[user] += 1
            elif int(r.get("fraud_scenario", 0) or 0) == 3:
                s3[user].append((ts, a))
            tid = r.get("transaction_id")
            i = wanted.get(tid)
            if i is not None:
                amount[i], when[i] = a, ts
            day = int(ts // DAY)
            if first <= day <= last:
                recent.append((user, day, a))
                recent_ids.append(tid)
    mean = np.array([sums[u] / counts[u] if counts[u] else 1.0 for u in d.users.tolist()])
    means = {u: sums[u] / counts[u] for u in counts}
    posterior = compromise_posterior(
        recent, means, hazard=hb.cards_per_day / max(1, len(seen)),
        window_days=hb.card_window_days, share=hb.card_fraud_share,
        factor=hb.card_amount_factor, limit=hb.amount_threshold)
    bayes = np.zeros(len(y))
    for tid, pr in zip(recent_ids, posterior, strict=True):
        i = wanted.get(tid)
        if i is not None:
            bayes[i] = pr
    ratio = np.where(amount > SCENARIO_1_LIMIT, np.inf, amount / np.maximum(mean, 1e-9))
    ratio = np.minimum(ratio, 1e9)
    horizon = COMPROMISED_DAYS * DAY
    known = np.array([
        any(t - horizon <= ft < t and fa > 3 * m for ft, fa in s3.get(u, ()))
        for u, t, m in zip(d.users.tolist(), when.tolist(), mean.tolist(), strict=True)
    ])
    # (a compromised terminal's transaction above 220 is scenario 1's too, numbered 2 by the
    # simulator, which applies the scenarios in order: its amount gives it away)
    visible = (y == 1) & ((d.scenario != 2) | (amount > SCENARIO_1_LIMIT))

    def ap(score: np.ndarray) -> float:
        return float(average_precision_score(y, score))

    return {
        "perfect_label_free": ap(visible.astype(float)),
        "amount_oracle": ap(ratio),
        "amount_oracle_compromised": ap(ratio + COMPROMISED_BOOST * known),
        "bayes_label_free": ap(bayes),
    }


SPREE = 6
"""The simulator's scenario 6, the spending spree: only its rate gives it away."""
_PROFILE_BINS = 96  # 15 minutes


def spree_pace_oracle(tx_path: str, d: EvalData, legit_per_1000: float) -> float | None:
    """The spree's recall at the operating point (``legit_per_1000``) of an ordering that
    knows each customer's true daily rate: ``None`` when the window has no spree.

    Each evaluated transaction scores ``-log p``, where ``p`` is the smallest, over the ``j``
    transactions of the customer before it within the flow's ``PACE_SECS`` (4 hours, all of
    them: the flow takes at most 16), of the chance that a Poisson stream at the customer's
    true rate (their legitimate transactions over the days the file covers) puts ``j``
    transactions within the span back to the ``j``-th, at the time of day the span covers
    (the hour profile of every legitimate transaction in the file). A spree uses the
    customer's own terminals at the customer's own amounts, so the pace of its runs is its
    evidence; the flow estimates the rate from the last 30 days and spreads it over the day
    flatly (``operators.user.pace``). The legitimate alerts all go to the spree here: a
    detector that also alerts other scenarios has fewer left for it.

    The first purchase of a run has no run behind it and is never found; the later ones of a
    fast run at a quiet hour are:

    >>> from types import SimpleNamespace as NS
    >>> import tempfile, os
    >>> rows = [("u%d" % u, day * DAY + 43200 + 600 * u, 0, 0)  # one purchase a day each
    ...         for day in range(17750, 17760) for u in range(20)]
    >>> rows += [("u0", 17758 * DAY + 7200 + 300 * k, 1, SPREE) for k in range(4)]  # 2 a.m.
    >>> path = os.path.join(tempfile.mkdtemp(), "tx.jsonl")
    >>> with open(path, "w") as f:
    ...     for i, (u, ts, fr, sc) in enumerate(rows):
    ...         _ = f.write(json.dumps({"transaction_id": f"t{i}", "user_id": u, "timestamp":
    ...             datetime.fromtimestamp(ts, UTC).isoformat(), "is_fraud": fr,
    ...             "fraud_scenario": sc}) + "\\n")
    >>> ids = [f"t{i}" for i in range(len(rows))]
    >>> d = NS(ids=ids, fraud=np.array([r[2] for r in rows]),
    ...        scenario=np.array([r[3] for r in rows]))
    >>> spree_pace_oracle(path, d, 1.0)  # 3 of the spree's 4 purchases
    0.75
    """
    pace = spree_pace_scores(tx_path, d)
    if pace is None:
        return None
    return operating_point(d, pace, legit_per_1000)["scenarios"].get(str(SPREE))


def spree_pace_scores(tx_path: str, d: EvalData) -> np.ndarray | None:
    """The ordering :func:`spree_pace_oracle` judges, one score per evaluated transaction
    (``-log`` of the smallest Poisson tail of the runs it ends, at the customer's true rate):
    ``None`` when the window has no spree."""
    from operators.user import PACE_SECS, poisson_tail

    if not (d.scenario == SPREE).any():
        return None
    times: dict[str, list[tuple[float, str]]] = defaultdict(list)
    legit: dict[str, int] = defaultdict(int)
    profile = np.zeros(_PROFILE_BINS)
    lo = hi = None
    with open(tx_path, "rb") as f:
        for line in f:
            try:
                r = json.loads(line)
                ts = datetime.fromisoformat(r["timestamp"]).timestamp()
                user, tid = r["user_id"], r["transaction_id"]
            except (ValueError, KeyError, TypeError):
                continue
            times[user].append((ts, tid))
            day = int(ts // DAY)
            lo = day if lo is None else min(lo, day)
            hi = day if hi is None else max(hi, day)
            if not int(r.get("is_fraud", 0) or 0):
                legit[user] += 1
                profile[int(ts % DAY) * _PROFILE_BINS // DAY] += 1
    days = (hi - lo + 1) if lo is not None else 1
    # the share of a day's transactions before each bin edge (linear within a bin)
    cum = np.concatenate([[0.0], np.cumsum(profile + 1e-6)])
    cum /= cum[-1]

    def share_before(sod: float) -> float:
        b = sod * _PROFILE_BINS / DAY
        i = min(int(b), _PROFILE_BINS - 1)
        return float(cum[i] + (cum[i + 1] - cum[i]) * (b - i))

    def share(sod: float, span: float) -> float:  # of the span ending at second of day sod
        start = sod - span
        if start >= 0.0:
            return share_before(sod) - share_before(start)
        return share_before(sod) + 1.0 - share_before(start + DAY)  # across midnight

    where: dict[str, tuple[str, list[tuple[float, str]], int]] = {}
    for user, ts_ids in times.items():
        ts_ids.sort()
        for k, (_, tid) in enumerate(ts_ids):
            where[tid] = (user, ts_ids, k)
    score = np.zeros(len(d.ids))
    for i, tid in enumerate(d.ids):
        got = where.get(tid)
        if got is None:
            continue
        user, ts_ids, k = got
        ts = ts_ids[k][0]
        per_day = max(legit[user], 1) / days
        sod = ts % DAY
        best = 1.0
        for j in range(1, k + 1):
            span = ts - ts_ids[k - j][0]
            if span > PACE_SECS:
                break
            best = min(best, poisson_tail(j, per_day * share(sod, max(span, 60.0))))
        score[i] = -math.log(max(best, 1e-300))
    return score


def spree_shared_ceiling(d: EvalData, pace: np.ndarray, legit_per_1000: float,
                         keep: float = 0.8) -> dict[str, Any] | None:
    """The spree's recall when the legitimate alerts allowed are shared with the other
    behavioural scenarios: ``None`` when the window has no spree.

    The issue wants card testing (4), takeovers (5) and the spree each found at recall
    ``keep`` within one allowance of legitimate alerts. Each of 4 and 5 present in the window
    is alerted at recall ``keep`` by the single ordering, among the score and its
    components, that does so with the fewest legitimate alerts (its cut chosen knowing the
    labels); amounts (scenarios 1 and 3) are not alerted at all; then ``pace`` (e.g.
    :func:`spree_pace_scores`) takes the lowest cut whose legitimate alerts, beyond theirs,
    fit in what they leave of the allowance (none if they take it all). Every cut is chosen
    knowing the labels: it is what is left for the spree once the other two targets are met,
    each by the ordering that is cheapest on its own.

    >>> d = EvalData([], np.array(["u"] * 8), np.zeros(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]),
    ...              np.array([0, 0, 0, 0, 5, 5, 6, 6]), np.zeros(8), np.zeros(8, dtype=bool),
    ...              {"travel": np.array([0., 0, 0, 9, 9, 9, 0, 0])})  # one legitimate flag
    >>> pace = np.array([0., 1, 2, 3, 0, 0, 5, 0.5])
    >>> r = spree_shared_ceiling(d, pace, 500.0)  # two legitimate alerts allowed
    >>> r["spree"], r["by"], r["legit_alerts_per_1000"]  # one left for the spree's cut
    (0.5, {'5': 'travel'}, 500.0)
    """
    if not (d.scenario == SPREE).any():
        return None
    legit = d.fraud == 0
    allowed = int(legit_per_1000 * int(legit.sum()) / 1000.0 + 1e-9)
    others = np.zeros(len(d.scenario), dtype=bool)
    by: dict[str, str] = {}
    for s in (4, 5):  # card testing, takeover
        if not (d.scenario == s).any():
            continue
        best: tuple[int, str, np.ndarray] | None = None
        for name, x in [("score", d.score), *sorted(d.components.items())]:
            found = np.sort(x[d.scenario == s])[::-1]
            cut = found[min(math.ceil(keep * len(found) - 1e-9), len(found)) - 1]
            alert = x >= cut
            cost = int(alert[legit].sum())
            if best is None or cost < best[0]:
                best = (cost, name, alert)
        assert best is not None
        by[str(s)] = best[1]
        others |= best[2]
    # the pace's lowest cut whose legitimate alerts, beyond the others', fit what is left
    free = np.sort(pace[legit & ~others])[::-1]
    left = allowed - int(others[legit].sum())
    cut = free[max(left, 0)] if max(left, 0) < len(free) else -np.inf
    spree = others | (pace > cut)
    return {"spree": float(spree[d.scenario == SPREE].mean()), "by": by, "keep": keep,
            "legit_alerts_per_1000": float(1000 * spree[legit].mean()) if legit.any() else 0.0}


def plots(d: EvalData, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, s in [("score", d.score), *sorted(d.components.items())]:
        if d.fraud.sum() == 0:
            break
        p, r, _ = precision_recall_curve(d.fraud, s)
        ax.plot(r, p, label=name, lw=2 if name == "score" else 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision–recall, test window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(Path(out_dir) / "precision_recall.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(np.quantile(d.score, 0.001), np.quantile(d.score, 0.9999), 60)
    ax.hist(d.score[d.fraud == 0], bins=bins, alpha=0.6, label="legitimate", log=True)
    ax.hist(d.score[d.fraud == 1], bins=bins, alpha=0.6, label="fraud", log=True)
    ax.set_xlabel("score")
    ax.set_ylabel("transactions (log)")
    ax.legend()
    fig.tight_layout()
    paths.append(str(Path(out_dir) / "score_histogram.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def format_report(res: dict[str, Any]) -> str:
    def line(name: str, r: dict[str, Any]) -> str:
        return (f"{name:<16} AUC {r.get('roc_auc', float('nan')):.3f}  "
                f"AP {r.get('average_precision', float('nan')):.3f}  "
                f"CP@100 {r['card_precision_at_100']:.3f}")

    out = [f"window {res['window']}: {res['transactions']:,} transactions, "
           f"{res['frauds']:,} frauds (known-compromised cards removed)", line("score", res)]
    if "roc_auc" not in res:
        out.append("  (ROC-AUC and AP need both fraud and legitimate transactions in the window)")
    out.append(f"alerts: {res.get('alerts_per_1000', 0):.2f} per 1,000 transactions "
               f"({res.get('alerts_per_1000_legit', 0):.2f} per 1,000 legitimate), "
               f"precision {res.get('alert_precision', 0):.3f}")
    op = res.get("operating_point")
    for s, r in res.get("scenarios", {}).items():
        out.append(f"  scenario {s}: n={r['n']:<5} recall at alert {r.get('recall_alert', 0):.3f}"
                   f"  in top 1% {r['recall_top1pct']:.3f}"
                   + (f"  at the operating point {op['scenarios'][s]:.3f}" if op else ""))
    if op:
        out.append(f"operating point (the score alone, at most {op['legit_per_1000_allowed']:g} "
                   "legitimate alerts per 1,000, its threshold chosen knowing the labels): "
                   f"above {op['threshold']:.2f}, {op['legit_alerts_per_1000']:.2f} legitimate "
                   f"and {op['alerts_per_1000']:.2f} in all per 1,000")
    for k, r in res.get("components", {}).items():
        cop = r.get("operating_point", {}).get("scenarios")
        out.append(line(k, r) + ("  at its operating point: " + ", ".join(
            f"{s} {v:.3f}" for s, v in cop.items()) if cop else ""))
    if res.get("ceilings"):
        out.append("ceilings (orderings that know what no detector knows; see "
                   "txwatch.evaluation.ceilings):")
        out.extend(f"  {k:<26} AP {v:.3f}" for k, v in res["ceilings"].items())
    if res.get("spree_ceiling"):
        sc = res["spree_ceiling"]
        out.append(f"  spree recall at {sc['legit_per_1000']:g} legitimate alerts per 1,000, "
                   f"the pace of its runs against each customer's true rate "
                   f"(txwatch.evaluation.spree_pace_oracle): {sc['pace_oracle']:.3f}")
        sh = sc.get("shared")
        if sh:
            by = ", ".join(f"{s} by {c}" for s, c in sh["by"].items()) or "none in the window"
            vel = sc.get("shared_velocity")
            out.append(f"  the same, sharing the allowance with card testing and takeovers at "
                       f"recall {sh['keep']:g} ({by}) and alerting no amount "
                       f"(txwatch.evaluation.spree_shared_ceiling): {sh['spree']:.3f}"
                       + (f"; with the flow's velocity in place of the oracle's pace "
                          f"{vel['spree']:.3f}" if vel else ""))
    return "\n".join(out)


def _date(day: int) -> date:
    return datetime.fromtimestamp(day * DAY, tz=UTC).date()


__all__ = ["EvalInputError", "evaluate", "format_report", "timedelta"]
