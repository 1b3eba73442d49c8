"""txwatch's detector: per-user and population anomaly models plus a supervised model that
learns from delayed labels, combined into one score (higher = more suspicious).

Components (each is reported per transaction, and measured by ``txwatch evaluate``):

=================  =========================================================================
``user_amount``    robust z-score of the amount against the user's recent amounts
``pop_amount``     how rare the amount is in the population (its tail probability as a z)
``velocity``       the pace of the run this transaction ends (it and up to 16 before it within
                   4 hours): the Poisson tail of that many within the run's span at the
                   user's usual daytime rate (as a z)
``travel``         a hop since the previous transaction that no airliner makes in the time
                   (unless it lands back home: then the far one before was the odd one), and
                   transactions still at the place of such a hop, far from home, within a day;
                   a first transaction abroad in a category new to the user
``behaviour``      how unusual the circumstances are for the user (Fisher's method over the
                   p-values of the gap since the previous transaction, a new terminal, a small
                   amount pooled over the hour, the hour, the distance within the home region
                   and card-not-present purchases pooled over the hour); a small amount
                   farther from home than the user has ever gone within the region scores
                   as a rule, :data:`PROBE_Z` or more (model 1.10)
``hst``            per-user Half-Space Trees (compact: shared structure, per-user masses) or
                   ``iforest``, the per-user online Isolation Forest (``TXWATCH_USER_MODEL``)
``population``     the shard's Half-Space Trees over the same features (cold start)
``anomaly``        the label-free score: the strongest surprisal above, each user-based one
                   weighted by the user's maturity, the population's by the rest; a burst
                   (velocity and behaviour without its gap, together, Stouffer) counts as
                   one surprisal
``supervised``     river's logistic regression over the features, terminal risk and the
                   components, learnt only from delayed labels (compiled, bit for bit:
                   :mod:`operators.models.logistic`)
``anomaly_path``   for a transaction the label-free decision flags (``anomaly`` above the
                   threshold and a budget of its own) once ``supervised`` scores: the share
                   of fraud among the labels of what it flagged in the same cell (in a run
                   of transactions or not x margin over that threshold x supervised
                   probability), its prior the share over both paces (model 1.8)
=================  =========================================================================

The final score is the label-free ``anomaly`` score until the supervised model has seen
enough labelled fraud, then the supervised probability on the same z-like scale, or the
``anomaly_path`` share on that scale when it is higher (``TXWATCH_ANOMALY_PATH``, on by
default; model 1.7). Both budgets, the decision's and the anomaly path's, are quantiles of the
shard's scores from which a transaction labelled fraud is taken back out (model 1.9): they cap
the alerts on what is not known to be fraud.

Scale: scores are z-like (a legitimate transaction rarely exceeds 3); see README, Detection.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from struct import Struct
from typing import Any

from operators.models import HistogramQuantile, HSTStructure, OnlineIsolationForest, P2Quantile
from operators.models.logistic import OnlineLogistic
from operators.scoring import Detector, ZScoreDetector
from operators.user import HOME_RADIUS_KM, UserState
from txwatch.settings import Settings

VERSION = "txw-1.10"
_ND = NormalDist()
Z_MAX = 12.0
AIRPORT_HOURS = 2.0
AIRLINER_KMH = 800.0
ABROAD_NEW_Z = 5.0
"""Travel score of a first transaction abroad in a merchant category new to the user."""
PROBE_Z = 5.0
"""Behaviour score of a small amount just beyond the user's range within the home region (the
upper edge of the farthest distance bin the user has used; operators.user._range_km); it
grows by 1 for each doubling of the distance beyond it."""
PROBE_AMOUNT_P = 0.1
"""How small an amount must be for :data:`PROBE_Z`: its p-value among the user's recent
amounts, pooled over the hour (``amt_p_burst``)."""
PROBE_MIN_KM = 10.0
"""How far from home at least for :data:`PROBE_Z`: a neighbouring town, not the next street (a
customer who always shops within a kilometre is not probed by a coffee 3 km away)."""
USER_Q_STEP = 0.5
"""Most a score may exceed the threshold in force when it enters the user's running quantile."""

