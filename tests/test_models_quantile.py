"""Running quantiles: accuracy against numpy.quantile, tiny pickles, determinism."""

from __future__ import annotations

import math
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.models.quantile import HistogramQuantile, P2Quantile

N = 20_000


def _stream(name: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return {
        "normal": lambda: rng.normal(size=N),
        "exponential": lambda: rng.exponential(size=N),
        "uniform": lambda: rng.random(N),
        "lognormal": lambda: rng.lognormal(0.0, 2.0, N),
        "pareto": lambda: rng.pareto(1.5, N) + 1.0,
        "student_t2": lambda: rng.standard_t(2, N),
    }[name]()


LIGHT = ["normal", "exponential", "uniform"]
HEAVY = ["lognormal", "pareto", "student_t2"]


def _p2(xs: np.ndarray, p: float) -> P2Quantile:
    q = P2Quantile(p)
    for x in xs.tolist():
        q.update(x)
    return q


@pytest.mark.parametrize("dist", LIGHT + HEAVY)
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 0.999])
def test_p2_rank_error_is_small(dist: str, p: float) -> None:
    xs = _stream(dist)
    est = _p2(xs, p).get()
    assert est is not None
    assert abs(np.mean(xs < est) - p) <= 0.01


@pytest.mark.parametrize("dist", LIGHT + HEAVY)
@pytest.mark.parametrize("p", [0.9, 0.99])
def test_p2_value_error_is_small(dist: str, p: float) -> None:
    xs = _stream(dist, seed=1)
    est = _p2(xs, p).get()
    true = float(np.quantile(xs, p))
    tolerance = 0.01 if dist in LIGHT else 0.10
    assert est == pytest.approx(true, rel=tolerance)


def test_p2_is_exact_before_five_observations() -> None:
    q = P2Quantile(0.75)
    assert q.get() is None
    seen: list[float] = []
    for x in (3.0, -1.5, 8.25, 0.5):
        q.update(x)
        seen.append(x)
        assert q.get() == pytest.approx(float(np.quantile(seen, 0.75)))


def test_p2_pickles_in_under_100_bytes_and_round_trips() -> None:
    xs = _stream("exponential", seed=2)
    live = P2Quantile(0.995)
    sizes = set()
    for k, x in enumerate(xs.tolist()):
        if k in (0, 3, 7, 5000):
            sizes.add(len(pickle.dumps(live)))
        live.update(x)
        if k == 10_000:
            restored = pickle.loads(pickle.dumps(live))
            assert restored == live and restored.p == 0.995
    assert max(sizes) < 100
    for x in xs.tolist()[10_001:]:
        restored.update(x)
    assert restored == live
    assert restored.get() == live.get()
    assert pickle.dumps(restored) == pickle.dumps(live)


def test_p2_is_deterministic() -> None:
    xs = _stream("student_t2", seed=3)
    a, b = _p2(xs, 0.99), _p2(xs, 0.99)
    assert pickle.dumps(a) == pickle.dumps(b)
    assert a.get() != _p2(xs[::-1], 0.99).get()  # order matters: it is a streaming estimate


def test_p2_ignores_nan_and_follows_extremes() -> None:
    q = _p2(_stream("uniform"), 0.5)
    before = pickle.dumps(q)
    q.update(math.nan)
    assert pickle.dumps(q) == before
    q.update(1e6)
    assert q.heights[4] == 1e6 and q.heights[0] < 0.001


def test_p2_rejects_bad_p() -> None:
    for p in (0.0, 1.0, -0.1, 0.12345678):
        with pytest.raises(ValueError):
            P2Quantile(p)


def test_p2_memory_is_constant_over_100k_updates() -> None:
    q = P2Quantile(0.99)
    xs = _stream("lognormal").tolist()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for k in range(100_000):
            q.update(xs[k % N])
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 1024
    assert q.count == 100_000


@pytest.mark.parametrize(("scale", "lo"), [("log", 1e-3), ("linear", 0.0)])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 0.999])
def test_histogram_is_within_one_bin(scale: str, lo: float, p: float) -> None:
    xs = _stream("exponential", seed=4)
    h = HistogramQuantile(lo=lo, hi=20.0, n_bins=500, scale=scale, q=p)
    for x in xs.tolist():
        h.update(x)
    est, true = h.get(), float(np.quantile(xs, p))
    assert est is not None
    if scale == "log":
        assert abs(est / true - 1) <= (20.0 / lo) ** (1 / 500) - 1
    else:
        assert abs(est - true) <= 20.0 / 500


def test_histogram_reads_out_of_range_values_as_the_limits() -> None:
    h = HistogramQuantile(lo=1.0, hi=10.0, n_bins=10, scale="linear")
    assert h.get() is None
    for x in (0.5, 0.1, 50.0, 60.0, math.nan):
        h.update(x)
    assert h.quantile(0.25) == 1.0
    assert h.quantile(0.9) == 10.0
    assert h.n_updates == 4


