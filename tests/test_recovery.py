"""Fault tolerance: kill -9 during a run, restart from the last snapshot, exactly the alerts of an
uninterrupted run; snapshots of another state version are refused."""

from __future__ import annotations

import itertools
import json
import pickle
import random
import socket
import threading
import time
from typing import Any

import psycopg
import pytest

from operators.ordering import Watermark
from operators.records import Txn
from operators.stages import (
    READABLE,
    STATE_VERSION,
    IncompatibleSnapshot,
    StageConfig,
    TerminalStage,
    UserStage,
)
from producer.config import SimConfig
from sinks.migrate import migrate
from tests.helpers import ROOT, flow_env, run_worker
from tests.test_cluster import (
    LATENESS,
    alert_rows,
    assert_same_alerts,
    consume_n,
    fresh_db,
    produce_plain,
    sim_messages,
)
from txwatch.commands.cluster import Cluster, Outcome, committed_epoch
from txwatch.embedded import wait_for

KILLS = 3
SIM_RECOVERY = SimConfig(n_customers=300, n_terminals=600, n_days=20, seed=7)
"""About 11,000 transactions with every fraud scenario."""


@pytest.mark.integration
@pytest.mark.slow
def test_recovery_after_kill_9(broker, pg, pg_server, topics, tmp_path):
    migrate(pg)
    msgs = sim_messages(SIM_RECOVERY)
    n = produce_plain(broker.brokers, topics["transactions"], msgs)

    # reference: an uninterrupted run, one worker, no recovery
    res = run_worker(flow_env(broker.brokers, pg, topics, TXWATCH_LATENESS_SECONDS=LATENESS))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = alert_rows(pg)
    assert len(reference) > 300

    # the same input on 2 processes × 2 workers with recovery (1 s snapshots); a worker
    # process is killed with SIGKILL at random moments, the supervisor restarts the cluster
    decisions = topics["decisions"] + "-recovery"
    broker.create_topics([decisions], partitions=4)
    rng = random.Random()
    with fresh_db(pg_server) as pg2:
        # small fetches: the source reads less ahead, so epochs (and snapshots) come about
        # every second instead of one long first epoch holding half the backlog; the paced
        # source (100 messages/s per partition, about 28 s for the whole input) leaves every
        # generation work to do after its first snapshot, however fast the machine
        env = flow_env(broker.brokers, pg2, dict(topics, decisions=decisions),
                       TXWATCH_LATENESS_SECONDS=LATENESS, TXWATCH_KAFKA_BATCH_SIZE="20",
                       TXWATCH_KAFKA_MAX_RATE="100")
        cluster = Cluster(2, 2, env=env, cwd=ROOT, log_dir=tmp_path / "logs",
                          recovery_dir=tmp_path / "recovery", recovery_partitions=4,
                          snapshot_interval=1, backoff=0.2, backoff_max=1.0)
        outcome: dict[str, Any] = {}
        sup = threading.Thread(target=lambda: outcome.update(o=cluster.wait(timeout=180)))
        kills: list[tuple[int, int | None]] = []  # (generation, epoch it resumed from)
        rec = tmp_path / "recovery"
        try:
            cluster.start()
            sup.start()
            while len(kills) < KILLS:
                gen, resumed = cluster.generation, committed_epoch(rec)
                # let this generation commit a snapshot of its own (progress that a restart
                # keeps: with a backlog the first epoch holds much input and takes seconds)...
                wait_for(lambda r=resumed: (committed_epoch(rec) or -1) > (r or -1)
                         or not sup.is_alive(), timeout=90, what="a new snapshot")
                assert sup.is_alive(), f"the run ended after {len(kills)} kill(s)"
                # ...then kill one of its processes at a random moment (a deliberate random
                # wall-clock delay: the point is to hit arbitrary states of the run)
                time.sleep(rng.uniform(0.0, 1.5))
                if all(rc is None for rc in cluster.poll()) and \
                        cluster.kill_one(generation=gen) is not None:
                    kills.append((gen, resumed))
            sup.join(timeout=180)
        finally:
            cluster.stop()
            sup.join(timeout=30)
        got = alert_rows(pg2)
        with psycopg.connect(pg2) as c:
            rows, distinct = c.execute(
                "SELECT count(*), count(DISTINCT transaction_id) FROM alerts").fetchone()

    assert outcome.get("o") is Outcome.FINISHED, outcome
    assert cluster.restarts >= len(kills) >= KILLS, (cluster.restarts, kills)
    killed = [g for g, codes in enumerate(cluster.exit_codes, 1) if -9 in codes]
    assert killed == [g for g, _r in kills], (cluster.exit_codes, kills)
    # every restart after the first resumed from a snapshot, each one later than the last
    resumed = [r for _g, r in kills[1:]]
    assert all(r is not None for r in resumed) and resumed == sorted(resumed), kills
    # none lost, none duplicated, the same scores, severities, reasons and model version
    assert rows == distinct == len(reference)
    assert_same_alerts(got, reference)

    # the output before the table is at-least-once: every transaction has a decision, some
    # more than one (replayed after a restart), and each restart resumed from a snapshot
    # instead of from the beginning of the topic
    out = consume_n(broker.brokers, decisions, n, timeout=90)
    ids = [json.loads(m.value())["transaction_id"] for m in out]
    assert set(ids) == {json.loads(v)["transaction_id"] for _k, v in msgs}
    starts = [int(t * 1000) for t in cluster.started_at] + [2**62]
    per_gen = [sum(1 for m in out if a <= m.timestamp()[1] < b)
               for a, b in itertools.pairwise(starts)]
    assert sum(per_gen) == len(out) >= n
    # (a restart from the beginning would decide all n transactions again)
    assert all(k < n for k in per_gen[1:]), (per_gen, n)


