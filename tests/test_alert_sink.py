"""The PostgreSQL alert sink's partition against a real (embedded) PostgreSQL: its own thread
writes the rows, so the worker never waits on a round trip; a row stays in the recovery
snapshot until its transaction has committed; an unreachable database keeps every row, and
past the bound the worker is held back."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from operators.records import Decision, Reason, Txn
from sinks.migrate import migrate
from sinks.postgres import _AlertPartition, _Backlog, alert_row
from txwatch.embedded import free_port, wait_for
from txwatch.metrics import get_metrics

pytestmark = pytest.mark.integration


def _decision(i: int, score: float = 5.5) -> Decision:
    t = Txn(f"t{i}", "u1", Decimal("12.5"), datetime(2024, 1, 1, tzinfo=UTC)
            + timedelta(minutes=i), "EUR", Decimal("12.5"))
    return Decision(t, score, 3.5, "review", (Reason("amount_high", "5.0x the mean", 5.0),),
                    {"amount": 12.5, "amt_z": float("nan")}, {"anomaly": score}, "txw")


def _rows(dsn: str) -> dict[str, tuple[float, list, dict]]:
    with psycopg.connect(dsn) as c:
        return {r[0]: r[1:] for r in c.execute(
            "SELECT transaction_id, score, reasons, features FROM alerts")}


def _errors() -> float:
    return get_metrics().sink_errors.labels(sink="postgres")._value.get()


def test_rows_are_written_by_the_partitions_thread_and_leave_the_snapshot_once_committed(pg):
    migrate(pg)
    resumed = alert_row(_decision(0))  # a row of a recovery snapshot
    part = _AlertPartition(pg, batch_size=2, max_backlog=100, retry_max=1.0, resume=[resumed])
    try:
        part.write_batch([_decision(1), _decision(2, score=6.0), _decision(1, score=7.0)])
        wait_for(lambda: not part.snapshot() and len(_rows(pg)) == 3, timeout=30,
                 what="every row written and out of the snapshot")
        rows = _rows(pg)
        assert rows["t1"][0] == 7.0  # the last decision on a transaction wins
        assert rows["t2"][0] == 6.0 and rows["t0"][0] == 5.5
        assert rows["t2"][1] == [{"code": "amount_high", "text": "5.0x the mean", "value": 5.0}]
        assert rows["t2"][2] == {"amount": 12.5, "amt_z": None}  # NaN stored as null
    finally:
        part.close()


def test_the_worker_does_not_wait_for_a_write_in_progress(pg):
    migrate(pg)
    part = _AlertPartition(pg, batch_size=500, max_backlog=100, retry_max=1.0, resume=None)
    try:
        with psycopg.connect(pg) as other:
            # another transaction holds the table: the sink's insert waits for it
            other.execute("LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE")
            assert _written_soon(part, [_decision(1)])
            wait_for(lambda: _waiting_on_the_lock(pg), timeout=30,
                     what="the sink's insert waiting on the lock")
            # the worker's next batch is taken at once, and both rows stay in the recovery
            # snapshot while their write has not committed
            assert _written_soon(part, [_decision(2)])
            assert [r[0] for r in part.snapshot()] == ["t1", "t2"]
        # (the lock's transaction ends with the connection)
        wait_for(lambda: not part.snapshot() and len(_rows(pg)) == 2, timeout=30,
                 what="both rows written once the lock is gone")
    finally:
        part.close()


def _written_soon(part: _AlertPartition, batch: list[Decision]) -> bool:
    """Whether ``write_batch`` returns within 10 s (in a thread: a sink that waited for the
    database would otherwise hold this test until the lock is gone)."""
    done = threading.Event()
    threading.Thread(target=lambda: (part.write_batch(batch), done.set()), daemon=True).start()
    return done.wait(timeout=10)


def _waiting_on_the_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        return bool(c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()").fetchone()[0])


def test_an_unreachable_database_keeps_every_row_and_holds_the_worker_past_the_bound():
    dsn = f"postgresql://txwatch@127.0.0.1:{free_port()}/txwatch"  # nothing listens there
    errors = _errors()
    part = _AlertPartition(dsn, batch_size=500, max_backlog=3, retry_max=0.2, resume=None)
    held = threading.Thread(target=part.write_batch, args=([_decision(3), _decision(4)],))
    try:
        part.write_batch([_decision(1), _decision(2)])  # within the bound: returns at once
        wait_for(lambda: _errors() >= errors + 2, timeout=30, what="two failed writes")
        assert [r[0] for r in part.snapshot()] == ["t1", "t2"]
        held.start()  # four rows: past the bound, the worker waits for the database
        wait_for(lambda: _errors() >= errors + 4, timeout=30, what="two more failed writes")
        assert held.is_alive()
        assert [r[0] for r in part.snapshot()] == ["t1", "t2", "t3", "t4"]
        part.max_backlog = 10  # (room again, as when the writes drain the backlog)
        held.join(timeout=30)
        assert not held.is_alive()
    finally:
        if held.is_alive():
            part.max_backlog = 10
            held.join(timeout=30)
        part.close()  # gives up after its deadline, the rows still in the snapshot
        assert len(part.snapshot()) == 4
        _Backlog.add(-len(part.snapshot()))  # (the process-wide total other tests share)
