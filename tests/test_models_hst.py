"""Compact Half-Space Trees: exactly river's scores, small pickles, bounded memory."""

from __future__ import annotations

import pickle
import random
import tracemalloc
from array import array
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import anomaly
from river.tree.padded import PaddedBranch

from operators.models import hst
from operators.models.hst import HSTMasses, HSTStructure

LIMITS = {f"f{i}": (-1.0 + i, 3.0 + 2 * i) for i in range(6)}


def _stream(n: int, seed: int, limits: dict[str, tuple[float, float]] = LIMITS) -> list[dict]:
    """Gaussian points in the middle of the limits, some far outside, some missing a feature."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {f: rng.gauss((lo + hi) / 2, (hi - lo) / 6) for f, (lo, hi) in limits.items()}
        if i % 97 == 50:
            x = {f: hi * 3 for f, (lo, hi) in limits.items()}  # far outside the limits
        if i % 31 == 5:
            del x[sorted(limits)[i % len(limits)]]  # a missing feature: river's fallback
        out.append(x)
    return out


def _river_splits(tree: PaddedBranch, height: int, features: tuple[str, ...]):
    feats = [0] * (2**height - 1)
    thrs = [0.0] * (2**height - 1)

    def walk(node, i: int) -> None:
        if isinstance(node, PaddedBranch):
            feats[i] = features.index(node.feature)
            thrs[i] = node.threshold
            walk(node.children[0], 2 * i + 1)
            walk(node.children[1], 2 * i + 2)

    walk(tree, 0)
    return feats, thrs


@pytest.mark.parametrize(("n_trees", "height"), [(10, 3), (15, 4), (25, 3)])
def test_structure_has_rivers_splits_for_the_same_seed(n_trees: int, height: int) -> None:
    ours = HSTStructure(LIMITS, n_trees=n_trees, height=height, window_size=50, seed=11)
    river = anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=50, limits=LIMITS, seed=11
    )
    river.learn_one(_stream(1, 0)[0])  # river builds its trees on the first point
    for t, tree in enumerate(river.trees):
        feats, thrs = _river_splits(tree, height, ours.features)
        assert feats == ours.split_features[t]
        assert thrs == ours.thresholds[t]


@pytest.mark.parametrize(
    ("n_trees", "height", "window_size"), [(10, 3, 50), (15, 4, 64), (25, 3, 250), (5, 6, 30)]
)
def test_scores_equal_rivers_score_before_learn(
    n_trees: int, height: int, window_size: int
) -> None:
    ours = HSTStructure(LIMITS, n_trees=n_trees, height=height, window_size=window_size, seed=7)
    river = anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window_size, limits=LIMITS, seed=7
    )
    masses = ours.new_masses()
    scores = []
    for x in _stream(3000, 1):
        expected = river.score_one(x)
        river.learn_one(x)
        got = ours.score_learn(masses, x)
        assert abs(got - expected) <= 1e-12, (len(scores), got, expected)
        scores.append(got)
    assert len(set(scores)) > 20  # the comparison was not between constants
    assert max(scores) > 0.5


def test_structure_from_rivers_trees_scores_the_same() -> None:
    """Built from river's trees (any seed, even a mixture of features), scores still agree."""
    limits = {"a": (0.0, 1.0), "b": (0.0, 10.0), "c": (-5.0, 5.0)}
    river = anomaly.HalfSpaceTrees(n_trees=8, height=4, window_size=40, limits=limits, seed=3)
    xs = _stream(1500, 2, limits)
    river.learn_one(xs[0])
    features = tuple(sorted(limits))
    splits = [_river_splits(t, 4, features) for t in river.trees]
    ours = HSTStructure.from_splits(
        features, [f for f, _ in splits], [t for _, t in splits], window_size=40
    )
    masses = ours.new_masses()
    ours.learn(masses, xs[0])
    for x in xs[1:]:
        assert ours.score(masses, x) == river.score_one(x)
        ours.learn(masses, x)
        river.learn_one(x)