# --- state versions --------------------------------------------------------------------------
def _txn(i: int) -> Txn:
    from datetime import UTC, datetime, timedelta

    from operators.parse import TxnParser
    from txwatch.settings import Settings

    ts = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    raw = json.dumps({"transaction_id": f"x{i}", "user_id": "u1", "amount": 10 + i,
                      "timestamp": ts.isoformat(), "terminal_id": "T1"}).encode()
    return TxnParser(Settings()).parse(raw, ts.timestamp() + 1)


def _with_version(snapshot: bytes, version: Any) -> bytes:
    snap = pickle.loads(snapshot)
    if version is None:
        del snap["version"]
    else:
        snap["version"] = version
    return pickle.dumps(snap)


@pytest.mark.parametrize("version", [STATE_VERSION + 1, min(READABLE) - 1, None])
def test_incompatible_snapshot_version_is_refused(version):
    cfg = StageConfig(source_partitions=1, terminal_shards=1, user_shards=1)
    term = TerminalStage("t0", cfg, None)
    user = UserStage("u0", cfg, None, "w")
    items: list[Any] = [_txn(i) for i in range(4)]
    items.insert(3, Watermark("p0", items[2].ts_seconds, 1))  # releases the first three
    decided = []
    for it in items:
        for out in term.on_item(it)[0]:
            decided += user.on_item(out)[0]
    assert len(decided) == 3 and len(term.buf) == 1  # state in the models and in a buffer
    tsnap, usnap = term.snapshot(), user.snapshot()

    # the same version restores (the round trip keeps the state)...
    t2, u2 = TerminalStage("t0", cfg, tsnap), UserStage("u0", cfg, usnap, "w")
    assert len(t2.buf) == 1 and t2.terminals.keys() == term.terminals.keys() == {"T1"}
    assert u2.users.keys() == {"u1"} and u2.pending.keys() == user.pending.keys()

    # ...another one is refused, naming the step, both versions and the way out
    for build, snap, step in (
        (lambda s: TerminalStage("t0", cfg, s), tsnap, "terminal"),
        (lambda s: UserStage("u0", cfg, s, "w"), usnap, "user"),
    ):
        with pytest.raises(IncompatibleSnapshot) as e:
            build(_with_version(snap, version))
        msg = str(e.value)
        assert f"step {step!r}" in msg
        assert f"state version {version}" in msg and f"{STATE_VERSION}" in msg.split("reads")[1]
        assert "Warm start" in msg and "fresh directory" in msg and "replay history" in msg


