"""``txwatch bench``: throughput, decision latency and state size of the real flow, on the
embedded broker and database (see :mod:`txwatch.bench` for what is measured and how)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

TARGETS = {
    "full_eps": (">=", 10_000.0),
    "ratio_full_baseline": (">=", 50.0),
    "p99_ms": ("<=", 500.0),
    "state_bytes_per_user": ("<=", 4096.0),
    "replay_labels_eps": (">=", 10_000.0),
}
"""The project's targets on the 2-core reference machine (docs/benchmarks.md)."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: float, unit: str = "") -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:,.2f}{unit}"


def format_table(res: dict[str, Any], version: str) -> str:
    """The figures as a readable table (what ``txwatch bench`` prints without ``--json``)."""
    rows: list[tuple[str, str, str]] = []

    def row(name: str, key: str, unit: str = "", extra: str = "") -> None:
        if key not in res:
            return
        target = TARGETS.get(key)
        verdict = ""
        if target is not None:
            op, bound = target
            ok = res[key] >= bound if op == ">=" else res[key] <= bound
            verdict = f"target {op} {bound:,.0f}: {'met' if ok else 'MISSED'}"
        rows.append((name, _fmt(res[key], unit), (extra + "  " + verdict).strip()))

    names = {"full_python": "full, plain Python"}
    for kind in ("passthrough", "full", "full_python", "baseline"):
        if f"{kind}_eps" in res:
            row(f"{names.get(kind, kind)} (1 process)", f"{kind}_eps", " ev/s",
                f"{res[f'{kind}_events']:,} events, median of {res['repeats']} "
                f"(min {_fmt(res[f'{kind}_eps_min'])}, max {_fmt(res[f'{kind}_eps_max'])}; "
                f"{_fmt(res[f'{kind}_eps_per_cpu_second'])} per CPU second)")
    row("full / passthrough", "ratio_full_passthrough")
    row("compiled / plain Python", "ratio_compiled_python", "",
        f"per CPU second {_fmt(res.get('ratio_compiled_python_per_cpu_second', math.nan))}")
    row("full / baseline", "ratio_full_baseline")
    for k, v in res.get("eps_by_processes", {}).items():
        rows.append((f"full, {k} process(es)", _fmt(v, " ev/s"), ""))
    if "p50_ms" in res:
        nan = math.nan
        extra = (f"{res['latency_events']:,} events offered at "
                 f"{_fmt(res['latency_offered_eps'])}/s, live; the flow's histogram "
                 f"{_fmt(res.get('p50_ms_histogram', nan))} ms")
        row("decision latency p50", "p50_ms", " ms", extra)
        row("decision latency p99", "p99_ms", " ms",
            f"p99.9 {_fmt(res['p999_ms'])} ms, max {_fmt(res['max_ms'])} ms; histogram "
            f"{_fmt(res.get('p99_ms_histogram', nan))} ms")
        load = res.get("latency_load")
        if load is not None:
            rows.append(("  offered / full throughput", _fmt(load),
                         "above 1: the flow cannot keep up on this machine now, and the "
                         "latency is the queue's" if load > 1 else
                         "the share of the full flow's measured throughput offered"))
    for mode, name in (("labels", "replay, 7-day labels"), ("nolabels", "replay, no labels")):
        key = f"replay_{mode}_eps"
        if key in res:
            same = "yes" if res[f"replay_{mode}_same_scores"] else "NO"
            row(f"{name} (1 worker)", key, " tx/s",
                f"{res['replay_lines']:,.0f} lines, median of {res['replay_repeats']} "
                f"(min {_fmt(res[f'{key}_min'])}, max {_fmt(res[f'{key}_max'])}; "
                f"{_fmt(res[f'{key}_per_cpu_second'])} per CPU second; peak RSS "
                f"{res[f'replay_{mode}_max_rss_bytes'] / 2**20:,.0f} MiB); same scores in "
                f"every run: {same}")
    row("replay labels / no labels", "ratio_replay_labels_nolabels")
    row("state per user (snapshot)", "state_bytes_per_user", " B",
        "median, users with >= 30 days of history, largest population")
    for k, v in res.get("state_bytes_by_users", {}).items():
        rows.append((f"  {int(k):,} users", _fmt(v["bytes_per_user"], " B"),
                     f"RSS {v['rss_bytes'] / 2**20:,.0f} MiB, "
                     f"{_fmt(v['rss_bytes_per_user'])} B/user in memory"))
    w0 = max(len(r[0]) for r in rows) if rows else 0
    w1 = max(len(r[1]) for r in rows) if rows else 0
    out = [f"txwatch bench — model {version}, {res.get('seconds', 0):.0f} s, load average "
           f"{res.get('load_avg_start', 0):.1f} at the start"]
    out += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(out)


