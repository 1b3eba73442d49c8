"""The supervised model: river's online logistic regression, compiled for the per-label path.

:class:`OnlineLogistic` learns and predicts exactly as river 0.26's
``linear_model.LogisticRegression(optimizer=optim.SGD(lr))`` with its defaults (log loss,
intercept learning rate 0.01, no L1 or L2, gradient clipped at 1e12): the same floating-point
operations in the same order, so the same weights, intercept and probabilities bit for bit
(``tests/test_models_logistic.py`` checks it against river itself on streams whose sums
depend on their order, and the replay's scores are unchanged).

Why not river's object itself: its weights live in a ``VectorDict`` (Rust behind PyO3) that
takes every input as a dict. A labelled replay builds one dict per transaction to score and
one per label to learn, and river's ``learn_one`` wraps them in two more ``VectorDict``\\ s,
a masked view and a scaled copy: about 43 k instructions a label and 5 µs, plus 2.3 µs a
transaction to predict (callgrind and ``timeit``; docs/benchmarks.md). Here the inputs stay
a sequence of numbers in a fixed order plus the names of the one-hot bins that are on, and
the weights a list: about a tenth of that. Importing river's ``linear_model`` also imports
SciPy's statistics (about a second at every start); this module imports nothing.

What river does, and this does in the same order:

- the raw score is ``sum(w[k] * x[k] for k in x) + intercept``, in the input's order, from 0,
  a weight not yet seen counting as nothing (``VectorDict.dot`` iterates its argument);
- the probability is ``1 / (1 + exp(-raw))``, 0 below -30 and 1 above 30 (``utils.math``);
- learning ``y`` (+1 or -1): ``g = -y / (exp(raw * y) + 1)`` (``exp(-z) * -y`` above
  ``z = 18``, ``-y`` below -18), clipped to +-1e12; the intercept takes ``- 0.01 * g`` and
  each input's weight ``- (x[k] * g) * lr``, a new input's weight starting at 0 and taking
  its place after the known ones, in the input's order.

>>> m = OnlineLogistic(("amount", "new_terminal"), lr=0.2)
>>> for _ in range(50):
...     m.learn([0.9, 1.0], ("hour:3",), True)
...     m.learn([0.1, 0.0], ("hour:14",), False)
>>> round(m.predict_proba([0.9, 1.0], ("hour:3",)), 3), round(m.predict_proba([0.1, 0.0],
...                                                                   ("hour:14",)), 3)
(0.96, 0.101)
>>> m.names
['amount', 'new_terminal', 'hour:3', 'hour:14']
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

CLIP = 1e12
"""river's ``clip_gradient`` default."""


