"""The batch stages give what one item at a time gives; their shortcuts equal the long way."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from dataflow.build import stage_config
from operators.ordering import Watermark
from operators.records import Txn
from operators.stages import TerminalStage, UserStage, observe_all
from operators.terminal import TerminalState
from txwatch.commands.replay import replay_settings

SETTINGS = replay_settings(logical_shards=1)


def _txns(n: int, seed: int = 3) -> list[Txn]:
    rng = random.Random(seed)
    ts = 1.6e9
    out = []
    for i in range(n):
        ts += rng.expovariate(1 / 1800.0)
        amount = Decimal(str(round(rng.lognormvariate(3, 1), 2)))
        out.append(Txn(f"t{i}", f"u{rng.randrange(12)}", amount,
                       datetime.fromtimestamp(ts, tz=UTC), "EUR", amount,
                       terminal_id=f"T{rng.randrange(8)}", merchant_id=f"M{rng.randrange(9)}",
                       merchant_category="5411", country="BE",
                       lat=50.8 + rng.random() / 10, lon=4.3 + rng.random() / 10))
    return out


def _run(items: list[Any], chunk: int) -> list[tuple[str, float, str]]:
    cfg = stage_config(SETTINGS, 1, snapshots=False)
    term, user = TerminalStage("t0", cfg, None), UserStage("u0", cfg, None, "w")
    decided = []
    for i in range(0, len(items), chunk):
        mid = list(term.on_batch(items[i:i + chunk])[0])
        decided += user.on_batch(mid)[0]
    decided += user.on_batch(list(term.on_eof()[0]))[0]
    decided += user.on_eof()[0]
    return [(d.txn.transaction_id, d.score, d.severity) for d in decided]


def test_a_batch_gives_what_one_item_at_a_time_gives():
    txns = _txns(600)
    items: list[Any] = []
    for i, t in enumerate(txns):
        items.append(t)
        if i % 7 == 6:  # watermarks now and then, a little behind
            items.append(Watermark("p0", txns[i - 3].ts_seconds, 1))
    one = _run(items, 1)
    assert len(one) == 600
    assert _run(items, 50) == one
    assert _run(items, len(items)) == one


def test_terminal_window_sums_from_the_previous_day_equal_the_full_sums():
    rng = random.Random(7)
    st = TerminalState()
    day = 86_400.0
    ts = 100 * day
    for _ in range(3_000):
        ts += rng.choice((60.0, 3_600.0, day, 3 * day, 12 * day, 40 * day))
        if rng.random() < 0.05:
            st.apply_label(ts - rng.random() * 5 * day, rng.random() < 0.3, ts)
        fresh = copy.deepcopy(st)
        fresh._past = None  # the long way: every window summed from its buckets
        assert st.features(ts) == fresh.features(ts)
        st.learn_txn(ts)


def test_observe_all_equals_one_observe_per_value():
    values = [0.0, 0.001, 0.5, 1.0, 2.5, 3.0, 7.0, 100.0, 1e9] * 3
    one = Histogram("h", "h", buckets=(0.5, 1, 2.5, 5), registry=(r1 := CollectorRegistry()))
    many = Histogram("h", "h", buckets=(0.5, 1, 2.5, 5), registry=(r2 := CollectorRegistry()))
    for v in values:
        one.observe(v)
    observe_all(many, values)
    def samples(r: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value for s in next(iter(r.collect())).samples
                if not s.name.endswith("_created")}

    assert samples(r1) == samples(r2)  # buckets, count and sum (exact here)


def test_without_a_label_input_nothing_is_kept_for_labels_and_scores_are_the_same():
    txns = _txns(300)
    runs = {}
    for labels in (True, False):
        cfg = stage_config(SETTINGS, 1, snapshots=False, labels=labels)
        term, user = TerminalStage("t0", cfg, None), UserStage("u0", cfg, None, "w")
        decided = user.on_batch(list(term.on_batch(txns)[0]) + list(term.on_eof()[0]))[0]
        decided = list(decided) + list(user.on_eof()[0])
        runs[labels] = ([(d.txn.transaction_id, d.score, d.severity) for d in decided],
                        len(user.pending))
    assert runs[True][1] == 300  # each scored transaction waits for its label...
    assert runs[False][1] == 0  # ...unless no label can come
    assert runs[False][0] == runs[True][0] and len(runs[True][0]) == 300


def test_terminal_sums_updated_by_each_label_equal_the_full_sums():
    """Every transaction labelled some days later (the handbook's protocol): the cached
    window sums take each label in and stay equal to summing the buckets again."""
    rng = random.Random(11)
    st = TerminalState()
    day = 86_400.0
    ts = 200 * day
    seen: list[tuple[float, bool]] = []
    for i in range(4_000):
        ts += rng.expovariate(1 / 5_000.0)
        while seen and seen[0][0] < ts - rng.choice((0.5, 2.0, 7.0)) * day:
            t0, fraud = seen.pop(0)
            st.apply_label(t0, fraud, ts)
        fresh = copy.deepcopy(st)
        fresh._past = None
        assert st.features(ts) == fresh.features(ts), i
        st.learn_txn(ts)
        seen.append((ts, rng.random() < 0.2))
    assert st._past is not None