@pytest.mark.parametrize("old", [5, 6, 7, 8, 9])
def test_an_older_snapshot_is_migrated_and_scores_as_before(old: int):
    """State version 5 kept a user's day buckets as ``{day: [count, sum]}``; versions 5 and 6
    had no histogram of distances from home nor counts of channels, and kept ``(ts, amount)``
    as recent transactions; version 7 kept ``(ts, amount, km, card not present)``, not whether
    each was learnt; up to 8, what waits for a label did not say where the budgets counted it;
    up to 9, the recent transactions, home and the last location were tuples and the window
    cache was kept. This release reads them into its layout and goes on exactly as from its
    own snapshot (the transactions here carry no channel, a location only for 8 and 9, and
    none is flagged: there is nothing to lose); a fraud label for what an older release kept
    leaves the budgets as they are up to 8, and takes itself back out of them from 9 on."""
    from datetime import UTC, datetime, timedelta

    from operators.parse import TxnParser
    from operators.user import _FIELDS, _FIELDS_9, DAYS, REC, UserState
    from txwatch.settings import Settings

    parser = TxnParser(Settings(replay=True))
    t0 = datetime(2024, 1, 1, tzinfo=UTC)

    def txn(i: int, user: str) -> Txn:
        ts = t0 + timedelta(hours=7 * i)  # four a day or so, over 40 days
        msg = {"transaction_id": f"{user}-{i}", "user_id": user, "amount": 10 + (i * 13) % 70,
               "timestamp": ts.isoformat(), "terminal_id": f"T{i % 4}"}
        if old >= 8:  # (8 and 9 kept what a location teaches: home, distances, last location)
            msg.update(lat=50.85 + (i % 7) * 0.01, lon=4.35 - (i % 3) * 0.02)
        return parser.parse(json.dumps(msg).encode())

    from operators.detector import make_detector_factory

    cfg = StageConfig(source_partitions=1, terminal_shards=1, user_shards=1,
                      detector_factory=make_detector_factory(Settings()))
    stage = UserStage("u0", cfg, None, "w")
    for i in range(140):
        for user in ("a", "b"):
            stage._process(("t", txn(i, user), {}))
    current = stage.snapshot()

    at = {f: _FIELDS_9.index(f) for f in ("days", "dists", "recent", "n_channel", "n_cnp")}

    def layout_9(u: UserState) -> list[Any]:
        """The user as version 9 pickled it: recent as ``(ts, amount, km, card not present,
        learnt)`` tuples, home and the last location as tuples, and the window cache (here
        empty, as the first event of a day leaves it after a restore)."""
        now = dict(zip(_FIELDS, u.__getstate__(), strict=True))
        r = now["recent"]
        now["recent"] = [(r[j], r[j + 1], r[j + 2], r[j + 3], r[j + 4] > 0.0)
                         for j in range(0, len(r), REC)]
        now["home"] = ((now["home_lat"], now["home_lon"], now["home_w"]) if now["home_w"]
                       else None)
        now["last_loc"] = (now["last_lat"], now["last_lon"]) if now["has_loc"] else None
        now["past_days"] = None
        return [now[f] for f in _FIELDS_9]

    class OldUser:  # pickles as a UserState of state version `old`
        def __init__(self, u: UserState) -> None:
            st = layout_9(u)
            assert st[at["recent"]] and len(st) == len(_FIELDS_9)
            if old >= 8:
                self.st = tuple(st)
                return
            assert not any(st[at["dists"]]) and st[at["n_channel"]] == st[at["n_cnp"]] == 0
            assert all(dk == cnp == -1.0 and learnt is True
                       for _, _, dk, cnp, learnt in st[at["recent"]])
            if old == 7:
                st[at["recent"]] = [r[:4] for r in st[at["recent"]]]
                self.st = tuple(st)
                return
            st[at["recent"]] = [(t, a) for t, a, _, _, _ in st[at["recent"]]]
            if old == 5:
                ring = st[at["days"]]
                st[at["days"]] = {int(ring[j]): [ring[j + 1], ring[j + 2]]
                                  for j in range(0, 3 * DAYS, 3) if ring[j] >= 0}
            for f in sorted(("dists", "n_channel", "n_cnp"), key=at.get, reverse=True):
                del st[at[f]]
            self.st = tuple(st)

        def __reduce__(self) -> Any:
            return (UserState, (), self.st)

    snap = pickle.loads(current)
    assert snap["version"] == STATE_VERSION == 11 and {5, 6, 7, 8, 9, 10} <= set(READABLE)
    assert len(snap["users"]["a"].days) == 3 * DAYS  # the ring
    assert snap["pending"] and all(len(p.kept) == 4 for p in snap["pending"].values())
    snap.update(version=old, users={k: OldUser(u) for k, u in snap["users"].items()})
    if old <= 8:
        for p in snap["pending"].values():  # kept as 1.8 kept it: no budget bins
            p.kept = p.kept[:3] if p.kept[2] >= 0 else p.kept[:2]
    migrated = pickle.dumps(snap)

    later = [txn(i, user) for i in range(140, 180) for user in ("a", "b")]
    from_new, from_old = UserStage("u0", cfg, current, "w"), UserStage("u0", cfg, migrated, "w")
    plain = [i for i, f in enumerate(_FIELDS) if f not in ("model", "score_q")]
    for user in ("a", "b"):
        st_old, st_new = from_old.users[user].__getstate__(), from_new.users[user].__getstate__()
        assert [st_old[i] for i in plain] == [st_new[i] for i in plain]
    for t in later:
        (dn,), (do,) = from_new._process(("t", t, {})), from_old._process(("t", t, {}))
        assert do.score == dn.score and do.features == dn.features
    # a fraud label for what the older release kept: learnt, and the budget left as it is up
    # to 8 (where it was counted is not known); 9 knew where, and takes it back
    tid = next(iter(from_old.pending))
    det = from_old.detector
    mass, learnt = sum(det.budget.counts), det.labels_learnt
    det.learn_label(from_old.pending.pop(tid).kept, True)
    assert det.labels_learnt == learnt + 1
    assert sum(det.budget.counts) == mass if old <= 8 else sum(det.budget.counts) < mass


