"""Detection: determinism, no label leakage, score before learn, cold start, reasons,
eviction and snapshot/restore — on the real operators, driven by bytewax.testing."""

from __future__ import annotations

import itertools
import json
import pickle
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.build import FlowIO, build_flow, stage_config
from operators.ordering import Watermark
from operators.parse import TxnParser
from operators.reasons import explain
from operators.records import Decision, Label
from operators.stages import IncompatibleSnapshot, UserStage
from operators.user import UserState
from producer.config import SimConfig
from producer.simulator import iter_transactions
from txwatch.commands.replay import replay_settings, run_replay

T0 = datetime(2018, 4, 1, tzinfo=UTC)
SETTINGS = replay_settings(metrics_port=0)


def txn(tid: str, user: str, amount: float, when: datetime, **kw):
    raw = json.dumps({"transaction_id": tid, "user_id": user, "amount": amount,
                      "timestamp": when.isoformat(), **kw}).encode()
    return TxnParser(SETTINGS).parse(raw)


def run_items(items: list, settings=SETTINGS) -> dict[str, Decision]:
    """Run the real flow over parsed items (Txn / Label), in order, with a final watermark."""
    items = [*items, Watermark("test", float("inf"), 1)]
    out: list = []
    io = FlowIO(transactions=TestingSource(items), use_labels=False, use_controls=False,
                labels_in_transactions=True,
                alerts=TestingSink([]), dead_letters=TestingSink([]),
                decisions=TestingSink(out))
    run_main(build_flow(settings, io))
    return {d.txn.transaction_id: d for d in out}


def history(user: str, n: int, amount: float = 40.0, terminal: str = "T1", start=T0,
            every=timedelta(hours=9)) -> list:
    return [txn(f"{user}-{i}", user, amount + (i % 5), start + i * every, terminal_id=terminal,
                lat=50.85, lon=4.35, country="BE") for i in range(n)]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sim") / "tx.jsonl"
    cfg = SimConfig(n_customers=150, n_terminals=300, n_days=35, seed=5)
    with p.open("w") as f:
        for r in iter_transactions(cfg):
            f.write(json.dumps(r) + "\n")
    return p


def _scores(path: Path) -> dict[str, float]:
    return {json.loads(x)["transaction_id"]: json.loads(x)["score"] for x in path.open()}


