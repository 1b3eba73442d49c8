"""``producer.kafka`` and ``txwatch produce`` against the embedded broker: keys, counts, content,
labels, live and history timestamps, stopping, and delivery failures."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from operators.parse import TxnParser, parse_label
from producer.config import CardTesting, SimConfig, Spree, Takeover
from producer.kafka import produce_stream
from producer.labels import LabelPolicy, investigated
from producer.simulator import iter_transactions
from producer.stream import epoch_of, history_then_live, replay_stream
from txwatch.cli import main
from txwatch.embedded import EmbeddedBroker, free_port, wait_for
from txwatch.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CFG = SimConfig(
    n_customers=200, n_terminals=400, n_days=30, seed=3,
    card_testing=CardTesting(per_1000_customers=10.0),
    takeover=Takeover(per_1000_customers=10.0),
    spree=Spree(per_1000_customers=10.0),
)
SIM_ARGS = ["--customers", "200", "--terminals", "400", "--days", "30", "--seed", "3", "--quiet"]


def _settings(broker: EmbeddedBroker, topics: dict[str, str]) -> Settings:
    return Settings(kafka_brokers=broker.brokers, transactions_topic=topics["transactions"],
                    labels_topic=topics["labels"])


def _env(monkeypatch: pytest.MonkeyPatch, broker: EmbeddedBroker,
         topics: dict[str, str]) -> None:
    monkeypatch.setenv("TXWATCH_KAFKA_BROKERS", broker.brokers)
    monkeypatch.setenv("TXWATCH_TRANSACTIONS_TOPIC", topics["transactions"])
    monkeypatch.setenv("TXWATCH_LABELS_TOPIC", topics["labels"])


def _consume(brokers: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """Exactly the ``n`` messages expected (all partitions assigned explicitly, no group);
    a short final poll makes sure no more arrive."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "producer-tests",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Any] = []

        def more() -> bool:
            for m in c.consume(1000, 0.2):
                if m.error():
                    raise RuntimeError(m.error())
                out.append(m)
            return len(out) >= n

        wait_for(more, timeout=timeout, what=f"{n} messages on {topic}")
        out += [m for m in c.consume(1000, 0.5) if not m.error()]
        return out
    finally:
        c.close()


def _expected_labels(recs: list[dict[str, Any]], policy: LabelPolicy) -> dict[str, Any]:
    out = {}
    for r in recs:
        lb = policy.label_for(r, datetime.fromtimestamp(epoch_of(r["timestamp"]), tz=UTC))
        if lb is not None:
            out[lb.transaction_id] = lb
    return out