def _run(args: argparse.Namespace) -> int:
    from txwatch.bench import BenchOptions, model_version, run_bench

    opts = BenchOptions(
        events=args.events,
        full_events=args.full_events or None,
        baseline_events=args.baseline_events,
        repeats=args.repeats,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        state_users=tuple(args.users),
        state_pool=args.state_pool,
        processes=tuple(args.processes or ()),
        partitions=args.partitions,
        throughput=not args.no_throughput,
        profile=args.profile,
        workdir=args.workdir,
        replay=args.replay,
        replay_lines=args.replay_lines,
    )
    if min(opts.events, opts.baseline_events, opts.repeats, opts.state_pool) < 1:
        print("txwatch bench: sizes and repeats must be at least 1", file=sys.stderr)
        return 2
    if opts.replay_lines < 0:
        print("txwatch bench: --replay-lines must be 0 (all) or more", file=sys.stderr)
        return 2
    if opts.replay and not Path(opts.replay).is_file():
        print(f"txwatch bench: no such file: {opts.replay}", file=sys.stderr)
        return 2
    res = run_bench(opts, _log)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print(format_table(res, model_version()))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="measure throughput, latency and state size on embedded services",
        description="Run the real flow on the embedded broker and database with the detection "
        "settings of this environment, and measure: events per second of one worker process "
        "for a passthrough flow (same Kafka source and parsing, no state), the full flow and a "
        "scikit-learn IsolationForest baseline (medians of --repeats runs on one pre-produced "
        "topic); decision latency at an offered rate in live mode; per-user state size and "
        "memory at several population sizes; with --replay, the speed of `txwatch replay` with "
        "labels and without. Progress goes to stderr.",
    )
    p.add_argument("--json", action="store_true",
                   help="print one JSON object of numbers on stdout instead of the table")
    p.add_argument("--events", type=int, default=200_000,
                   help="events in the throughput topic; passthrough reads them all (200000)")
    p.add_argument("--full-events", type=int, default=40_000,
                   help="events the full flow reads from that topic (40000; 0: all)")
    p.add_argument("--baseline-events", type=int, default=600,
                   help="events the scikit-learn baseline reads from that topic (600)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each flow (3; median)")
    p.add_argument("--latency-rate", type=float, default=5_000.0,
                   help="offered events per second in the latency run (5000; 0 skips it)")
    p.add_argument("--latency-seconds", type=float, default=5.0,
                   help="seconds of offered load in the latency run (5)")
    p.add_argument("--users", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                   help="population sizes of the state measurement (10000 100000 1000000; "
                        "none skips it)")
    p.add_argument("--state-pool", type=int, default=300,
                   help="users driven through the full per-user path to seed the populations")
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="also measure the full flow on clusters of these sizes, e.g. 1 2 4")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topics (4)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput runs")
    p.add_argument("--profile", default=None, metavar="PREFIX",
                   help="also profile one full run with py-spy: PREFIX.0 and PREFIX.txt")
    p.add_argument("--replay", default=None, metavar="FILE",
                   help="also measure `txwatch replay` on this JSONL file (e.g. from `txwatch "
                        "simulate`), with 7-day labels and with --no-labels, alternating, "
                        "--repeats runs each in fresh processes: medians, their ratio, and "
                        "whether every run wrote the same scores")
    p.add_argument("--replay-lines", type=int, default=300_000,
                   help="lines of the --replay file read (its first ones; 300000; 0: all)")
    p.add_argument("--workdir", default=None,
                   help="keep the broker log, database and run logs here (default: temporary)")
    p.set_defaults(func=_run)
