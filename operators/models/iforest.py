"""Online Isolation Forest over each user's sliding window of recent feature vectors.

river has no Isolation Forest, and scikit-learn's costs milliseconds per call. Here the
per-user state, :class:`IForestWindow`, is only a ring buffer of the user's last feature
vectors and a counter; one shared :class:`OnlineIsolationForest` holds the parameters and
does the work. The forest itself is a cache: it is fitted from the window, a seed and the
fit number, so it is rebuilt identically whenever it is missing (after unpickling, or after
:meth:`OnlineIsolationForest.release`) and is never pickled.

The algorithm is Liu, Ting and Zhou's, as in scikit-learn's ``IsolationForest``: each tree is
grown on ``psi = min(points, max_samples)`` points drawn without replacement, splitting on a
feature drawn uniformly among those not constant in the node at a threshold uniform between
the node's minimum and maximum (left when ``x <= threshold``), down to depth
``ceil(log2(psi))``. A leaf reached at depth ``d`` holding ``n`` training points has path
length ``d + c(n)``, with ``c(n) = 2 (ln(n - 1) + 0.5772...) - 2 (n - 1) / n`` (``c(2) = 1``,
``c(1) = 0``), and the score is ``2 ** (-mean path length / c(psi))``: about 0.5 and below
for ordinary points, towards 1 for isolated ones.

Refits
------
A refit happens every ``refit_every`` learned points, on the newest ``window_size`` points
at that moment. The points learned since stay in the ring beside them (it holds
``window_size + refit_every - 1`` rows) so that the fitted forest can always be rebuilt
exactly. Fits are lazy: the first :meth:`~OnlineIsolationForest.score` after a refit point
builds the forest. A user scores 0.0 until its first refit.

Per-user layout (``d`` features, ``C = window_size + refit_every - 1`` rows)
-----------------------------------------------------------------------------
In memory (``IForestWindow``, ``__slots__``):

===========  ======================================  ======================================
field        type                                    bytes
===========  ======================================  ======================================
``ring``     ``bytearray`` of rows, little-endian    ``min(n_seen, C) * d * 4`` (float32)
                                                     or ``* 2`` (float16), plus 57
``n_seen``   ``int``                                 28
``forest``   cache (numpy arrays), not pickled       about ``9 * T * 2**D`` (uint8
                                                     features, float32 thresholds and
                                                     path lengths): 14.3 KiB for 25 trees
                                                     of depth 6; drop it with ``release``
===========  ======================================  ======================================

Pickled: a reference to the class, a 32-bit layout fingerprint, ``n_seen`` and the used part
of the ring (a new user pickles small). Measured for a full ring of 15 features,
``window_size=64``, ``refit_every=16`` (79 rows): 4,817 bytes as float32, 2,445 as float16;
with 8 features: 2,605 and 1,339 (``python -m operators.models.bench``). To stay within a
4 KiB per-user budget with 15 features, use float16 or a smaller window.

Cost per event: scoring is about a dozen numpy calls (8-17 us for 25 trees on the project's
2-core machine, depending on its load); a fit is about two hundred numpy calls (0.45-0.8 ms
for 25 trees on 64 points, half of it fixed, whatever the number of trees), so
``refit_every`` sets the amortized cost: with 16, score + learn + refits measured 40-70 us
per event; each doubling of ``refit_every`` halves the refit share. This is above the
~20 us per-model budget that Half-Space Trees meet (4-10 us).

float16 keeps about three significant digits and the range +-65504 (values beyond are clipped
there, as float32 values are clipped to +-3.4e38): give it scaled features (logs, ratios,
z-scores), not raw amounts.

Examples
--------
>>> import random
>>> model = OnlineIsolationForest(["a", "b"], n_trees=25, window_size=64, refit_every=16,
...                               seed=1)
>>> state = model.new_state()                  # one per user
>>> rng = random.Random(0)
>>> for _ in range(200):
...     x = {"a": rng.gauss(0, 1), "b": rng.gauss(5, 1)}
...     _ = model.score_learn(state, x)
>>> model.score(state, {"a": 0.0, "b": 5.0}) < 0.5 < model.score(state, {"a": 8.0, "b": -3.0})
True
>>> len(state.ring) == (64 + 16 - 1) * 2 * 4   # the ring is full and never grows
True
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = ["IForestWindow", "OnlineIsolationForest", "average_path_length"]

_EULER_GAMMA = 0.5772156649015329
_BIG = 3.4028234663852886e38  # empty nodes' min and max: finite in float32, so no inf - inf
_LIMITS = {"float32": 3.4028234663852886e38, "float16": 65504.0}
_CODES = {"float32": "f", "float16": "e"}


def average_path_length(n: int) -> float:
    """``c(n)``: mean path length of an unsuccessful search in a binary search tree of ``n``.

    >>> average_path_length(1), average_path_length(2), round(average_path_length(64), 4)
    (0.0, 1.0, 7.472)
    """
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + _EULER_GAMMA) - 2.0 * (n - 1.0) / n


class IForestWindow:
    """One user's Isolation Forest state: the last feature vectors, and a forest cache.

    Create it with :meth:`OnlineIsolationForest.new_state`. Pickling keeps ``n_seen`` and the
    used rows of ``ring`` only.

    Attributes
    ----------
    fingerprint
        32-bit fingerprint of the ring layout (features, dtype, capacity) that wrote it.
    n_seen
        Points learned so far; point ``k`` (from 0) is row ``k % capacity`` of the ring.
    ring
        The rows, ``d`` little-endian floats each.
    """

    __slots__ = ("_fit_no", "_forest", "fingerprint", "n_seen", "ring")

    def __init__(self, fingerprint: int, n_seen: int = 0, ring: bytes = b"") -> None:
        self.fingerprint = fingerprint
        self.n_seen = n_seen
        self.ring = bytearray(ring)
        self._forest: _Forest | None = None
        self._fit_no = -1

    def __reduce__(self) -> tuple[Callable[..., IForestWindow], tuple[int, int, bytes]]:
        return (IForestWindow, (self.fingerprint, self.n_seen, bytes(self.ring)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IForestWindow):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"IForestWindow(n_seen={self.n_seen}, ring_bytes={len(self.ring)})"


class _Forest:
    """A fitted forest in flat arrays, every tree padded to a full heap of depth ``depth``.

    Internal node ``i`` of tree ``t`` is entry ``t * (2**depth - 1) + i``; a query goes right
    when ``x[feature] > threshold``. A leaf above the full depth keeps ``threshold = +inf``
    below it, so queries fall to its leftmost descendant, which carries its path length.
    """

    __slots__ = ("depth", "feature", "next_base", "path_length", "psi_c", "roots", "threshold")

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        path_length: np.ndarray,
        next_base: np.ndarray,
        roots: np.ndarray,
        psi_c: float,
        depth: int,
    ) -> None:
        self.depth = depth
        self.feature = feature
        self.threshold = threshold
        self.path_length = path_length
        self.next_base = next_base
        self.roots = roots
        self.psi_c = psi_c

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays owned by this forest (``next_base``/``roots`` are shared)."""
        return self.feature.nbytes + self.threshold.nbytes + self.path_length.nbytes


