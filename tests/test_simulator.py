"""The transaction simulator: distributions, every scenario's rule, labels, determinism,
the input contract, the JSONL writer and the ``simulate`` command."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import io
import itertools
import json
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.parse import TxnParser, parse_label
from producer.config import CardTesting, SimConfig, Spree, Takeover, Travel
from producer.durations import parse_duration
from producer.geo import FOREIGN_CITIES, HOME_COUNTRY, haversine_km
from producer.jsonl import read_jsonl, write_jsonl
from producer.labels import LabelPolicy, LabelSchedule, investigated
from producer.population import MCC_INDEX, P5_FACTOR
from producer.simulator import DayBatch, Simulation, iter_transactions
from producer.stream import (
    epoch_of,
    history_then_live,
    live_stream,
    rate_limited,
    replay_stream,
)
from txwatch.cli import main
from txwatch.settings import Settings

# Small populations with scenarios 4-6 and trips made frequent enough to test their rules.
CFG = SimConfig(
    n_customers=200, n_terminals=400, n_days=30, seed=11, radius=8.0,
    card_testing=CardTesting(per_1000_customers=10.0),
    takeover=Takeover(per_1000_customers=10.0),
    spree=Spree(per_1000_customers=10.0),
    travel=Travel(per_1000_customers=20.0),
)
DAY = 86400


@dataclass
class Run:
    sim: Simulation
    batches: list[DayBatch]
    records: list[dict[str, Any]]
    day_of: list[int]
    cust_of: list[int]
    term_of: list[int]


def _run(cfg: SimConfig) -> Run:
    sim = Simulation(cfg)
    batches, records, day_of, cust_of, term_of = [], [], [], [], []
    for b in sim.days():
        batches.append(b)
        records += sim.records(b)
        day_of += [b.day] * len(b)
        cust_of += b.frame.cust.tolist()
        term_of += b.frame.term.tolist()
    return Run(sim, batches, records, day_of, cust_of, term_of)


@pytest.fixture(scope="module")
def run() -> Run:
    return _run(CFG)


@pytest.fixture(scope="module")
def legit_run() -> Run:
    """No fraud at all: the handbook's legitimate traffic only."""
    return _run(replace(CFG, scenarios=frozenset()))


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# --- the input contract ----------------------------------------------------------------------


def test_every_record_is_accepted_by_the_parser(run: Run) -> None:
    parser = TxnParser(Settings(replay=True))
    for rec in run.records:
        txn = parser.parse(json.dumps(rec).encode())
        assert txn.transaction_id == rec["transaction_id"]
        assert txn.currency == "EUR" and txn.country == rec["country"]
        assert txn.merchant_category is not None and txn.merchant_category.isdigit()
        assert txn.timestamp.utcoffset() == timedelta(0)
    assert {r["channel"] for r in run.records} == {"pos", "ecom"}
    assert all(r["timestamp"].endswith("Z") for r in run.records)


def test_fast_lines_equal_the_records(run: Run) -> None:
    lines = [line for b in run.batches for line in run.sim.lines(b)]
    assert len(lines) == len(run.records)
    for line, rec in zip(lines, run.records, strict=True):
        assert line.endswith("\n")
        assert json.loads(line) == rec


def test_time_order_and_sequential_ids(run: Run) -> None:
    ts = [epoch_of(r["timestamp"]) for r in run.records]
    assert all(a <= b for a, b in itertools.pairwise(ts))
    assert ts[0] >= CFG.start_epoch and ts[-1] < CFG.end_epoch
    assert [r["transaction_id"] for r in run.records] == [
        f"tx{i:09d}" for i in range(len(run.records))]


def test_lat_lon_map_the_grid_at_one_km_per_unit(run: Run) -> None:
    sim = run.sim
    cu, te = sim.customers, sim.terminals
    lat0, lon0 = 50.8467, 4.3525  # grid centre: Brussels
    assert all(r["country"] == HOME_COUNTRY for r, k in zip(run.records, run.term_of, strict=True)
               if k < te.n_grid)
    g = te.n_grid
    # distance on the map = distance on the grid, within 1 %
    i, j = np.arange(0, g - 1), np.arange(1, g)
    grid_km = np.hypot(te.x[i] - te.x[j], te.y[i] - te.y[j])
    map_km = haversine_km(te.lat[i], te.lon[i], te.lat[j], te.lon[j])
    assert np.allclose(map_km, grid_km, rtol=0.01, atol=0.05)
    assert abs(float(np.mean(te.lat[:g])) - lat0) < 0.1
    assert abs(float(np.mean(te.lon[:g])) - lon0) < 0.15
    assert float(haversine_km(cu.lat, cu.lon, lat0, lon0).max()) < 72  # half-diagonal 70.7 km


