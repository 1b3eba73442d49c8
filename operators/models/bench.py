"""Measure the per-user models: pickled bytes per user and microseconds per event.

Run ``python -m operators.models.bench`` (under a minute on one core). Times are CPU time of
this process (``time.process_time``), the best of three runs over the same stream, so other
load on a shared machine inflates them less; a stream has 15 features, like the feature
step's. Prints one line per configuration.
"""

from __future__ import annotations

import pickle
import random
import sys
import time
from collections.abc import Callable

from operators.models import hst
from operators.models.hst import HSTStructure
from operators.models.iforest import OnlineIsolationForest
from operators.models.quantile import HistogramQuantile, P2Quantile

N_FEATURES = 15


def _stream(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = random.Random(seed)
    centre = [rng.uniform(0.3, 0.7) for _ in range(N_FEATURES)]
    return [
        {f"f{i:02d}": min(max(rng.gauss(c, 0.1), 0.0), 1.0) for i, c in enumerate(centre)}
        for _ in range(n)
    ]


def _best_us(run: Callable[[], None], n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def bench_hst(n_trees: int, height: int, window_size: int, n: int = 20_000) -> str:
    limits = {f"f{i:02d}": (0.0, 1.0) for i in range(N_FEATURES)}
    st = HSTStructure(limits, n_trees=n_trees, height=height, window_size=window_size, seed=1)
    xs = _stream(n)
    m = st.new_masses()

    def run() -> None:
        for x in xs:
            st.score_learn(m, x)

    us = _best_us(run, n)
    mem = sum(sys.getsizeof(a) for a in (m.l, m.r, m.s)) + sys.getsizeof(m)
    return (
        f"HST trees={n_trees} height={height} window={window_size}: "
        f"{len(pickle.dumps(m))} B pickled, {mem} B in memory, {us:.1f} us score+learn"
    )


def bench_routing(n_trees: int, height: int, n: int = 20_000) -> str:
    """The trees' routing (``score_leaves``: the leaves, the sum of their scores) in C and in
    the Python generated for the structure, side by side on the same stream and masses."""
    limits = {f"f{i:02d}": (0.0, 1.0) for i in range(N_FEATURES)}
    st = HSTStructure(limits, n_trees=n_trees, height=height, window_size=64, seed=1)
    xs = _stream(n)
    m = st.new_masses()
    for x in xs[:256]:
        st.learn(m, x)
    py = hst._compile(st)[3]
    own = hst._router(st)
    head = f"HST routing trees={n_trees} height={height}:"
    if own is None:
        return f"{head} Python {_best_us(lambda: _route_all(py, xs, m.s), n):.2f} us (C not built)"
    c_us = _best_us(lambda: _route_all(own.score_leaves, xs, m.s), n)
    py_us = _best_us(lambda: _route_all(py, xs, m.s), n)
    return f"{head} C {c_us:.2f} us, Python {py_us:.2f} us, {py_us / c_us:.1f}x"


def _route_all(fn: Callable[..., object], xs: list[dict[str, float]], s: object) -> None:
    for x in xs:
        fn(x, s)


def bench_iforest(
    n_features: int, window_size: int, refit_every: int, dtype: str, n: int = 5_000
) -> str:
    feats = [f"f{i:02d}" for i in range(n_features)]
    model = OnlineIsolationForest(
        feats,
        n_trees=25,
        window_size=window_size,
        max_samples=64,
        refit_every=refit_every,
        seed=1,
        dtype=dtype,  # type: ignore[arg-type]
    )
    xs = [{f: x[f] for f in feats} for x in _stream(n)]
    state = model.new_state()
    for x in xs[: window_size + refit_every]:
        model.score_learn(state, x)

    def run() -> None:
        for x in xs:
            model.score_learn(state, x)

    us = _best_us(run, n)

    def score_only() -> None:
        for x in xs:
            model.score(state, x)

    us_score = _best_us(score_only, n)
    fits = 20
    t0 = time.process_time()
    for _ in range(fits):
        model._fit(state, state.n_seen // refit_every)
    fit_us = (time.process_time() - t0) / fits * 1e6
    return (
        f"IForest d={n_features} trees=25 window={window_size} refit_every={refit_every} "
        f"{dtype}: {len(pickle.dumps(state))} B pickled (full ring), forest cache "
        f"{model.nbytes(state) - len(state.ring)} B, {us:.1f} us score+learn incl. refits "
        f"(score {us_score:.1f} us, one fit {fit_us:.0f} us)"
    )


def bench_quantile(n: int = 50_000) -> list[str]:
    rng = random.Random(2)
    xs = [rng.random() for _ in range(n)]
    q = P2Quantile(0.99)

    def run_p2() -> None:
        for x in xs:
            q.update(x)

    p2_us = _best_us(run_p2, n)
    h = HistogramQuantile(1e-4, 1.0, n_bins=1000, q=0.99)

    def run_h() -> None:
        for x in xs:
            h.update(x)

    h_us = _best_us(run_h, n)
    t0 = time.process_time()
    for _ in range(1000):
        h.get()
    get_us = (time.process_time() - t0) / 1000 * 1e6
    return [
        f"P2Quantile: {len(pickle.dumps(q))} B pickled, {p2_us:.2f} us update",
        f"HistogramQuantile(1000 bins): {len(pickle.dumps(h))} B pickled, {h_us:.2f} us "
        f"update, {get_us:.1f} us get",
    ]


def main() -> None:
    """Print every measurement."""
    for t, h in ((10, 3), (15, 4), (25, 3)):
        for w in (64, 250):
            print(bench_hst(t, h, w), flush=True)
    for t, h in ((10, 4), (25, 6)):  # the detector's: each user's trees, the population's
        print(bench_routing(t, h), flush=True)
    for d in (15, 8):
        for dtype in ("float32", "float16"):
            print(bench_iforest(d, 64, 16, dtype), flush=True)
    print(bench_iforest(15, 64, 32, "float16"), flush=True)
    print(bench_iforest(8, 48, 16, "float16"), flush=True)
    for line in bench_quantile():
        print(line)


if __name__ == "__main__":
    main()