def test_score_learn_is_score_then_learn() -> None:
    s = HSTStructure(LIMITS, n_trees=10, height=3, window_size=20, seed=1)
    fused, split = s.new_masses(), s.new_masses()
    for x in _stream(500, 3):
        a = s.score_learn(fused, x)
        b = s.score(split, x)
        s.learn(split, x)
        assert a == b
    assert fused == split


def test_score_leaves_then_learn_leaves_is_score_then_learn() -> None:
    s = HSTStructure(LIMITS, n_trees=10, height=3, window_size=20, seed=1)
    routed, split = s.new_masses(), s.new_masses()
    skipped = missing = 0
    for i, x in enumerate(_stream(500, 3)):
        a, leaves = s.score_leaves(routed, x)
        assert a == s.score(split, x)
        if i % 7 == 3:  # a flagged point is not learnt
            skipped += 1
            continue
        if leaves is None:  # a missing feature: the caller learns through learn()
            assert len(x) < len(LIMITS)
            missing += 1
            s.learn(routed, x)
        else:
            assert len(leaves) == s.n_trees
            s.learn_leaves(routed, leaves)
        s.learn(split, x)
    assert routed == split and skipped > 50 and missing > 5


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.floats(-10, 30, allow_nan=False), min_size=40, max_size=200),
    window_size=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_scores_equal_river_on_arbitrary_streams(
    values: list[float], window_size: int, seed: int
) -> None:
    limits = {"u": (-1.0, 4.0), "v": (0.0, 20.0)}
    ours = HSTStructure(limits, n_trees=4, height=3, window_size=window_size, seed=seed)
    river = anomaly.HalfSpaceTrees(
        n_trees=4, height=3, window_size=window_size, limits=limits, seed=seed
    )
    masses = ours.new_masses()
    for a, b in zip(values, reversed(values), strict=True):
        x = {"u": a, "v": b}
        assert ours.score(masses, x) == river.score_one(x)
        ours.learn(masses, x)
        river.learn_one(x)


def test_pickle_round_trip_gives_identical_later_scores() -> None:
    s = HSTStructure(LIMITS, n_trees=15, height=4, window_size=64, seed=5)
    xs = _stream(1000, 4)
    live = s.new_masses()
    for x in xs[:300]:  # mid-window: 300 = 4 * 64 + 44
        s.learn(live, x)
    blob = pickle.dumps(live)
    restored = pickle.loads(blob)
    assert isinstance(restored, HSTMasses)
    assert restored == live
    assert pickle.dumps(restored) == blob  # re-pickling before first use keeps the bytes
    for x in xs[300:]:
        assert s.score_learn(restored, x) == s.score_learn(live, x)
    assert restored.counter == live.counter


def test_pickle_holds_masses_only_and_is_small() -> None:
    for n_trees, height, limit in ((10, 3, 260), (15, 4, 600), (25, 3, 520)):
        s = HSTStructure(LIMITS, n_trees=n_trees, height=height, window_size=250, seed=1)
        m = s.new_masses()
        for x in _stream(700, 5):
            s.learn(m, x)
        blob = pickle.dumps(m)
        assert len(blob) <= limit, (n_trees, height, len(blob))
        # 2 bytes a leaf (latest + reference, one byte each) plus a small header
        assert len(blob) - 2 * n_trees * 2**height < 80
        assert b"f0" not in blob and b"HSTStructure" not in blob


def test_wider_window_uses_wider_counts() -> None:
    s = HSTStructure(LIMITS, n_trees=2, height=3, window_size=5000, seed=1)
    m = s.new_masses()
    # a tree's path score reaches 5000 * 15 > 65535: four-byte scores
    assert m.l.itemsize == 2 and m.s.itemsize == 4
    x = {f: (lo + hi) / 2 for f, (lo, hi) in LIMITS.items()}
    for _ in range(10_100):
        s.learn(m, x)
    assert m.ready and m.counter == 100
    assert sum(m.r[: s.n_leaves]) == 5000
    assert max(m.s) == 5000 * 15  # all the mass on one path
    assert s.score(m, x) == 1.0 - 2 * 5000 * 15 / s.max_score == 0.0


