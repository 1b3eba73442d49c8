"""Compact Half-Space Trees: one shared structure, a few hundred bytes of masses per user.

A Half-Space Tree's splits depend only on the seed and the feature limits, never on data, so
every user can share one :class:`HSTStructure` and keep only an :class:`HSTMasses`: the node
masses of the reference window (``r``) and of the latest window (``l``). The algorithm is
river's ``anomaly.HalfSpaceTrees`` (v0.26) exactly: built with the same ``limits``,
``n_trees``, ``height``, ``window_size`` and ``seed``, the structure has river's split
features and thresholds and :meth:`HSTStructure.score` returns river's ``score_one`` bit for
bit (see ``tests/test_models_hst.py``).

Features are scaled by the FIXED ``limits`` given to the structure, never by a per-user
min-max: every threshold lies strictly inside its feature's limits (river's 15 % padding), so a
value outside ``(lo, hi)`` routes exactly as ``lo`` or ``hi`` would. Clipping is therefore
implied and costs nothing per event. NaN goes right, as in river.

Why only leaves are kept
------------------------
Every learned point adds one to each node on its root-to-leaf path, so a node's mass is the
sum of its two children's masses. The per-user state keeps leaf masses only; the internal
reference masses are needed only when the reference window changes (every ``window_size``
points), and then the score of each leaf's path (river's ``sum r_mass * 2**depth``, stopping
below ``size_limit``) is computed once and kept in ``s``. Scoring is one table look-up per
tree, learning one increment per tree, after routing ``height`` comparisons per tree: in C
(``operators/models/_hstroute.c``) when it is built, else with Python code generated for the
structure (plain nested ``if`` on float constants), which gives the same leaves and sums.

Per-user layout (``T = n_trees``, ``h = height``, ``n = T * 2**h`` leaves)
-------------------------------------------------------------------------
In memory (``HSTMasses``, ``__slots__``):

======  ===========================  ===============================================
field   type                         bytes
======  ===========================  ===============================================
``l``   ``array`` of ``n`` counts    ``n`` (``window_size <= 255``), else ``2n``
``r``   ``array`` of ``n`` counts    the same as ``l``
``s``   ``array`` of ``n`` scores    ``2n`` if ``window_size * (2**(h+1)-1) <= 65535``
                                     else ``4n``; derived from ``r``, never pickled
======  ===========================  ===============================================

plus about 64 bytes of header per array and 80 for the object. Pickled: a reference to a
restore function, the structure's 32-bit fingerprint and one ``bytes`` of ``l`` then ``r``
(``2n`` bytes when ``window_size <= 255``; native byte order, little-endian on x86-64 and
ARM64). The window counter is the sum of one tree's ``l``
and "first window complete" is "``r`` is not all zero", so neither is stored.

Measured with ``python -m operators.models.bench`` (``window_size`` 64 or 250, 15 features,
score + learn in one pass, CPU time on the project's 2-core machine under load):

=====================  ================  ==================  ===================
trees, height          pickled bytes     bytes in memory     us per event
=====================  ================  ==================  ===================
10, 3                  about 232         688                 4-9
15, 4                  about 554         1,368               4-10
25, 3                  about 475         1,196               6-11
=====================  ================  ==================  ===================

river's own ``HalfSpaceTrees`` (10, 3) measured 21 us per event and 8,875 bytes pickled on
the same stream. A smaller window costs a little more per event: the reference scores are
recomputed at each window's end.

Examples
--------
>>> structure = HSTStructure({"x": (0.0, 1.0)}, n_trees=5, height=3, window_size=3, seed=42)
>>> masses = structure.new_masses()         # one per user
>>> for x in [0.5, 0.45, 0.43]:
...     structure.learn(masses, {"x": x})   # warming up
>>> for x in [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0]:
...     structure.learn(masses, {"x": x})
...     print(f"{x:.3f}: {structure.score(masses, {'x': x}):.3f}")
0.500: 0.107
0.450: 0.071
0.430: 0.107
0.440: 0.107
0.445: 0.107
0.450: 0.071
0.000: 0.853

These are the numbers of river's own ``HalfSpaceTrees`` docstring. Scoring before learning
in one pass:

>>> masses = structure.new_masses()
>>> [round(structure.score_learn(masses, {"x": x}), 3) for x in [0.5, 0.45, 0.43, 0.5, 0.0]]
[0.0, 0.0, 0.0, 0.107, 0.853]
"""

