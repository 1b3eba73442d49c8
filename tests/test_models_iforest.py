"""Online Isolation Forest: ranks like scikit-learn's, rebuilds identically, stays small."""

from __future__ import annotations

import math
import pickle
import tracemalloc

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.ensemble import IsolationForest

from operators.models.iforest import IForestWindow, OnlineIsolationForest, average_path_length

D = 6
FEATURES = [f"f{i}" for i in range(D)]


def _as_dicts(rows: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, map(float, r), strict=True)) for r in rows]


def _data(dist: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A training stream and query points (ordinary ones and outliers) for one distribution."""
    if dist == "normal":
        train = rng.normal(size=(200, D))
        query = np.vstack([rng.normal(size=(300, D)), rng.normal(size=(60, D)) * 3])
    elif dist == "lognormal":  # skewed, like amounts
        train = rng.lognormal(size=(200, D))
        query = np.vstack([rng.lognormal(size=(300, D)), rng.lognormal(1.5, 1.5, (60, D))])
    elif dist == "mixture":  # a user with three habits
        c = rng.integers(0, 3, size=(200, 1))
        train = rng.normal(size=(200, D)) * 0.5 + c * 3
        c = rng.integers(0, 3, size=(300, 1))
        query = np.vstack(
            [rng.normal(size=(300, D)) * 0.5 + c * 3, rng.uniform(-3, 9, size=(60, D))]
        )
    else:  # "discrete": ties everywhere (counts, categories), one continuous feature
        train = rng.integers(0, 3, size=(200, D)).astype(float)
        train[:, 0] = rng.normal(size=200)
        query = rng.integers(0, 6, size=(360, D)).astype(float)
        query[:, 0] = rng.normal(size=360) * 2
    return train, query


def _fitted(model: OnlineIsolationForest, train: np.ndarray) -> IForestWindow:
    state = model.new_state()
    for x in _as_dicts(train):
        model.learn(state, x)
    return state


@pytest.mark.parametrize("dist", ["normal", "lognormal", "mixture", "discrete"])
def test_ranks_like_scikit_learn_on_the_same_window(dist: str) -> None:
    rng = np.random.default_rng(3)
    train, query = _data(dist, rng)
    model = OnlineIsolationForest(
        FEATURES, n_trees=300, window_size=64, max_samples=64, refit_every=8, seed=1
    )
    state = _fitted(model, train)
    ours = [model.score(state, x) for x in _as_dicts(query)]
    window = model.window(state)
    assert window.shape == (64, D)
    sk = IsolationForest(n_estimators=300, max_samples=64, random_state=0).fit(window)
    rho = spearmanr(ours, -sk.score_samples(query))[0]
    assert rho >= 0.9, rho
    # and the scores are on scikit-learn's scale, not just in the same order
    assert abs(np.mean(ours) + np.mean(sk.score_samples(query))) < 0.02


def test_converges_to_scikit_learns_expected_score() -> None:
    """With many trees both estimate the same expectation: ranks agree almost perfectly."""
    rng = np.random.default_rng(4)
    train, query = _data("mixture", rng)
    window = train[-64:]
    model = OnlineIsolationForest(FEATURES, n_trees=1000, window_size=64, seed=2)
    state = _fitted(model, window)
    ours = [model.score(state, x) for x in _as_dicts(query[:200])]
    sk = IsolationForest(n_estimators=1000, max_samples=64, random_state=0).fit(window)
    assert spearmanr(ours, -sk.score_samples(query[:200]))[0] >= 0.98


def test_subsamples_when_the_window_is_larger_than_max_samples() -> None:
    rng = np.random.default_rng(5)
    train, query = _data("normal", rng)
    model = OnlineIsolationForest(
        FEATURES, n_trees=300, window_size=128, max_samples=32, refit_every=8, seed=3
    )
    state = _fitted(model, train)
    window = model.window(state)
    assert window.shape == (128, D)
    ours = [model.score(state, x) for x in _as_dicts(query)]
    assert state._forest is not None and state._forest.depth == 5  # ceil(log2(32))
    sk = IsolationForest(n_estimators=300, max_samples=32, random_state=0).fit(window)
    assert spearmanr(ours, -sk.score_samples(query))[0] >= 0.9


def test_window_is_the_newest_points_at_the_last_refit() -> None:
    model = OnlineIsolationForest(["a", "b"], window_size=10, refit_every=4, seed=0)
    state = model.new_state()
    for k in range(23):
        model.learn(state, {"a": float(k), "b": -float(k)})
    # refits at 4, 8, ..., 20: the forest is fitted on points 10..19, 20..22 are pending
    assert model.window(state)[:, 0].tolist() == [float(k) for k in range(10, 20)]
    assert len(state.ring) == model.capacity * 2 * 4 == 13 * 8
    with pytest.raises(ValueError, match="latest fit"):
        model.window(state, fit_no=4)


def test_ring_never_grows_and_pickle_size_is_as_documented() -> None:
    for dtype, width in (("float32", 4), ("float16", 2)):
        model = OnlineIsolationForest(
            [f"x{i}" for i in range(15)], window_size=64, refit_every=16, dtype=dtype
        )
        state = model.new_state()
        rng = np.random.default_rng(0)
        sizes = set()
        for k, row in enumerate(rng.normal(size=(500, 15))):
            model.learn(state, {f"x{i}": float(v) for i, v in enumerate(row)})
            if k >= model.capacity:
                sizes.add(len(state.ring))
        assert sizes == {79 * 15 * width}
        blob = pickle.dumps(state)
        assert 0 < len(blob) - 79 * 15 * width < 80
        assert b"x0" not in blob  # parameters and features are not in the per-user state


def test_pickle_round_trip_rebuilds_the_same_forest() -> None:
    rng = np.random.default_rng(6)
    train, query = _data("lognormal", rng)
    model = OnlineIsolationForest(FEATURES, n_trees=25, window_size=64, refit_every=16, seed=4)
    live = model.new_state()
    xs = _as_dicts(train)
    for x in xs[:150]:  # 150 = 9 * 16 + 6: mid-cycle, with pending points in the ring
        model.score_learn(live, x)
    restored = pickle.loads(pickle.dumps(live))
    assert restored == live and restored._forest is None
    for x in _as_dicts(query[:50]):
        assert model.score(restored, x) == model.score(live, x)
    for x in xs[150:]:  # crossing refits
        assert model.score_learn(restored, x) == model.score_learn(live, x)


def test_release_and_rebuild_give_identical_scores() -> None:
    rng = np.random.default_rng(7)
    train, query = _data("normal", rng)
    model = OnlineIsolationForest(FEATURES, n_trees=25, seed=5)
    state = _fitted(model, train)
    before = [model.score(state, x) for x in _as_dicts(query[:40])]
    assert model.nbytes(state) > len(state.ring)
    model.release(state)
    assert model.nbytes(state) == len(state.ring)
    assert [model.score(state, x) for x in _as_dicts(query[:40])] == before


def test_same_seed_same_scores_other_seed_other_scores() -> None:
    rng = np.random.default_rng(8)
    train, query = _data("mixture", rng)
    q = _as_dicts(query[:60])

    def scores(seed: int) -> list[float]:
        model = OnlineIsolationForest(FEATURES, n_trees=25, seed=seed)
        state = _fitted(model, train)
        return [model.score(state, x) for x in q]

    assert scores(11) == scores(11)
    assert scores(11) != scores(12)


def test_extreme_point_after_a_stable_history_scores_high() -> None:
    rng = np.random.default_rng(9)
    model = OnlineIsolationForest(["amount", "hour"], n_trees=25, window_size=64, seed=6)
    state = model.new_state()
    normal = []
    for k in range(400):
        x = {"amount": float(rng.normal(3.0, 0.3)), "hour": float(rng.normal(13, 1))}
        s = model.score_learn(state, x)
        if k >= 100:
            normal.append(s)
    extreme = model.score(state, {"amount": 9.5, "hour": 3.0})
    assert extreme > 0.7
    assert extreme > np.quantile(normal, 0.99)
    assert extreme > np.median(normal) + 0.25


def test_scores_zero_until_the_first_refit() -> None:
    model = OnlineIsolationForest(["a"], window_size=8, refit_every=4, seed=0)
    state = model.new_state()
    scores = [model.score_learn(state, {"a": float(k)}) for k in range(4)]
    assert scores == [0.0] * 4
    assert 0.0 < model.score(state, {"a": 100.0}) <= 1.0
    every_point = OnlineIsolationForest(["a"], window_size=8, refit_every=1, seed=0)
    state = every_point.new_state()
    scores = [every_point.score_learn(state, {"a": float(k)}) for k in range(4)]
    assert scores[:2] == [0.0, 0.0] and 0.0 < scores[2] <= 1.0


def test_values_are_validated_and_clipped() -> None:
    model = OnlineIsolationForest(["a", "b"], window_size=4, refit_every=2, dtype="float16")
    state = model.new_state()
    with pytest.raises(ValueError, match="NaN"):
        model.learn(state, {"a": math.nan, "b": 1.0})
    with pytest.raises(KeyError):
        model.learn(state, {"a": 1.0})
    assert state.n_seen == 0
    model.learn(state, {"a": 1e9, "b": -math.inf})  # beyond float16: clipped to +-65504
    model.learn(state, {"a": 1.0, "b": 2.0})
    assert model.window(state).tolist() == [[65504.0, -65504.0], [1.0, 2.0]]


def test_a_state_of_another_layout_is_refused() -> None:
    a = OnlineIsolationForest(["a", "b"], window_size=8, refit_every=4)
    b = OnlineIsolationForest(["a", "b"], window_size=8, refit_every=4, dtype="float16")
    state = a.new_state()
    with pytest.raises(ValueError, match="layout"):
        b.learn(state, {"a": 1.0, "b": 1.0})
    # parameters that only change the forest (trees, seed) accept the same state
    c = OnlineIsolationForest(["a", "b"], n_trees=50, window_size=8, refit_every=4, seed=9)
    for k in range(8):
        c.learn(state, {"a": float(k), "b": 1.0})
    assert c.score(state, {"a": 3.0, "b": 1.0}) > 0.0


def test_memory_stays_bounded_over_100k_learns() -> None:
    model = OnlineIsolationForest(FEATURES, n_trees=25, window_size=64, refit_every=16)
    state = model.new_state()
    rows = _as_dicts(np.random.default_rng(10).normal(size=(1000, D)))
    for x in rows:
        model.score_learn(state, x)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for k in range(100_000):
            model.learn(state, rows[k % 1000])
            if k % 5000 == 0:
                model.score(state, rows[k % 1000])  # refits replace the cached forest
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 64 * 1024
    assert len(state.ring) == model.capacity * D * 4


def test_average_path_length_matches_scikit_learn() -> None:
    from sklearn.ensemble._iforest import _average_path_length

    ns = [0, 1, 2, 3, 10, 64, 256]
    expected = _average_path_length(np.array(ns))
    assert [average_path_length(n) for n in ns] == pytest.approx(list(expected), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": []},
        {"features": ["a", "a"]},
        {"features": ["a"], "n_trees": 0},
        {"features": ["a"], "window_size": 1},
        {"features": ["a"], "refit_every": 0},
        {"features": ["a"], "window_size": 8, "refit_every": 9},
        {"features": ["a"], "dtype": "float64"},
        {"features": ["a"], "seed": -1},
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        OnlineIsolationForest(**kwargs)


def test_inputs_are_not_mutated_and_missing_features_raise() -> None:
    model = OnlineIsolationForest(["a", "b"], window_size=8, refit_every=4, seed=0)
    state = model.new_state()
    for k in range(20):
        x = {"a": float(k), "b": 2.0, "extra": "ignored"}
        before = dict(x)
        model.score_learn(state, x)
        assert x == before
    with pytest.raises(KeyError):
        model.score(state, {"a": 1.0})