# --- the handbook's distributions ------------------------------------------------------------


def test_transaction_counts_are_poisson_with_each_customers_rate(legit_run: Run) -> None:
    cu = legit_run.sim.customers
    p_keep = _phi((DAY - 43200) / 20000) - _phi((1 - 43200) / 20000)
    lam = cu.rate * CFG.n_days * p_keep * (cu.n_avail > 0)
    counts = np.bincount(np.array(legit_run.cust_of), minlength=len(cu))
    assert abs(counts.sum() / lam.sum() - 1) < 0.03
    used = lam > 5
    z = (counts[used] - lam[used]) / np.sqrt(lam[used])
    assert abs(float(z.mean())) < 0.2
    assert 0.8 < float(z.std()) < 1.2
    assert np.all(counts[cu.n_avail == 0] == 0)


def test_times_of_day_follow_the_handbook(legit_run: Run) -> None:
    t = np.concatenate([b.frame.t for b in legit_run.batches])
    assert t.min() > 0 and t.max() < DAY
    assert abs(float(np.median(t)) - 43200) < 600
    # N(43200, 20000) cut at ±a standard deviations
    a = 43200 / 20000
    phi_a = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    sd = 20000 * math.sqrt(1 - 2 * a * phi_a / (2 * _phi(a) - 1))
    assert abs(float(t.std()) / sd - 1) < 0.03


def test_per_customer_mean_amount(legit_run: Run) -> None:
    cu = legit_run.sim.customers
    cents = np.concatenate([b.frame.cents for b in legit_run.batches])
    cust = np.array(legit_run.cust_of)
    n = np.bincount(cust, minlength=len(cu))
    mean = np.bincount(cust, weights=cents / 100, minlength=len(cu)) / np.maximum(n, 1)
    many = n >= 40
    ratio = mean[many] / cu.mean_amount[many]
    expected = 1 + 0.5 * math.exp(-2) / math.sqrt(2 * math.pi)  # negatives redrawn: 1.027
    assert abs(float(np.median(ratio)) - expected) < 0.03
    assert np.all(np.abs(ratio - expected) < 0.35)
    assert cents.min() >= 0
    # the customer's 5th percentile (scenario 4's ceiling): 5 % of amounts at or below it
    below = cents / 100 <= cu.p5_amount[cust]
    assert 0.04 < float(below.mean()) < 0.06
    assert 0.25 < P5_FACTOR < 0.27


def test_terminals_are_within_the_radius(run: Run) -> None:
    cu, te = run.sim.customers, run.sim.terminals
    cust, term = np.array(run.cust_of), np.array(run.term_of)
    scen = np.array([r["fraud_scenario"] for r in run.records])
    home = (term < te.n_grid) & (scen != 4)
    d = np.hypot(te.x[term[home]] - cu.x[cust[home]], te.y[term[home]] - cu.y[cust[home]])
    assert home.sum() > 0.8 * len(term)
    assert float(d.max()) < CFG.radius
    avail = cu.n_avail[cu.n_avail > 0]
    assert abs(float(avail.mean()) - math.pi * CFG.radius**2 * CFG.n_terminals / 1e4) < 5


# --- fraud scenarios -----------------------------------------------------------------------


def test_scenario_1_every_amount_above_220_is_fraud(run: Run) -> None:
    above = [r for r in run.records if r["amount"] > 220]
    assert above
    assert all(r["is_fraud"] == 1 and r["fraud_scenario"] >= 1 for r in above)
    assert all(r["amount"] > 220 for r in run.records if r["fraud_scenario"] == 1)
    assert any(r["fraud_scenario"] == 1 for r in run.records)
    assert all(r["is_fraud"] == (r["fraud_scenario"] > 0) for r in run.records)


