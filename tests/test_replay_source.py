"""The replay's file source: byte offsets of dead letters and of its snapshot, and the labels
waiting at a snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from dataflow.sources import ReplaySource
from operators.records import DeadLetter, Label, Txn
from txwatch.settings import Settings


def _line(i: int) -> bytes:
    return json.dumps({"transaction_id": f"t{i}", "user_id": "u1", "amount": 12.5,
                       "timestamp": f"2018-04-01T10:00:{i:02d}Z", "terminal_id": "T1"}).encode()


def test_offsets_and_resume_follow_the_bytes_of_the_file(tmp_path: Path) -> None:
    # CRLF and LF endings, a blank line and an invalid one: each dead letter carries the byte
    # offset of its line, and a snapshot taken between batches resumes at the next line
    raw = [_line(0) + b"\r\n", b"\n", b"{not json\n", _line(1) + b"\n", _line(2) + b"\r\n",
           b'{"transaction_id": "x"}\n', _line(3) + b"\n"]
    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"".join(raw))
    starts = [sum(len(r) for r in raw[:i]) for i in range(len(raw))]
    src = ReplaySource(str(path), Settings(replay=True), batch=4)
    part = src.build_part("input", "replay", None)
    first = part.next_batch()
    dead = [x for x in first if isinstance(x, DeadLetter)]
    assert [d.offset for d in dead] == [starts[2]]
    assert [t.transaction_id for t in first if isinstance(t, Txn)] == ["t0", "t1"]
    snap = part.snapshot()
    assert snap[0] == starts[4]
    part.close()

    again = src.build_part("input", "replay", snap)
    rest = again.next_batch()
    assert [t.transaction_id for t in rest if isinstance(t, Txn)] == ["t2", "t3"]
    assert [d.offset for d in rest if isinstance(d, DeadLetter)] == [starts[5]]
    assert again.snapshot()[0] == len(path.read_bytes())
    again.close()


def test_a_resumed_replay_emits_the_labels_that_were_waiting_at_the_snapshot(
        tmp_path: Path) -> None:
    # labels wait in the source (a day after their transaction here) and are not in its
    # snapshot: a replay resumed from it emits exactly what one uninterrupted replay emits
    def line(i: int) -> bytes:
        return json.dumps({"transaction_id": f"t{i}", "user_id": "u1", "amount": 12.5,
                           "timestamp": f"2018-04-{1 + i // 3:02d}T{8 + 4 * (i % 3):02d}:00:00Z",
                           "terminal_id": "T1", "is_fraud": int(i % 4 == 1)}).encode() + b"\n"

    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"".join(line(i) for i in range(12)) + b"{not json\n")
    src = ReplaySource(str(path), Settings(replay=True), label_delay=86_400.0, batch=5)

    def emitted(part, out):
        while True:
            try:
                batch = part.next_batch()
            except StopIteration:
                return out
            out += [(type(x).__name__, x.transaction_id) for x in batch
                    if isinstance(x, Txn | Label)]

    whole = emitted(src.build_part("input", "replay", None), [])
    first = src.build_part("input", "replay", None)
    head = [(type(x).__name__, x.transaction_id) for x in first.next_batch()
            if isinstance(x, Txn | Label)]
    snap = first.snapshot()
    first.close()
    assert first.labels  # some labels were waiting when the snapshot was taken
    resumed = emitted(src.build_part("input", "replay", snap), head)
    assert resumed == whole
    # every transaction labelled, once, but the last day's: due after the file ends
    assert sum(k == "Label" for k, _ in whole) == 9


def test_labels_due_after_the_last_transaction_never_arrive(tmp_path: Path) -> None:
    # the replayed stream's event time ends at its latest transaction: the labels due by then
    # go out, each after the transaction that passes its label time; the later ones are
    # counted, not emitted (they could change no score)
    from txwatch.commands.replay import run_replay

    stamps = ["2018-04-01T08:00:00Z", "2018-04-01T20:00:00Z", "2018-04-02T09:00:00Z",
              "2018-04-02T09:30:00Z", "2018-04-02T10:00:00Z", "2018-04-03T07:00:00Z"]
    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"".join(
        json.dumps({"transaction_id": f"t{i}", "user_id": f"u{i % 2}", "amount": 10.0 + i,
                    "timestamp": ts, "terminal_id": "T1", "is_fraud": i % 2}).encode() + b"\n"
        for i, ts in enumerate(stamps)))
    src = ReplaySource(str(path), Settings(replay=True), label_delay=86_400.0, batch=4)
    part = src.build_part("input", "replay", None)
    out: list[Txn | Label] = []
    while True:
        try:
            out += [x for x in part.next_batch() if isinstance(x, Txn | Label)]
        except StopIteration:
            break
    # due: t0 (04-02 08:00) before t2, t1 (04-02 20:00) before t5; t2..t5 are due after t5
    assert [(type(x).__name__, x.transaction_id) for x in out] == [
        ("Txn", "t0"), ("Txn", "t1"), ("Label", "t0"), ("Txn", "t2"), ("Txn", "t3"),
        ("Txn", "t4"), ("Label", "t1"), ("Txn", "t5")]
    assert src.labels_not_due == 4
    r = run_replay(str(path), str(tmp_path / "s.jsonl"), label_delay=86_400.0, progress=False)
    assert (r["lines"], r["labels_not_due"]) == (6, 4)
    assert run_replay(str(path), str(tmp_path / "n.jsonl"), label_delay=None,
                      progress=False)["labels_not_due"] == 0