class OnlineIsolationForest:
    """Isolation Forest refitted on each user's sliding window; shared by all users.

    Parameters
    ----------
    features
        Feature names, in the order rows are stored. Every ``x`` must have all of them.
    n_trees
        Trees per forest. The score's noise falls as ``1/sqrt(n_trees)``; fitting and scoring
        time and the cache grow linearly.
    window_size
        Points a forest is fitted on: the newest ``window_size`` at each refit.
    max_samples
        Subsample size ``psi`` per tree (``min(points, max_samples)``); tree depth is
        ``ceil(log2(psi))``.
    refit_every
        A refit every this many learned points. Larger is cheaper per event but adapts
        later, and the ring keeps ``refit_every - 1`` extra rows. At most ``window_size``.
    seed
        Seed of the forests: fit ``k`` of every user draws from ``(seed, k)``, so a rebuilt
        forest is identical to the one it replaces.
    dtype
        How rows are stored: ``"float32"`` (4 bytes a value) or ``"float16"`` (2 bytes,
        three significant digits, range +-65504).
    """

    def __init__(
        self,
        features: Sequence[str],
        n_trees: int = 25,
        window_size: int = 64,
        max_samples: int = 64,
        refit_every: int = 16,
        seed: int = 42,
        dtype: Literal["float32", "float16"] = "float32",
    ) -> None:
        self.features = tuple(features)
        self.n_trees = n_trees
        self.window_size = window_size
        self.max_samples = max_samples
        self.refit_every = refit_every
        self.seed = seed
        self.dtype = dtype

        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError("features must be non-empty and distinct")
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        if window_size < 2 or max_samples < 2:
            raise ValueError("window_size and max_samples must be >= 2")
        if not 1 <= refit_every <= window_size:
            raise ValueError(f"refit_every must be in [1, window_size], got {refit_every}")
        if dtype not in _CODES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError("seed must be a non-negative int")

        self.capacity = window_size + refit_every - 1
        d = len(self.features)
        self._row = struct.Struct(f"<{d}{_CODES[dtype]}")
        self._limit = _LIMITS[dtype]
        self._np_dtype = np.dtype(dtype).newbyteorder("<")
        self.fingerprint = zlib.crc32(repr((self.features, dtype, self.capacity)).encode())
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._c_tables: dict[int, np.ndarray] = {}

    def new_state(self) -> IForestWindow:
        """A fresh per-user state: empty ring, scores 0.0 until the first refit."""
        return IForestWindow(self.fingerprint)

    # ------------------------------------------------------------------ per event

    def learn(self, state: IForestWindow, x: Mapping[str, float]) -> None:
        """Append ``x`` to the user's window (overwriting the oldest row once it is full).

        Raises ``KeyError`` for a missing feature and ``ValueError`` for NaN.
        """
        if state.fingerprint != self.fingerprint:
            self._reject(state)
        row = [x[f] for f in self.features]
        if not math.isfinite(sum(row)):  # a NaN or an infinity somewhere (or inf - inf)
            if any(v != v for v in row):
                raise ValueError("NaN feature value")
            row = self._clip(row)
        try:
            packed = self._row.pack(*row)
        except OverflowError:  # finite but beyond the dtype's range
            packed = self._row.pack(*self._clip(row))
        size = self._row.size
        k = state.n_seen % self.capacity
        if len(state.ring) == k * size:
            state.ring += packed
        else:
            state.ring[k * size : (k + 1) * size] = packed
        state.n_seen += 1

    def _clip(self, row: list[float]) -> list[float]:
        lim = self._limit
        return [min(max(v, -lim), lim) for v in row]

    def score(self, state: IForestWindow, x: Mapping[str, float]) -> float:
        """Anomaly score in (0, 1], higher is more anomalous; 0.0 before the first refit."""
        fit_no = state.n_seen // self.refit_every
        if fit_no * self.refit_every < 2:  # no fit yet, or a fit on a single point
            return 0.0
        if state._fit_no != fit_no or state._forest is None:
            if state.fingerprint != self.fingerprint:
                self._reject(state)
            state._forest = self._fit(state, fit_no)
            state._fit_no = fit_no
        forest = state._forest
        # array("f") turns values beyond float32 into +-inf without a warning
        q = np.frombuffer(array("f", [x[f] for f in self.features]), dtype=np.float32)
        g = forest.roots
        nxt = forest.next_base + (q.take(forest.feature) > forest.threshold)
        for _ in range(forest.depth):
            g = nxt.take(g)
        total = float(forest.path_length.take(g).sum())
        return 2.0 ** (-total / (self.n_trees * forest.psi_c))

    def score_learn(self, state: IForestWindow, x: Mapping[str, float]) -> float:
        """:meth:`score` then :meth:`learn`; returns the score."""
        s = self.score(state, x)
        self.learn(state, x)
        return s

    def release(self, state: IForestWindow) -> None:
        """Drop the user's cached forest (it is rebuilt, identical, when next needed)."""
        state._forest = None
        state._fit_no = -1

    def window(self, state: IForestWindow, fit_no: int | None = None) -> np.ndarray:
        """The rows fitted at refit ``fit_no`` (default: the latest), oldest first, float64."""
        if fit_no is None:
            fit_no = state.n_seen // self.refit_every
        end = fit_no * self.refit_every
        if not 0 < end <= state.n_seen or state.n_seen - end >= self.refit_every:
            raise ValueError(f"fit {fit_no} is not the latest fit of this state")
        start = max(0, end - self.window_size)
        rows = np.frombuffer(bytes(state.ring), dtype=self._np_dtype).reshape(
            -1, len(self.features)
        )
        order = [k % self.capacity for k in range(start, end)]
        return rows[order].astype(np.float64)

    # ------------------------------------------------------------------ fitting

    def _reject(self, state: IForestWindow) -> None:
        raise ValueError(
            f"IForestWindow of layout {state.fingerprint:#010x} used with layout "
            f"{self.fingerprint:#010x}: reset the user's state after changing features, "
            "dtype, window_size or refit_every"
        )

    def _layout(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Child-index base of every internal node and the roots, for trees of ``depth``."""
        if depth not in self._layouts:
            n_int, n_leaf, t = 2**depth - 1, 2**depth, self.n_trees
            local = np.arange(n_int)
            child = 2 * local + 1
            tree = np.repeat(np.arange(t), n_int)
            child_t = np.tile(child, t)
            nxt = np.where(
                child_t < n_int, tree * n_int + child_t, tree * n_leaf + child_t - n_int
            ).astype(np.intp)
            roots = (np.arange(t) * n_int).astype(np.intp)
            self._layouts[depth] = (nxt, roots)
        return self._layouts[depth]

    def _fit(self, state: IForestWindow, fit_no: int) -> _Forest:
        X = self.window(state, fit_no)
        rng = np.random.default_rng([self.seed, fit_no])
        return self._grow(X, rng)

    def _grow(self, X: np.ndarray, rng: np.random.Generator) -> _Forest:
        """Grow ``n_trees`` isolation trees on ``X`` level by level, all trees at once.

        Level ``L`` has ``2**L`` node slots per tree, numbered ``tree * 2**L + slot``; the
        points still in play carry their node's number, so a node's count, minimum and
        maximum are ``bincount`` / ``minimum.at`` / ``maximum.at``: no sorting, and a fixed
        number of numpy calls a level.
        """
        n, d = X.shape
        t_count = self.n_trees
        psi = min(n, self.max_samples)
        depth = max(1, math.ceil(math.log2(psi)))
        n_int, n_leaf = 2**depth - 1, 2**depth
        feature = np.zeros((t_count, n_int), dtype=np.intp)
        threshold = np.full((t_count, n_int), np.inf, dtype=np.float32)
        path_length = np.zeros(t_count * n_leaf, dtype=np.float32)
        X = X.astype(np.float32).astype(np.float64)  # thresholds are compared as float32
        flat = X.ravel()

        if psi == n:
            offset = np.tile(np.arange(0, n * d, d), t_count)
        else:
            offset = np.argsort(rng.random((t_count, n)), axis=1)[:, :psi].ravel() * d
        node = np.repeat(np.arange(t_count), psi)  # level 0: node t is tree t's root
        ended = []  # full-depth leaf position of every point once its node is a leaf

        for level in range(depth):
            width = 2**level
            groups = t_count * width
            count = np.bincount(node, minlength=groups)
            draw = rng.random(2 * groups)
            f = (draw[:groups] * d).astype(np.intp)
            u = draw[groups:]
            v = flat[offset + f[node]]
            lo = np.full(groups, _BIG)
            hi = np.full(groups, -_BIG)
            np.minimum.at(lo, node, v)
            np.maximum.at(hi, node, v)
            several = count >= 2
            split = several & (hi > lo)
            if np.count_nonzero(split) != np.count_nonzero(several):
                # the drawn feature is constant there: draw among the varying ones
                for g in np.flatnonzero(several & ~split):
                    pts = X[offset[node == g] // d]
                    varying = np.flatnonzero(pts.max(axis=0) > pts.min(axis=0))
                    if len(varying):
                        f[g] = varying[int(u[g] * len(varying))]
                        lo[g], hi[g] = pts[:, f[g]].min(), pts[:, f[g]].max()
                        u[g] = rng.random()
                        split[g] = True
                v = flat[offset + f[node]]
            # float32 thresholds, strictly below the node's maximum as in scikit-learn
            thr = (lo + u * (hi - lo)).astype(np.float32)  # compared exactly with float64
            thr = np.where(split & (thr < hi), thr, np.where(split, lo, np.inf))
            feature[:, width - 1 : 2 * width - 1] = f.reshape(t_count, width)
            threshold[:, width - 1 : 2 * width - 1] = thr.reshape(t_count, width)
            keep = split[node]
            stop = node[~keep] << (depth - level)
            path_length[stop] = level
            ended.append(stop)
            node = node[keep]
            right = v[keep] > thr[node]
            offset = offset[keep]
            node = 2 * node + right  # node t*w + k has children t*2w + 2k and 2k + 1
        path_length[node] = depth
        ended.append(node)
        reached = np.bincount(np.concatenate(ended), minlength=t_count * n_leaf)
        path_length += self._c_table(psi)[reached]

        nxt, roots = self._layout(depth)
        return _Forest(
            feature.ravel().astype(np.uint8 if d <= 256 else np.uint16),
            threshold.ravel(),
            path_length,
            nxt,
            roots,
            average_path_length(psi),
            depth,
        )

    def _c_table(self, psi: int) -> np.ndarray:
        """``c(n)`` for ``n`` in ``0..psi``."""
        if psi not in self._c_tables:
            self._c_tables[psi] = np.array(
                [average_path_length(k) for k in range(psi + 1)], dtype=np.float32
            )
        return self._c_tables[psi]

    def __repr__(self) -> str:
        return (
            f"OnlineIsolationForest(n_features={len(self.features)}, n_trees={self.n_trees}, "
            f"window_size={self.window_size}, max_samples={self.max_samples}, "
            f"refit_every={self.refit_every}, seed={self.seed}, dtype={self.dtype!r})"
        )

    def nbytes(self, state: IForestWindow) -> int:
        """Bytes held for ``state`` in memory: ring plus cached forest (not the shared layout)."""
        forest = state._forest.nbytes if state._forest is not None else 0
        return len(state.ring) + forest
