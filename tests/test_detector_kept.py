"""What the detector keeps of a scored transaction until its label arrives (``keep``), and
that labels of transactions kept by the previous release (state version 5) still teach the
supervised model the same thing."""

import pickle
import random
import sys

from operators.detector import (
    SUP_KEYS,
    TxwDetector,
    kept_values,
    params_from_settings,
    sup_dict,
)
from operators.terminal import TerminalState
from operators.user import UserState
from txwatch.settings import Settings


def _scored(n: int = 300):
    rng = random.Random(5)
    d = TxwDetector(params_from_settings(Settings()))
    u, t = UserState(), TerminalState()
    ts = 1.7e9
    out = []
    for i in range(n):
        ts += rng.expovariate(1 / 20_000)
        kw = {"terminal": f"T{rng.randrange(9)}", "category": "5411", "country": "BE",
              "lat": 50.8 + rng.random() / 10, "lon": 4.3, "local_hour": None}
        amount = round(rng.lognormvariate(3.5, 0.8), 2)
        f = u.features(ts, amount, **kw)
        t.learn_txn(ts)
        if i % 5 == 0:
            t.apply_label(ts, i % 15 == 0, ts + 3600)
        f.update(t.features(ts))
        score, comps = d.score(u, f)
        x = d.sup_features(f, comps)
        d.learn(u, f, score)
        u.learn(ts, amount, protect=score >= comps["threshold"], **kw)
        out.append((x, d.keep(f, comps), i % 11 == 0))
    return out


def _weights(kept_and_labels) -> dict:
    d = TxwDetector(params_from_settings(Settings()))
    for kept, is_fraud in kept_and_labels:
        d.learn_label(kept, is_fraud)
    return dict(d.sup.weights), d.sup.intercept, d.frauds_learnt, d.labels_learnt


def test_kept_inputs_are_the_supervised_inputs_in_float32():
    from array import array

    for x, kept, _ in _scored():
        bins, values = kept[0], kept_values(kept)
        assert list(x)[: len(SUP_KEYS)] == list(SUP_KEYS)
        assert set(bins) == set(x) - set(SUP_KEYS)
        # rounded as array("f") rounded them up to state version 10
        assert values == tuple(array("f", list(x.values())[: len(SUP_KEYS)]))
        rebuilt = sup_dict(values, bins)
        assert list(rebuilt) == list(x)  # same inputs, same order (river sums in that order)
        for k, v in x.items():
            assert abs(rebuilt[k] - v) <= 1e-6 * max(1.0, abs(v))


def test_labels_of_transactions_kept_by_the_previous_release_teach_the_same():
    from array import array

    scored = _scored()
    now = [(kept, fraud) for _, kept, fraud in scored]
    # the 1.2 layout: every input's name beside its float32 value
    v5 = [(((*SUP_KEYS, *kept[0]), array("f", [*kept_values(kept), *([1.0] * len(kept[0]))])),
           fraud)
          for kept, fraud in now]
    # state version 10 kept the numeric inputs in an array("f")
    v10 = [((kept[0], array("f", kept_values(kept)), *kept[2:]), fraud) for kept, fraud in now]
    w_now, w_v5, w_v10 = _weights(now), _weights(v5), _weights(v10)
    assert w_now == w_v5 == w_v10
    assert w_now[2] == sum(1 for _, _, f in scored if f) > 0


def test_kept_is_smaller_than_the_previous_layout():
    scored = _scored(50)
    new = [kept for _, kept, _ in scored]
    # (the same cell and budget bins in both: the layouts differ in the inputs' names)
    old = [((*SUP_KEYS, *bins), values, *rest) for bins, values, *rest in new]
    size = lambda xs: len(pickle.dumps(xs, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: E731
    assert size(new) < 0.8 * size(old)
    # the numeric inputs in one bytes: 93 bytes in memory, against 140 for the array("f") of
    # state version 10, and smaller pickled
    from array import array

    arrays = [(k[0], array("f", list(kept_values(k))), *k[2:]) for k in new]
    assert size(new) < size(arrays)
    assert sys.getsizeof(new[0][1]) == 93 < sys.getsizeof(arrays[0][1]) == 140