# Fixed, documented limits of the model features (never a per-user min-max).
LIMITS: dict[str, tuple[float, float]] = {
    "amt_z": (-3.0, 12.0),  # robust z of the amount vs the user's last 32 amounts
    "log_amount": (0.0, 7.0),  # log(1 + amount in base currency): 0..1,100
    "log_ratio": (-3.0, 3.0),  # log of amount / user's 30-day mean
    "log_gap": (0.0, 16.0),  # log(1 + seconds since the user's previous transaction)
    "cnt_1h": (0.0, 10.0),  # user's transactions in the last hour
    "cnt_1d": (0.0, 30.0),  # ... in the last day
    "log_dist": (0.0, 10.0),  # log(1 + km from the user's usual area)
    "log_speed": (0.0, 8.0),  # log(1 + implied km/h since the previous transaction)
    "hour_rarity": (-0.5, 5.0),  # -log p(hour | user's habit), relative to uniform
    "new_terminal": (0.0, 1.0),
}


def z_of_tail(p: float) -> float:
    """The z whose upper-tail probability is ``p`` (clipped to [0, Z_MAX])."""
    if not p < 0.5:  # also NaN
        return 0.0
    if p < 1e-12:  # beyond double precision of 1 - p: the asymptotic inverse of the tail
        if p <= 0.0:
            return Z_MAX
        t = -2.0 * math.log(p)
        return min(Z_MAX, math.sqrt(t - math.log(t) - math.log(2 * math.pi)))
    return min(Z_MAX, _ND.inv_cdf(1.0 - p))


AMOUNT_EDGES = (*range(20, 401, 20), 500, 700, 1000)
Z_EDGES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
DAY_EDGES = (1.0, 3.0, 5.0, 7.0, 8.0, 10.0, 14.0, 21.0, 28.0, 35.0, 59.0)


def _bin(prefix: str, v: float, edges: tuple[float, ...]) -> str:
    """``prefix:i`` where ``i`` is the number of edges at or below ``v`` (one string per bin,
    made once: the supervised inputs of every event name their bins with these).

    >>> _bin("z", 2.5, Z_EDGES), _bin("z", 0.0, Z_EDGES) is _bin("z", 0.5, Z_EDGES)
    ('z:2', True)
    """
    i = 0
    for e in edges:
        if v < e:
            break
        i += 1
    names = _BIN_NAMES.get(prefix)
    if names is None:
        names = _BIN_NAMES[prefix] = [f"{prefix}:{k}" for k in range(len(edges) + 1)]
    return names[i]


_BIN_NAMES: dict[str, list[str]] = {}


def _count_name(prefix: str, v: float) -> str:
    """``prefix:int(v)`` for small counts (the terminal's recent label counts), made once."""
    k = int(v)
    names = _COUNT_NAMES.get(prefix)
    if names is None:
        names = _COUNT_NAMES[prefix] = [f"{prefix}:{i}" for i in range(8)]
    return names[k] if 0 <= k < 8 else f"{prefix}:{k}"


_COUNT_NAMES: dict[str, list[str]] = {}

SUP_KEYS = (
    "anomaly", "user_amount", "pop_amount", "velocity", "travel", "behaviour", "hst",
    "log_amount", "term_risk_1d", "term_risk_7d", "term_risk_30d", "term_lab_risk_30d",
    "term_recent_lab_risk", "new_terminal", "cold",
)
"""The supervised model's numeric inputs, in order; one-hot bins follow them."""

_KEPT = Struct(f"{len(SUP_KEYS)}f")
"""The numeric inputs kept for a label: 32-bit floats in one ``bytes`` (what ``array("f")``
held up to state version 10, rounded alike: a C cast of each double)."""


def kept_values(kept: tuple[Any, ...]) -> tuple[float, ...]:
    """The numeric inputs of what :meth:`TxwDetector.keep` kept (any state version's)."""
    values = kept[1]
    return _KEPT.unpack(values) if type(values) is bytes else tuple(values)


def sup_dict(values: Any, bins: tuple[str, ...]) -> dict[str, float]:
    """The supervised model's input dict from its numeric inputs (in :data:`SUP_KEYS` order)
    and the names of its one-hot bins."""
    x = dict(zip(SUP_KEYS, values, strict=True))  # (built-ins: faster than a comprehension)
    for b in bins:
        x[b] = 1.0
    return x


def fisher_z(pvalues: list[float]) -> float:
    """Fisher's method: combine independent p-values into one, returned as a z.

    >>> round(fisher_z([0.5, 0.5]), 2), fisher_z([1e-6, 1e-6]) > 5
    (0.0, True)
    """
    k = len(pvalues)
    if k == 0:
        return 0.0
    x = -sum(math.log(max(p, 1e-300)) for p in pvalues)  # = chi2 / 2 with 2k dof
    term = math.exp(-x)
    tail = term
    for i in range(1, k):
        term *= x / i
        tail += term
    return z_of_tail(min(1.0, tail))


