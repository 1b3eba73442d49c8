"""Evaluation of a replay's scores with the handbook's protocol (scikit-learn metrics).

* test week 2018-08-08..08-14 by default; cards already known to be compromised are removed
  from each test day (a card is known once one of its frauds is ``delay`` days old, counting
  from the start of the training week 2018-07-25);
* ROC-AUC and Average Precision (``sklearn.metrics``) over the test transactions;
* Card Precision@100: each day, the 100 cards with the highest (max) score; the share of them
  that had fraud that day; averaged over days;
* recall per fraud scenario at the alert decision and in the top 1 % of scores, and the alert
  rate; the same figures for each model component.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86400


@dataclass
class EvalData:
    ids: list[str]
    users: np.ndarray
    days: np.ndarray
    fraud: np.ndarray
    scenario: np.ndarray
    score: np.ndarray
    alert: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)


def _day(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() // DAY)


def load(tx_path: str, scores_path: str, start: date, end: date, delay_days: int = 7,
         train_start: date = date(2018, 7, 25)) -> EvalData:
    """Join transactions (with ground truth) and scores on the evaluation window."""
    d0 = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() // DAY)
    d1 = int(datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp() // DAY)
    tr0 = int(datetime(train_start.year, train_start.month, train_start.day,
                       tzinfo=UTC).timestamp() // DAY)
    fraud_days: dict[str, list[int]] = defaultdict(list)
    rows: dict[str, tuple[str, int, int, int]] = {}
    with open(tx_path, "rb") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if not isinstance(r, dict) or "timestamp" not in r:
                continue
            try:
                day = _day(r["timestamp"]) if isinstance(r["timestamp"], str) else int(
                    r["timestamp"] // DAY)
            except (TypeError, ValueError):
                continue
            fr = int(r.get("is_fraud", 0) or 0)
            if fr and day >= tr0:
                fraud_days[r["user_id"]].append(day)
            if d0 <= day <= d1:
                rows[r["transaction_id"]] = (r["user_id"], day, fr,
                                             int(r.get("fraud_scenario", 0) or 0))
    ids: list[str] = []
    users: list[str] = []
    days: list[int] = []
    fraud: list[int] = []
    scen: list[int] = []
    score: list[float] = []
    alert: list[bool] = []
    comps: dict[str, list[float]] = defaultdict(list)
    with open(scores_path, "rb") as f:
        for line in f:
            s = json.loads(line)
            row = rows.get(s["transaction_id"])
            if row is None:
                continue
            user, day, fr, sc = row
            known = any(fd <= day - delay_days - 1 for fd in fraud_days.get(user, ()))
            if known:
                continue
            ids.append(s["transaction_id"])
            users.append(user)
            days.append(day)
            fraud.append(fr)
            scen.append(sc)
            score.append(float(s["score"]))
            alert.append(bool(s["alert"]))
            for k, v in (s.get("components") or {}).items():
                if k in ("maturity", "threshold"):
                    continue
                comps[k].append(float(v))
    n = len(ids)
    return EvalData(ids, np.array(users), np.array(days), np.array(fraud), np.array(scen),
                    np.array(score), np.array(alert),
                    {k: np.array(v) for k, v in comps.items() if len(v) == n})


def card_precision_at_k(users: np.ndarray, days: np.ndarray, fraud: np.ndarray,
                        score: np.ndarray, k: int = 100) -> float:
    """Mean over days of the share of the day's top-``k`` cards (max score) with fraud.

    >>> u = np.array(["a", "a", "b", "c"]); d = np.array([1, 1, 1, 1])
    >>> card_precision_at_k(u, d, np.array([0, 1, 0, 0]), np.array([.1, .9, .8, .2]), k=2)
    0.5
    """
    out = []
    for day in np.unique(days):
        m = days == day
        best: dict[str, float] = {}
        fr: dict[str, int] = {}
        for u, s, f in zip(users[m].tolist(), score[m].tolist(), fraud[m].tolist(), strict=True):
            if s > best.get(u, -np.inf):
                best[u] = s
            fr[u] = max(fr.get(u, 0), f)
        top = sorted(best, key=lambda u: -best[u])[:k]
        out.append(sum(fr[u] for u in top) / k)
    return float(np.mean(out)) if out else 0.0


def figures(d: EvalData, score: np.ndarray, alert: np.ndarray | None) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = d.fraud
    res: dict[str, Any] = {"transactions": len(y), "frauds": int(y.sum())}
    if 0 < y.sum() < len(y):
        res["roc_auc"] = float(roc_auc_score(y, score))
        res["average_precision"] = float(average_precision_score(y, score))
    res["card_precision_at_100"] = card_precision_at_k(d.users, d.days, y, score)
    top = np.zeros(len(score), dtype=bool)  # the top 1 % by rank (ties broken by order)
    top[np.argsort(-score, kind="stable")[: max(1, len(score) // 100)]] = True
    for s in sorted(set(d.scenario.tolist()) - {0}):
        m = d.scenario == s
        r: dict[str, float] = {"n": int(m.sum()), "recall_top1pct": float(top[m].mean())}
        if alert is not None:
            r["recall_alert"] = float(alert[m].mean())
        res.setdefault("scenarios", {})[str(s)] = r
    if alert is not None:
        legit = y == 0
        res["alerts_per_1000"] = float(1000 * alert.mean()) if len(alert) else 0.0
        res["alerts_per_1000_legit"] = float(1000 * alert[legit].mean()) if legit.any() else 0.0
        res["alert_precision"] = float(y[alert].mean()) if alert.any() else 0.0
    return res


def evaluate(tx_path: str, scores_path: str, start: date = date(2018, 8, 8),
             end: date = date(2018, 8, 14), delay_days: int = 7,
             plots_dir: str | None = None) -> dict[str, Any]:
    d = load(tx_path, scores_path, start, end, delay_days)
    res = {"window": f"{start}..{end}", **figures(d, d.score, d.alert)}
    res["components"] = {k: figures(d, v, None) for k, v in sorted(d.components.items())}
    if plots_dir:
        res["plots"] = plots(d, plots_dir)
    return res


def plots(d: EvalData, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, s in [("score", d.score), *sorted(d.components.items())]:
        if d.fraud.sum() == 0:
            break
        p, r, _ = precision_recall_curve(d.fraud, s)
        ax.plot(r, p, label=name, lw=2 if name == "score" else 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision–recall, test window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(Path(out_dir) / "precision_recall.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(np.quantile(d.score, 0.001), np.quantile(d.score, 0.9999), 60)
    ax.hist(d.score[d.fraud == 0], bins=bins, alpha=0.6, label="legitimate", log=True)
    ax.hist(d.score[d.fraud == 1], bins=bins, alpha=0.6, label="fraud", log=True)
    ax.set_xlabel("score")
    ax.set_ylabel("transactions (log)")
    ax.legend()
    fig.tight_layout()
    paths.append(str(Path(out_dir) / "score_histogram.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def format_report(res: dict[str, Any]) -> str:
    def line(name: str, r: dict[str, Any]) -> str:
        return (f"{name:<16} AUC {r.get('roc_auc', float('nan')):.3f}  "
                f"AP {r.get('average_precision', float('nan')):.3f}  "
                f"CP@100 {r['card_precision_at_100']:.3f}")

    out = [f"window {res['window']}: {res['transactions']:,} transactions, "
           f"{res['frauds']:,} frauds (known-compromised cards removed)", line("score", res)]
    out.append(f"alerts: {res.get('alerts_per_1000', 0):.2f} per 1,000 transactions "
               f"({res.get('alerts_per_1000_legit', 0):.2f} per 1,000 legitimate), "
               f"precision {res.get('alert_precision', 0):.3f}")
    for s, r in res.get("scenarios", {}).items():
        out.append(f"  scenario {s}: n={r['n']:<5} recall at alert {r.get('recall_alert', 0):.3f}"
                   f"  in top 1% {r['recall_top1pct']:.3f}")
    for k, r in res.get("components", {}).items():
        out.append(line(k, r))
    return "\n".join(out)


def parse_date(s: str) -> date:
    return datetime.strptime(s, "%Y-%m-%d").replace(tzinfo=UTC).date()


__all__ = ["evaluate", "format_report", "parse_date", "timedelta"]