def test_histogram_with_half_life_follows_a_new_regime() -> None:
    h = HistogramQuantile(lo=1e-3, hi=100.0, n_bins=400, q=0.5, half_life=1000)
    rng = np.random.default_rng(5)
    for x in rng.normal(1.0, 0.05, 20_000).tolist():
        h.update(x)
    assert h.get() == pytest.approx(1.0, rel=0.05)
    for x in rng.normal(10.0, 0.5, 5_000).tolist():
        h.update(x)
    # 5 half-lives: the old regime keeps ~3 % of the weight
    assert h.get() == pytest.approx(10.0, rel=0.05)
    keep_all = HistogramQuantile(lo=1e-3, hi=100.0, n_bins=400, q=0.5)
    for x in np.r_[np.full(20_000, 1.0), np.full(5_000, 10.0)].tolist():
        keep_all.update(x)
    assert keep_all.get() == pytest.approx(1.0, rel=0.05)


def test_histogram_merge_equals_one_histogram_of_both_streams() -> None:
    xs = _stream("lognormal", seed=6)
    a = HistogramQuantile(lo=1e-3, hi=1e3, n_bins=300)
    b = HistogramQuantile(lo=1e-3, hi=1e3, n_bins=300)
    both = HistogramQuantile(lo=1e-3, hi=1e3, n_bins=300)
    for k, x in enumerate(xs.tolist()):
        (a if k % 3 else b).update(x)
        both.update(x)
    a.merge(b)
    assert list(a.counts) == list(both.counts)
    assert a.get() == both.get()
    with pytest.raises(ValueError, match="different bins"):
        a.merge(HistogramQuantile(lo=1e-3, hi=1e3, n_bins=301))


def test_histogram_remove_equals_never_having_counted_the_value() -> None:
    """Taking back some values (with the bin and epoch their update gave) leaves the counts of
    a histogram that never saw them, whatever halvings happened in between."""
    rng = np.random.default_rng(8)
    xs = rng.lognormal(0.0, 1.0, 5_000).tolist()
    gone = set(rng.choice(len(xs), 300, replace=False).tolist())
    h = HistogramQuantile(lo=0.01, hi=100.0, n_bins=400, q=0.99, half_life=1_000)
    without = HistogramQuantile(lo=0.01, hi=100.0, n_bins=400, q=0.99, half_life=1_000)
    where = {}
    for k, x in enumerate(xs):
        where[k] = h.count(x)
        # the reference counts the value with weight 0 (an update of an empty histogram's
        # bookkeeping: same halvings at the same updates)
        if k in gone:
            without.n_updates += 1
            if without.n_updates % 1_000 == 0:
                for j, c in enumerate(without.counts):
                    without.counts[j] = c * 0.5
        else:
            without.update(x)
    for k in gone:
        h.remove(*where[k])
    assert list(h.counts) == pytest.approx(list(without.counts), abs=1e-9)
    assert h.get() == pytest.approx(without.get(), rel=1e-9)
    # the 1 % tail without its largest values is lower
    top = sorted(range(len(xs)), key=xs.__getitem__)[-40:]
    q_before = h.get()
    for k in top:
        if k not in gone:
            h.remove(*where[k])
    assert h.get() < q_before


def test_histogram_remove_never_goes_below_zero() -> None:
    h = HistogramQuantile(lo=0.01, hi=100.0, n_bins=10, q=0.5)
    where = h.count(5.0)
    h.remove(*where)
    h.remove(*where)
    assert min(h.counts) == 0.0 and h.get() is None
    assert h.update(float("nan")) == -1


def test_histogram_pickles_and_rejects_bad_parameters() -> None:
    h = HistogramQuantile(lo=0.0, hi=1.0, n_bins=100, scale="linear")
    for x in np.linspace(0, 1, 1000).tolist():
        h.update(x)
    h2 = pickle.loads(pickle.dumps(h))
    assert h2.get() == h.get() and list(h2.counts) == list(h.counts)
    for kwargs in (
        {"lo": 1.0, "hi": 1.0},
        {"lo": 0.0, "hi": 1.0, "scale": "log"},
        {"lo": 0.0, "hi": 1.0, "scale": "sqrt"},
        {"lo": 0.0, "hi": 1.0, "n_bins": 0, "scale": "linear"},
        {"lo": 0.0, "hi": 1.0, "half_life": 0, "scale": "linear"},
    ):
        with pytest.raises(ValueError):
            HistogramQuantile(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300),
    p=st.sampled_from([0.01, 0.25, 0.5, 0.9, 0.99]),
)
def test_p2_markers_stay_ordered_and_within_the_data(xs: list[float], p: float) -> None:
    q = P2Quantile(p)
    for x in xs:
        q.update(x)
    est = q.get()
    assert est is not None and min(xs) <= est <= max(xs)
    if q.count >= 5:
        assert list(q.heights) == sorted(q.heights)
        assert q.heights[0] == min(xs) and q.heights[4] == max(xs)
        assert q.positions[0] == 1 and q.positions[4] == q.count
        assert all(a < b for a, b in zip(q.positions[:-1], q.positions[1:], strict=True))