def test_same_seed_same_structure_and_scores() -> None:
    a = HSTStructure(LIMITS, n_trees=10, height=3, window_size=30, seed=9)
    b = HSTStructure(
        dict(reversed(list(LIMITS.items()))), n_trees=10, height=3, window_size=30, seed=9
    )
    c = HSTStructure(LIMITS, n_trees=10, height=3, window_size=30, seed=10)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    ma, mb = a.new_masses(), b.new_masses()
    for x in _stream(200, 7):
        assert a.score_learn(ma, x) == b.score_learn(mb, x)
    # masses of an equal structure are accepted; of another one, refused
    assert b.score(ma, {f: 1.0 for f in LIMITS}) == a.score(ma, {f: 1.0 for f in LIMITS})
    with pytest.raises(ValueError, match="structure"):
        c.score(pickle.loads(pickle.dumps(ma)), {f: 1.0 for f in LIMITS})


def test_structure_pickles_and_rebuilds_identically() -> None:
    s = HSTStructure(LIMITS, n_trees=6, height=3, window_size=16, seed=2)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.fingerprint == s.fingerprint
    assert (s2.limits, s2.seed) == (s.limits, s.seed)
    m = s.new_masses()
    for x in _stream(100, 8):
        s.learn(m, x)
    assert s2.score(pickle.loads(pickle.dumps(m)), {"f0": 1.0}) == s.score(m, {"f0": 1.0})


def test_extreme_point_after_a_stable_history_scores_high() -> None:
    limits = {"amount": (0.0, 10.0), "hour": (0.0, 24.0)}
    s = HSTStructure(limits, n_trees=25, height=3, window_size=64, seed=3)
    m = s.new_masses()
    rng = random.Random(9)
    normal = []
    for i in range(640):
        x = {"amount": rng.gauss(3.0, 0.3), "hour": rng.gauss(13.0, 1.0)}
        score = s.score_learn(m, x)
        if i >= 128:
            normal.append(score)
    extreme = s.score(m, {"amount": 9.5, "hour": 3.0})
    assert extreme > 0.8
    assert extreme > max(normal) + 0.2


def test_scores_zero_until_the_first_window_is_complete() -> None:
    s = HSTStructure({"x": (0.0, 1.0)}, n_trees=5, height=3, window_size=10, seed=1)
    m = s.new_masses()
    scores = [s.score_learn(m, {"x": 0.5}) for _ in range(10)]
    assert scores == [0.0] * 10
    assert m.ready
    assert s.score(m, {"x": 0.0}) > 0.0


def test_memory_stays_bounded_over_100k_learns() -> None:
    s = HSTStructure(LIMITS, n_trees=10, height=3, window_size=64, seed=1)
    m = s.new_masses()
    xs = _stream(1000, 10)
    for x in xs:
        s.learn(m, x)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(100_000):
            s.learn(m, xs[i % 1000])
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 4096
    assert len(pickle.dumps(m)) < 260


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limits": {}}, ValueError),
        ({"limits": {"x": (1.0, 1.0)}}, ValueError),
        ({"limits": {"x": (0.0, 1.0)}, "height": 0}, ValueError),
        ({"limits": {"x": (0.0, 1.0)}, "height": 13}, ValueError),
        ({"limits": {"x": (0.0, 1.0)}, "n_trees": 0}, ValueError),
        ({"limits": {"x": (0.0, 1.0)}, "window_size": 0}, ValueError),
        ({"limits": {"x": (0.0, 1.0)}, "seed": None}, TypeError),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        HSTStructure(**kwargs)