def test_river_supervised_model_of_version_10_is_carried_over():
    """Up to state version 10 the supervised model was river's ``LogisticRegression`` itself.
    This release reads it into its compiled model weight for weight, and goes on scoring and
    learning labels exactly as from its own snapshot of the same model."""
    from datetime import timedelta

    from river import linear_model, optim

    from operators.detector import SUP_KEYS, make_detector_factory, sup_dict
    from operators.models.logistic import OnlineLogistic
    from operators.records import label_of
    from txwatch.settings import Settings

    cfg = StageConfig(source_partitions=1, terminal_shards=1, user_shards=1,
                      detector_factory=make_detector_factory(Settings()))
    stage = UserStage("u0", cfg, None, "w")
    txns = [_txn(i * 37) for i in range(260)]
    for t in txns[:200]:
        stage._process(("t", t, {}))
    # the same supervised model both ways: river's, and this release's trained alike
    lr = stage.detector.p.sup_lr
    theirs = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
    ours = OnlineLogistic(SUP_KEYS, lr)
    rng = random.Random(7)
    for _ in range(300):
        values = [rng.gauss(0.0, 0.5) for _ in SUP_KEYS]
        bins = (f"amt:{rng.randrange(6)}", f"z:{rng.randrange(4)}")
        y = rng.random() < 0.3
        theirs.learn_one(sup_dict(values, bins), y)
        ours.learn(values, bins, y)
    snap = pickle.loads(stage.snapshot())
    det = dict(snap["detector"], frauds_learnt=100)  # the supervised model decides from here
    new = pickle.dumps(dict(snap, detector=dict(det, sup=ours)))
    old = pickle.dumps(dict(snap, version=10, detector=dict(det, sup=theirs)))
    from_new, from_old = UserStage("u0", cfg, new, "w"), UserStage("u0", cfg, old, "w")
    assert type(from_old.detector.sup) is OnlineLogistic and from_old.detector.sup == ours
    for t in txns[200:]:
        (dn,), (do,) = from_new._process(("t", t, {})), from_old._process(("t", t, {}))
        assert "supervised" in dn.components and do.score == dn.score
        assert do.components == dn.components
    for t in txns[200:240]:  # their labels, every third fraud: learnt alike
        lb = label_of(t, "fraud" if int(t.transaction_id[1:]) % 3 == 0 else "legit",
                      t.timestamp + timedelta(days=1))
        from_new._process(("l", lb))
        from_old._process(("l", lb))
    assert from_new.detector.labels_learnt == from_old.detector.labels_learnt == 40
    assert from_old.detector.sup == from_new.detector.sup != ours


