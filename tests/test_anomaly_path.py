"""The anomaly path (``TXWATCH_ANOMALY_PATH``): once the supervised model scores, what the
label-free decision flags is scored by the share of fraud its labels measured in its cell
(pace x margin over the path's threshold x supervised probability), if higher."""

import bisect
import math
import pickle
import random
from array import array
from dataclasses import replace

from operators.detector import (
    PACE_Z,
    PATH_BINS,
    PATH_CELLS,
    SUP_BINS,
    SUP_EDGES,
    TxwDetector,
    params_from_settings,
)
from operators.reasons import explain
from operators.user import UserState
from txwatch.settings import Settings

KW = {"terminal": "T1", "category": "5411", "country": "BE", "lat": 50.8, "lon": 4.3}


class _Run:
    """One user, ordinary amounts around 40, six hours apart; every call scores, keeps,
    learns, as the user stage does. The supervised model does not learn (rate 0): it scores
    every transaction alike (its intercept alone learns), so what alerts is the path's doing."""

    def __init__(self, path: bool) -> None:
        self.d = TxwDetector(replace(params_from_settings(Settings()), anomaly_path=path,
                                     sup_min_frauds=3, sup_lr=0.0))
        self.u = UserState()
        self.ts = 1.7e9
        self.rng = random.Random(3)

    def one(self, amount: float | None = None, gap: float = 6 * 3600):
        self.ts += gap
        a = round(self.rng.gauss(40, 5), 2) if amount is None else amount
        f = self.last_f = self.u.features(self.ts, a, **KW)
        score, comps = self.d.score(self.u, f)
        kept = self.d.keep(f, comps)
        self.d.learn(self.u, f, score)
        self.u.learn(self.ts, a, protect=score >= comps["threshold"], **KW)
        return score, comps, kept

    def history(self, extremes_are_fraud: bool) -> tuple[int, int, int]:
        """(labels on the path, frauds among them, extremes on the path)"""
        on_path = frauds = extremes = 0
        for i in range(206):
            extreme = i >= 200
            _, _, kept = self.one(400.0 + i - 200 if extreme else None)
            # three ordinary frauds (the supervised model starts scoring), then six extremes
            fraud = extremes_are_fraud if extreme else i in (50, 90, 130)
            self.d.learn_label(kept, fraud)
            if len(kept) == 3:
                on_path += 1
                frauds += fraud
                extremes += extreme
        return on_path, frauds, extremes


def _share(d: TxwDetector, cell: int) -> float:
    """The cell's share of fraud, Laplace's rule for the prior of the pooled cell (the same
    margin and supervised probability over both paces), weight 2."""
    n = PATH_BINS * SUP_BINS
    both = [cell % n, cell % n + n]
    prior = (sum(d.path_frauds[c] for c in both) + 1.0) / (
        sum(d.path_labels[c] for c in both) + 2.0)
    return (d.path_frauds[cell] + 2.0 * prior) / (d.path_labels[cell] + 2.0)


def _z(p: float) -> float:
    return 2.5 + 1.5 * math.log(p / (1.0 - p))


def test_on_by_default():
    assert Settings().anomaly_path
    assert TxwDetector(params_from_settings(Settings())).version == "txw-1.10-hst"


def test_off_the_supervised_score_alone():
    run = _Run(path=False)
    run.history(extremes_are_fraud=True)
    score, comps, kept = run.one(500.0)
    assert len(kept) == 2
    assert "anomaly_path" not in comps
    assert math.isclose(score, _z(comps["supervised"]), rel_tol=1e-9)
    assert run.d.version.endswith("-nopath")


def test_what_it_flagged_and_labels_called_fraud_alerts_again():
    run = _Run(path=True)
    on_path, frauds, extremes = run.history(extremes_are_fraud=True)
    assert not run.d.version.endswith("path")
    assert extremes == 6  # every extreme amount was on the path
    assert (sum(run.d.path_labels), sum(run.d.path_frauds)) == (on_path, frauds)
    score, comps, kept = run.one(500.0)
    assert len(kept) == 3 and 0 <= kept[2] < PATH_CELLS  # its label will count in its cell
    b = kept[2]
    assert b % SUP_BINS == bisect.bisect_right(SUP_EDGES, comps["supervised"])
    pp = _share(run.d, b)
    assert comps["anomaly_path"] == pp > 0.8
    assert score == max(_z(pp), _z(comps["supervised"]))
    assert score >= comps["threshold"]  # alerted, by the path
    [reason] = [r for r in explain(run.last_f, comps) if r.code == "confirmed_anomaly"]
    assert reason.value == pp and f"{pp:.0%} of such flags were fraud" in reason.text


def test_what_labels_called_legitimate_does_not_alert():
    run = _Run(path=True)
    run.history(extremes_are_fraud=False)
    score, comps, _ = run.one(500.0)
    assert comps["anomaly_path"] < 0.2
    assert score == max(_z(comps["anomaly_path"]), _z(comps["supervised"]))
    assert score < comps["threshold"]  # not alerted
    assert "confirmed_anomaly" not in {r.code for r in explain(run.last_f, comps)}


def test_ordinary_transactions_are_not_on_the_path():
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)
    _, comps, kept = run.one(41.0)
    assert "anomaly_path" not in comps and len(kept) == 2


def test_snapshot_and_restore_keep_the_path():
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)
    snap = pickle.loads(pickle.dumps(run.d.snapshot()))
    user = pickle.loads(pickle.dumps(run.u))
    restored = TxwDetector(run.d.p, snap)
    assert list(restored.path_frauds) == list(run.d.path_frauds)
    assert list(restored.path_labels) == list(run.d.path_labels)
    ts = run.ts + 3600
    a = run.u.features(ts, 500.0, **KW)
    b = user.features(ts, 500.0, **KW)
    assert run.d.score(run.u, a) == restored.score(user, b)