def test_inputs_are_not_mutated() -> None:
    s = HSTStructure(LIMITS, n_trees=5, height=3, window_size=4, seed=1)
    m = s.new_masses()
    for x in _stream(50, 11):
        before = dict(x)
        s.score_learn(m, x)
        s.score(m, x)
        assert x == before


def _path_scores_per_node(st, r) -> list[int]:
    """The definition, one node at a time: masses summed up from the leaves, then each
    leaf's path score from the root, stopping below ``size_limit`` (river's scoring)."""
    h, nl = st.height, st.n_leaves
    out: list[int] = []
    for t in range(st.n_trees):
        levels = [list(r[t * nl:(t + 1) * nl])]
        for _ in range(h):
            below = levels[-1]
            levels.append([a + b for a, b in zip(below[::2], below[1::2], strict=True)])
        levels.reverse()
        acc, live = [levels[0][0]], [levels[0][0] >= st.size_limit]
        for d in range(1, h + 1):
            acc = [acc[k >> 1] + (m << d) if live[k >> 1] else acc[k >> 1]
                   for k, m in enumerate(levels[d])]
            live = [live[k >> 1] and m >= st.size_limit for k, m in enumerate(levels[d])]
        out += acc
    return out


@pytest.mark.parametrize("numpy_path", [False, True])
@pytest.mark.parametrize(("trees", "height", "window"),
                         [(25, 6, 255), (10, 4, 64), (3, 1, 8), (4, 3, 70000)])
