"""``TXWATCH_KAFKA_MAX_RATE`` paces the transactions source (a backfill that leaves room for
live traffic): the partition reads a batch, then asks Bytewax to wake it when the batch is
paid for, and reads nothing before then. Driven on the real source against the real broker."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from dataflow.sources import LabelSource, TransactionSource
from operators.records import Txn
from tests.helpers import produce, tx
from txwatch.embedded import wait_for
from txwatch.settings import Settings


def _settings(broker, topics, **kw) -> Settings:
    return Settings(kafka_brokers=broker.brokers, transactions_topic=topics["transactions"],
                    labels_topic=topics["labels"], kafka_tail=False, metrics_port=0, **kw)


def _read_until(part, want: int) -> list[object]:
    got: list[object] = []

    def more() -> bool:
        got.extend(x for x in part.next_batch() if isinstance(x, Txn))
        return len(got) >= want
    wait_for(more, timeout=30, what=f"{want} transactions from the partition")
    return got


@pytest.mark.integration
def test_max_rate_paces_each_partition(broker, topics):
    topic = topics["transactions"] + "-one"
    broker.create_topics([topic], partitions=1)
    msgs = [(b"u1", tx(f"t{i}", "u1", 10, f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z"))
            for i in range(50)]
    produce(broker.brokers, topic, msgs)
    src = TransactionSource(_settings(broker, dict(topics, transactions=topic),
                                      kafka_max_rate=20.0, kafka_batch_size=10))
    part = src.build_part("in", src.list_parts()[0], None)
    try:
        before = time.time()
        first = _read_until(part, 1)
        wake = part.next_awake()
        # a batch of n waits n / rate seconds before the next read...
        assert 1 <= len(first) <= 10
        assert wake is not None and wake.timestamp() >= before + len(first) / 20.0 - 0.01
        if wake > datetime.now(UTC):
            assert part.next_batch() == []  # ...and reads nothing if called early
        # the partition still delivers everything, in order
        rest = _read_until(part, 50 - len(first)) if len(first) < 50 else []
        assert [t.transaction_id for t in first + rest] == [f"t{i}" for i in range(50)]
    finally:
        part.close()


@pytest.mark.integration
def test_no_limit_and_labels_are_never_paced(broker, topics):
    s = _settings(broker, topics, kafka_max_rate=0.0)
    part = TransactionSource(s).build_part("in", TransactionSource(s).list_parts()[0], None)
    try:
        assert part.next_awake() is None
    finally:
        part.close()
    paced = _settings(broker, topics, kafka_max_rate=5.0)
    lab = LabelSource(paced).build_part("l", LabelSource(paced).list_parts()[0], None)
    try:
        assert lab.max_rate == 0.0
    finally:
        lab.close()


def test_negative_rate_is_refused():
    with pytest.raises(ValueError, match="kafka_max_rate"):
        Settings(kafka_max_rate=-1)
