"""The alert budgets and the labels (model 1.9): a transaction labelled fraud leaves the
budget's quantile and the anomaly path's, so that a wave of confirmed fraud does not raise the
bar for everything else; a legitimate label changes nothing; without labels nothing changes."""

from __future__ import annotations

import random

from operators.detector import TxwDetector, _unpack_where, params_from_settings
from operators.user import UserState
from txwatch.settings import Settings

KW = {"terminal": "T1", "category": "5411", "country": "BE", "lat": 50.8, "lon": 4.3}


def _stream(d: TxwDetector, n: int = 3_000, every: int = 40) -> tuple[list, list]:
    """``n`` transactions of a few users, in the user stage's order (score, learn, keep);
    every ``every``-th one an extreme amount. Returns what was kept of the extremes and of
    the ordinary ones."""
    rng = random.Random(4)
    users = [UserState() for _ in range(20)]
    ts = 1.7e9
    extremes: list = []
    ordinary: list = []
    for i in range(n):
        ts += 600.0
        u = users[i % len(users)]
        extreme = i > 500 and i % every == 0
        a = 3_000.0 + i if extreme else round(rng.gauss(40, 5), 2)
        f = u.features(ts, a, **KW)
        score, comps = d.score(u, f)
        d.learn(u, f, score)
        kept = d.keep(f, comps)
        u.learn(ts, a, protect=score >= comps["threshold"], **KW)
        (extremes if extreme else ordinary).append(kept)
    return extremes, ordinary


def test_fraud_labels_take_their_scores_out_of_both_budgets() -> None:
    d = TxwDetector(params_from_settings(Settings()))
    extremes, ordinary = _stream(d)
    assert all(len(k) == 4 for k in extremes + ordinary)  # where each was counted
    assert d.path_budget is not None
    mass, path_mass = sum(d.budget.counts), sum(d.path_budget.counts)
    q, path_q = d.budget.get(), d.path_budget.get()
    assert q is not None and path_q is not None
    for k in ordinary[:200]:  # legitimate: nothing leaves
        d.learn_label(k, False)
    assert (sum(d.budget.counts), sum(d.path_budget.counts)) == (mass, path_mass)
    for k in extremes:
        d.learn_label(k, True)
    # each fraud took back its own weight (no halving yet: 3,000 updates < the half-life)
    assert sum(d.budget.counts) == mass - len(extremes)
    assert sum(d.path_budget.counts) == path_mass - len(extremes)
    # the extremes were the budgets' tail: without them, both quantiles fall
    assert d.budget.get() < q and d.path_budget.get() < path_q
    # a fraud label for an ordinary one takes back that one only
    before = list(d.budget.counts)
    d.learn_label(ordinary[300], True)
    diff = [b - a for a, b in zip(d.budget.counts, before, strict=True) if a != b]
    assert diff == [1.0]


def test_without_the_path_only_the_budget_forgets() -> None:
    from dataclasses import replace

    d = TxwDetector(replace(params_from_settings(Settings()), anomaly_path=False))
    extremes, _ = _stream(d)
    assert d.path_budget is None and all(_unpack_where(k[3])[2] == -1 for k in extremes)
    mass = sum(d.budget.counts)
    for k in extremes:
        d.learn_label(k, True)
    assert sum(d.budget.counts) == mass - len(extremes)


def test_kept_by_earlier_models_still_learns() -> None:
    """What model 1.8 kept (no budget bins) teaches the supervised model and no budget."""
    d = TxwDetector(params_from_settings(Settings()))
    extremes, _ = _stream(d, n=800)
    mass = sum(d.budget.counts)
    learnt = d.labels_learnt
    for k in extremes:
        d.learn_label(k[:2], True)  # model 1.8's shape out of the path
        d.learn_label((k[0], k[1], -1), True)
    assert sum(d.budget.counts) == mass and d.labels_learnt == learnt + 2 * len(extremes)