def model_features(f: dict[str, float]) -> dict[str, float]:
    return {
        "amt_z": f["amt_robust_z"],
        "log_amount": f["log_amount"],
        "log_ratio": math.log(max(f["amt_ratio_mean"], 1e-3)),
        "log_gap": math.log1p(max(0.0, f["secs_since_prev"])),
        "cnt_1h": f["u_cnt_1h"],
        "cnt_1d": f["u_cnt_1d"],
        "log_dist": math.log1p(f["dist_home_km"]),
        "log_speed": math.log1p(f["speed_kmh"]),
        "hour_rarity": f["hour_rarity"],
        "new_terminal": f["new_terminal"],
    }


@dataclass(frozen=True)
class DetectorParams:
    """Every parameter of the detector (part of the model version's meaning)."""

    user_model: str = "hst"
    seed: int = 42
    maturity_n: int = 10
    hst_trees: int = 10
    hst_height: int = 4
    hst_window: int = 64
    pop_trees: int = 25
    pop_height: int = 6
    pop_window: int = 255
    iforest_trees: int = 25
    iforest_window: int = 64
    hst_weight: float = 0.2
    pop_amount_weight: float = 1.85
    sup_min_frauds: int = 20
    sup_lr: float = 0.2
    user_quantile: float = 0.995
    user_quantile_min_n: int = 50
    budget_per_1000: float = 6.5
    threshold: float = 3.5
    anomaly_path: bool = True


PATH_BINS = 2  # bins of the anomaly path's margin over its threshold: below 1, and 1 or more
PACE_Z = 2.0
"""A flag whose ``velocity`` is at least this is part of a run of transactions (the anomaly
path's cells keep such flags apart: most are sprees and card tests, most of the rest are not)."""
PACE_BINS = 2
SUP_EDGES = (0.05, 0.15, 0.3, 0.5, 0.7)
"""Bins of the supervised probability that, with the pace's and the margin's, make the anomaly
path's cells."""
SUP_BINS = len(SUP_EDGES) + 1
PATH_CELLS = PACE_BINS * PATH_BINS * SUP_BINS

_STRUCTURES: dict[tuple[Any, ...], Any] = {}


def _shared(kind: str, *args: Any) -> Any:
    key = (kind, *args)
    s = _STRUCTURES.get(key)
    if s is None:
        if kind == "hst":
            trees, height, window, seed = args
            s = HSTStructure(LIMITS, n_trees=trees, height=height, window_size=window, seed=seed)
        else:
            trees, window, seed = args
            s = OnlineIsolationForest(sorted(LIMITS), n_trees=trees, window_size=window,
                                      max_samples=window, refit_every=16, seed=seed)
        _STRUCTURES[key] = s
    return s


