"""`txwatch evaluate`'s ceilings: the AP of orderings that know the ground truth."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from producer.config import SimConfig
from producer.simulator import iter_transactions
from txwatch.evaluation import (
    EvalData,
    _amount_density,
    compromise_posterior,
    evaluate,
    format_report,
    load,
    operating_point,
    spree_shared_ceiling,
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, Path]:
    """Simulated transactions (scenarios 1-3) and, as their scores, the raw amounts."""
    d = tmp_path_factory.mktemp("ceil")
    tx, scores = d / "tx.jsonl", d / "s.jsonl"
    cfg = SimConfig(n_customers=400, n_terminals=800, n_days=45, seed=11,
                    start=date(2018, 7, 10), scenarios=frozenset({1, 2, 3}))
    with tx.open("w") as f, scores.open("w") as s:
        for r in iter_transactions(cfg):
            f.write(json.dumps(r) + "\n")
            s.write(json.dumps({"transaction_id": r["transaction_id"], "user_id": r["user_id"],
                                "timestamp": r["timestamp"], "score": r["amount"],
                                "alert": False, "components": {}}) + "\n")
    return tx, scores


def test_ceilings_bound_the_amount_and_are_exact_where_they_can_be(scored):
    tx, scores = scored
    window = (date(2018, 8, 8), date(2018, 8, 14))
    res = evaluate(str(tx), str(scores), *window, with_ceilings=True)
    c = res["ceilings"]
    d = load(str(tx), str(scores), *window)
    y, scen = d.fraud, d.scenario
    # (the scores are the amounts: a compromised terminal's transaction above 220 is visible)
    seen = (y == 1) & ((scen != 2) | (d.score > 220))
    n, frauds, visible = len(y), int(y.sum()), int(seen.sum())
    assert 0 < visible < frauds  # both kinds are in the window
    # every visible fraud first, the rest tied: precision 1 up to their share of the recall,
    # then the base rate for the terminals' frauds
    assert c["perfect_label_free"] == pytest.approx(visible / frauds + (frauds - visible) / n)
    # the raw amount (this file's score) also ranks scenario 1 first, then scenario 3 by
    # amount instead of amount over the customer's mean: the oracle does better, and no
    # ordering beats the perfect one
    assert res["average_precision"] < c["amount_oracle"] <= c["perfect_label_free"]
    assert c["amount_oracle_compromised"] <= c["perfect_label_free"]
    # the Bayes ordering knows all the amounts tell: above the amount alone (its exactness:
    # test_the_bayes_ordering_is_the_exact_posterior_of_the_simulators_design)
    assert c["amount_oracle"] < c["bayes_label_free"] < 1.0
    assert np.isfinite(list(c.values())).all()
    assert "amount_oracle_compromised  AP" in format_report(res)
    assert "bayes_label_free           AP" in format_report(res)
    assert "ceilings" not in evaluate(str(tx), str(scores), *window)


def test_a_terminals_fraud_above_220_is_visible_to_the_perfect_ordering(tmp_path):
    # the simulator numbers a compromised terminal's transaction above 220 as scenario 2
    # (it applies the scenarios in order), but its amount gives it away
    tx, scores = tmp_path / "tx.jsonl", tmp_path / "s.jsonl"
    rows = [(30.0, 0, 0), (25.0, 0, 0), (300.0, 1, 2), (28.0, 1, 2), (150.0, 1, 3),
            (31.0, 0, 0), (29.0, 0, 0), (27.0, 1, 2)]
    with tx.open("w") as f, scores.open("w") as s:
        for i, (amount, fraud, scenario) in enumerate(rows):
            ts = f"2018-08-09T{10 + i:02d}:00:00Z"
            f.write(json.dumps({"transaction_id": f"t{i}", "user_id": f"u{i % 3}",
                                "timestamp": ts, "amount": amount, "is_fraud": fraud,
                                "fraud_scenario": scenario}) + "\n")
            s.write(json.dumps({"transaction_id": f"t{i}", "score": 0.0, "alert": False})
                    + "\n")
    c = evaluate(str(tx), str(scores), date(2018, 8, 8), date(2018, 8, 14),
                 with_ceilings=True)["ceilings"]
    # frauds t2 (visible by its amount), t3 and t7 (terminals, invisible), t4 (scenario 3):
    # t2 and t4 first, then the six others tied (two frauds among them)
    assert c["perfect_label_free"] == pytest.approx(2 / 4 * 1.0 + 2 / 4 * 4 / 8)


def _enumerated_posterior(rows, mean, hazard, window, share, factor, limit):
    """compromise_posterior of one card by brute force: every sequence of daily compromise
    draws (from a window before the first row), weighted by its probability and by the
    likelihood of the amounts before each row, as the simulator makes them."""
    first, last = rows[0][1] - window, rows[-1][1]
    days = range(first, last + 1)
    out = []
    for i, (_, day, a) in enumerate(rows):
        num = den = 0.0
        for bits in range(2 ** len(days)):
            drawn = [d for k, d in enumerate(days) if bits >> k & 1]
            w = hazard ** len(drawn) * (1 - hazard) ** (len(days) - len(drawn))

            def inside(t, drawn=drawn):  # the simulator's window: until = draw day + window
                return any(d <= t < d + window for d in drawn)

            for _, t, b in rows[:i]:
                legit = _amount_density(b, mean)
                w *= (share * _amount_density(b / factor, mean) / factor
                      + (1 - share) * legit) if inside(t) else legit
            legit = _amount_density(a, mean)
            fraud = share * _amount_density(a / factor, mean) / factor if inside(day) else 0.0
            num += w * fraud
            den += w * (fraud + (1 - share) * legit if inside(day) else legit)
        out.append(1.0 if a > limit else num / den)
    return out


def test_the_bayes_ordering_is_the_exact_posterior_of_the_simulators_design():
    rows = [("c", 0, 20.0), ("c", 1, 110.0), ("c", 1, 35.0), ("c", 3, 18.0), ("c", 4, 60.0),
            ("c", 6, 240.0), ("c", 7, 30.0)]
    got = compromise_posterior(rows, {"c": 22.0}, hazard=0.2, window_days=3, share=0.4,
                               factor=5.0, limit=220.0)
    want = _enumerated_posterior(rows, 22.0, 0.2, 3, 0.4, 5.0, 220.0)
    assert got == pytest.approx(want, rel=1e-9)
    assert got[5] == 1.0 and min(got) > 0.0 and max(got[:5]) < 1.0
    # a card's x5 amount raises its later ones, until its window must have ended
    after = compromise_posterior([("a", 0, 100.0), ("a", 2, 35.0), ("b", 0, 20.0),
                                  ("b", 2, 35.0)], {"a": 20.0, "b": 20.0}, hazard=0.001)
    assert after[1] > 10 * after[3]
    later = compromise_posterior([("a", 0, 100.0), ("a", 15, 35.0), ("b", 0, 20.0),
                                  ("b", 15, 35.0)], {"a": 20.0, "b": 20.0}, hazard=0.001)
    assert later[1] == pytest.approx(later[3], rel=1e-12)


@pytest.mark.parametrize("rate", [0.5, 1.0, 10.0])
def test_the_operating_point_is_the_lowest_cut_within_the_legitimate_rate(scored, rate):
    tx, scores = scored
    d = load(str(tx), str(scores), date(2018, 8, 8), date(2018, 8, 14))
    op = operating_point(d, d.score, rate)
    legit = d.score[d.fraud == 0]
    allowed = rate * len(legit) / 1000.0
    n_legit = int((legit > op["threshold"]).sum())
    assert n_legit <= allowed  # never above the rate
    # and no lower cut stays within it: the next legitimate score down would exceed it
    assert int((legit >= op["threshold"]).sum()) > allowed
    assert op["legit_alerts_per_1000"] == pytest.approx(1000.0 * n_legit / len(legit))
    for s, r in op["scenarios"].items():
        assert r == pytest.approx(float((d.score[d.scenario == int(s)] > op["threshold"]).mean()))
    # the raw amount finds scenario 1 (amounts above 220) and little of scenario 2
    assert op["scenarios"]["1"] > op["scenarios"]["2"]


def test_evaluate_reports_the_operating_point(scored):
    tx, scores = scored
    res = evaluate(str(tx), str(scores), date(2018, 8, 8), date(2018, 8, 14),
                   legit_per_1000=2.0)
    op = res["operating_point"]
    assert op["legit_per_1000_allowed"] == 2.0 and op["legit_alerts_per_1000"] <= 2.0
    text = format_report(res)
    assert "at most 2 legitimate alerts per 1,000" in text
    assert f"at the operating point {op['scenarios']['1']:.3f}" in text


@pytest.fixture(scope="module")
def sprees(tmp_path_factory) -> tuple[Path, Path]:
    """Simulated transactions with sprees (scenario 6); the scores are the raw amounts, with
    two components: the amount and its negative."""
    from producer.config import Spree

    d = tmp_path_factory.mktemp("spree")
    tx, scores = d / "tx.jsonl", d / "s.jsonl"
    cfg = SimConfig(n_customers=400, n_terminals=800, n_days=40, seed=5,
                    start=date(2018, 7, 10), scenarios=frozenset({6}),
                    spree=Spree(per_1000_customers=5.0))
    with tx.open("w") as f, scores.open("w") as s:
        for r in iter_transactions(cfg):
            f.write(json.dumps(r) + "\n")
            s.write(json.dumps({"transaction_id": r["transaction_id"], "user_id": r["user_id"],
                                "timestamp": r["timestamp"], "score": r["amount"],
                                "alert": False, "components": {
                                    "amount": r["amount"], "neg": -r["amount"]}}) + "\n")
    return tx, scores


def test_the_spree_ceiling_finds_the_runs_the_amount_cannot(sprees, scored):
    tx, scores = sprees
    window = (date(2018, 8, 8), date(2018, 8, 14))
    # (a small population: 5 legitimate alerts per 1,000 are about 28 of the week's)
    res = evaluate(str(tx), str(scores), *window, with_ceilings=True, legit_per_1000=5.0)
    d = load(str(tx), str(scores), *window)
    n_spree = int((d.scenario == 6).sum())
    assert n_spree >= 100  # about 14 sprees of 8-20 purchases
    ceiling = res["spree_ceiling"]["pace_oracle"]
    # a spree's amounts are the customer's own, its rate is what gives it away: the pace of
    # its runs finds most of it, the amount (this file's score) little
    assert 0.6 <= ceiling <= 1.0
    assert res["operating_point"]["scenarios"]["6"] < 0.3 < ceiling
    # a run's first purchase has nothing behind it: at most one fewer per spree can be found
    sprees_in_window = len({u for u, s in zip(d.users, d.scenario, strict=True) if s == 6})
    assert ceiling <= 1.0 - sprees_in_window / n_spree / 2
    # more legitimate alerts allowed, never less of the spree
    for fewer, more in ((1.0, 5.0), (5.0, 20.0)):
        assert (evaluate(str(tx), str(scores), *window, with_ceilings=True,
                         legit_per_1000=fewer)["spree_ceiling"]["pace_oracle"]
                <= evaluate(str(tx), str(scores), *window, with_ceilings=True,
                            legit_per_1000=more)["spree_ceiling"]["pace_oracle"])
    assert "the pace of its runs against each customer's true rate" in format_report(res)
    # no spree in the window, no spree ceiling
    assert "spree_ceiling" not in evaluate(str(scored[0]), str(scored[1]), *window,
                                           with_ceilings=True)


def test_the_shared_spree_ceiling_gives_the_spree_what_the_others_leave(sprees):
    # alone in the window, the spree has the whole allowance: the pace oracle itself
    tx, scores = sprees
    res = evaluate(str(tx), str(scores), date(2018, 8, 8), date(2018, 8, 14),
                   with_ceilings=True, legit_per_1000=5.0)
    shared = res["spree_ceiling"]["shared"]
    assert shared["by"] == {} and shared["spree"] == res["spree_ceiling"]["pace_oracle"]
    assert "shared_velocity" not in res["spree_ceiling"]  # this file has no velocity
    assert "alerting no amount (txwatch.evaluation.spree_shared_ceiling)" in format_report(res)
    # beside card tests and takeovers: against every cut of the pace, lowered one at a time
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = 600
        scen = rng.choice([0, 4, 5, 6], size=n, p=[0.85, 0.05, 0.05, 0.05])
        fraud = (scen > 0).astype(int)
        comps = {"a": rng.normal(size=n) + 2.0 * (scen == 4), "b": rng.normal(size=n)
                 + 2.0 * (scen == 5)}
        pace = rng.normal(size=n) + 2.5 * (scen == 6)
        d = EvalData([], np.zeros(n), np.zeros(n), fraud, scen, rng.normal(size=n),
                     np.zeros(n, dtype=bool), comps)
        rate = float(rng.choice([5.0, 20.0, 60.0]))
        got = spree_shared_ceiling(d, pace, rate)
        legit = fraud == 0
        allowed = int(rate * legit.sum() / 1000.0 + 1e-9)
        best_cost, others = {}, np.zeros(n, dtype=bool)
        for s, name in got["by"].items():  # each chosen ordering finds 80 % at least cost
            for k, x in [("score", d.score), *comps.items()]:
                found = np.sort(x[scen == int(s)])[::-1]
                alert = x >= found[int(np.ceil(0.8 * len(found))) - 1]
                assert alert[scen == int(s)].mean() >= 0.8
                best_cost[k] = int(alert[legit].sum())
                if k == name:
                    others |= alert
            assert best_cost[name] == min(best_cost.values())
        # the pace's lowest cut within what the others leave (none if they take it all)
        left, spree = max(allowed - int(others[legit].sum()), 0), others.copy()
        for cut in np.sort(pace)[::-1]:
            if ((pace >= cut) & legit & ~others).sum() <= left:
                spree = others | (pace >= cut)
        assert got["spree"] == pytest.approx(spree[scen == 6].mean())
        assert got["legit_alerts_per_1000"] <= rate or others[legit].sum() > allowed
        assert got["spree"] >= others[scen == 6].mean()


def test_each_component_has_its_operating_point(sprees):
    tx, scores = sprees
    window = (date(2018, 8, 8), date(2018, 8, 14))
    res = evaluate(str(tx), str(scores), *window)
    d = load(str(tx), str(scores), *window)
    comps = res["components"]
    assert comps["amount"]["operating_point"] == operating_point(d, d.score, 1.0)
    # the negative amount ranks the other way round: the smallest amounts alerted first
    neg = comps["neg"]["operating_point"]
    assert neg["threshold"] == pytest.approx(-np.sort(d.score[d.fraud == 0])[
        int(len(d.score[d.fraud == 0]) / 1000)])
    text = format_report(res)
    assert f"6 {comps['amount']['operating_point']['scenarios']['6']:.3f}" in text
    assert text.count("at its operating point") == 2