class OnlineLogistic:
    """Online logistic regression by plain SGD over named inputs (see the module docstring).

    ``keys`` names the numeric inputs every call passes, in order, as ``values``; ``bins``
    are the names of further inputs that are on (value 1.0) for that call."""

    def __init__(self, keys: Sequence[str], lr: float, intercept_lr: float = 0.01) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        self.lr = lr
        self.intercept_lr = intercept_lr
        self.intercept = 0.0
        self.names: list[str] = []
        """Every input seen, in the order river's weight dict holds them."""
        self.w: list[float] = []
        self.index: dict[str, int] = {}
        # where each of `keys` is in `w` (-1: not yet seen): no dict look-up for them per call
        self._pos: list[int] = [-1] * len(self.keys)

    # ------------------------------------------------------------------------------------
    def _raw(self, values: Sequence[float], bins: Sequence[str]) -> float:
        w = self.w
        pos = self._pos
        acc = 0.0
        for i in range(len(pos)):
            p = pos[i]
            if p >= 0:
                acc += w[p] * values[i]
        index = self.index
        for b in bins:
            q = index.get(b, -1)
            if q >= 0:
                acc += w[q]  # (its value is 1.0: w * 1.0 is w, exactly)
        return acc + self.intercept

    def predict_proba(self, values: Sequence[float], bins: Sequence[str]) -> float:
        """The probability of the positive class (river's ``predict_proba_one(x)[True]``)."""
        if len(values) != len(self.keys):
            raise ValueError(f"{len(values)} values for {len(self.keys)} keys")
        return _sigmoid(self._raw(values, bins))

    def learn(self, values: Sequence[float], bins: Sequence[str], y: bool) -> None:
        """One SGD step on the input (river's ``learn_one(x, y)``)."""
        if len(values) != len(self.keys):
            raise ValueError(f"{len(values)} values for {len(self.keys)} keys")
        g = self._gradient(self._raw(values, bins), y)
        self.intercept -= self.intercept_lr * g
        lr = self.lr
        w = self.w
        pos = self._pos
        for i in range(len(pos)):
            p = pos[i]
            step = (values[i] * g) * lr
            if p >= 0:
                w[p] = w[p] - step
            else:
                pos[i] = self._add(self.keys[i], 0.0 - step)
        index = self.index
        step = g * lr  # (a bin's value is 1.0: (1.0 * g) * lr, exactly)
        for b in bins:
            q = index.get(b, -1)
            if q >= 0:
                w[q] = w[q] - step
            else:
                self._add(b, 0.0 - step)

    def learn_dict(self, x: dict[str, float], y: bool) -> None:
        """One SGD step on a dict of inputs in any order (what release 1.2 kept)."""
        index = self.index
        w = self.w
        acc = 0.0
        for k, v in x.items():
            q = index.get(k, -1)
            if q >= 0:
                acc += w[q] * v
        g = self._gradient(acc + self.intercept, y)
        self.intercept -= self.intercept_lr * g
        for k, v in x.items():
            step = (v * g) * self.lr
            q = index.get(k, -1)
            if q >= 0:
                w[q] = w[q] - step
            else:
                self._add(k, 0.0 - step)

    @staticmethod
    def _gradient(raw: float, y: bool) -> float:
        # river's optim.losses.Log.gradient with weight 1, then clipped
        s = 1.0 if y else -1.0
        z = raw * s
        if z > 18.0:
            g = math.exp(-z) * -s
        elif z < -18.0:
            g = -s
        else:
            g = -s / (math.exp(z) + 1.0)
        return max(min(g, CLIP), -CLIP)

    def _add(self, name: str, weight: float) -> int:
        p = len(self.w)
        self.names.append(name)
        self.w.append(weight)
        self.index[name] = p
        keys = self.keys
        for i in range(len(keys)):
            if keys[i] == name:
                self._pos[i] = p
        return p

    # ------------------------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        """The weights by input name, in river's order."""
        return dict(zip(self.names, self.w, strict=True))

    @classmethod
    def from_weights(cls, keys: Sequence[str], lr: float, intercept_lr: float,
                     intercept: float, weights: dict[str, float]) -> OnlineLogistic:
        m = cls(keys, lr, intercept_lr)
        m.intercept = intercept
        for k, v in weights.items():
            m._add(k, v)
        return m

    @classmethod
    def from_river(cls, keys: Sequence[str], model: Any) -> OnlineLogistic:
        """The same model as river's ``LogisticRegression`` ``model`` (what snapshots before
        state version 11 hold), which must use what this class does: plain SGD at a constant
        rate, log loss, no regularisation, the default clipping."""
        from river import optim  # (only to read such a snapshot)

        constant = optim.schedulers.Constant
        if not (type(model.optimizer) is optim.SGD and type(model.loss) is optim.losses.Log
                and type(model.optimizer.lr) is constant
                and type(model.intercept_lr) is constant
                and model.l1 == 0 and model.l2 == 0 and model.clip_gradient == CLIP
                and model.loss.weight_pos == 1.0 and model.loss.weight_neg == 1.0):
            raise ValueError("only a logistic regression by plain SGD at constant rates, "
                             "without regularisation, can be carried over")
        return cls.from_weights(keys, float(model.optimizer.lr.learning_rate),
                                float(model.intercept_lr.learning_rate),
                                float(model.intercept), model._weights.to_dict())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _restore, (self.keys, self.lr, self.intercept_lr, self.intercept,
                          tuple(self.names), array("d", self.w).tobytes())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OnlineLogistic):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


def _sigmoid(x: float) -> float:
    # river's utils.math.sigmoid (which returns the ints 0 and 1 beyond +-30: floats here)
    if x < -30.0:
        return 0.0
    if x > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-x))


def _restore(keys: tuple[str, ...], lr: float, intercept_lr: float, intercept: float,
             names: tuple[str, ...], weights: bytes) -> OnlineLogistic:
    w = array("d")
    w.frombytes(weights)
    return OnlineLogistic.from_weights(keys, lr, intercept_lr, intercept,
                                       dict(zip(names, w.tolist(), strict=True)))
