"""Live mode: the hold timeout never lets a label overtake its own transaction.

The demo once showed "terminal fraud risk 200 % over 1 days". A transaction partition lagged;
the hold timeout (``max_hold``, wall clock) released what the live partitions had sent, up
to their latest event time, and with it the labels (label time = transaction time + a live
delay of some seconds) of transactions still on their way from the lagging partition. The
terminal counted those labels before their transactions. Not keying the release limit on
labels (``test_hold.py``) is not enough when the live partitions' transactions are later
than the labels: a held label is released only by the origins' watermark (``settled``), or
by a hold timeout once its transaction has been counted.
"""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

import operators.stages as stages
from dataflow.build import stage_config
from operators.ordering import NEVER_EXPIRES, EventTimeBuffer, Watermark
from operators.records import Label, Txn
from operators.stages import TerminalStage, dump_snapshot
from txwatch.commands.replay import replay_settings

T0 = 1.6e9
DAY = 86_400.0
RISK = ("term_risk_1d", "term_risk_7d", "term_risk_30d", "term_lab_risk_30d",
        "term_recent_lab_risk")


def _txn(tid: str, ts: float, term: str = "T1") -> Txn:
    return Txn(tid, "u-" + tid, Decimal("20.00"), datetime.fromtimestamp(ts, tz=UTC), "EUR",
               Decimal("20.00"), terminal_id=term)


def _label(tid: str, ts: float, delay: float, term: str = "T1", fraud: bool = True) -> Label:
    return Label(tid, "u-" + tid, term, "fraud" if fraud else "legit",
                 datetime.fromtimestamp(ts, tz=UTC), datetime.fromtimestamp(ts + delay, tz=UTC))


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    c = {"now": 1000.0}
    monkeypatch.setattr(stages, "_now", lambda: c["now"])
    return c


def _stage(partitions: int = 2, resume: bytes | None = None) -> TerminalStage:
    cfg = stage_config(replay_settings(logical_shards=1), partitions, snapshots=True,
                       max_hold=1.0)
    return TerminalStage("t0", cfg, resume)


def _order(out: list) -> list[tuple[str, str]]:
    return [(x[0], x[1].transaction_id) for x in out if x[0] in ("t", "l")]


def _check_risk(out: list) -> None:
    for x in out:
        if x[0] == "t":
            for k in RISK:
                assert 0.0 <= x[2].get(k, 0.0) <= 1.0, (x[1].transaction_id, k, x[2][k])