from __future__ import annotations

import random
import zlib
from array import array
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:  # the routing in C (operators/models/_hstroute.c), when it is built
    from operators.models._hstroute import Router as _Router
except ImportError:  # not built: Python code generated for the structure routes the same way
    _Router = None

__all__ = ["HSTMasses", "HSTStructure"]

_PADDING = 0.15  # river's make_padded_tree padding: thresholds stay in the middle 70 %
_MAX_HEIGHT = 12  # 2**13 - 1 nodes per tree: far past any per-user budget


def _typecode(max_value: int) -> str:
    for code in ("B", "H", "I", "Q"):
        if max_value < 1 << (8 * array(code).itemsize):
            return code
    raise ValueError(f"count {max_value} too large")  # pragma: no cover


class HSTMasses:
    """One user's Half-Space Trees state: leaf masses of the reference and latest windows.

    Create it with :meth:`HSTStructure.new_masses` and use it only with that structure (or an
    identical one: a restored state is checked against the structure's fingerprint on first
    use). Pickling stores the masses only, never the structure.

    Attributes
    ----------
    fingerprint
        32-bit fingerprint of the structure that created this state.
    l
        Latest-window leaf masses, ``n_trees * 2**height`` counts, tree after tree.
    r
        Reference-window leaf masses, same layout. All zero until the first window completes.
    counter
        Points learned in the current window (``0 <= counter < window_size``).
    """

    __slots__ = ("_owner", "_raw", "counter", "fingerprint", "l", "r", "ready", "s")

    def __init__(self, fingerprint: int, l: array, r: array, s: array, owner: object) -> None:  # noqa: E741
        self.fingerprint = fingerprint
        self.l = l
        self.r = r
        self.s = s
        self.counter = 0
        self.ready = False
        self._owner: object | None = owner
        self._raw: bytes | None = None

    def __reduce__(self) -> tuple[Callable[..., HSTMasses], tuple[int, bytes]]:
        if self._raw is not None:  # restored and not used yet: pass the bytes on unchanged
            return (_restore_hst_masses, (self.fingerprint, self._raw))
        return (_restore_hst_masses, (self.fingerprint, self.l.tobytes() + self.r.tobytes()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HSTMasses):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        n = len(self.l) if self._raw is None else "?"
        return f"HSTMasses(fingerprint={self.fingerprint:#010x}, leaves={n}, ready={self.ready})"


def _restore_hst_masses(fingerprint: int, raw: bytes) -> HSTMasses:
    """Unpickle an :class:`HSTMasses`; it is decoded by the structure on first use."""
    m = HSTMasses(fingerprint, array("B"), array("B"), array("B"), None)
    m._raw = raw
    return m


class HSTStructure:
    """The shared, data-independent part of Half-Space Trees: split features and thresholds.

    Parameters
    ----------
    limits
        ``feature -> (lo, hi)`` for every feature the trees may split on. Fixed: a user's data
        never moves them, and values outside are routed as if clipped. Wide limits waste splits
        on empty space; narrow ones put every extreme value in the same outermost cell.
    n_trees
        Number of trees. Time and memory grow linearly with it.
    height
        Height of each tree: ``2**height`` leaves and ``2**(height+1) - 1`` nodes per tree.
        Memory per user doubles with each extra level; at most 12.
    window_size
        Points per window. The reference masses are those of the last complete window; a user
        scores 0.0 until the first window is complete. At most 255 keeps one byte per leaf.
    seed
        Random seed of the tree structure. It must be the same for every process of a
        deployment (``None`` is not accepted), otherwise restored masses would be meaningless;
        the structure's :attr:`fingerprint` is checked against a restored state's.

    Attributes
    ----------
    features
        Feature names, sorted (river's order).
    split_features
        Per tree, the feature index of each internal node in heap order (node ``i`` has
        children ``2i+1`` and ``2i+2``).
    thresholds
        Per tree, the split value of each internal node in heap order: go left if
        ``x[feature] < threshold``.
    fingerprint
        CRC-32 of the structure's parameters and splits.
    """

    def __init__(
        self,
        limits: Mapping[str, tuple[float, float]],
        n_trees: int = 10,
        height: int = 3,
        window_size: int = 250,
        seed: int = 42,
    ) -> None:
        self.limits = {str(k): (float(v[0]), float(v[1])) for k, v in limits.items()}
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed

        if not self.limits:
            raise ValueError("limits must name at least one feature")
        for name, (lo, hi) in self.limits.items():
            if not lo < hi:
                raise ValueError(f"limits of {name!r}: need lo < hi, got ({lo}, {hi})")
        if not 1 <= height <= _MAX_HEIGHT:
            raise ValueError(f"height must be in [1, {_MAX_HEIGHT}], got {height}")
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not isinstance(seed, int):
            raise TypeError("seed must be an int: every process must build the same trees")

        self.features: tuple[str, ...] = tuple(sorted(self.limits))
        rng = random.Random(seed)
        self.split_features: list[list[int]] = []
        self.thresholds: list[list[float]] = []
        index = {f: i for i, f in enumerate(self.features)}
        for _ in range(n_trees):
            feats = [0] * (2**height - 1)
            thrs = [0.0] * (2**height - 1)
            _build_padded(
                {f: self.limits[f] for f in self.features}, height, rng, 0, feats, thrs, index
            )
            self.split_features.append(feats)
            self.thresholds.append(thrs)
        self._finish()

    @classmethod
    def from_splits(
        cls,
        features: tuple[str, ...] | list[str],
        split_features: list[list[int]],
        thresholds: list[list[float]],
        window_size: int,
    ) -> HSTStructure:
        """A structure with given splits (heap order), e.g. copied from river's trees.

        ``limits`` are then unknown; they are set from the thresholds' range for reference.
        """
        self = cls.__new__(cls)
        self.features = tuple(features)
        self.n_trees = len(split_features)
        self.height = (len(split_features[0]) + 1).bit_length() - 1
        if any(len(f) != 2**self.height - 1 for f in split_features):
            raise ValueError("each tree needs 2**height - 1 internal nodes in heap order")
        self.window_size = window_size
        self.seed = -1
        self.split_features = [list(f) for f in split_features]
        self.thresholds = [[float(t) for t in ts] for ts in thresholds]
        self.limits = {}
        for i, name in enumerate(self.features):
            vals = [
                t
                for fs, ts in zip(self.split_features, self.thresholds, strict=True)
                for f, t in zip(fs, ts, strict=True)
                if f == i
            ]
            self.limits[name] = (min(vals, default=0.0), max(vals, default=1.0))
        self._finish()
        return self

    # ------------------------------------------------------------------ set-up

    def _finish(self) -> None:
        h = self.height
        self.n_leaves = 2**h
        self.size_limit = 0.1 * self.window_size
        self.max_score = self.n_trees * self.window_size * (2 ** (h + 1) - 1)
        self._count_code = _typecode(self.window_size)
        self._score_code = _typecode(self.window_size * (2 ** (h + 1) - 1))
        key = repr(
            (self.features, self.n_trees, h, self.window_size, self.split_features, self.thresholds)
        ).encode()
        self.fingerprint = zlib.crc32(key)
        router = _router(self)
        if router is not None:
            (self._score_fn, self._learn_fn, self._score_learn_fn, self._score_leaves_fn,
             self._add_leaves, self._reference) = (router.score, router.learn,
                                                   router.score_learn, router.score_leaves,
                                                   router.add, router.reference)
        else:
            (self._score_fn, self._learn_fn, self._score_learn_fn,
             self._score_leaves_fn) = _compile(self)
            self._add_leaves = _add_leaves
            self._reference = None

    def new_masses(self) -> HSTMasses:
        """A fresh per-user state: all masses zero, scores 0.0 until a window is complete."""
        n = self.n_trees * self.n_leaves
        return HSTMasses(
            self.fingerprint,
            array(self._count_code, bytes(n * array(self._count_code).itemsize)),
            array(self._count_code, bytes(n * array(self._count_code).itemsize)),
            array(self._score_code, bytes(n * array(self._score_code).itemsize)),
            self,
        )

    def _adopt(self, m: HSTMasses) -> None:
        """Check a state made elsewhere (restored, or by an equal structure) and decode it."""
        if m.fingerprint != self.fingerprint:
            raise ValueError(
                f"HSTMasses of structure {m.fingerprint:#010x} used with structure "
                f"{self.fingerprint:#010x}: reset the user's state after changing the structure"
            )
        n = self.n_trees * self.n_leaves
        if m._raw is not None:
            l, r = array(self._count_code), array(self._count_code)  # noqa: E741
            half = len(m._raw) // 2
            if half != n * l.itemsize:
                raise ValueError("HSTMasses size does not match its structure")
            l.frombytes(m._raw[:half])
            r.frombytes(m._raw[half:])
            m.l, m.r, m._raw = l, r, None
        m.counter = sum(m.l[: self.n_leaves])
        m.s = array(self._score_code, bytes(n * array(self._score_code).itemsize))
        self._set_reference(m)
        m._owner = self

    def _set_reference(self, m: HSTMasses) -> None:
        """Compute each leaf's path score from the reference leaf masses ``m.r``: river's
        ``sum r_mass * 2**depth`` down the leaf's path, stopping below ``size_limit``.

        All trees at once with numpy, level by level from the root (a node's mass is the sum
        of its leaves; integers throughout, so exactly the per-node loop of
        ``tests/test_models_hst.py``, 3-7 times faster: it runs at every window's end); in C
        when the routing is (``Router.reference``: the same integers; 1.3 against 35 µs for a
        user's trees, 15 against 100 µs for the population's, ``timeit``)."""
        if self._reference is not None:
            m.ready = self._reference(m.r, m.s, self.size_limit)
            return
        h, nl, n_trees = self.height, self.n_leaves, self.n_trees
        r = np.frombuffer(m.r, dtype=m.r.typecode).astype(np.int64).reshape(n_trees, nl)
        m.ready = bool(r.any())
        limit = self.size_limit
        acc = r.sum(axis=1, keepdims=True)  # the root's path score: its mass
        live = acc >= limit
        for d in range(1, h + 1):
            level = r.reshape(n_trees, 1 << d, nl >> d).sum(axis=2)  # masses at depth d
            parent_live = np.repeat(live, 2, axis=1)
            acc = np.repeat(acc, 2, axis=1) + np.where(parent_live, level << d, 0)
            live = parent_live & (level >= limit)
        np.frombuffer(m.s, dtype=m.s.typecode)[:] = acc.reshape(-1)

    # ------------------------------------------------------------------ per event

    def score(self, masses: HSTMasses, x: Mapping[str, float]) -> float:
        """Anomaly score of ``x`` in [0, 1], higher is more anomalous; 0.0 before a full window.

        Does not learn ``x``: call :meth:`learn` afterwards, or use :meth:`score_learn`.
        """
        if masses._owner is not self:
            self._adopt(masses)
        if not masses.ready:
            return 0.0
        try:
            total = self._score_fn(x, masses.s)
        except KeyError:
            total = self._score_missing(masses, x)
        return 1.0 - total / self.max_score

    def learn(self, masses: HSTMasses, x: Mapping[str, float]) -> None:
        """Add ``x`` to the latest window; every ``window_size`` points it becomes the reference."""
        if masses._owner is not self:
            self._adopt(masses)
        try:
            self._learn_fn(x, masses.l)
        except KeyError:
            self._learn_missing(masses, x)
        self._count(masses)

    def score_learn(self, masses: HSTMasses, x: Mapping[str, float]) -> float:
        """:meth:`score` then :meth:`learn` in one pass over the trees; returns the score."""
        if masses._owner is not self:
            self._adopt(masses)
        try:
            total = self._score_learn_fn(x, masses.l, masses.s)
        except KeyError:
            total = self._score_missing(masses, x)
            self._learn_missing(masses, x)
        ready = masses.ready
        self._count(masses)
        return 1.0 - total / self.max_score if ready else 0.0

    def score_leaves(self, masses: HSTMasses, x: Mapping[str, float]
                     ) -> tuple[float, tuple[int, ...] | None]:
        """:meth:`score`, and the leaves ``x`` reaches, for :meth:`learn_leaves`: a scorer
        that may learn the point afterwards routes it once instead of twice. The leaves are
        ``None`` when a feature is missing (then :meth:`learn` routes it)."""
        if masses._owner is not self:
            self._adopt(masses)
        try:
            total, leaves = self._score_leaves_fn(x, masses.s)
        except KeyError:
            return self.score(masses, x), None
        return (1.0 - total / self.max_score if masses.ready else 0.0), leaves

    def learn_leaves(self, masses: HSTMasses, leaves: tuple[int, ...]) -> None:
        """:meth:`learn` of the point that reached ``leaves`` (from :meth:`score_leaves` of
        this structure): the same counts, without routing it again."""
        if masses._owner is not self:
            self._adopt(masses)
        self._add_leaves(masses.l, leaves)
        self._count(masses)

    def _count(self, m: HSTMasses) -> None:
        m.counter += 1
        if m.counter == self.window_size:
            m.r = m.l
            m.l = array(self._count_code, bytes(len(m.r) * m.r.itemsize))
            m.counter = 0
            self._set_reference(m)

    # ------------------------------------------------------------------ missing features

    def _subtree(self, masses: array, t: int, node: int) -> int:
        """Mass of heap node ``node`` of tree ``t``: the sum of its leaves."""
        h, nl = self.height, self.n_leaves
        depth = (node + 1).bit_length() - 1
        width = 1 << (h - depth)
        first = (node + 1) * width - 1 - (nl - 1)
        return sum(masses[t * nl + first : t * nl + first + width])

    def _route_missing(self, m: HSTMasses, t: int, x: Mapping[str, Any]) -> list[int]:
        """Heap nodes on ``x``'s path in tree ``t``; a missing feature follows the child with
        the larger latest-window mass (the left one on a tie), as river does."""
        feats, thrs = self.split_features[t], self.thresholds[t]
        node, path = 0, [0]
        for _ in range(self.height):
            try:
                value = x[self.features[feats[node]]]
            except KeyError:
                left = self._subtree(m.l, t, 2 * node + 1)
                right = self._subtree(m.l, t, 2 * node + 2)
                node = 2 * node + 2 if left < right else 2 * node + 1
            else:
                node = 2 * node + 1 if value < thrs[node] else 2 * node + 2
            path.append(node)
        return path

    def _score_missing(self, m: HSTMasses, x: Mapping[str, Any]) -> int:
        total = 0
        for t in range(self.n_trees):
            for d, node in enumerate(self._route_missing(m, t, x)):
                r = self._subtree(m.r, t, node)
                total += r << d
                if r < self.size_limit:
                    break
        return total

    def _learn_missing(self, m: HSTMasses, x: Mapping[str, Any]) -> None:
        for t in range(self.n_trees):
            leaf = self._route_missing(m, t, x)[-1] - (self.n_leaves - 1)
            m.l[t * self.n_leaves + leaf] += 1

    def __repr__(self) -> str:
        return (
            f"HSTStructure(n_features={len(self.features)}, n_trees={self.n_trees}, "
            f"height={self.height}, window_size={self.window_size}, seed={self.seed}, "
            f"fingerprint={self.fingerprint:#010x})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its splits: the generated functions cannot be pickled.
        return (
            HSTStructure.from_splits,
            (self.features, self.split_features, self.thresholds, self.window_size),
            {"limits": self.limits, "seed": self.seed},
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.limits = state["limits"]
        self.seed = state["seed"]


def _build_padded(
    limits: dict[str, tuple[float, float]],
    height: int,
    rng: random.Random,
    node: int,
    feats: list[int],
    thrs: list[float],
    index: dict[str, int],
) -> None:
    """river's ``make_padded_tree``, the same random draws in the same order, into heap arrays."""
    if height == 0:
        return
    on = rng.choices(population=list(limits), weights=[hi - lo for lo, hi in limits.values()])[0]
    a, b = limits[on]
    at = rng.uniform(a + _PADDING * (b - a), b - _PADDING * (b - a))
    feats[node] = index[on]
    thrs[node] = at
    limits[on] = (a, at)
    _build_padded(limits, height - 1, rng, 2 * node + 1, feats, thrs, index)
    limits[on] = (at, b)
    _build_padded(limits, height - 1, rng, 2 * node + 2, feats, thrs, index)
    limits[on] = (a, b)


def _router(st: HSTStructure) -> Any:
    """The structure's trees in C (``_hstroute.Router``: the same leaves and sums as
    :func:`_compile`'s code, two to three and a half times faster: ``python -m
    operators.models.bench``), or ``None`` when it is not built."""
    if _Router is None:
        return None
    used = sorted({f for feats in st.split_features for f in feats})
    at = {f: i for i, f in enumerate(used)}
    try:
        return _Router(tuple(st.features[f] for f in used),
                       [[at[f] for f in feats] for feats in st.split_features], st.thresholds)
    except ValueError:  # beyond the C limits (256 features, 1,024 trees): Python routes it
        return None


def _add_leaves(latest: array, leaves: tuple[int, ...]) -> None:
    for k in leaves:
        latest[k] += 1


def _compile(st: HSTStructure) -> tuple[Callable[..., Any], ...]:
    """Generate the routing of every tree as nested ``if`` on constants, four variants.

    The source holds only float and int literals and the ``repr`` of feature names (``str``).
    """
    used = sorted({f for feats in st.split_features for f in feats})
    load = [f"    x{f} = x[{st.features[f]!r}]" for f in used]
    nl = st.n_leaves

    def tree(t: int, body: str) -> list[str]:
        out: list[str] = []

        def walk(node: int, depth: int) -> None:
            pad = "    " * (depth + 1)
            if depth == st.height:
                k = t * nl + node - (nl - 1)
                out.append(pad + body.format(k=k, t=t))
                return
            f, thr = st.split_features[t][node], st.thresholds[t][node]
            out.append(f"{pad}if x{f} < {thr!r}:")
            walk(2 * node + 1, depth + 1)
            out.append(f"{pad}else:")
            walk(2 * node + 2, depth + 1)

        walk(0, 0)
        return out

    def function(name: str, args: str, body: str, ret: str) -> str:
        lines = [f"def {name}({args}):", *load, "    total = 0"]
        for t in range(st.n_trees):
            lines += tree(t, body)
        lines.append(f"    return {ret}")
        return "\n".join(lines)

    src = "\n\n".join(
        [
            function("score", "x, s", "total += s[{k}]", "total"),
            function("learn", "x, l", "l[{k}] += 1", "None"),
            function("score_learn", "x, l, s", "total += s[{k}]; l[{k}] += 1", "total"),
            function("score_leaves", "x, s", "total += s[{k}]; k{t} = {k}",
                     "total, (" + "".join(f"k{t}, " for t in range(st.n_trees)) + ")"),
        ]
    )
    namespace: dict[str, Any] = {}
    code = compile(src, f"<hst {st.fingerprint:#010x}>", "exec")
    exec(code, namespace)  # noqa: S102  # generated from numbers and repr(str) only
    return (namespace["score"], namespace["learn"], namespace["score_learn"],
            namespace["score_leaves"])