@pytest.mark.integration
def test_resume_with_more_workers(broker, pg, pg_server, topics, tmp_path):
    """Scaling out keeps the state: a 1-worker run stopped by kill -9, resumed from its recovery
    directory by 2 processes × 2 workers, ends with the alerts of an uninterrupted run."""
    migrate(pg)
    produce_plain(broker.brokers, topics["transactions"], sim_messages(SIM_RECOVERY))
    res = run_worker(flow_env(broker.brokers, pg, topics, TXWATCH_LATENESS_SECONDS=LATENESS))
    assert res.returncode == 0, res.stderr[-3000:]
    reference = alert_rows(pg)

    rec = tmp_path / "recovery"
    with fresh_db(pg_server) as pg2:
        # paced (about 14 s for the whole input) so the 1-worker run is still going when killed
        env = flow_env(broker.brokers, pg2, topics, TXWATCH_LATENESS_SECONDS=LATENESS,
                       TXWATCH_KAFKA_BATCH_SIZE="100", TXWATCH_KAFKA_MAX_RATE="200")
        small = Cluster(1, 1, env=env, cwd=ROOT, log_dir=tmp_path / "logs", recovery_dir=rec,
                        recovery_partitions=4, snapshot_interval=1, max_restarts=0)
        big = Cluster(2, 2, env=dict(env, TXWATCH_KAFKA_MAX_RATE="0"), cwd=ROOT,
                      log_dir=tmp_path / "logs", recovery_dir=rec, snapshot_interval=1,
                      max_restarts=0)
        try:
            small.start()
            # kill as soon as a snapshot is committed and some alerts are out: on a quiet
            # machine the small run can otherwise finish before a later epoch
            wait_for(lambda: (committed_epoch(rec) or 0) >= 1 and len(alert_rows(pg2)) > 0,
                     timeout=90, what="a snapshot and the first alerts of the 1-worker run")
            assert small.kill_one() == 0
            small.stop()
            stopped_at = committed_epoch(rec)
            partial = len(alert_rows(pg2))
            big.start()
            assert big.wait(timeout=150) is Outcome.FINISHED
        finally:
            small.stop()
            big.stop()
        got = alert_rows(pg2)
    assert stopped_at is not None and 0 < partial <= len(reference)
    assert_same_alerts(got, reference)
    # both processes of the bigger cluster wrote alerts (`worker` is host:pid:thread)
    writers = {r[-1].rsplit(":", 1)[0] for r in got.values()}
    assert {f"{socket.gethostname()}:{pid}" for pid in big.pids()} <= writers