def test_scenario_2_compromised_terminals_for_28_days(run: Run) -> None:
    windows: dict[int, list[int]] = defaultdict(list)
    for b in run.batches:
        assert len(b.new_terminals) == 2
        for k in b.new_terminals:
            windows[k].append(b.day)
    hits = 0
    for rec, d, k in zip(run.records, run.day_of, run.term_of, strict=True):
        s = rec["fraud_scenario"]
        if s > 3:
            continue
        inside = any(d0 <= d < d0 + 28 for d0 in windows.get(k, ()))
        if inside:
            assert s in (2, 3), rec
            hits += s == 2
        else:
            assert s != 2, rec
    assert hits > 50


def test_scenario_3_a_third_of_a_compromised_cards_transactions_times_5(run: Run) -> None:
    windows: dict[int, list[int]] = defaultdict(list)
    for b in run.batches:
        assert len(b.new_cards) == 3
        for c in b.new_cards:
            windows[c].append(b.day)
    inside = fraud3 = 0
    for rec, d, c in zip(run.records, run.day_of, run.cust_of, strict=True):
        s = rec["fraud_scenario"]
        if s > 3:
            continue
        if any(d0 <= d < d0 + 14 for d0 in windows.get(c, ())):
            inside += 1
            fraud3 += s == 3
        else:
            assert s != 3, rec
    assert inside > 300
    assert abs(fraud3 / inside - 1 / 3) < 0.05


def test_scenario_3_multiplies_the_amount_by_5() -> None:
    cfg = replace(CFG, scenarios=frozenset({1, 2, 3}), n_days=20)
    with_3 = list(iter_transactions(cfg))
    no_3 = list(iter_transactions(replace(cfg, scenarios=frozenset({1, 2}))))
    assert len(with_3) == len(no_3)
    n3 = 0
    for a, b in zip(with_3, no_3, strict=True):
        assert (a["user_id"], a["timestamp"], a["terminal_id"]) == (
            b["user_id"], b["timestamp"], b["terminal_id"])
        if a["fraud_scenario"] == 3:
            n3 += 1
            assert round(a["amount"] * 100) == 5 * round(b["amount"] * 100)
        else:
            assert a["amount"] == b["amount"]
    assert n3 > 100


def _groups(run: Run, scenario: int) -> dict[tuple[int, int], list[int]]:
    """Row indices of one scenario's transactions by (customer, day)."""
    out: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, rec in enumerate(run.records):
        if rec["fraud_scenario"] == scenario:
            out[(run.cust_of[i], run.day_of[i])].append(i)
    return out


def test_scenario_4_card_testing(run: Run) -> None:
    cu, te = run.sim.customers, run.sim.terminals
    p = CFG.card_testing
    groups = _groups(run, 4)
    assert len(groups) >= 30
    used: dict[int, set[int]] = defaultdict(set)
    for i, rec in enumerate(run.records):
        if rec["fraud_scenario"] != 4:
            used[run.cust_of[i]].add(run.term_of[i])
    cashouts = 0
    for (c, _d), rows in groups.items():
        p5 = float(cu.p5_amount[c])
        amounts = [run.records[i]["amount"] for i in rows]
        tests = [i for i in rows if run.records[i]["amount"] <= p5]
        assert p.burst_min <= len(tests) <= p.burst_max
        assert len(rows) - len(tests) <= 1  # at most one cash-out ...
        if len(rows) > len(tests):
            cashouts += 1
            assert amounts[-1] > p5 and amounts[-1] >= 2 * cu.mean_amount[c] - 0.01  # ... last
        t = [epoch_of(run.records[i]["timestamp"]) for i in tests]
        assert t[-1] - t[0] <= 30 * 60  # a burst within minutes
        for i in rows:
            k = run.term_of[i]
            assert k not in used[c]  # terminals the card never used
            assert math.hypot(te.x[k] - cu.x[c], te.y[k] - cu.y[c]) >= CFG.radius
            assert run.records[i]["channel"] == "ecom"
    assert 0.3 * len(groups) < cashouts < 0.9 * len(groups)