def test_replay_sends_transactions_and_labels_keyed_by_user(
        broker: EmbeddedBroker, topics: dict[str, str]) -> None:
    n = 3000
    expected = list(itertools.islice(iter_transactions(CFG), n))
    policy = LabelPolicy(delay_seconds=7 * 86400, legit_share=0.05)
    stats = produce_stream(_settings(broker, topics), replay_stream(iter_transactions(CFG)),
                           labels=policy, max_events=n)
    want_labels = _expected_labels(expected, policy)
    assert stats.ok and not stats.interrupted
    assert stats.transactions == n and stats.labels == len(want_labels)
    assert stats.delivered == n + len(want_labels) and stats.labels_pending == 0

    msgs = _consume(broker.brokers, topics["transactions"], n)
    assert len(msgs) == n
    got = {}
    parser = TxnParser(Settings(replay=True))
    last_by_user: dict[str, tuple[int, float]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        rec = json.loads(m.value())
        assert m.key().decode() == rec["user_id"]
        parser.parse(m.value())
        got[rec["transaction_id"]] = rec
        # one partition per user, in time order within it
        part, t = last_by_user.get(rec["user_id"], (m.partition(), float("-inf")))
        assert part == m.partition() and t <= epoch_of(rec["timestamp"])
        last_by_user[rec["user_id"]] = (m.partition(), epoch_of(rec["timestamp"]))
    assert got == {r["transaction_id"]: r for r in expected}

    lmsgs = _consume(broker.brokers, topics["labels"], len(want_labels))
    assert len(lmsgs) == len(want_labels)
    frauds = {r["transaction_id"] for r in expected if r["is_fraud"]}
    assert frauds and frauds <= set(want_labels)
    for m in lmsgs:
        lb = parse_label(m.value())
        assert m.key().decode() == lb.user_id
        assert lb == want_labels[lb.transaction_id]
        assert (lb.label_time - lb.transaction_time).total_seconds() == 7 * 86400


def test_cli_live_mode_stamps_now_and_sends_due_labels(
        broker: EmbeddedBroker, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, broker, topics)
    t0 = time.time()
    rc = main(["produce", *SIM_ARGS, "--max-events", "500", "--max-speed",
               "--label-delay", "0s", "--label-share", "0.2"])
    t1 = time.time()
    assert rc == 0
    msgs = _consume(broker.brokers, topics["transactions"], 500)
    assert len(msgs) == 500
    recs = [json.loads(m.value()) for m in msgs]
    assert all(m.key().decode() == r["user_id"] for m, r in zip(msgs, recs, strict=True))
    assert all(t0 - 0.001 <= epoch_of(r["timestamp"]) <= t1 for r in recs)
    prefixes = {r["transaction_id"].rsplit("-", 1)[0] for r in recs}
    assert len(prefixes) == 1 and prefixes != {"tx"}  # unique per live run
    parser = TxnParser(Settings())  # live bounds on: timestamps are now
    for m in msgs:
        parser.parse(m.value())
    want = {r["transaction_id"] for r in recs
            if r["is_fraud"] or investigated(r["transaction_id"], 0.2)}
    lmsgs = _consume(broker.brokers, topics["labels"], len(want))
    labels = [parse_label(m.value()) for m in lmsgs]
    assert {lb.transaction_id for lb in labels} == want
    assert all(lb.label_time == lb.transaction_time for lb in labels)
    assert all(m.key().decode() == lb.user_id for m, lb in zip(lmsgs, labels, strict=True))


def test_history_then_live(broker: EmbeddedBroker, topics: dict[str, str]) -> None:
    cfg = SimConfig(n_customers=100, n_terminals=300, n_days=10, seed=4)
    n_hist = sum(1 for r in iter_transactions(cfg)
                 if epoch_of(r["timestamp"]) < cfg.start_epoch + 3 * 86400)
    t0 = time.time()
    records = history_then_live(iter_transactions(cfg), history_days=3,
                                start=cfg.start_epoch, rate=2000.0)
    stats = produce_stream(_settings(broker, topics), records,
                           labels=LabelPolicy(delay_seconds=30, legit_share=0.05),
                           label_clock=time.time, max_events=n_hist + 50)
    t1 = time.time()
    assert stats.ok and stats.transactions == n_hist + 50
    msgs = _consume(broker.brokers, topics["transactions"], n_hist + 50)
    recs = sorted((json.loads(m.value()) for m in msgs), key=lambda r: r["transaction_id"])
    ts = [epoch_of(r["timestamp"]) for r in recs]
    hist, live = ts[:n_hist], ts[n_hist:]
    assert t0 - 3 * 86400 - 1 <= min(hist) and max(hist) <= t1  # the last 3 days, ending now
    assert max(hist) > t0 - 6 * 3600  # the simulated evening before midnight
    assert all(t0 <= t <= t1 for t in live)
    # labels 30 s after their transaction: history ones are due at once, recent ones wait
    lmsgs = _consume(broker.brokers, topics["labels"], stats.labels)
    labels = [parse_label(m.value()) for m in lmsgs]
    assert len(labels) == stats.labels > 0
    assert all(lb.label_time.timestamp() <= t1 for lb in labels)
    assert stats.labels_pending > 0
    assert all((lb.label_time - lb.transaction_time).total_seconds() == 30 for lb in labels)


def test_cli_compressed_history_then_paced_live(
        broker: EmbeddedBroker, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SimConfig(n_customers=50, n_terminals=100, n_days=3, seed=9)
    n_hist = sum(1 for r in iter_transactions(cfg)
                 if epoch_of(r["timestamp"]) < cfg.start_epoch + 2 * 86400)
    _env(monkeypatch, broker, topics)
    t0 = time.time()
    rc = main(["produce", "--customers", "50", "--terminals", "100", "--days", "3", "--seed",
               "9", "--history-days", "2", "--compress", "5", "--max-events", str(n_hist + 5),
               "--label-delay", "1s", "--quiet"])
    t1 = time.time()
    assert rc == 0
    msgs = _consume(broker.brokers, topics["transactions"], n_hist + 5)
    recs = sorted((json.loads(m.value()) for m in msgs), key=lambda r: r["transaction_id"])
    hist = [epoch_of(r["timestamp"]) for r in recs[:n_hist]]
    assert t0 - 2 * 5 - 0.01 <= min(hist) and max(hist) <= t1  # 2 days squeezed into 10 s
    assert all(t0 <= epoch_of(r["timestamp"]) <= t1 for r in recs[n_hist:])


def test_duration_ends_a_paced_run(broker: EmbeddedBroker, topics: dict[str, str]) -> None:
    stats = produce_stream(_settings(broker, topics), iter_transactions(CFG), rate=100.0,
                           duration=0.5)
    assert not stats.interrupted and stats.ok
    assert 0.5 <= stats.elapsed_seconds < 5
    # paced: never faster than the rate (a loaded machine may send fewer, never more)
    assert 1 <= stats.transactions <= 100 * stats.elapsed_seconds + 2
    assert len(_consume(broker.brokers, topics["transactions"], stats.transactions)) == (
        stats.transactions)


def test_stop_event_interrupts_and_flushes(broker: EmbeddedBroker,
                                           topics: dict[str, str]) -> None:
    stop = threading.Event()

    def records() -> Iterator[dict[str, Any]]:
        for i, r in enumerate(iter_transactions(CFG)):
            if i == 120:
                stop.set()
            yield r

    stats = produce_stream(_settings(broker, topics), records(), stop_event=stop,
                           labels=LabelPolicy())
    assert stats.interrupted and stats.ok
    assert 120 <= stats.transactions <= 121
    assert stats.labels == 0 and stats.labels_pending > 0  # no labels after a stop
    msgs = _consume(broker.brokers, topics["transactions"], stats.transactions)
    assert len(msgs) == stats.transactions == stats.delivered


def test_cli_replays_a_file(broker: EmbeddedBroker, topics: dict[str, str],
                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    assert main(["simulate", "--out", str(path), *SIM_ARGS, "--days", "3"]) == 0
    lines = path.read_text().splitlines()
    _env(monkeypatch, broker, topics)
    assert main(["produce", "--from", str(path), "--replay", "--max-speed", "--no-labels",
                 "--strip-truth", "--quiet"]) == 0
    msgs = _consume(broker.brokers, topics["transactions"], len(lines))
    got = {json.loads(m.value())["transaction_id"]: json.loads(m.value()) for m in msgs}
    assert len(msgs) == len(lines)
    for line in lines:
        rec = json.loads(line)
        assert got[rec["transaction_id"]] == {
            k: v for k, v in rec.items() if k not in ("is_fraud", "fraud_scenario")}
    assert _consume(broker.brokers, topics["labels"], 0) == []


def test_ctrl_c_stops_cleanly_with_130(broker: EmbeddedBroker, topics: dict[str, str]) -> None:
    env = {**os.environ, "TXWATCH_KAFKA_BROKERS": broker.brokers,
           "TXWATCH_TRANSACTIONS_TOPIC": topics["transactions"],
           "TXWATCH_LABELS_TOPIC": topics["labels"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "txwatch.cli", "produce", *SIM_ARGS, "--rate", "200"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        c = Consumer({"bootstrap.servers": broker.brokers, "group.id": "ctrl-c"})
        parts = c.list_topics(topics["transactions"], timeout=10).topics[
            topics["transactions"]].partitions
        c.assign([TopicPartition(topics["transactions"], p, OFFSET_BEGINNING) for p in parts])
        wait_for(lambda: any(not m.error() for m in c.consume(100, 0.2)), timeout=30,
                 what="the first transactions")
        c.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-500:]
    assert b"0 failed" in err
    n = int(err.decode().rsplit("\n", 2)[-2].split(" transactions")[0].replace(",", ""))
    assert n > 0
    assert len(_consume(broker.brokers, topics["transactions"], n)) == n


def test_delivery_failures_are_counted_and_fail_the_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = Settings(kafka_brokers=dead)
    stats = produce_stream(settings, itertools.islice(iter_transactions(CFG), 10),
                           producer_config={"message.timeout.ms": 1000}, flush_timeout=15)
    assert stats.transactions == 10 and stats.failed == 10 and stats.delivered == 0
    assert not stats.ok and stats.first_error
    monkeypatch.setenv("TXWATCH_KAFKA_BROKERS", dead)
    monkeypatch.setenv("TXWATCH_KAFKA_EXTRA_CONFIG", '{"message.timeout.ms": "1000"}')
    assert main(["produce", *SIM_ARGS, "--max-events", "5", "--max-speed", "--no-labels"]) == 1