def test_a_label_is_not_released_by_the_hold_before_its_lagging_transaction(clock):
    st = _stage()
    out: list = []
    # p0 is live; b was made at p1 (lagging) 20 s before its label, which comes in with p0's
    # traffic; a (another terminal) is later than the label
    out += st.on_batch([_label("b", T0 + 5, 20), _txn("a", T0 + 30, "T2"),
                        Watermark("p0", T0 + 30, 2)])[0]
    clock["now"] += 2.0  # the hold is over
    out += st.on_notify()[0]
    assert _order(out) == [("t", "a")]  # a goes, b's label stays
    assert st.buf.watermark == T0 + 30 and len(st.buf) == 1
    assert st.notify_at() is None  # a held label wakes nothing up: no busy loop
    # b arrives: behind the released limit, processed at once, then its label
    out += st.on_batch([_txn("b", T0 + 5), Watermark("p1", T0 + 31, 2)])[0]
    assert _order(out) == [("t", "a"), ("t", "b"), ("l", "b")]
    assert st.terminals["T1"].days[int(T0 // DAY)] == [1, 1, 1]
    _check_risk(out)


def test_the_demo_symptom_two_labels_before_their_transactions(clock):
    # the old code: term_risk_1d == 2.0 for y (x counted, the labels of b and e not theirs)
    st = _stage()
    out: list = []
    out += st.on_batch([_txn("x", T0 + 1), _label("b", T0 + 5, 20), _label("e", T0 + 6, 20),
                        _txn("a", T0 + 30, "T2"), Watermark("p0", T0 + 30, 2)])[0]
    clock["now"] += 2.0
    out += st.on_notify()[0]
    out += st.on_batch([_txn("y", T0 + 40)])[0]
    clock["now"] += 2.0
    out += st.on_notify()[0]
    _check_risk(out)
    feats = {x[1].transaction_id: x[2] for x in out if x[0] == "t"}
    assert feats["y"]["term_risk_1d"] == 0.0  # b's and e's labels wait for b and e
    # p1 catches up: b and e are late, each followed by its label once counted
    out += st.on_batch([_txn("b", T0 + 5), _txn("e", T0 + 6)])[0]
    clock["now"] += 2.0
    out += st.on_notify()[0]  # (no p1 watermark yet: the hold releases the counted ones)
    order = _order(out)
    for tid in ("b", "e"):
        assert order.index(("t", tid)) < order.index(("l", tid))
    out += st.on_batch([_txn("z", T0 + 50), Watermark("p0", T0 + 50, 2),
                        Watermark("p1", T0 + 50, 2)])[0]
    feats = {x[1].transaction_id: x[2] for x in out if x[0] == "t"}
    assert feats["z"]["term_risk_1d"] == pytest.approx(2 / 4)  # x, b, e, y; b and e fraud
    _check_risk(out)


def test_a_late_label_of_a_counted_transaction_is_processed_at_once(clock):
    st = _stage()
    out: list = []
    out += st.on_batch([_txn("b", T0 + 5), _txn("a", T0 + 30, "T2"),
                        Watermark("p0", T0 + 30, 2)])[0]
    clock["now"] += 2.0
    out += st.on_notify()[0]
    assert st.buf.watermark == T0 + 30 and st.buf.settled == float("-inf")
    out += st.on_batch([_label("b", T0 + 5, 20), _label("c", T0 + 6, 20)])[0]
    assert _order(out) == [("t", "b"), ("t", "a"), ("l", "b")]  # c's transaction: not yet
    assert len(st.buf) == 1


def test_held_labels_survive_a_snapshot(clock):
    st = _stage()
    st.on_batch([_label("b", T0 + 5, 20), _txn("a", T0 + 30, "T2"),
                 Watermark("p0", T0 + 30, 2)])
    clock["now"] += 2.0
    st.on_notify()
    again = _stage(resume=st.snapshot())
    assert len(again.buf) == 1 and again.notify_at() is None
    clock["now"] += 100.0
    assert _order(list(again.on_notify()[0])) == []
    out = list(again.on_batch([_txn("b", T0 + 5), Watermark("p1", T0 + 31, 2)])[0])
    assert _order(out) == [("t", "b"), ("l", "b")]


def test_a_snapshot_from_before_held_items_restores_labels_as_held(clock):
    # d945586 and earlier wrote every arrival as 0.0; the stages say which keys are labels
    st = _stage()
    st.on_batch([_label("b", T0 + 5, 20), _txn("a", T0 + 30, "T2")])
    state = pickle.loads(st.snapshot())
    del state["version"]
    state["buf"]["heap"] = [(h[0], h[1], 0.0, h[3]) for h in state["buf"]["heap"]]
    again = _stage(resume=dump_snapshot(state))
    clock["now"] = 1e10
    assert _order(list(again.on_notify()[0])) == [("t", "a")]
    assert len(again.buf) == 1


def test_buffer_expire_releases_held_items_only_when_ready():
    buf = EventTimeBuffer(origins=2)
    buf.push((T0 + 25, 0, "b"), "label b", NEVER_EXPIRES)
    buf.push((T0 + 26, 0, "c"), "label c", NEVER_EXPIRES)
    buf.push((T0 + 20, 1, "x"), "x", 100.0)
    buf.push((T0 + 30, 1, "a"), "a", 100.0)
    assert buf.oldest_arrival() == 100.0
    assert buf.expire(101.0) == ["x", "a"]  # up to a's time, but no label
    assert buf.watermark == T0 + 30 and buf.settled == float("-inf")
    assert buf.oldest_arrival() is None
    assert buf.expire(1e9, lambda it: it == "label c") == ["label c"]
    buf.advance("p0", T0 + 40)
    assert buf.advance("p1", T0 + 24) == []  # settled below b's label time
    assert buf.advance("p1", T0 + 25) == ["label b"]
    assert len(buf) == 0


def test_without_a_hold_timeout_the_release_order_is_the_sort_key_order():
    # replay: watermarks only; held and other items come out exactly as from one heap
    rnd = random.Random(7)
    for _ in range(200):
        buf = EventTimeBuffer(origins=2)
        ref: list[tuple[tuple[float, int, str], int]] = []
        got: list[object] = []
        want: list[object] = []
        marks = {"p0": float("-inf"), "p1": float("-inf")}
        for n in range(40):
            if rnd.random() < 0.7:
                key = (float(rnd.randint(0, 30)), rnd.randint(0, 1), f"i{n}")
                if key[0] < buf.watermark:
                    continue
                buf.push(key, (key, n), NEVER_EXPIRES if key[1] == 0 else 5.0)
                ref.append((key, n))
            else:
                o = rnd.choice(("p0", "p1"))
                marks[o] = max(marks[o], float(rnd.randint(0, 30)))
                got += buf.advance(o, marks[o])
                wm = min(marks.values())
                ref.sort()
                want += [r for r in ref if r[0][0] <= wm]
                ref = [r for r in ref if r[0][0] > wm]
        assert got == want
        assert buf.drain() == sorted(ref)


def test_any_arrival_order_labels_after_their_transaction_ratios_at_most_one(clock):
    """Random lag of two transaction partitions and the labels topic, random hold
    timeouts: every label comes out after its transaction, every ratio is at most 1, and at
    the end the terminals count exactly what was sent."""
    rnd = random.Random(1)
    for _ in range(150):
        clock["now"] = 1000.0
        st = _stage()
        queues: dict[str, list] = {"p0": [], "p1": [], "labels": []}
        sent = []
        t = T0
        for i in range(30):  # the producer, in event-time order
            t += rnd.uniform(0.0, 3.0)
            p = rnd.choice(("p0", "p1"))
            tx = _txn(f"t{i}", t, rnd.choice(("T1", "T2")))
            queues[p] += [tx, Watermark(p, t, 2)]
            sent.append(tx)
        for tx in sent:  # labels: a few seconds later, in label-time order
            if rnd.random() < 0.6:
                queues["labels"].append(_label(tx.transaction_id, tx.ts_seconds,
                                               rnd.uniform(1.0, 8.0), tx.terminal_id or "",
                                               rnd.random() < 0.7))
        queues["labels"].sort(key=lambda lb: lb.label_ts)
        out: list = []
        while any(queues.values()):
            q = rnd.choice([q for q in queues.values() if q])
            k = rnd.randint(1, 4)
            out += st.on_batch(q[:k])[0]
            del q[:k]
            clock["now"] += rnd.uniform(0.0, 1.5)
            if rnd.random() < 0.5:
                out += st.on_notify()[0]
        out += st.on_eof()[0]
        _check_risk(out)
        order = _order(out)
        labelled = {x[1].transaction_id: x[1].is_fraud for x in out if x[0] == "l"}
        for tid in labelled:
            assert order.index(("t", tid)) < order.index(("l", tid)), order
        assert sorted(x[1] for x in order if x[0] == "t") == sorted(
            tx.transaction_id for tx in sent)
        for term in ("T1", "T2"):
            mine = [tx for tx in sent if tx.terminal_id == term]
            state = st.terminals.get(term)
            if state is None:
                continue
            totals = [sum(b[i] for b in state.days.values()) for i in range(3)]
            assert totals == [len(mine),
                              sum(1 for tx in mine if tx.transaction_id in labelled),
                              sum(1 for tx in mine if labelled.get(tx.transaction_id))]