def test_scenario_5_takeover_is_far_within_an_hour_of_home(run: Run) -> None:
    cu = run.sim.customers
    groups = _groups(run, 5)
    assert len(groups) >= 30
    seen_cats: dict[int, set[str]] = defaultdict(set)
    first_use: dict[tuple[int, str], int] = {}
    for i, rec in enumerate(run.records):
        key = (run.cust_of[i], rec["merchant_category"])
        if rec["fraud_scenario"] not in (4, 5, 6):
            first_use.setdefault(key, i)
            seen_cats[run.cust_of[i]].add(rec["merchant_category"])
    by_user_day: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, rec in enumerate(run.records):
        if rec["country"] == HOME_COUNTRY:
            by_user_day[(run.cust_of[i], run.day_of[i])].append(i)
    for (c, d), rows in groups.items():
        home = [epoch_of(run.records[i]["timestamp"]) for i in by_user_day[(c, d)]
                if run.records[i]["fraud_scenario"] != 5]
        assert home
        for i in rows:
            rec = run.records[i]
            assert rec["country"] != HOME_COUNTRY
            km = float(haversine_km(cu.lat[c], cu.lon[c], rec["lat"], rec["lon"]))
            assert km >= 500
            t = epoch_of(rec["timestamp"])
            gap = min(abs(t - h) for h in home)
            assert gap <= 3600
            assert km / max(gap, 1) * 3600 > 1000  # faster than any airliner
            # a category the customer had not used before this transaction
            assert first_use.get((c, rec["merchant_category"]), len(run.records)) > i
        assert len({run.records[i]["country"] for i in rows}) == 1  # one city per takeover


def test_legitimate_trips_never_move_faster_than_a_plane(run: Run) -> None:
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in run.records:
        if rec["fraud_scenario"] == 0:
            by_user[rec["user_id"]].append(rec)
    abroad = sum(r["country"] != HOME_COUNTRY for rs in by_user.values() for r in rs)
    assert abroad > 100  # trips exist: scenario 5 is not just "country != BE"
    jumps = 0
    for rs in by_user.values():
        for a, b in itertools.pairwise(rs):
            km = float(haversine_km(a["lat"], a["lon"], b["lat"], b["lon"]))
            if km > 500:
                jumps += 1
                hours = (epoch_of(b["timestamp"]) - epoch_of(a["timestamp"])) / 3600
                assert km / hours <= 800
    assert jumps > 10
    cities = {r["country"] for rs in by_user.values() for r in rs} - {HOME_COUNTRY}
    assert cities <= {c.country for c in FOREIGN_CITIES}


def test_scenario_6_spree_changes_only_the_rate(run: Run) -> None:
    cu, te = run.sim.customers, run.sim.terminals
    p = CFG.spree
    groups = _groups(run, 6)
    assert len(groups) >= 30
    for (c, _d), rows in groups.items():
        assert p.tx_min <= len(rows) <= p.tx_max
        for i in rows:
            a = run.records[i]["amount"]
            assert cu.mean_amount[c] - cu.std_amount[c] <= a <= cu.mean_amount[c] + cu.std_amount[c]
            k = run.term_of[i]
            assert math.hypot(te.x[k] - cu.x[c], te.y[k] - cu.y[c]) < CFG.radius
        t = [epoch_of(run.records[i]["timestamp"]) for i in rows]
        assert max(t) - min(t) <= p.hours_max * 3600
        assert min(t) % DAY >= 6 * 3600
        # at least 2 transactions an hour against at most 4 a day normally
        assert len(rows) / (p.hours_max * 3600) * DAY >= 4 * 12


def test_scenario_categories_exist() -> None:
    assert {"5732", "5944", "4829", "7995", "6051", "7011"} <= set(MCC_INDEX)


# --- seeds and switches ---------------------------------------------------------------------


def _digest(cfg: SimConfig) -> str:
    sim = Simulation(cfg)
    h = hashlib.sha256()
    for b in sim.days():
        h.update("".join(sim.lines(b)).encode())
    return h.hexdigest()


def test_same_seed_same_output_other_seed_other_output() -> None:
    cfg = replace(CFG, n_days=5)
    assert _digest(cfg) == _digest(cfg)
    assert _digest(cfg) != _digest(replace(cfg, seed=12))


