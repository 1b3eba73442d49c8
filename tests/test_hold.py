"""The hold timeout (live mode) never releases a label before its transaction.

A quiet or lagging partition would hold every transaction in the ordering buffers; after
``max_hold`` seconds of wall clock they are released anyway. Labels are not: the release
moves the stage's watermark up to what it releases, and a label's event time (its
``label_time``) is later than its transaction's, which may still be on its way. Before this,
the live demo once showed "terminal fraud risk 200 % over 1 days".
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

import operators.stages as stages
from dataflow.build import stage_config
from operators.ordering import NEVER_EXPIRES, EventTimeBuffer, Watermark
from operators.records import Label, Txn
from operators.stages import TerminalStage
from operators.terminal import TerminalState
from txwatch.commands.replay import replay_settings

T0 = 1.6e9


def _txn(tid: str, ts: float) -> Txn:
    return Txn(tid, "u1", Decimal("20.00"), datetime.fromtimestamp(ts, tz=UTC), "EUR",
               Decimal("20.00"), terminal_id="T1")


def _label(tid: str, ts: float, delay: float) -> Label:
    return Label(tid, "u1", "T1", "fraud", datetime.fromtimestamp(ts, tz=UTC),
                 datetime.fromtimestamp(ts + delay, tz=UTC))


def test_a_held_label_never_expires_and_keeps_no_wakeup_pending():
    buf = EventTimeBuffer(origins=2)
    buf.push((T0 + 90_000, 0, "b"), "label of b", NEVER_EXPIRES)
    assert buf.oldest_arrival() is None  # nothing a timeout may release: no wake-up
    assert buf.expire(arrived_before=1e12) == []
    assert buf.watermark == float("-inf")
    buf.push((T0, 1, "a"), "a", 100.0)
    assert buf.oldest_arrival() == 100.0
    assert buf.expire(arrived_before=101.0) == ["a"]  # the transaction, not the label
    assert buf.watermark == T0 and len(buf) == 1 and buf.oldest_arrival() is None
    # a snapshot keeps it so
    again = EventTimeBuffer.restore(buf.snapshot())
    assert again.oldest_arrival() is None and again.expire(1e12) == []
    # a watermark past its label time releases it
    again.advance("p0", T0 + 90_001)
    assert again.advance("p1", T0 + 90_001) == ["label of b"]


def test_a_label_waits_for_its_transaction_from_a_lagging_partition(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(stages, "_now", lambda: clock["now"])
    cfg = stage_config(replay_settings(logical_shards=1), 2, snapshots=False, max_hold=1.0)
    stage = TerminalStage("t0", cfg, None)
    day = 86_400.0
    # p0 is live: transaction a, then b's label (b was made at p1, which lags)
    out = list(stage.on_batch([_txn("a", T0), Watermark("p0", T0, 2),
                               _label("b", T0 + 10, 7 * day),
                               Watermark("p0", T0 + 7 * day + 20, 2)])[0])
    assert out == []  # p1 has not spoken: everything is held
    clock["now"] += 2.0  # the hold is over
    released = [x for x in stage.on_notify()[0] if x[0] == "t"]
    assert [x[1].transaction_id for x in released] == ["a"]
    assert stage.notify_at() is None  # only the label is left, and it does not expire
    # b arrives from p1 now: not late, and counted before its label
    stage.on_batch([_txn("b", T0 + 10)])
    assert stage.bm.late == 0
    out = list(stage.on_batch([Watermark("p1", T0 + 7 * day + 20, 2)])[0])
    assert [x[1].transaction_id for x in out if x[0] == "t"] == ["b"]
    term = stage.terminals["T1"]
    assert term.days[int(T0 // day)] == [2, 1, 1]  # two transactions, one labelled fraud
    feats = term.features(T0 + 3600)
    assert feats["term_risk_1d"] == pytest.approx(0.5)


def test_labels_of_transactions_the_terminal_never_counted_keep_the_ratio_at_most_one():
    # e.g. labels of transactions sent before the flow started reading the topic
    st = TerminalState()
    st.learn_txn(T0)
    for i in range(3):
        st.apply_label(T0 + i, True, T0 + 86_400 * 7)
    f = st.features(T0 + 60)
    assert f["term_risk_1d"] == 1.0 and f["term_risk_7d"] == 1.0
    assert all(0.0 <= f[k] <= 1.0 for k in f if "risk" in k)
    assert f["term_last3_frauds"] == 3.0  # the labels still say the terminal is compromised


def test_the_hold_waits_while_every_partition_advances_and_releases_a_quiet_one(monkeypatch):
    # catching up on a backlog: p1 is behind p0 in event time, but its watermark keeps
    # advancing, so the watermarks release in event-time order however long the wait; only a
    # partition gone quiet lets the hold release
    clock = {"now": 1000.0}
    monkeypatch.setattr(stages, "_now", lambda: clock["now"])
    cfg = stage_config(replay_settings(logical_shards=1), 2, snapshots=False, max_hold=1.0)
    stage = TerminalStage("t0", cfg, None)

    def txns(out) -> list[str]:
        return [x[1].transaction_id for x in out if x[0] == "t"]

    assert txns(stage.on_batch([_txn("a", T0 + 100), Watermark("p0", T0 + 100, 2),
                                Watermark("p1", T0 + 10, 2)])[0]) == []
    for step in range(1, 4):  # p1 advances every 0.8 s, a waits 2.4 s
        clock["now"] += 0.8
        assert txns(stage.on_batch([Watermark("p1", T0 + 10 + step, 2)])[0]) == []
        assert txns(stage.on_notify()[0]) == []
        assert stage.notify_at().timestamp() == pytest.approx(clock["now"] + 1.0)
    # b, from p1, is earlier than a: it goes first, and is not late
    out = stage.on_batch([_txn("b", T0 + 50), _txn("c", T0 + 150),
                          Watermark("p1", T0 + 120, 2)])[0]
    assert txns(out) == ["b", "a"] and stage.bm.late == 0
    # then p1 goes quiet (p0 goes on): after max_hold, the hold releases c
    stage.on_batch([Watermark("p0", T0 + 200, 2)])
    clock["now"] += 0.9
    assert txns(stage.on_notify()[0]) == []
    clock["now"] += 0.2
    assert txns(stage.on_notify()[0]) == ["c"]
