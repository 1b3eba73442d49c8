"""`txwatch replay`, `evaluate`, `db` and `alerts` on bad arguments, mismatched files and an
unreachable database: a clear one-line error and exit status 2, never a traceback, and
nothing half-written."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from txwatch.cli import main

TX = [
    {"transaction_id": f"t{i}", "user_id": f"u{i % 3}", "amount": 10.0 + i,
     "timestamp": f"2018-04-0{1 + i // 4}T1{i % 10}:00:00Z", "is_fraud": int(i == 5),
     "fraud_scenario": 1 if i == 5 else 0}
    for i in range(12)
]


@pytest.fixture
def tx(tmp_path: Path) -> Path:
    p = tmp_path / "tx.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in TX))
    return p


@pytest.fixture
def scores(tmp_path: Path, tx: Path) -> Path:
    """What replay writes for ``tx`` (scores made up: evaluate only joins and ranks them)."""
    p = tmp_path / "scores.jsonl"
    p.write_text("".join(json.dumps({
        "transaction_id": r["transaction_id"], "user_id": r["user_id"],
        "timestamp": r["timestamp"], "score": float(i), "alert": i == 5, "severity": "allow",
        "reasons": [], "components": {"anomaly": float(i)}}) + "\n"
        for i, r in enumerate(TX)))
    return p


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


# ---------------------------------------------------------------------------------- replay

def test_replay_refuses_a_bad_label_delay_as_a_usage_error(capsys, tx, tmp_path):
    rc, _, err = run(capsys, "replay", "--input", str(tx), "--scores",
                     str(tmp_path / "s.jsonl"), "--label-delay", "3x")
    assert rc == 2
    assert "argument --label-delay: not a duration: '3x'" in err and "Traceback" not in err
    assert not (tmp_path / "s.jsonl").exists()


def test_replay_refuses_zero_workers(capsys, tx, tmp_path):
    rc, _, err = run(capsys, "replay", "--input", str(tx), "--scores",
                     str(tmp_path / "s.jsonl"), "--workers", "0")
    assert rc == 2 and "--workers must be at least 1" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_replay_refuses_a_directory_as_the_scores_file(capsys, tx, tmp_path):
    rc, _, err = run(capsys, "replay", "--input", str(tx), "--scores", str(tmp_path))
    assert rc == 2 and "is a directory" in err


def test_replay_says_when_the_database_is_unreachable(capsys, tx, tmp_path):
    out = tmp_path / "s.jsonl"
    rc, _, err = run(capsys, "replay", "--input", str(tx), "--scores", str(out), "--db",
                     f"postgresql://txwatch@127.0.0.1:{refused_port()}/txwatch")
    assert rc == 2
    assert err.startswith("txwatch replay: cannot reach the database (--db):")
    assert "Traceback" not in err and not out.exists()  # checked before any score is written


def test_replay_creates_the_directories_of_its_outputs(tx, tmp_path):
    scores, dlq = tmp_path / "out" / "s.jsonl", tmp_path / "dead" / "dlq.jsonl"
    r = subprocess.run([sys.executable, "-m", "txwatch.cli", "replay", "--input", str(tx),
                        "--scores", str(scores), "--dlq", str(dlq), "--no-labels"],
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(scores.read_text().splitlines()) == len(TX)
    assert dlq.read_text() == ""


# -------------------------------------------------------------------------------- evaluate

def test_evaluate_refuses_a_bad_date(capsys, tx, scores):
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(scores),
                     "--start", "2018-13-01")
    assert rc == 2 and "argument --start: not a date: '2018-13-01'" in err


def test_evaluate_refuses_a_window_that_ends_before_it_starts(capsys, tx, scores):
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(scores),
                     "--start", "2018-04-03", "--end", "2018-04-01")
    assert rc == 2 and "--end 2018-04-01 is before --start 2018-04-03" in err


def test_evaluate_says_which_days_the_input_holds_when_the_window_is_empty(capsys, tx, scores):
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(scores))
    assert rc == 2
    assert "no transaction in 2018-08-08..2018-08-14" in err
    assert "transactions from 2018-04-01 to 2018-04-03" in err and "--start" in err


def test_evaluate_names_the_line_of_a_scores_file_that_replay_did_not_write(
        capsys, tx, scores, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(scores.read_text().splitlines()[0] + "\n" + json.dumps({"x": 1}) + "\n")
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(bad),
                     "--start", "2018-04-01", "--end", "2018-04-03")
    assert rc == 2 and f"{bad}, line 2: not a line written by txwatch replay" in err
    # the transactions file given as the scores: no score in it
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(tx),
                     "--start", "2018-04-01", "--end", "2018-04-03")
    assert rc == 2 and "line 1: not a line written by txwatch replay (no 'score')" in err


def test_evaluate_says_when_the_scores_are_of_another_input(capsys, tx, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"transaction_id": "x1", "user_id": "u", "timestamp":
                                 "2018-04-01T10:00:00Z", "score": 1.0, "alert": False}) + "\n")
    rc, _, err = run(capsys, "evaluate", "--input", str(tx), "--scores", str(other),
                     "--start", "2018-04-01", "--end", "2018-04-03")
    assert rc == 2 and "none of the 12 transactions" in err and "has a score in" in err


def test_evaluate_reports_a_window_and_says_when_auc_is_undefined(capsys, tx, scores):
    rc, out, _ = run(capsys, "evaluate", "--input", str(tx), "--scores", str(scores),
                     "--start", "2018-04-01", "--end", "2018-04-03")
    assert rc == 0 and "12 transactions, 1 frauds" in out
    assert "need both fraud and legitimate" not in out
    rc, out, _ = run(capsys, "evaluate", "--input", str(tx), "--scores", str(scores),
                     "--start", "2018-04-01", "--end", "2018-04-01")  # t0..t3: no fraud
    assert rc == 0 and "4 transactions, 0 frauds" in out
    assert "ROC-AUC and AP need both fraud and legitimate transactions" in out


# ------------------------------------------------------------------------------ the database

def test_db_prune_says_when_the_database_is_unreachable(capsys, monkeypatch):
    monkeypatch.setenv("TXWATCH_DATABASE_URL",
                       f"postgresql://txwatch@127.0.0.1:{refused_port()}/txwatch")
    from txwatch.settings import get_settings

    get_settings.cache_clear()
    try:
        rc, _, err = run(capsys, "db", "prune")
    finally:
        get_settings.cache_clear()
    assert rc == 2 and err.startswith("txwatch db prune: cannot reach the database")


def test_alerts_refuses_a_limit_below_one(capsys):
    rc, _, err = run(capsys, "alerts", "--limit", "-1")
    assert rc == 2 and "--limit must be at least 1, not -1" in err