def test_turning_scenarios_off_keeps_the_legitimate_traffic() -> None:
    cfg = replace(CFG, n_days=10, scenarios=frozenset({1, 2, 3}))
    a = list(iter_transactions(cfg))
    b = list(iter_transactions(replace(cfg, scenarios=frozenset())))
    key = [(r["user_id"], r["timestamp"], r["terminal_id"]) for r in a]
    assert key == [(r["user_id"], r["timestamp"], r["terminal_id"]) for r in b]
    assert {r["fraud_scenario"] for r in a} == {0, 1, 2, 3}
    assert {r["fraud_scenario"] for r in b} == {0}
    c = list(iter_transactions(replace(cfg, scenarios=frozenset({1, 2, 3, 4, 6}))))
    assert [r for r in c if r["fraud_scenario"] in (0, 1, 2, 3)] == [
        {**r, "transaction_id": r2["transaction_id"]}
        for r, r2 in zip(a, [r for r in c if r["fraud_scenario"] in (0, 1, 2, 3)], strict=True)]


# --- labels -----------------------------------------------------------------------------------


def test_labels_file_delay_share_and_order(tmp_path: Path) -> None:
    cfg = replace(CFG, n_days=20)
    out, lab = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    policy = LabelPolicy(delay_seconds=parse_duration("7d"), legit_share=0.05)
    with open(out, "w") as fo, open(lab, "w") as fl:
        stats = write_jsonl(Simulation(cfg), fo, fl, policy)
    txs = {r["transaction_id"]: r for r in read_jsonl(out)}
    labels = [parse_label(line.encode()) for line in lab.read_text().splitlines()]
    assert len(txs) == stats.transactions
    frauds = {t for t, r in txs.items() if r["is_fraud"]}
    assert {lb.transaction_id for lb in labels if lb.is_fraud} == frauds
    legit = [lb for lb in labels if not lb.is_fraud]
    assert abs(len(legit) / (len(txs) - len(frauds)) - 0.05) < 0.01
    assert len({lb.transaction_id for lb in labels}) == len(labels)
    for lb in labels:
        r = txs[lb.transaction_id]
        assert (lb.user_id, lb.terminal_id) == (r["user_id"], r["terminal_id"])
        assert lb.transaction_time.timestamp() == epoch_of(r["timestamp"])
        assert lb.label_time - lb.transaction_time == timedelta(days=7)
        assert lb.is_fraud == bool(r["is_fraud"])
    times = [lb.label_time for lb in labels]
    assert times == sorted(times)
    assert stats.labels_fraud == len(frauds) and stats.labels_legit == len(legit)


def test_investigated_is_stable_and_label_schedule_replaces() -> None:
    assert investigated("tx000000042", 0.5) == investigated("tx000000042", 0.5)
    rec = {"transaction_id": "t1", "user_id": "C1", "terminal_id": "T1", "is_fraud": 1,
           "timestamp": "2018-04-01T00:00:00Z"}
    from datetime import UTC, datetime
    t0 = datetime(2018, 4, 1, tzinfo=UTC)
    first = LabelPolicy(delay_seconds=60).label_for(rec, t0)
    later = LabelPolicy(delay_seconds=120).label_for({**rec, "is_fraud": 0}, t0)
    assert first is not None and later is None  # legit share 5 %: t1 not investigated
    s = LabelSchedule()
    s.push(first)
    s.push(replace(first, label="legit"))
    assert len(s) == 1
    assert s.pop_due(t0 + timedelta(seconds=59)) == []
    due = s.pop_due(t0 + timedelta(seconds=60))
    assert [lb.label for lb in due] == ["legit"] and len(s) == 0


def test_parse_duration() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("30s") == 30
    assert parse_duration("2m") == 120
    assert parse_duration("1h") == 3600
    with pytest.raises(ValueError):
        parse_duration("-5s")
    with pytest.raises(ValueError):
        parse_duration("5w")


# --- streams ------------------------------------------------------------------------------------