def test_same_scores_with_1_and_4_workers_and_across_runs(sim_file, tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    run_replay(str(sim_file), str(a), label_delay=7 * 86400, workers=1, progress=False)
    run_replay(str(sim_file), str(b), label_delay=7 * 86400, workers=4, progress=False)
    run_replay(str(sim_file), str(c), label_delay=7 * 86400, workers=1, progress=False)
    sa, sb, sc = _scores(a), _scores(b), _scores(c)
    n = sum(1 for _ in sim_file.open())
    assert len(sa) == n and sa.keys() == sb.keys()
    assert all(sa[k] == sb[k] for k in sa), "1 and 4 workers disagree"
    assert sa == sc, "two runs on the same input disagree"
    assert len({round(v, 6) for v in sa.values()}) > 100  # scores actually vary
    alerts = [json.loads(x) for x in a.open() if json.loads(x)["alert"]]
    assert alerts and all(d["reasons"] for d in alerts), "an alert without a reason"


def test_no_label_leakage(sim_file, tmp_path):
    """Flipping the labels of every transaction after T changes no score before T + delay."""
    delay = 3 * 86400
    rows = [json.loads(x) for x in sim_file.open()]
    cut = rows[len(rows) // 2]["timestamp"]
    flipped = tmp_path / "flipped.jsonl"
    with flipped.open("w") as f:
        for r in rows:
            if r["timestamp"] >= cut:
                r = {**r, "is_fraud": 1 - int(r["is_fraud"])}
            f.write(json.dumps(r) + "\n")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_replay(str(sim_file), str(a), label_delay=delay, progress=False)
    run_replay(str(flipped), str(b), label_delay=delay, progress=False)
    sa, sb = _scores(a), _scores(b)
    limit = (datetime.fromisoformat(cut) + timedelta(seconds=delay)).isoformat()
    before = [r["transaction_id"] for r in rows if r["timestamp"] < limit]
    after = [r["transaction_id"] for r in rows if r["timestamp"] >= limit]
    assert before and all(sa[t] == sb[t] for t in before)
    assert any(sa[t] != sb[t] for t in after), "labels had no effect at all"


def test_replayed_labels_reach_the_supervised_model(sim_file, tmp_path):
    """With a label delay the file's labels teach the supervised model (its component joins
    the scores once enough frauds were learnt) and the anomaly path's cells (what the
    label-free decision flagged keeps its cell until its label comes through the flow);
    without, neither ever scores."""
    runs = {}
    for name, delay in (("labels", 3 * 86400), ("none", None)):
        out = tmp_path / f"{name}.jsonl"
        run_replay(str(sim_file), str(out), label_delay=delay, progress=False)
        runs[name] = [json.loads(x)["components"] for x in out.open()]
    assert sum("supervised" in c for c in runs["labels"]) > len(runs["labels"]) // 4
    assert not any("supervised" in c for c in runs["none"])
    path = [c["anomaly_path"] for c in runs["labels"] if "anomaly_path" in c]
    assert path and any(p != 0.5 for p in path)  # 0.5: a cell no label has reached yet
    assert not any("anomaly_path" in c for c in runs["none"])


def test_score_before_learn_and_reasons_for_an_amount_spike():
    items = history("alice", 40)
    spike = txn("alice-spike", "alice", 900.0, T0 + timedelta(days=16), terminal_id="T1",
                lat=50.85, lon=4.35, country="BE")
    out = run_items([*items, spike])
    d = out["alice-spike"]
    assert d.severity in ("review", "block") and d.score >= d.threshold
    assert {"amount_vs_user_mean", "amount_vs_user_median"} & {r.code for r in d.reasons}
    assert max(out[f"alice-{i}"].score for i in range(20, 40)) < d.threshold


def test_cold_start_is_scored_by_the_population():
    items = []
    for u in range(30):
        items += history(f"u{u}", 12, amount=30.0 + u, start=T0 + timedelta(minutes=u))
    newbie_small = txn("new-1", "newbie", 35.0, T0 + timedelta(days=6), terminal_id="T1")
    newbie_huge = txn("new-2", "newbie2", 5000.0, T0 + timedelta(days=6, minutes=1),
                      terminal_id="T1")
    out = run_items(sorted([*items, newbie_small, newbie_huge], key=lambda t: t.timestamp),
                    replay_settings(logical_shards=1))
    small, huge = out["new-1"], out["new-2"]
    assert small.components["maturity"] == 0.0 and "population" in small.components
    assert small.severity == "allow"
    assert huge.severity != "allow" and huge.components["pop_amount"] > 3
    assert "cold_start" in {r.code for r in huge.reasons}


def test_reasons_for_travel_and_terminal_risk():
    items = history("bob", 30)
    far = txn("bob-far", "bob", 42.0, T0 + timedelta(hours=29 * 9 + 2),
              terminal_id="TX", lat=40.71, lon=-74.0, country="US")
    out = run_items([*items, far])
    codes = {r.code for r in out["bob-far"].reasons}
    assert "travel_speed" in codes or "far_from_home" in codes
    assert out["bob-far"].features["speed_kmh"] > 1000

    # a fraud label at terminal T raises T's risk for later transactions there
    base = history("carol", 10, terminal="T9")
    when = T0 + timedelta(days=4)
    lab = Label("carol-3", "carol", "T9", "fraud", base[3].timestamp, when)
    later = txn("dave-1", "dave", 40.0, when + timedelta(hours=1), terminal_id="T9")
    out = run_items(sorted([*base, later], key=lambda t: t.timestamp))
    no_label = out["dave-1"].features["term_days_since_fraud"]
    out = run_items(sorted([*base, lab, later],
                           key=lambda t: t.label_time if isinstance(t, Label) else t.timestamp))
    assert no_label == 60.0
    assert out["dave-1"].features["term_days_since_fraud"] < 4
    assert out["dave-1"].features["term_risk_30d"] > 0


def test_idle_users_are_evicted_after_the_ttl():
    s = replay_settings(user_ttl_seconds=10 * 86400, logical_shards=1)
    items = history("erin", 10) + [
        txn(f"frank-{i}", "frank", 20.0, T0 + timedelta(days=30 + i)) for i in range(3)]
    items += [txn("erin-back", "erin", 40.0, T0 + timedelta(days=34))]
    out = run_items(items, s)
    assert out["erin-9"].components["maturity"] == 1.0
    assert out["erin-back"].components["maturity"] == 0.0  # starts again from the population


def test_user_state_snapshot_and_restore_give_identical_later_scores():
    cfg = stage_config(SETTINGS, 1, snapshots=True)
    items = [("t", t, {}) for t in history("gina", 60)]
    ref = UserStage("u0", cfg, None)
    ref_out = [d.score for it in items for d in ref._process(it)]
    first = UserStage("u0", cfg, None)
    for it in items[:30]:
        first._process(it)
    snap = first.snapshot()
    assert isinstance(snap, bytes) and snap
    second = UserStage("u0", cfg, snap)
    rest = [d.score for it in items[30:] for d in second._process(it)]
    assert rest == ref_out[30:]
    per_user = len(pickle.dumps(ref.users["gina"], protocol=pickle.HIGHEST_PROTOCOL))
    assert per_user < 4096


def test_incompatible_snapshot_is_refused_with_instructions():
    cfg = stage_config(SETTINGS, 1, snapshots=True)
    snap = pickle.loads(UserStage("u0", cfg, None).snapshot())
    snap["version"] = 0
    with pytest.raises(IncompatibleSnapshot, match="Warm start"):
        UserStage("u0", cfg, pickle.dumps(snap))


# --- per-user behaviour: takeover from abroad, bursts, the user's own threshold -------------
MEX = {"lat": 19.43, "lon": -99.13, "country": "MX"}
HOME = {"lat": 50.85, "lon": 4.35, "country": "BE"}


def _at(user: str, tid: str, when: datetime, where: dict, amount: float = 42.0,
        category: str = "5411", terminal: str = "T1"):
    return txn(tid, user, amount, when, terminal_id=terminal, merchant_category=category,
               **where)


def test_takeover_abroad_flags_every_far_transaction_and_not_the_way_back_home():
    items = [_at("hugo", f"h{i}", T0 + i * timedelta(hours=9), HOME) for i in range(40)]
    t = T0 + 40 * timedelta(hours=9)
    items += [
        _at("hugo", "home-1", t, HOME),
        # 30 minutes later in Mexico City: no airliner makes that
        _at("hugo", "mex-1", t + timedelta(minutes=30), MEX, terminal="TM1"),
        # still there 10 minutes later: an ordinary-looking transaction at the same place
        _at("hugo", "mex-2", t + timedelta(minutes=40), MEX, terminal="TM2"),
        # the customer, at home, an hour later: the impossible hop is theirs, not their fault
        _at("hugo", "home-2", t + timedelta(minutes=100), HOME),
    ]
    out = run_items(items)
    m1, m2, h2 = out["mex-1"], out["mex-2"], out["home-2"]
    assert m1.is_alert and m1.components["travel"] >= 10
    assert "travel_speed" in {r.code for r in m1.reasons}
    assert m2.features["hop_km"] < 100 and m2.features["dist_home_km"] > 9000
    assert m2.is_alert and m2.components["travel"] == m1.components["travel"]
    assert "far_from_home" in {r.code for r in m2.reasons}
    # home stayed home (far transactions do not drag it) and the way back is not a travel alert
    assert h2.features["dist_home_km"] < 10 and h2.features["speed_kmh"] > 1000
    assert h2.components["travel"] == 0.0 and not h2.is_alert


def test_first_transaction_abroad_in_a_new_category():
    items = [_at("ines", f"i{i}", T0 + i * timedelta(hours=9), HOME) for i in range(40)]
    t = T0 + 42 * timedelta(hours=9)  # 18 hours after the last one: a flight is possible
    known = run_items([*items, _at("ines", "abroad", t, MEX, category="5411")])["abroad"]
    new = run_items([*items, _at("ines", "abroad", t, MEX, category="7995")])["abroad"]
    assert known.features["new_country"] == new.features["new_country"] == 1.0
    assert known.components["travel"] == 0.0
    assert new.components["travel"] == pytest.approx(5.0) and new.is_alert


def test_on_a_trip_that_began_like_a_takeover_each_new_category_is_flagged():
    items = [_at("lea", f"l{i}", T0 + i * timedelta(hours=9), HOME) for i in range(40)]
    t = T0 + 42 * timedelta(hours=9)  # a flight is possible: no impossible hop
    trip = [
        _at("lea", "mx-new", t, MEX, category="7995", terminal="TM1"),  # new country and category
        _at("lea", "mx-cat", t + timedelta(minutes=30), MEX, category="5944", terminal="TM2"),
        _at("lea", "mx-known", t + timedelta(minutes=60), MEX, category="5411", terminal="TM3"),
        _at("lea", "mx-cat2", t + timedelta(minutes=90), MEX, category="4829", terminal="TM4"),
    ]
    out = run_items([*items, *trip])
    assert out["mx-new"].components["travel"] == pytest.approx(5.0)
    # the same place, another category the customer never used: the same suspicion
    assert out["mx-cat"].features["new_country"] == 0.0
    assert out["mx-cat"].components["travel"] == pytest.approx(5.0) and out["mx-cat"].is_alert
    # a category the customer knows is what a traveller does: not carried on
    assert out["mx-known"].components["travel"] == 0.0
    # the trip is still marked after it
    assert out["mx-cat2"].components["travel"] == pytest.approx(5.0)
    # a trip that began with a known category is an ordinary trip
    calm = [_at("lea", "mx-a", t, MEX, category="5411", terminal="TM1"),
            _at("lea", "mx-b", t + timedelta(minutes=30), MEX, category="5944", terminal="TM2")]
    out = run_items([*items, *calm])
    assert out["mx-b"].components["travel"] == 0.0


def test_bursts_are_explained_by_their_window():
    items = [_at("jo", f"j{i}", T0 + i * timedelta(hours=11), HOME) for i in range(40)]
    t = T0 + 41 * timedelta(hours=11)
    # card testing: small amounts seconds apart
    burst = [_at("jo", f"b{k}", t + timedelta(seconds=40 * k), HOME, amount=1.0 + k,
                 terminal="TT") for k in range(5)]
    # a spree: a transaction every 25 minutes for three hours, ordinary amounts
    spree = [_at("jo", f"s{k}", t + timedelta(days=3, minutes=25 * k), HOME)
             for k in range(8)]
    out = run_items([*items, *burst, *spree])
    assert "velocity_10m" in {r.code for r in out["b4"].reasons} and out["b4"].is_alert
    assert out["b4"].features["u_cnt_10m"] == 4
    last = out["s7"]
    assert last.features["u_cnt_3h"] == 7 and last.features["u_cnt_1h"] == 2
    assert last.is_alert and "velocity_3h" in {r.code for r in last.reasons}


def test_a_spree_is_judged_by_the_pace_of_its_run():
    """The velocity of a run is the Poisson tail of its own span at the user's daytime rate,
    whatever its length: exact p-values, the z taken from them, and the reason."""
    from operators.detector import z_of_tail
    from operators.user import PACE_DAYTIME, poisson_tail

    # two purchases a day (every 12 hours) for 40 days, at the user's own terminal
    items = [_at("pia", f"p{i}", T0 + i * timedelta(hours=12), HOME) for i in range(80)]
    t = T0 + 81 * timedelta(hours=12)
    # then one every 20 minutes, at ordinary amounts (a spree), and a calm purchase later
    spree = [_at("pia", f"s{k}", t + timedelta(minutes=20 * k), HOME) for k in range(6)]
    calm = _at("pia", "later", t + timedelta(hours=9), HOME)
    out = run_items([*items, *spree, calm])
    f = out["s5"].features
    per_sec = f["u_cnt_30d"] / 30 * PACE_DAYTIME / 86_400
    # five earlier ones within 100 minutes is the least likely run
    expected = min(poisson_tail(j, per_sec * 20 * 60 * j) for j in range(1, 6))
    assert expected == poisson_tail(5, per_sec * 100 * 60)
    assert f["pace_p"] == pytest.approx(expected, rel=1e-12)
    assert (f["pace_n"], f["pace_secs"]) == (6.0, 6000.0)
    assert out["s5"].components["velocity"] == pytest.approx(z_of_tail(expected))
    assert out["s5"].is_alert
    reason = next(r for r in out["s5"].reasons if r.code == "pace")
    # (58 in the 29 days before, 6 today: 2.1 a day)
    assert reason.text == "6 transactions within 100 minutes; this user makes 2.1 a day"
    # each further purchase of the run is stronger evidence than the one before
    ps = [out[f"s{k}"].features["pace_p"] for k in range(1, 6)]
    assert ps == sorted(ps, reverse=True) and ps[0] > 0.01
    # nine hours later the pace is ordinary again
    assert out["later"].features["pace_p"] > 0.1 and out["later"].components["velocity"] == 0


def test_the_pace_of_an_ordinary_stream_is_rarely_extreme():
    """At the rate it is judged against (a Poisson stream), ``pace_p`` is a minimum over up to
    PACE_RUN runs: below a level at most PACE_RUN times as often as the level, and a tail
    that the alert threshold's z (3.5) almost never reaches."""
    import random

    from operators.user import PACE_DAYTIME, PACE_RUN, PACE_SECS, pace

    rng = random.Random(3)
    per_day = 3.0
    rate = per_day * PACE_DAYTIME / 86_400
    ps = []
    for _ in range(20_000):
        spans, back = [], 0.0
        while True:
            back += rng.expovariate(rate)
            if back >= PACE_SECS:
                break
            spans.append(back)
        ps.append(pace(spans, per_day)[0])
    for level in (0.001, 0.01, 0.05):
        share = sum(p <= level for p in ps) / len(ps)
        assert share < PACE_RUN * level + 0.0005, (level, share)
        assert share > 0.3 * level, (level, share)  # and it is not blind
    assert sum(p <= 2.3e-4 for p in ps) / len(ps) < 0.002  # z 3.5


def test_the_poisson_tail_keeps_its_precision_far_out():
    from scipy.stats import poisson

    from operators.user import poisson_tail

    for k in (1, 2, 3, 5, 8, 12):
        for lam in (1e-4, 1e-2, 0.3, 1.0, 4.0, 20.0):
            assert poisson_tail(k, lam) == pytest.approx(poisson.sf(k - 1, lam), rel=1e-9,
                                                         abs=1e-300), (k, lam)


def test_a_run_of_small_amounts_is_pooled_evidence():
    # a customer who spends 20-60 at a few terminals twice a day, one time in ten online
    items = [txn(f"e{i}", "eve", 20.0 + (i * 7) % 41, T0 + i * timedelta(hours=11),
                 terminal_id=f"T{i % 3}", channel="ecom" if i % 10 == 0 else "pos", **HOME)
             for i in range(60)]
    t = T0 + 61 * timedelta(hours=11)

    def web(tid: str, amount: float, when: datetime):
        return txn(tid, "eve", amount, when, terminal_id="WEB", channel="ecom", **HOME)

    # two purchases a minute apart at a new web shop: both tiny (card testing), or the
    # first tiny and the second ordinary (what customers do)
    tiny = [web("a1", 1.0, t), web("a2", 1.5, t + timedelta(seconds=60))]
    mixed = [web("a1", 1.0, t), web("a2", 38.0, t + timedelta(seconds=60))]
    run, ordinary = run_items([*items, *tiny])["a2"], run_items([*items, *mixed])["a2"]
    # the run's permutation p-value against the amounts before it: the first tiny one, learnt
    # a minute before, is part of the run, not of its reference, so none of the other 31 is
    # below the run's largest: C(0 + 2, 2) / C(31 + 2, 2) = 1 / 528
    assert run.features["amt_p_burst"] == pytest.approx(1 / 528)
    assert ordinary.features["amt_p_burst"] > 0.25
    assert run.components["behaviour"] > ordinary.components["behaviour"] + 0.75
    assert run.is_alert and not ordinary.is_alert
    assert "small_amounts" in {r.code for r in run.reasons}


def test_the_pooled_small_amount_p_value_is_calibrated():
    """Amounts of the user's own kind give a uniform p-value, alone or several in an hour:
    pooling must not flag ordinary pairs more often than their level says."""
    import random

    from operators.user import _burst_p

    rng = random.Random(7)
    for k in (1, 2, 4):
        ps = []
        for _ in range(20_000):
            srt = sorted(rng.lognormvariate(3.0, 0.6) for _ in range(32))
            run = [rng.lognormvariate(3.0, 0.6) for _ in range(k)]
            ps.append(_burst_p(srt, run[0], run[1:]))
        for level in (0.01, 0.05, 0.2):
            share = sum(p <= level for p in ps) / len(ps)
            # at most the level (sampling noise allowed)...
            assert share < level * 1.15 + 0.0005, (k, level, share)
            # ...and not uselessly conservative where the ring's 32 amounts can reach it
            if level > 2 * (0.5 / 32 + 1 / 33) ** k:
                assert share > level * 0.3, (k, level, share)


def test_a_run_far_from_the_users_usual_places_is_pooled_evidence():
    # a customer who always shops within 2-3 km of home, twice a day
    items = [_at("fay", f"f{i}", T0 + i * timedelta(hours=11),
                 {**HOME, "lat": HOME["lat"] + 0.02 * (i % 3 - 1)}, amount=20.0 + (i * 7) % 41,
                 terminal=f"T{i % 3}") for i in range(60)]
    t = T0 + 61 * timedelta(hours=11)
    # two ordinary purchases a minute apart at a web shop registered about 55 km away, or
    # at one 2 km away
    far = {**HOME, "lat": HOME["lat"] + 0.5}
    near = {**HOME, "lat": HOME["lat"] + 0.02}
    runs = {}
    for name, where in (("far", far), ("near", near)):
        pair = [_at("fay", "b1", t, where, amount=31.0, terminal="WEB"),
                _at("fay", "b2", t + timedelta(seconds=60), where, amount=35.0, terminal="WEB")]
        runs[name] = run_items([*items, *pair])
    first, second, ordinary = runs["far"]["b1"], runs["far"]["b2"], runs["near"]["b2"]
    # 59 distances learnt (the first transaction had no home to measure from), none far
    assert first.features["dist_p"] == pytest.approx(1 / 60)
    # pooled with the first far purchase, against the 59 distances before the run (the first,
    # learnt a minute before, is part of the run, not of its reference): C(0 + 2, 2) /
    # C(59 + 2, 2)
    assert second.features["dist_p"] == pytest.approx(1 / 1830)
    assert ordinary.features["dist_p"] > 0.25  # two at one of the user's usual distances
    assert second.components["behaviour"] > ordinary.components["behaviour"] + 1.0
    assert second.score > ordinary.score + 0.5 and not ordinary.is_alert
    assert "unusual_distance" in {r.code for r in explain(second.features, second.components)}
    assert "unusual_distance" not in {r.code for r in explain(ordinary.features,
                                                              ordinary.components)}


def test_a_small_amount_beyond_the_users_range_is_a_probe():
    # a customer who always shops within 2-3 km of home (distance bins up to 4 km), 20-60 EUR
    items = [_at("ivy", f"i{i}", T0 + i * timedelta(hours=11),
                 {**HOME, "lat": HOME["lat"] + 0.02 * (i % 3 - 1)}, amount=20.0 + (i * 7) % 41,
                 terminal=f"T{i % 3}") for i in range(60)]
    t = T0 + 61 * timedelta(hours=11)
    cases = {
        "probe": ({**HOME, "lat": HOME["lat"] + 0.5}, 1.5),  # about 55 km away, 1.50 EUR
        "ordinary_far": ({**HOME, "lat": HOME["lat"] + 0.5}, 35.0),  # an ordinary amount
        "small_near": ({**HOME, "lat": HOME["lat"] + 0.02}, 1.5),  # small, in range
        "small_abroad": (MEX, 1.5),  # beyond the home region: travel's business
    }
    out = {}
    for name, (where, amount) in cases.items():
        out[name] = run_items([*items, _at("ivy", "x", t, where, amount=amount,
                                           terminal="WEB")])["x"]
    probe = out["probe"]
    assert probe.features["dist_range_km"] == 4.0  # the farthest bin used: 2-4 km
    # PROBE_Z plus one per doubling beyond the range: 5 + log2(55.6 / 4)
    assert probe.components["behaviour"] == pytest.approx(5.0 + 3.797, abs=0.01)
    assert probe.is_alert
    assert explain(probe.features, probe.components)[0].code == "probe"
    # a customer who always shops within a few hundred metres of home (range 1 km): a small
    # purchase 3 km away is beyond the range but under PROBE_MIN_KM, the next district
    tight = [_at("jo", f"j{i}", T0 + i * timedelta(hours=11),
                 {**HOME, "lat": HOME["lat"] + 0.002 * (i % 3 - 1)}, amount=20.0 + (i * 7) % 41,
                 terminal=f"T{i % 3}") for i in range(60)]
    out["small_next_district"] = run_items([*tight, _at(
        "jo", "x", t, {**HOME, "lat": HOME["lat"] + 0.027}, amount=1.5, terminal="WEB")])["x"]
    assert out["small_next_district"].features["dist_range_km"] == 1.0
    for name in ("ordinary_far", "small_near", "small_abroad", "small_next_district"):
        d = out[name]
        assert d.features["probe_z"] == 0.0, name
        assert d.components["behaviour"] < 5.0, name
        assert "probe" not in {r.code for r in explain(d.features, d.components)}, name


def test_online_purchases_in_a_row_are_pooled_evidence():
    # a customer who shops online one time in seven
    items = [txn(f"g{i}", "gus", 20.0 + (i * 7) % 41, T0 + i * timedelta(hours=11),
                 terminal_id=f"T{i % 3}", channel="ecom" if i % 7 == 0 else "pos", **HOME)
             for i in range(60)]
    t = T0 + 61 * timedelta(hours=11)
    runs = {}
    for channel in ("ecom", "pos"):
        pair = [txn(f"h{j}", "gus", 33.0, t + j * timedelta(seconds=60), terminal_id="SHOP",
                    channel=channel, **HOME) for j in (1, 2)]
        runs[channel] = run_items([*items, *pair])
    online, in_store = runs["ecom"]["h2"], runs["pos"]["h2"]
    # the user's share before the pair: 9 of 60 online, (9 + 1) / (60 + 2) (the first of the
    # pair, learnt a minute before, is part of the run, not of the share it is judged by);
    # two of two in the hour online
    assert online.features["cnp_p"] == pytest.approx((10 / 62) ** 2)
    assert runs["ecom"]["h1"].features["cnp_p"] == pytest.approx(10 / 62)
    assert in_store.features["cnp_p"] == 1.0
    assert online.components["behaviour"] > in_store.components["behaviour"] + 0.3
    codes = {r.code for r in explain(online.features, online.components)}
    assert "card_not_present" in codes
    assert "card_not_present" not in {r.code for r in explain(in_store.features,
                                                              in_store.components)}


def test_the_pooled_distance_p_value_is_calibrated():
    """Distances of the user's own kind give a p-value at most uniform, alone or several in an
    hour (the histogram counts ties as extreme: conservative, never liberal)."""
    import random
    from array import array

    from operators.user import DIST_EDGES, _dist_p

    rng = random.Random(11)
    for k in (1, 2, 3):
        ps = []
        for _ in range(20_000):
            h = array("H", bytes(2 * (len(DIST_EDGES) + 1)))
            for _ in range(rng.randint(20, 200)):
                h[bisect_right(DIST_EDGES, rng.lognormvariate(1.2, 1.0))] += 1
            run = [rng.lognormvariate(1.2, 1.0) for _ in range(k)]
            ps.append(_dist_p(h, run[0], run[1:]))
        # what `behaviour` takes: 2p when p < 1/2, which must stay a p-value given that
        doubled = [2 * p for p in ps if p < 0.5]
        for level in (0.01, 0.05, 0.2):
            share = sum(p <= level for p in ps) / len(ps)
            assert share < level * 1.15 + 0.0005, (k, level, share)
            share = sum(p <= level for p in doubled) / len(doubled)
            assert share < level * 1.15 + 0.001, (k, level, share)


def test_the_hour_term_behaviour_takes_is_calibrated():
    """An hour drawn from the user's own habit: ``hour_p``, and the ``2p`` that behaviour takes
    when ``p < 1/2``, are p-values (at most their level)."""
    import random

    rng = random.Random(5)
    ps = []
    for _ in range(10_000):
        u = UserState()
        hours = [min(23, max(0, int(rng.gauss(12, 5.5)))) for _ in range(rng.randint(30, 301))]
        for h in hours[:-1]:
            u.hours[h] += 1
        ps.append(u.features(0.0, 10.0, local_hour=hours[-1])["hour_p"])
    doubled = [2 * p for p in ps if p < 0.5]
    for level in (0.01, 0.05, 0.2):
        for sample in (ps, doubled):
            share = sum(p <= level for p in sample) / len(sample)
            assert share < level * 1.15 + 0.002, (level, share)
        # ...and not uselessly conservative
        assert sum(p <= level for p in doubled) / len(doubled) > level * 0.2


def test_a_burst_of_alerts_does_not_lift_the_users_own_threshold():
    items = [_at("kim", f"k{i}", T0 + i * timedelta(hours=6), HOME) for i in range(120)]
    t = T0 + 121 * timedelta(hours=6)
    spree = [_at("kim", f"s{k}", t + timedelta(minutes=6 * k), HOME) for k in range(20)]
    out = run_items([*items, *spree])
    dec = [out[f"s{k}"] for k in range(20)]
    for a, b in itertools.pairwise(dec):
        assert b.threshold <= a.threshold + 0.5 + 1e-9  # at most one step per alert
    assert sum(d.is_alert for d in dec) >= 16


def test_home_moves_only_after_a_month_away():
    u = UserState()
    day = 86_400.0
    for i in range(40):
        u.learn(i * day / 3, 40.0, **{k: v for k, v in HOME.items() if k != "country"})
    start = 40 * day / 3
    for d in range(35):
        ts = start + d * day
        f = u.features(ts, 40.0, lat=MEX["lat"], lon=MEX["lon"])
        if d <= 29:
            assert f["dist_home_km"] > 9000, d  # a long trip: home stays home
        u.learn(ts, 40.0, lat=MEX["lat"], lon=MEX["lon"], dist_home=f["dist_home_km"])
    assert u.features(start + 35 * day, 40.0, lat=MEX["lat"], lon=MEX["lon"])[
        "dist_home_km"] < 10  # after a month away, they live there now


def test_every_feature_is_set_for_every_transaction(sim_file, monkeypatch):
    """UserState.features fills a copy of a dict that already holds every name: each value
    must come from the transaction, never from that copy (NaN here), in FEATURE_NAMES order."""
    import math

    import operators.user as user_mod

    monkeypatch.setattr(user_mod, "_FEATURES", dict.fromkeys(user_mod.FEATURE_NAMES, math.nan))
    parser = TxnParser(SETTINGS)
    users: dict[str, UserState] = {}
    seen = 0
    for i, line in enumerate(sim_file.open("rb")):
        t = parser.parse(line.strip(), 0.0)
        u = users.setdefault(t.user_id, UserState())
        kw = dict(terminal=t.terminal_id, merchant=t.merchant_id, category=t.merchant_category,
                  country=t.country, lat=t.lat, lon=t.lon, channel=t.channel)
        if i % 3 == 0:  # every third without a location, every fifth with a local hour
            kw["lat"] = kw["lon"] = None
        hour = 7 if i % 5 == 0 else None
        f = u.features(t.ts_seconds, float(t.amount_base), local_hour=hour, **kw)
        assert tuple(f) == user_mod.FEATURE_NAMES
        bad = [k for k, v in f.items() if math.isnan(v)]
        assert not bad, (i, bad)
        u.learn(t.ts_seconds, float(t.amount_base), local_hour=hour,
                dist_home=f["dist_home_km"], **kw)
        seen += 1
    assert seen > 5_000 and max(u.n for u in users.values()) > 100
