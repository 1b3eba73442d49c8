"""``txwatch bench``: a smoke run with tiny sizes (the JSON shape, every figure positive and
finite), and the helpers that turn measurements into figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators.native import summary as native_summary
from txwatch.bench import RunResult, _hist_quantile, _pct, cluster_eps, profile_summary
from txwatch.commands.bench import format_table

ROOT = Path(__file__).resolve().parents[1]


def _numbers(obj: object, path: str = "") -> list[tuple[str, float]]:
    """Every leaf of a JSON object, which must be a number (nested objects allowed)."""
    assert isinstance(obj, dict), path
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out += _numbers(v, f"{path}{k}.")
        else:
            assert isinstance(v, int | float) and not isinstance(v, bool), (path + k, v)
            out.append((path + k, float(v)))
    return out


@pytest.mark.integration
def test_bench_smoke_json(tmp_path):
    cmd = [sys.executable, "-m", "txwatch.cli", "bench", "--json", "--events", "3000",
           "--full-events", "1500", "--baseline-events", "40", "--repeats", "1",
           "--latency-rate", "300", "--latency-seconds", "1", "--users", "300", "1000",
           "--state-pool", "30", "--processes", "2", "--workdir", str(tmp_path / "w")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert "model txw-" in res.stderr or "model zscore" in res.stderr  # progress on stderr
    for key in ("passthrough_eps", "full_eps", "baseline_eps", "ratio_full_passthrough",
                "p50_ms", "p99_ms", "state_bytes_per_user"):
        assert key in out, key
    assert set(out["eps_by_processes"]) == set(out["cpu_us_per_event_by_processes"]) == {"2"}
    assert set(out["state_bytes_by_users"]) == {"300", "1000"}
    assert set(out["state_bytes_by_users"]["1000"]) == {"bytes_per_user", "rss_bytes",
                                                        "rss_bytes_per_user"}
    for name, v in _numbers(out):
        assert math.isfinite(v), name
        # the RSS growth over a thousand users is within the allocator's noise (it was
        # once -647 B/user): the smoke run checks it is reported, the bench quotes 1 M
        if not name.startswith("load_avg") and not name.endswith("rss_bytes_per_user") \
                and name != "compiled":
            assert v > 0, (name, v)
    # the compiled flow is measured against the same flow as plain Python, same alerts
    assert out["compiled"] == (1.0 if native_summary() == "compiled" else 0.0)
    if os.environ.get("TXWATCH_REQUIRE_NATIVE") == "1":
        assert out["compiled"] == 1.0
    if out["compiled"]:
        assert out["full_python_events"] == out["full_events"]
        assert out["full_python_alerts"] > 0
        assert out["ratio_compiled_python"] == pytest.approx(
            out["full_eps"] / out["full_python_eps"])
        assert "compiled / plain Python" in format_table(out, "txw-test")
    assert out["full_events"] == 1500 and out["baseline_events"] == 40
    assert out["passthrough_events"] == 3000
    assert out["ratio_full_passthrough"] == pytest.approx(
        out["full_eps"] / out["passthrough_eps"])
    assert out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]
    assert out["latency_load"] == pytest.approx(out["latency_offered_eps"] / out["full_eps"])
    assert out["state_bytes_per_user"] == out["state_bytes_by_users"]["1000"]["bytes_per_user"]


def test_quantiles():
    xs = [float(i) for i in range(1, 101)]
    assert _pct(xs, 0.5) == 51.0 and _pct(xs, 0.99) == 100.0
    assert math.isnan(_pct([], 0.5))
    # 10 observations at or below 0.1 s, 10 more at or below 1 s
    buckets = [(0.1, 10.0), (1.0, 20.0), (math.inf, 20.0)]
    assert _hist_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert _hist_quantile(buckets, 0.75) == pytest.approx(0.55)
    assert math.isnan(_hist_quantile([], 0.5))


def test_cluster_eps_spans_every_process():
    rs = [RunResult("full", 10, 1000, 100.0, 102.0), RunResult("full", 10, 1000, 100.5, 104.0)]
    assert cluster_eps(rs) == pytest.approx(2000 / 4.0)


def test_profile_summary_groups_the_flow_thread(tmp_path):
    head = "_run_module_as_main (<frozen runpy>:198);_run_code (<frozen runpy>:88)"
    raw = tmp_path / "p.0"
    raw.write_text("\n".join([
        f"{head};<module> (run.py:14);_find_and_load (<frozen importlib._bootstrap>:1176) 50",
        f"{head};<module> (run.py:355);_StatefulLogic.on_batch (operators/__init__.py:1036);"
        "UserStage._txn (operators/stages.py:373);UserState.features (operators/user.py:120) 30",
        f"{head};<module> (run.py:355);_ParsingPartition.next_batch (dataflow/sources.py:62) 10",
        f"{head};<module> (run.py:355) 10",
        "Thread.run (threading.py:982);_AlertPartition._retry_loop (sinks/postgres.py:143) 99",
    ]) + "\n")
    text = profile_summary(raw)
    assert text.startswith("50 samples")  # start-up and other threads left out
    assert "60.0%  user stage: features" in text
    assert "20.0%  source: Kafka poll, parse, watermarks" in text
    assert "20.0%  Bytewax runtime" in text


def test_table_names_the_targets():
    res = {"passthrough_eps": 40000.0, "passthrough_eps_min": 39000.0,
           "passthrough_eps_max": 41000.0, "passthrough_eps_per_cpu_second": 42000.0,
           "passthrough_events": 200000, "full_eps": 12000.0, "full_eps_min": 11000.0,
           "full_eps_max": 13000.0, "full_eps_per_cpu_second": 12500.0, "full_events": 50000,
           "repeats": 3, "ratio_full_passthrough": 0.3, "state_bytes_per_user": 5000.0,
           "seconds": 100.0}
    text = format_table(res, "txw-test")
    assert "model txw-test" in text
    assert "12,000 ev/s" in text and "target >= 10,000: met" in text
    assert "target <= 4,096: MISSED" in text


def test_table_says_when_the_offered_rate_is_above_the_flows_throughput():
    base = {"p50_ms": 2000.0, "p99_ms": 3900.0, "p999_ms": 4000.0, "max_ms": 4100.0,
            "latency_events": 25000, "latency_offered_eps": 5000.0, "seconds": 10.0}
    over = format_table({**base, "latency_load": 1.25}, "txw-test")
    under = format_table({**base, "latency_load": 0.5}, "txw-test")
    assert "cannot keep up" in over and "1.25" in over
    assert "cannot keep up" not in under and "0.50" in under


@pytest.mark.integration
def test_replay_bench_measures_both_modes_side_by_side(tmp_path):
    from txwatch.bench import sim_lines

    data = tmp_path / "tx.jsonl"
    data.write_bytes(b"".join(line + b"\n" for _key, line in sim_lines(3_000, customers=200,
                                                                       terminals=400)))
    cmd = [sys.executable, "-m", "txwatch.cli", "bench", "--json", "--no-throughput",
           "--latency-rate", "0", "--users", "--repeats", "2", "--replay", str(data),
           "--replay-lines", "2000", "--workdir", str(tmp_path / "w")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout)
    assert out["replay_lines"] == 2000 and out["replay_repeats"] == 2
    # the rounds alternate the order of the modes (progress on stderr)
    rounds = [ln.split(", ")[1].split(":")[0] for ln in res.stderr.splitlines()
              if ln.startswith("replay bench: round")]
    assert rounds == ["labels", "nolabels", "nolabels", "labels"]
    for mode in ("labels", "nolabels"):
        eps = out[f"replay_{mode}_eps"]
        assert out[f"replay_{mode}_eps_min"] <= eps <= out[f"replay_{mode}_eps_max"]
        assert eps > 0 and out[f"replay_{mode}_eps_per_cpu_second"] > 0
        assert out[f"replay_{mode}_max_rss_bytes"] > 50 * 2**20
        assert out[f"replay_{mode}_same_scores"] == 1.0  # the replay is deterministic
    assert out["ratio_replay_labels_nolabels"] == pytest.approx(
        out["replay_labels_eps"] / out["replay_nolabels_eps"])
    text = format_table(out, "txw-test")
    assert "replay, 7-day labels (1 worker)" in text and "same scores in every run: yes" in text
    assert not list((tmp_path / "w").glob("replay-scores-*"))  # scores files are removed


def test_replay_bench_scores_digest_ignores_order_not_content(tmp_path):
    from txwatch.bench_replay import head_lines, scores_digest

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b'{"id": 1}\n{"id": 2}\n')
    b.write_bytes(b'{"id": 2}\n{"id": 1}\n')
    c.write_bytes(b'{"id": 2}\n{"id": 3}\n')
    assert scores_digest(a) == scores_digest(b) != scores_digest(c)
    assert head_lines(a, tmp_path / "h", 1) == 1
    assert (tmp_path / "h").read_bytes() == b'{"id": 1}\n'
    assert head_lines(a, tmp_path / "h", 10) == 2


def test_replay_bench_refuses_a_missing_file(tmp_path):
    res = subprocess.run([sys.executable, "-m", "txwatch.cli", "bench", "--replay",
                          str(tmp_path / "none.jsonl"), "--no-throughput", "--users"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "no such file" in res.stderr


def test_a_replays_peak_memory_is_its_own_not_the_benchs(tmp_path):
    """The bench measures the users' state (up to a million users, gigabytes) before the
    replays; each replay's peak RSS must be its own process's, not its parent's."""
    from txwatch.bench import sim_lines
    from txwatch.bench_replay import peak_rss_bytes, run_one

    data = tmp_path / "tx.jsonl"
    data.write_bytes(b"".join(line + b"\n" for _key, line in sim_lines(1_000, customers=50,
                                                                       terminals=100)))
    ballast = bytearray(1536 * 2**20)
    for i in range(0, len(ballast), 4096):  # resident in this process
        ballast[i] = 1
    assert peak_rss_bytes() > 1536 * 2**20
    r = run_one(data, tmp_path / "scores.jsonl", "nolabels")
    assert 30 * 2**20 < r["max_rss_bytes"] < 1024 * 2**20
    del ballast