def test_history_then_live_timestamps() -> None:
    cfg = replace(CFG, n_days=4, n_customers=50)
    recs = list(iter_transactions(cfg))
    now = 2_000_000_000.0
    out = list(history_then_live(iter(recs), history_days=3, start=cfg.start_epoch, now=now,
                                 clock=lambda: now + 10))
    assert len(out) == len(recs)
    n_hist = sum(epoch_of(r["timestamp"]) < cfg.start_epoch + 3 * DAY for r in recs)
    for r, o in zip(recs[:n_hist], out[:n_hist], strict=True):
        # same spacing as simulated, ending now
        assert epoch_of(o["timestamp"]) == epoch_of(r["timestamp"]) + now - (
            cfg.start_epoch + 3 * DAY)
        assert {**o, "timestamp": r["timestamp"]} == r
    assert all(epoch_of(o["timestamp"]) == now + 10 for o in out[n_hist:])
    compressed = list(history_then_live(iter(recs), history_days=3, start=cfg.start_epoch,
                                        now=now, compress_history=60, clock=lambda: now))
    assert min(epoch_of(o["timestamp"]) for o in compressed) >= now - 3 * 60


def test_rate_limited_and_stop_event() -> None:
    recs = [{"timestamp": "2018-04-01T00:00:00Z", "i": i} for i in range(21)]
    t0 = time.monotonic()
    assert len(list(rate_limited(recs, 200.0))) == 21
    assert time.monotonic() - t0 >= 0.095
    stop = threading.Event()
    got = []
    for r in live_stream(recs, rate=1000.0, stop_event=stop):
        got.append(r)
        if len(got) == 5:
            stop.set()
    assert len(got) == 5
    start = time.time()
    assert all(abs(epoch_of(r["timestamp"]) - start) < 5 for r in got)
    assert list(replay_stream(recs)) == recs
    # paced by event time: one simulated hour per 0.1 s
    hourly = [{"timestamp": f"2018-04-01T0{h}:00:00Z"} for h in range(3)]
    t0 = time.monotonic()
    assert list(replay_stream(hourly, seconds_per_day=2.4)) == hourly
    assert 0.19 <= time.monotonic() - t0 < 2
    with pytest.raises(ValueError):
        list(replay_stream(hourly, rate=10.0, seconds_per_day=2.4))


# --- the CLI ---------------------------------------------------------------------------------


def test_simulate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lab = tmp_path / "sim.jsonl", tmp_path / "labels.jsonl"
    rc = main(["simulate", "--out", str(out), "--customers", "100", "--terminals", "300",
               "--days", "10", "--seed", "5", "--scenarios", "1,2,3", "--labels-out", str(lab),
               "--label-delay", "2d", "--label-share", "0.1", "--stats"])
    assert rc == 0
    cap = capsys.readouterr()
    recs = list(read_jsonl(out))
    assert recs and {r["fraud_scenario"] for r in recs} <= {0, 1, 2, 3}
    assert f"{len(recs):,}" in cap.out and "scenario 2" in cap.out
    assert "scenario 4" not in cap.out
    assert "day 10/10" in cap.err  # progress line
    labels = [parse_label(x.encode()) for x in lab.read_text().splitlines()]
    assert labels and all(lb.label_time - lb.transaction_time == timedelta(days=2)
                          for lb in labels)


def test_simulate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--out", str(tmp_path / "x"), "--scenarios", "1,9"])
    with pytest.raises(SystemExit):
        main(["simulate", "--out", str(tmp_path / "x"), "--label-delay", "soon"])


# --- doctests of the package ------------------------------------------------------------------

MODULES = ["attacks", "cli", "config", "durations", "frame", "geo", "handbook", "jsonl",
           "kafka", "labels", "population", "progress", "simulator", "stats", "stream", "travel"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    mod = importlib.import_module(f"producer.{name}")
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, report=True)
    assert res.failed == 0


def test_reference_statistics_report() -> None:
    from producer.stats import SimStats

    st = SimStats()
    sim = Simulation(replace(CFG, n_days=3))
    for b in sim.days():
        st.add(b)
    text = st.report(replace(CFG, n_days=3))
    assert "handbook" not in text  # reference column only for the reference run
    st.transactions = 1_754_155
    st.by_scenario[1:4] = [973, 9077, 4631]
    ref = st.report(SimConfig())
    assert "+0.0 %" in ref and "1,754,155" in ref
    buf = io.StringIO()
    print(ref, file=buf)
    assert buf.getvalue().count("\n") >= 8
