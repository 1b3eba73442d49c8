"""`txwatch replay` and `txwatch evaluate` from the command line, on simulated data."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest

from producer.config import SimConfig
from producer.simulator import iter_transactions

pytestmark = pytest.mark.integration


def txwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "txwatch.cli", *args], capture_output=True,
                          text=True, check=False, timeout=600)


def test_replay_and_evaluate(tmp_path: Path, pg: str) -> None:
    tx = tmp_path / "tx.jsonl"
    cfg = SimConfig(n_customers=120, n_terminals=240, n_days=40, seed=9,
                    start=date(2018, 7, 20))
    rows = list(iter_transactions(cfg))
    with tx.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write('{"transaction_id": "bad"}\n')
    scores, dlq, plots = tmp_path / "s.jsonl", tmp_path / "dlq.jsonl", tmp_path / "plots"

    bad = txwatch("replay", "--input", str(tx), "--scores", str(scores), "--no-labels",
                  "--label-delay", "7d")
    assert bad.returncode == 2 and "cannot be combined" in bad.stderr

    r = txwatch("replay", "--input", str(tx), "--scores", str(scores), "--label-delay", "2d",
                "--dlq", str(dlq), "--db", pg)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in scores.open()]
    assert len(lines) == len(rows)
    assert {x["transaction_id"] for x in lines} == {r["transaction_id"] for r in rows}
    for x in lines[:50]:
        assert set(x) == {"transaction_id", "user_id", "timestamp", "score", "alert",
                          "severity", "reasons", "components"}
    (dead,) = [json.loads(x) for x in dlq.open()]
    assert "missing field" in dead["reason"]
    with psycopg.connect(pg) as c:
        (n,) = c.execute("SELECT count(*) FROM alerts").fetchone()
    assert n == sum(x["alert"] for x in lines) > 0

    e = txwatch("evaluate", "--input", str(tx), "--scores", str(scores), "--start",
                "2018-08-20", "--end", "2018-08-27", "--json", "--plots", str(plots))
    assert e.returncode == 0, e.stderr[-2000:]
    res = json.loads(e.stdout)
    assert 0.0 <= res["average_precision"] <= 1.0 and 0.0 <= res["roc_auc"] <= 1.0
    assert "anomaly" in res["components"] and res["transactions"] > 0
    assert (plots / "precision_recall.png").stat().st_size > 1000
    assert (plots / "score_histogram.png").stat().st_size > 1000