class TxwDetector:
    """The detector of one logical user shard (see module docstring)."""

    def __init__(self, params: DetectorParams, state: dict[str, Any] | None = None) -> None:
        self.p = params
        self.version = f"{VERSION}-{params.user_model}" + ("" if params.anomaly_path
                                                           else "-nopath")
        if params.user_model == "iforest":
            self.user_model: Any = _shared("iforest", params.iforest_trees,
                                           params.iforest_window, params.seed)
        else:
            self.user_model = _shared("hst", params.hst_trees, params.hst_height,
                                      params.hst_window, params.seed)
        self.pop_model = _shared("hst", params.pop_trees, params.pop_height, params.pop_window,
                                 params.seed + 1)
        if state is None:
            self.pop_masses = self.pop_model.new_masses()
            self.amount_n = 0
            self.amount_mean = 0.0
            self.amount_m2 = 0.0
            self.sup = OnlineLogistic(SUP_KEYS, params.sup_lr)
            self.frauds_learnt = 0
            self.labels_learnt = 0
            self.budget = self._new_budget()
        else:
            self.pop_masses = state["pop_masses"]
            self.amount_n = state["amount_n"]
            self.amount_mean = state["amount_mean"]
            self.amount_m2 = state["amount_m2"]
            sup = state["sup"]
            # (state version 10 and before: river's LogisticRegression, carried over as is)
            self.sup = (sup if isinstance(sup, OnlineLogistic)
                        else OnlineLogistic.from_river(SUP_KEYS, sup))
            self.frauds_learnt = state["frauds_learnt"]
            self.labels_learnt = state["labels_learnt"]
            self.budget = state["budget"]
        self.budget_thr: float | None = None if state is None else state["budget_thr"]
        # the anomaly path (params.anomaly_path): the label-free decision's own budget, and
        # per cell (pace x margin x supervised probability) the labels (frauds, all) of what
        # it flagged
        st = state or {}
        # (the histogram only when the path is on: snapshots without it stay as they were)
        self.path_budget: HistogramQuantile | None = st.get("path_budget") or (
            self._new_budget() if params.anomaly_path else None)
        self.path_thr: float | None = st.get("path_thr")
        pf, pl = st.get("path_frauds"), st.get("path_labels")
        if (pf is not None and pl is not None and len(pf) == len(pl) == PATH_BINS * SUP_BINS):
            # model 1.7's cells are those of pace 0 here: kept, the others start empty
            pf = pf + array("d", bytes(8 * (PATH_CELLS - len(pf))))
            pl = pl + array("d", bytes(8 * (PATH_CELLS - len(pl))))
        if pf is None or pl is None or len(pf) != PATH_CELLS or len(pl) != PATH_CELLS:
            pf, pl = array("d", bytes(8 * PATH_CELLS)), array("d", bytes(8 * PATH_CELLS))
        self.path_frauds: array = pf
        self.path_labels: array = pl
        self._path: tuple[Any, float, int] = (None, 0.0, -1)
        self._last_f: Any = None
        self._last_x: Any = None
        self._mf_f: Any = None
        self._mf_x: Any = None
        # (where learn counted the last score in the budgets: bin and epoch of each)
        self._counted: tuple[Any, int, int, int, int] = (None, -1, 0, -1, 0)
        self._travel: tuple[Any, float] = (None, 0.0)
        self._trip: tuple[Any, bool] = (None, False)
        self._leaves: tuple[Any, tuple[int, ...] | None, tuple[int, ...] | None] = (
            None, None, None)
        self._user_hst = params.user_model != "iforest"

    # ------------------------------------------------------------------------------------
    def _new_budget(self) -> HistogramQuantile:
        # (at most 510 bins: _pack_where keeps a bin in 9 bits)
        return HistogramQuantile(lo=0.01, hi=100.0, n_bins=400,
                                 q=round(1 - self.p.budget_per_1000 / 1000, 6),
                                 half_life=50_000)

    def _pop_amount_z(self, amount: float) -> float:
        """The amount against the shard's population: z of log(1 + amount) under the
        population's running mean and deviation (monotone in the amount, so every shard
        ranks large amounts alike)."""
        n = self.amount_n
        if n < 100:
            return 0.0
        sd = math.sqrt(self.amount_m2 / (n - 1))
        return max(0.0, (math.log1p(amount) - self.amount_mean) / max(sd, 1e-3))

    def components(self, user: UserState, f: dict[str, float]) -> dict[str, float]:
        n = user.n
        maturity = min(1.0, n / self.p.maturity_n)
        # full-history z of the raw amount, shrunk while the history is short
        user_amount = (max(0.0, min(Z_MAX, f["amt_z"])) * math.sqrt(n / (n + 5.0))
                       if n >= 3 else 0.0)
        # velocity: the pace of the run this transaction ends, against the user's usual rate
        # (`pace_p`, see operators.user.pace: the run's own span, not fixed windows; a 1-day
        # window flagged busy ordinary days more often than it found sprees)
        velocity = z_of_tail(f["pace_p"]) if n >= 5 else 0.0
        # impossible travel: the hop since the previous transaction against the fastest
        # door-to-door trip (2 h of airports plus 800 km/h): a genuine traveller never beats it
        travel = 0.0
        hop = f["hop_km"]
        if hop > 100.0 and f["secs_since_prev"] >= 0:
            need_h = AIRPORT_HOURS + hop / AIRLINER_KMH
            took_h = max(f["secs_since_prev"], 60.0) / 3600.0
            ratio = need_h / took_h
            # back home after such a hop, the odd one was the far transaction before it
            if ratio > 1.0 and f["dist_home_km"] > HOME_RADIUS_KM:
                travel = min(Z_MAX, 3.0 + 4.0 * math.log2(ratio))
        # still at the place of a flagged hop (same city, far from home, within a day): a
        # takeover makes several transactions there, each looks like an ordinary trip
        if (user.prev_travel and hop < 100.0 and f["dist_home_km"] > 2 * HOME_RADIUS_KM
                and 0 <= f["secs_since_prev"] < 86_400.0):
            travel = max(travel, user.prev_travel)
        self._travel = (f, travel)
        # far from home, in a country and a merchant category both new to the user: what a
        # takeover from abroad looks like (a traveller mostly keeps to categories they know).
        # On such a trip (same place, within a day), each further first transaction in a
        # category scores the same; the trip's other transactions do not: carrying the score
        # on to all of them raised legitimate alerts 1.6-3 times in the offline studies.
        far = f["dist_home_km"] > 2 * HOME_RADIUS_KM
        if n >= 5 and far and f["new_category"] and (
            f["new_country"]
            or (user.abroad_trip and hop < 100.0 and 0 <= f["secs_since_prev"] < 86_400.0)
        ):
            travel = max(travel, ABROAD_NEW_Z)
        self._trip = (f, far and (travel >= ABROAD_NEW_Z or user.abroad_trip))
        # behaviour: how unusual the circumstances are for this user (Fisher's method over
        # the p-values of the gap since the previous transaction, a new terminal, a small
        # amount, the hour of day and the distance from home within the home region)
        behaviour = circumstances = probe = 0.0
        if n >= 5:
            rate = n / max(86400.0, f["u_days"] * 86400.0)
            gap = f["secs_since_prev"]
            ps = [1.0 - math.exp(-rate * gap) if gap >= 0 else 1.0]
            if f["new_terminal"]:
                ps.append(f["new_terminal_rate"])
            # (its p-value pooled with those of the last hour's amounts: a run of small
            # amounts, as in card testing, is stronger evidence than any one of them)
            ps.append(f["amt_p_burst"])
            # the hour of day and the distance from home count only when they are in the
            # rarer half of the user's own: a p-value below 1/2, doubled (given that it is
            # below 1/2, it is uniform again), so that an ordinary hour or place does not
            # dilute the rest. Trips beyond the home region are left to `travel`
            hp = f["hour_p"]
            if hp < 0.5:
                ps.append(2.0 * hp)
            dp = f["dist_p"]
            if dp < 0.5:
                ps.append(2.0 * dp)
            # card not present (online), pooled over the hour: as a new terminal, it counts
            # only when it is so
            if f["cnp_p"] < 1.0:
                ps.append(f["cnp_p"])
            shrink = math.sqrt(n / (n + 10.0))
            behaviour = fisher_z(ps) * shrink
            # the same without the gap, for the burst below: velocity already counts it
            circumstances = fisher_z(ps[1:]) * shrink
            # a small amount farther from home than the user has ever gone within the region
            # (beyond the farthest distance bin the user has used): a stolen card tested at a
            # far-off shop, card testing's first purchase. Its permutation p-value cannot fall
            # below 1 / (n + 1) however far it is, and Fisher's method dilutes it with the
            # ordinary p-values, so the pattern scores as a rule, as a takeover from abroad
            # does. (In the simulator's test weeks no legitimate transaction matched it:
            # README, Accuracy)
            rng = f.get("dist_range_km", 0.0)
            d = f["dist_home_km"]
            if (0.0 < rng < d <= HOME_RADIUS_KM and d >= PROBE_MIN_KM
                    and f["amt_p_burst"] <= PROBE_AMOUNT_P):
                probe = min(Z_MAX, PROBE_Z + math.log2(d / rng))
                behaviour = max(behaviour, probe)
                circumstances = max(circumstances, probe)
        f["probe_z"] = probe  # (for the reasons, and stored with the alert's features)
        x = self._mf_x = model_features(f)
        self._mf_f = f
        # (the Half-Space Trees return the leaves x reaches, so that learning it after the
        # decision does not route it through every tree again)
        own = 0.0
        own_leaves: tuple[int, ...] | None = None
        if user.model is not None:
            if self._user_hst:
                own, own_leaves = self.user_model.score_leaves(user.model, x)
            else:
                own = self.user_model.score(user.model, x)
        pop, pop_leaves = self.pop_model.score_leaves(self.pop_masses, x)
        self._leaves = (f, own_leaves, pop_leaves)
        pop_amount = self._pop_amount_z(f["amount"])
        # a burst: many transactions *and* unusual circumstances (new terminals, tiny
        # amounts, far from home, online) are two pieces of evidence, combined as Stouffer's
        # z. (Not with `behaviour` itself: its gap since the previous transaction is what
        # velocity counts, and counting it twice lifted ordinary pairs of purchases: 1.77
        # legitimate alerts per 1,000 instead of 4.18 on the reference run without labels)
        burst = (velocity + circumstances) / math.sqrt(2.0)
        user_based = max(user_amount, velocity, behaviour, burst,
                         self.p.hst_weight * 10.0 * own)
        anomaly = max(maturity * user_based + (1 - maturity) * self.p.hst_weight * 10.0 * pop,
                      self.p.pop_amount_weight * pop_amount, travel)
        return {
            "user_amount": user_amount,
            "pop_amount": pop_amount,
            "velocity": velocity,
            "travel": travel,
            "behaviour": behaviour,
            self.p.user_model: own,
            "population": pop,
            "anomaly": anomaly,
            "maturity": maturity,
        }

    def sup_inputs(self, f: dict[str, float], c: dict[str, float]
                   ) -> tuple[list[float], tuple[str, ...]]:
        """Inputs of the supervised model: the components and one-hot bins of the features
        that carry the most label information (binning lets a linear model learn steps), as
        the numeric inputs in :data:`SUP_KEYS` order and the names of the bins that are on."""
        values = [
            min(c["anomaly"], Z_MAX) / Z_MAX,
            c["user_amount"] / Z_MAX,
            c["pop_amount"] / Z_MAX,
            c["velocity"] / Z_MAX,
            c["travel"] / Z_MAX,
            c["behaviour"] / Z_MAX,
            c.get(self.p.user_model, 0.0),
            f["log_amount"] / 7.0,
            f.get("term_risk_1d", 0.0),
            f.get("term_risk_7d", 0.0),
            f.get("term_risk_30d", 0.0),
            f.get("term_lab_risk_30d", 0.0),
            f.get("term_recent_lab_risk", 0.0),
            f["new_terminal"],
            1.0 - c["maturity"],
        ]
        # the terminal's latest labels: how many of the last 3 were fraud, and the run of
        # frauds ending the last 5 (a compromised terminal's labels are all fraud)
        bins = (
            _bin("amt", f["amount"], AMOUNT_EDGES),
            _bin("z", c["user_amount"], Z_EDGES),
            _bin("tep", f.get("term_episode_days", 60.0), DAY_EDGES),
            _count_name("tl3", f.get("term_last3_frauds", 0.0)),
            _count_name("trun", f.get("term_fraud_run", 0.0)),
        )
        return values, bins

    def sup_features(self, f: dict[str, float], c: dict[str, float]) -> dict[str, float]:
        """The supervised model's input dict (see :meth:`sup_inputs`)."""
        values, bins = self.sup_inputs(f, c)
        return sup_dict(values, bins)

    def score(self, user: UserState, f: dict[str, float]) -> tuple[float, dict[str, float]]:
        c = self.components(user, f)
        anomaly = final = c["anomaly"]
        path_bin = cell = -1  # the anomaly path's margin bin, and its cell once supervised
        if self.p.anomaly_path:
            thr = self.p.threshold if self.path_thr is None else max(self.p.threshold,
                                                                     self.path_thr)
            if anomaly >= thr:
                path_bin = min(PATH_BINS - 1, int(anomaly - thr))
                if c["velocity"] >= PACE_Z:  # (cells of pace 0 are those of model 1.7)
                    path_bin += PATH_BINS
        if self.frauds_learnt >= self.p.sup_min_frauds:
            values, bins = self._last_x = self.sup_inputs(f, c)
            self._last_f = f
            p = self.sup.predict_proba(values, bins)
            c["supervised"] = p
            # on the z-like scale: p = 0.5 -> 2.5, 0.66 -> 3.5, 0.9 -> 5.8, 0.99 -> 9.4
            lg = math.log(max(p, 1e-12) / max(1.0 - p, 1e-12))
            final = 2.5 + 1.5 * lg
            if path_bin >= 0:
                # the label-free decision flagged it: scored by the share of fraud among the
                # labels of what it flagged at this pace, margin and supervised probability
                # (_path_share), on the same scale, when that is higher
                cell = path_bin * SUP_BINS + bisect_right(SUP_EDGES, p)
                pp = self._path_share(cell)
                c["anomaly_path"] = pp
                zp = 2.5 + 1.5 * math.log(pp / (1.0 - pp))
                if zp > final:
                    final = zp
        if self.p.anomaly_path:
            # (learn feeds the path's budget; keep keeps the cell, whose label counts there)
            self._path = (f, anomaly, cell)
        c["threshold"] = self.threshold(user)
        return final, c

    def _path_share(self, cell: int) -> float:
        """The share of fraud among the labels of ``cell``, its prior (weight 2) the share in
        the cell of the same margin and supervised probability over both paces (Laplace's
        rule): a cell of one pace with few labels yet says what the pooled one says."""
        pf, pl = self.path_frauds, self.path_labels
        other = (cell + PATH_BINS * SUP_BINS) % PATH_CELLS  # the same cell, the other pace
        prior = (pf[cell] + pf[other] + 1.0) / (pl[cell] + pl[other] + 2.0)
        return (pf[cell] + 2.0 * prior) / (pl[cell] + 2.0)

    def threshold(self, user: UserState) -> float:
        """The alert threshold in force for ``user``: the highest of the settings' threshold,
        the user's own running quantile and the global budget's."""
        thr = self.p.threshold
        q = user.score_q
        if q is not None and q.count >= self.p.user_quantile_min_n:
            thr = max(thr, q.get())
        if self.budget_thr is not None:
            thr = max(thr, self.budget_thr)
        return thr

    def learn(self, user: UserState, f: dict[str, float], score: float) -> None:
        tf, travel = self._travel
        user.prev_travel = travel if tf is f and travel >= self.p.threshold else 0.0
        tf, trip = self._trip
        user.abroad_trip = trip if tf is f else False
        # the user's quantile takes at most USER_Q_STEP above the threshold in force: a burst
        # of alerts (a spree, card testing) cannot lift its own bar; a user whose scores run
        # high all the time still raises it, a step at a time
        if user.score_q is None:
            user.score_q = P2Quantile(self.p.user_quantile)
            user.score_q.update(score)
        else:
            user.score_q.update(min(score, self.threshold(user) + USER_Q_STEP))
        b = self.budget
        bi, be = b.count(max(score, 0.01))
        n = b.n_updates
        if n >= 2_000 and n % 256 == 0:  # reading the histogram costs a cumsum: not per event
            self.budget_thr = b.get()
        pi, pe = -1, 0
        pf, anomaly, _b = self._path
        pb = self.path_budget
        if pf is f and pb is not None:
            pi, pe = pb.count(max(anomaly, 0.01))
            if pb.n_updates >= 2_000 and pb.n_updates % 256 == 0:
                self.path_thr = pb.get()
        # (keep keeps where both were counted: a fraud label takes it back, see learn_label)
        self._counted = (f, bi, be, pi, pe)
        if score >= self.p.threshold:
            return  # protect the anomaly models from what they flag
        # the model features of `f` were built when it was scored: reuse them, and the
        # leaves it reached in the trees
        x = self._mf_x if self._mf_f is f else model_features(f)
        self._mf_f = self._mf_x = None
        lf, own_leaves, pop_leaves = self._leaves
        self._leaves = (None, None, None)
        if lf is not f:
            own_leaves = pop_leaves = None
        if user.model is None:
            user.model = (self.user_model.new_masses() if self._user_hst
                          else self.user_model.new_state())
        if own_leaves is not None:
            self.user_model.learn_leaves(user.model, own_leaves)
        else:
            self.user_model.learn(user.model, x)
        if pop_leaves is not None:
            self.pop_model.learn_leaves(self.pop_masses, pop_leaves)
        else:
            self.pop_model.learn(self.pop_masses, x)
        self.amount_n += 1
        d = f["log_amount"] - self.amount_mean
        self.amount_mean += d / self.amount_n
        self.amount_m2 += d * (f["log_amount"] - self.amount_mean)

    def keep(self, f: dict[str, float], c: dict[str, float]) -> tuple[Any, ...]:
        """What is kept of a transaction until its label arrives: its supervised inputs as a
        compact tuple (names of its bins, shared; numeric inputs as 32-bit floats in one
        ``bytes``, :func:`kept_values`), the anomaly path's cell and where the budgets counted
        it, packed in one int (:func:`_pack_where`): 305 bytes in memory (``sys.getsizeof`` of
        the tuple, the bins' tuple, the bytes and the int; 352 with the ``array`` of state
        version 10), about 95 in a snapshot (pickle shares the names)."""
        if self._last_f is f:
            values, bins = self._last_x
        else:
            values, bins = self.sup_inputs(f, c)
        self._last_f = self._last_x = None
        pf, _a, cell = self._path
        if pf is not f:
            cell = -1
        cf, bi, be, pi, pe = self._counted
        self._counted = (None, -1, 0, -1, 0)
        if cf is f:  # where the budgets counted it: a fraud label takes it back
            return (bins, _KEPT.pack(*values), cell, _pack_where(bi, be, pi, pe))
        if cell >= 0:  # the anomaly path flagged it: its label counts in its cell
            return (bins, _KEPT.pack(*values), cell)
        return (bins, _KEPT.pack(*values))

    def learn_label(self, kept: tuple[Any, ...], is_fraud: bool) -> None:
        names, values = kept[0], kept[1]
        if type(values) is bytes:
            values = _KEPT.unpack(values)
        # (a cell kept before a restore into another layout of cells may be out of range:
        # that label still teaches the supervised model, not the path)
        if len(kept) >= 3 and 0 <= kept[2] < PATH_CELLS:
            b = kept[2]
            self.path_labels[b] += 1.0
            if is_fraud:
                self.path_frauds[b] += 1.0
        if is_fraud and len(kept) == 4:
            # confirmed fraud leaves the budgets' quantiles: a budget caps the alerts that
            # are not known to be fraud, so that a wave of fraud does not raise the bar for
            # the rest once its labels are in (model 1.9)
            bi, be, pi, pe = _unpack_where(kept[3])
            if bi >= 0:
                self.budget.remove(bi, be)
            pb = self.path_budget
            if pb is not None and pi >= 0:
                pb.remove(pi, pe)
        if len(names) == len(values):
            # kept by release 1.2 (state version 5, still read): every input's name beside
            # its value, the bins' ones included
            self.sup.learn_dict(dict(zip(names, values, strict=True)), is_fraud)
        else:
            self.sup.learn(values, names, is_fraud)
        self.labels_learnt += 1
        if is_fraud:
            self.frauds_learnt += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "pop_masses": self.pop_masses,
            "amount_n": self.amount_n,
            "amount_mean": self.amount_mean,
            "amount_m2": self.amount_m2,
            "sup": self.sup,
            "frauds_learnt": self.frauds_learnt,
            "labels_learnt": self.labels_learnt,
            "budget": self.budget,
            "budget_thr": self.budget_thr,
            "path_budget": self.path_budget,
            "path_thr": self.path_thr,
            "path_frauds": self.path_frauds,
            "path_labels": self.path_labels,
        }