def test_reference_path_scores_equal_the_per_node_definition(trees, height, window, numpy_path):
    """The path scores at a window's end, in C (``Router.reference``, when built, as under
    ``make test``) and with NumPy (where it is not), on every array width."""
    rng = random.Random(trees * 100 + height)
    st = HSTStructure({"a": (0.0, 1.0), "b": (0.0, 1.0)}, n_trees=trees, height=height,
                      window_size=window, seed=3)
    assert (st._reference is None) == (hst._Router is None)
    if numpy_path:
        st._reference = None
    m = st.new_masses()
    nl = st.n_leaves
    for _ in range(200):
        for i in range(len(m.r)):
            m.r[i] = 0
        for t in range(trees):  # a window's points per tree, spread over a few leaves
            hot = rng.sample(range(nl), rng.choice((1, 2, min(5, nl), nl)))
            for _ in range(rng.choice((0, 1, min(window // 3, 300), min(window, 900)))):
                m.r[t * nl + rng.choice(hot)] += 1
        st._set_reference(m)
        assert list(m.s) == _path_scores_per_node(st, m.r)
        assert m.ready == any(m.r)


# --- the routing in C (operators/models/_hstroute.c) against the generated Python ------------

_ODD_VALUES = [float("nan"), float("inf"), float("-inf"), 0, 7, True, False, 2**60, -(2**53) - 1,
               np.float64(0.25), np.int64(2), Fraction(1, 3), Decimal("1.5")]


@pytest.mark.parametrize(("height", "window"), [(1, 3), (4, 64), (6, 255), (8, 300), (3, 70000)])
def test_the_structures_routing_equals_the_generated_python(height: int, window: int) -> None:
    """What a structure routes with (C when it is built, as under ``make test``) reaches the
    same leaves, sums the same scores and counts the same masses as the Python generated for
    it, on every array width and on values C cannot compare itself (ints beyond 2**53,
    Decimal, Fraction, NumPy scalars), NaN and infinities included."""
    rng = random.Random(height * 1_000 + window)
    limits = {f"f{i}": (-1.0 * i, 2.0 + i) for i in range(7)}
    s = HSTStructure(limits, n_trees=9, height=height, window_size=window, seed=height)
    py_score, py_learn, py_score_learn, py_score_leaves = hst._compile(s)
    m = s.new_masses()
    l_own, l_py = array(m.l.typecode, m.l), array(m.l.typecode, m.l)
    odd = 0
    for i in range(1_500):
        x = {f: rng.uniform(lo - 1.0, hi + 1.0) for f, (lo, hi) in limits.items()}
        if i % 3 == 0:
            x[rng.choice(sorted(limits))] = _ODD_VALUES[odd % len(_ODD_VALUES)]
            odd += 1
        total, leaves = s._score_leaves_fn(x, m.s)
        assert (total, tuple(leaves)) == py_score_leaves(x, m.s)
        assert s._score_fn(x, m.s) == py_score(x, m.s) == total
        assert s._score_learn_fn(x, l_own, m.s) == py_score_learn(x, l_py, m.s) == total
        s._learn_fn(x, l_own)
        py_learn(x, l_py)
        s._add_leaves(l_own, leaves)
        hst._add_leaves(l_py, leaves)
        assert l_own == l_py
        if i % 50 == 49:  # back to zero before a count of one byte could overflow
            l_own, l_py = array(m.l.typecode, m.l), array(m.l.typecode, m.l)
        s.learn(m, x)  # the reference window moves on: other scores in m.s
    assert m.ready == any(m.s) == (window <= 1_500) and odd == 500


def test_the_routing_refuses_what_the_generated_python_refuses() -> None:
    s = HSTStructure(LIMITS, n_trees=6, height=3, window_size=5, seed=3)
    _score, py_learn, _score_learn, py_score_leaves = hst._compile(s)
    m = s.new_masses()
    x = {f: (lo + hi) / 2 for f, (lo, hi) in LIMITS.items()}
    # a missing feature: KeyError, which the structure's methods answer by river's fallback
    partial = {f: v for f, v in x.items() if f != "f2"}
    for fn in (s._score_leaves_fn, py_score_leaves):
        with pytest.raises(KeyError):
            fn(partial, m.s)
    assert s.score_leaves(m, partial) == (0.0, None)
    # any mapping, not only a dict
    assert s._score_leaves_fn(MappingProxyType(x), m.s) == py_score_leaves(x, m.s)
    # a count at its type's maximum: refused, after the same increments before it
    own = array("B", [254] * (6 * 8))
    py = array("B", [254] * (6 * 8))
    s._learn_fn(x, own)
    py_learn(x, py)
    for fn, arr in ((s._learn_fn, own), (py_learn, py)):
        with pytest.raises(OverflowError):
            fn(x, arr)
    assert own == py and max(own) == 255


def test_a_router_that_was_not_built_refuses_instead_of_crashing() -> None:
    if hst._Router is None:  # not built: the structure routes in Python, nothing to refuse
        assert hst._router(HSTStructure(LIMITS, seed=1)) is None
        return
    blank = hst._Router.__new__(hst._Router)
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.score({"f0": 1.0}, array("H", bytes(64)))
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.add(array("B", bytes(8)), (1,))
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.reference(array("B", bytes(8)), array("H", bytes(16)), 1.0)
    r = hst._Router(("f0",), [[0]], [[0.5]])
    with pytest.raises(ValueError):
        r.__init__(("f0",), [[3]], [[0.5]])  # a feature index out of range: refused, and
    with pytest.raises(RuntimeError, match="not initialised"):
        r.score({"f0": 1.0}, array("H", bytes(4)))  # the router is left refusing


def test_the_routing_bench_compares_c_with_the_generated_python() -> None:
    from operators.models.bench import bench_routing

    line = bench_routing(3, 2, n=300)
    assert line.startswith("HST routing trees=3 height=2:")
    if hst._Router is not None:  # built (as under `make test`): both, side by side
        c_us, py_us = (float(line.split(k)[1].split(" us")[0]) for k in (" C ", "Python "))
        ratio = float(line.rsplit(", ", 1)[1].removesuffix("x"))
        assert c_us > 0 and py_us > 0 and ratio > 0
    else:
        assert "C not built" in line
