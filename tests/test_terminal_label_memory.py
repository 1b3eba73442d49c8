"""The terminal stage remembers which transactions have a label for a bounded time.

A later label for a transaction replaces the earlier one in the terminal's counts. To know
it is a replacement the stage keeps the ids of labelled transactions: two generations of
``LABEL_MEMORY`` of label time (the older dropped as a new one starts), so memory is bounded by
time, and a generation that reaches the count cap starts the next one early. Earlier, one dict
grew with every label and was cleared at the cap, so a replacement of a label received a
minute earlier could be counted twice.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from decimal import Decimal

from dataflow.build import stage_config
from operators.ordering import Watermark
from operators.records import Label, Txn
from operators.stages import LABEL_MEMORY, TerminalStage, dump_snapshot
from txwatch.commands.replay import replay_settings

DAY = 86_400.0
T0 = 1.6e9


def _txn(tid: str, ts: float) -> Txn:
    return Txn(tid, "u1", Decimal("20.00"), datetime.fromtimestamp(ts, tz=UTC), "EUR",
               Decimal("20.00"), terminal_id="T1")


def _label(tid: str, ts: float, label_ts: float, label: str = "fraud") -> Label:
    return Label(tid, "u1", "T1", label, datetime.fromtimestamp(ts, tz=UTC),
                 datetime.fromtimestamp(label_ts, tz=UTC))


def _stage(**cfg: object) -> TerminalStage:
    c = stage_config(replay_settings(logical_shards=1), 1, snapshots=True, **cfg)
    return TerminalStage("t0", c, None)


def _feed(stage: TerminalStage, items: list[object], until: float) -> None:
    stage.on_batch([*items, Watermark("replay", until, 1)])


def _day_counts(stage: TerminalStage, ts: float) -> list[int]:
    return stage.terminals["T1"].days[int(ts // DAY)]


def test_a_later_label_replaces_the_earlier_one_in_the_terminal_counts():
    stage = _stage()
    _feed(stage, [_txn("a", T0), _txn("b", T0 + 60)], T0 + 60)
    _feed(stage, [_label("a", T0, T0 + DAY, "fraud")], T0 + DAY)
    assert _day_counts(stage, T0) == [2, 1, 1]
    # an analyst says legit two weeks later: a replacement, not a second label
    _feed(stage, [_label("a", T0, T0 + 14 * DAY, "legit")], T0 + 14 * DAY)
    assert _day_counts(stage, T0) == [2, 1, 0]


def test_ids_older_than_two_generations_are_forgotten_and_recent_ones_kept():
    stage = _stage()
    n_days = 200
    for d in range(n_days):
        ts = T0 + d * DAY
        _feed(stage, [_txn(f"t{d}", ts)], ts)
        _feed(stage, [_label(f"t{d}", ts, ts + 1.0)], ts + 1.0)
    remembered = set(stage.labels) | set(stage.old_labels)
    # bounded by time: at most two generations of LABEL_MEMORY days, not all 200 days
    assert len(remembered) <= 2 * LABEL_MEMORY / DAY + 1
    assert "t0" not in remembered
    # and at least one generation: every label of the last LABEL_MEMORY is still known
    recent = {f"t{d}" for d in range(n_days) if (n_days - 1 - d) * DAY < LABEL_MEMORY}
    assert recent <= remembered


def test_at_the_count_cap_recent_labels_are_still_replaced():
    stage = _stage(max_pending_labels=8)  # a generation holds at most 2 * 8 ids
    for i in range(40):
        ts = T0 + i * 60.0
        _feed(stage, [_txn(f"t{i}", ts)], ts)
        _feed(stage, [_label(f"t{i}", ts, ts + 1.0)], ts + 1.0)
    assert len(stage.labels) + len(stage.old_labels) <= 2 * 16 + 2
    before = _day_counts(stage, T0 + 39 * 60.0)[2]
    # the last label, received a moment ago, is replaced rather than counted twice
    ts = T0 + 39 * 60.0
    _feed(stage, [_label("t39", ts, ts + 120.0, "legit")], ts + 120.0)
    assert _day_counts(stage, ts)[2] == before - 1


def test_the_memory_survives_a_snapshot_and_an_older_snapshot_is_read():
    stage = _stage()
    _feed(stage, [_txn("a", T0)], T0)
    _feed(stage, [_label("a", T0, T0 + DAY)], T0 + DAY)
    again = TerminalStage("t0", stage.cfg, stage.snapshot())
    _feed(again, [_label("a", T0, T0 + 2 * DAY, "legit")], T0 + 2 * DAY)
    assert _day_counts(again, T0) == [1, 1, 0]
    # a snapshot of an earlier release: one dict, no generations
    snap = pickle.loads(stage.snapshot())
    old = {k: v for k, v in snap.items() if k not in ("old_labels", "labels_since", "version")}
    old["labels"] = {"a": True}
    restored = TerminalStage("t0", stage.cfg, dump_snapshot(old))
    _feed(restored, [_label("a", T0, T0 + 2 * DAY, "legit")], T0 + 2 * DAY)
    assert _day_counts(restored, T0) == [1, 1, 0]