_WHERE_BITS = 30


def _pack_where(bi: int, be: int, pi: int, pe: int) -> int:
    """Where the two budgets counted a score (bin, halvings before; bin -1 for nowhere), as one
    int: what waits for a label stays small (32 bytes, where four ints in the tuple took 32
    more, and more again once a bin is above 256).

    >>> _unpack_where(_pack_where(401, 7, -1, 0)), _unpack_where(_pack_where(0, 0, 255, 3))
    ((401, 7, -1, 0), (0, 0, 255, 3))
    """
    return (((be << 9) | (bi + 1)) << _WHERE_BITS) | (pe << 9) | (pi + 1)


def _unpack_where(w: int) -> tuple[int, int, int, int]:
    lo, hi = w & ((1 << _WHERE_BITS) - 1), w >> _WHERE_BITS
    return (hi & 511) - 1, hi >> 9, (lo & 511) - 1, lo >> 9


def params_from_settings(settings: Settings) -> DetectorParams:
    return DetectorParams(
        user_model=settings.user_model if settings.user_model != "zscore" else "hst",
        seed=settings.model_seed,
        maturity_n=settings.min_history,
        budget_per_1000=settings.alert_budget_per_1000,
        threshold=settings.threshold,
        anomaly_path=settings.anomaly_path,
    )


def make_detector_factory(settings: Settings) -> Callable[[Any], Detector]:
    """``factory(snapshot_or_None) -> Detector`` for the user stage."""
    if settings.user_model == "zscore":
        min_history = settings.min_history
        return lambda state: ZScoreDetector(min_history=min_history, state=state)
    params = params_from_settings(settings)
    # start-up, not per event: a first detector imports river and builds the shared model
    # structures once per process, here, when the flow is built, rather than when a stage's
    # first item arrives (seconds of delay on the first decisions otherwise)
    TxwDetector(params)
    return lambda state: TxwDetector(params, state)  # type: ignore[return-value]