def test_snapshots_without_the_path_still_load():
    run = _Run(path=False)
    run.history(extremes_are_fraud=True)
    snap = run.d.snapshot()
    for k in ("path_budget", "path_thr", "path_frauds", "path_labels"):
        del snap[k]  # as written before the path existed
    d = TxwDetector(replace(run.d.p, anomaly_path=True), snap)
    assert sum(d.path_labels) == 0 and d.path_thr is None


def test_the_cell_follows_the_supervised_probability():
    """Flagged at the same margin, a transaction the supervised model scores low and one it
    scores high draw on different labels: what the labels said of the first says nothing of
    the second."""
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)
    d = run.d
    # (the intercept still learns, at river's own rate: the history's probability)
    p_hist = 1.0 / (1.0 + math.exp(-d.sup.intercept))
    assert bisect.bisect_right(SUP_EDGES, p_hist) > bisect.bisect_right(SUP_EDGES, 0.02)
    cells = {}
    for p in (0.02, p_hist):
        d.sup.intercept = math.log(p / (1.0 - p))  # the model's whole output, as it learns none
        f = run.u.features(run.ts + 6 * 3600, 500.0, **KW)
        score, comps = d.score(run.u, f)
        cell = d.keep(f, comps)[2]
        assert math.isclose(comps["supervised"], p)
        assert cell % SUP_BINS == bisect.bisect_right(SUP_EDGES, p)
        cells[p] = (cell, score, comps["anomaly_path"])
    (low, _, pp_low), (high, _, pp_high) = cells[0.02], cells[p_hist]
    assert low // SUP_BINS == high // SUP_BINS and low != high  # same margin, other cell
    # the history's frauds were all scored p_hist: they fill its cell, not the low one
    assert d.path_labels[low] == 0 and pp_low == _share(d, low)
    assert d.path_frauds[high] > 0 and pp_high > 0.5


def test_snapshots_of_the_margin_only_path_are_reset():
    """Model 1.6's path (a setting, off by default) kept six counts per margin bin; they
    do not mean what a cell's do, so they start again rather than being misread."""
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)
    snap = run.d.snapshot()
    snap["path_frauds"] = array("d", [3.0] * 6)
    snap["path_labels"] = array("d", [4.0] * 6)
    d = TxwDetector(run.d.p, snap)
    assert len(d.path_frauds) == len(d.path_labels) == PATH_CELLS
    assert sum(d.path_frauds) == sum(d.path_labels) == 0
    # a transaction kept by another layout of cells, labelled after the restore: its label
    # teaches the supervised model and no cell
    kept = run.one(41.0)[2]
    learnt = d.labels_learnt
    d.learn_label((kept[0], kept[1], PATH_CELLS + 5), True)
    assert d.labels_learnt == learnt + 1 and sum(d.path_labels) == 0


def test_a_flag_within_a_run_draws_on_the_labels_of_runs():
    """Flags in a run of transactions (``velocity`` at least PACE_Z: sprees, card tests) and
    flags out of one (an extreme amount) have cells of their own: the labels of one kind say
    nothing of the other (model 1.8)."""
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)  # the path's labels: extreme amounts were fraud
    d = run.d
    per_pace = PATH_BINS * SUP_BINS
    _, comps, kept = run.one(500.0)
    assert comps["velocity"] < PACE_Z and kept[2] // per_pace == 0
    extreme_pp = comps["anomaly_path"]
    assert extreme_pp == _share(d, kept[2]) > 0.8
    # ordinary amounts, a minute apart: a run; once flagged, its cells have no labels yet
    burst = []
    for _ in range(8):
        _, comps, kept = run.one(40.0, gap=60.0)
        if len(kept) == 3:
            burst.append((comps, kept))
    assert burst, "the run was flagged"
    for comps, kept in burst:
        # (with no label of its own yet, a cell says what the pooled cell says)
        assert comps["velocity"] >= PACE_Z and kept[2] // per_pace == 1
        assert d.path_labels[kept[2]] == 0 and comps["anomaly_path"] == _share(d, kept[2])
    # its labels (legitimate: a customer's busy hour) teach the run's cells
    for _, kept in burst:
        d.learn_label(kept, False)
    _, comps, kept = run.one(40.0, gap=60.0)
    assert kept[2] // per_pace == 1 and d.path_labels[kept[2]] > 0
    assert comps["anomaly_path"] == _share(d, kept[2]) < 0.5
    # and out of a run, the extreme amounts' own labels still say fraud
    _, comps, kept = run.one(500.0)
    assert comps["velocity"] < PACE_Z and kept[2] // per_pace == 0
    assert comps["anomaly_path"] == _share(d, kept[2]) > 0.8


def test_snapshots_of_model_1_7_keep_their_cells_as_those_out_of_a_run():
    run = _Run(path=True)
    run.history(extremes_are_fraud=True)
    snap = run.d.snapshot()
    n = PATH_BINS * SUP_BINS  # 1.7's cells: margin x supervised probability
    snap["path_frauds"] = array("d", range(n))
    snap["path_labels"] = array("d", [2.0 * i for i in range(n)])
    d = TxwDetector(run.d.p, snap)
    assert len(d.path_frauds) == len(d.path_labels) == PATH_CELLS
    assert list(d.path_frauds[:n]) == list(range(n)) and sum(d.path_frauds[n:]) == 0
    assert list(d.path_labels[:n]) == [2.0 * i for i in range(n)]
