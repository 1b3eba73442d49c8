"""The compiled supervised model: exactly river's LogisticRegression, bit for bit."""

from __future__ import annotations

import math
import pickle
import random
from array import array

import pytest
from river import linear_model, optim

from operators.models.logistic import OnlineLogistic

KEYS = tuple(f"k{i}" for i in range(6))
BINS = [f"b{i}" for i in range(12)]


def _stream(n: int, seed: int) -> list[tuple[list[float], tuple[str, ...], bool]]:
    """Inputs whose sums depend on their order (mixed magnitudes and signs), a bin set that
    grows over the stream (new inputs keep arriving), float32 values as the kept inputs are,
    and runs of one class that push the raw score past river's +-18 and +-30 branches."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scale = rng.choice((1e-3, 0.1, 1.0, 7.0))
        values = [rng.gauss(0.0, scale) * rng.choice((1.0, -1.0)) for _ in KEYS]
        if i % 5 == 0:
            values = array("f", values).tolist()
        if i % 13 == 0:
            values[i % len(KEYS)] = 0.0
        seen = BINS[: 2 + min(len(BINS) - 2, i // 40)]
        bins = tuple(rng.sample(seen, rng.randint(0, min(4, len(seen)))))
        y = (i // 200) % 3 == 1 if i < 1200 else rng.random() < 0.2
        out.append((values, bins, y))
    return out


def _x(values: list[float], bins: tuple[str, ...]) -> dict[str, float]:
    x = dict(zip(KEYS, values, strict=True))
    for b in bins:
        x[b] = 1.0
    return x


@pytest.mark.parametrize("seed, lr", [(1, 0.2), (2, 0.05), (3, 1.5)])
def test_learns_and_predicts_exactly_as_river(seed: int, lr: float) -> None:
    river_model = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
    ours = OnlineLogistic(KEYS, lr)
    extremes = 0
    for values, bins, y in _stream(3000, seed):
        x = _x(values, bins)
        p = river_model.predict_proba_one(x)[True]
        assert ours.predict_proba(values, bins) == p
        extremes += p in (0, 1)
        river_model.learn_one(x, y)
        ours.learn(values, bins, y)
    assert ours.intercept == river_model.intercept
    theirs = river_model._weights.to_dict()
    assert list(ours.weights) == list(theirs)  # the same inputs, in the same order
    assert ours.weights == theirs
    assert extremes > 0  # the stream reached the clipped probabilities


def test_a_model_carried_over_from_river_goes_on_as_river() -> None:
    stream = _stream(1500, 4)
    river_model = linear_model.LogisticRegression(optimizer=optim.SGD(0.3))
    for values, bins, y in stream[:700]:
        river_model.learn_one(_x(values, bins), y)
    ours = OnlineLogistic.from_river(KEYS, river_model)
    assert ours.weights == river_model._weights.to_dict() and ours.lr == 0.3
    for i, (values, bins, y) in enumerate(stream[700:]):
        x = _x(values, bins)
        assert ours.predict_proba(values, bins) == river_model.predict_proba_one(x)[True]
        river_model.learn_one(x, y)
        if i % 2:  # a whole dict, as release 1.2 kept the inputs
            ours.learn_dict(x, y)
        else:
            ours.learn(values, bins, y)
    assert ours.weights == river_model._weights.to_dict()
    assert ours.intercept == river_model.intercept


def test_learn_dict_sums_in_the_dicts_order_as_river_does() -> None:
    theirs = linear_model.LogisticRegression(optimizer=optim.SGD(0.3))
    mine = OnlineLogistic(KEYS, 0.3)
    for values, bins, y in _stream(1500, 6):
        x = dict(reversed(list(_x(values, bins).items())))
        theirs.learn_one(x, y)
        mine.learn_dict(x, y)
    assert list(mine.weights) == list(theirs._weights.to_dict())
    assert mine.weights == theirs._weights.to_dict() and mine.intercept == theirs.intercept


def test_refuses_a_river_model_it_cannot_reproduce() -> None:
    for model in (linear_model.LogisticRegression(optimizer=optim.Adam()),
                  linear_model.LogisticRegression(l2=0.1),
                  linear_model.LogisticRegression(loss=optim.losses.Hinge())):
        with pytest.raises(ValueError, match="plain SGD"):
            OnlineLogistic.from_river(KEYS, model)


def test_pickles_to_the_same_model_and_goes_on_alike() -> None:
    m = OnlineLogistic(KEYS, 0.2)
    stream = _stream(800, 5)
    for values, bins, y in stream[:400]:
        m.learn(values, bins, y)
    blob = pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    assert back == m and back.weights == m.weights and back.intercept == m.intercept
    assert len(blob) < 400  # 18 weights and their names
    for values, bins, y in stream[400:]:
        assert back.predict_proba(values, bins) == m.predict_proba(values, bins)
        m.learn(values, bins, y)
        back.learn(values, bins, y)
    assert back == m


def test_probabilities_are_floats_within_bounds_and_bad_input_is_refused() -> None:
    m = OnlineLogistic(("a",), 1.0)
    for _ in range(200):
        m.learn([50.0], (), False)
    p = m.predict_proba([50.0], ())
    assert p == 0.0 and type(p) is float  # river returns the int 0 beyond -30
    assert 0.0 < m.predict_proba([0.0], ()) < 1.0
    assert not math.isnan(m.intercept)
    with pytest.raises(ValueError, match="2 values for 1 keys"):
        m.predict_proba([1.0, 2.0], ())
    with pytest.raises(ValueError, match="0 values for 1 keys"):
        m.learn([], (), True)
