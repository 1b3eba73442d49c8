"""``txwatch replay``: the real dataflow over a JSONL file, scores to a JSONL file.

The same operators as the Kafka flow (only the source and sinks differ): the file is read in
event-time order and, with a label delay, every transaction's label (from the file's
``is_fraud``) enters the flow that long after it, through the same label path as the Kafka
``labels`` topic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from producer.durations import duration_arg
from txwatch.settings import Settings, get_settings

REPLAY_GC_THRESHOLD = 1_000_000
"""The replay's ``gc_threshold`` unless ``TXWATCH_GC_THRESHOLD`` sets one: a replay is a batch
job, whose throughput counts and whose pauses do not. The young generation's count is the
tracked objects allocated less those freed, so it grows by what outlives its event (users'
state, pending labels) and by what is in flight; at the worker's 50,000 each collection walks
the batches in flight again: 0.46-0.63 s of a 150 k- or 300 k-line labelled replay, against
none here, the same peak memory (docs/benchmarks.md)."""


def replay_settings(base: Settings | None = None, **overrides: Any) -> Settings:
    """Settings for a reproducible replay: no timestamp bounds, no wall-clock release."""
    base = base or get_settings()
    data = base.model_dump()
    data.update(replay=True, lateness_seconds=0.0, max_hold_seconds=1e9, metrics_port=0)
    if "gc_threshold" not in base.model_fields_set:
        data["gc_threshold"] = REPLAY_GC_THRESHOLD
    data.update(overrides)
    return Settings(**data)


def run_replay(
    input_path: str,
    scores_path: str,
    *,
    settings: Settings | None = None,
    label_delay: float | None = 7 * 86400.0,
    dlq_path: str | None = None,
    db_url: str | None = None,
    workers: int = 1,
    progress: bool = True,
    own_process: bool = False,
) -> dict[str, float]:
    """Run the flow over ``input_path``; returns counts and the events per second.
    ``own_process``: the replay owns its process (the CLI), so it may tune the garbage
    collector for the flow (:func:`dataflow.build.tune_gc`)."""
    from bytewax.testing import TestingSink, cluster_main, run_main

    from dataflow.build import FlowIO, build_flow, tune_gc
    from dataflow.sources import ReplaySource
    from sinks.scores import JsonLinesSink

    s = replay_settings(settings)
    state = {"t0": time.monotonic(), "last": 0.0, "lines": 0}

    def on_progress(lines: int) -> None:
        state["lines"] = lines
        now = time.monotonic()
        if progress and now - state["last"] > 1.0:
            state["last"] = now
            rate = lines / max(1e-9, now - state["t0"])
            print(f"\rreplay: {lines:,} lines, {rate:,.0f}/s", end="", file=sys.stderr)

    dead: list[Any] = []
    alerts_sink: Any = TestingSink([])
    if db_url:
        from operators.sharding import all_user_keys
        from sinks.migrate import migrate
        from sinks.postgres import AlertSink

        migrate(db_url)
        alerts_sink = AlertSink(db_url, all_user_keys(s.logical_shards))
    with open(scores_path, "wb") as out:
        source = ReplaySource(input_path, s, label_delay=label_delay, batch=2000,
                              progress=on_progress)
        io = FlowIO(
            transactions=source,
            use_labels=False,
            use_controls=False,
            labels_in_transactions=label_delay is not None,
            alerts=alerts_sink,
            dead_letters=TestingSink(dead),
            decisions=JsonLinesSink(out),
        )
        flow = build_flow(s, io)
        if own_process:
            tune_gc(s)
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    elapsed = time.monotonic() - state["t0"]
    if dlq_path:
        import base64
        import json

        with open(dlq_path, "w") as f:
            for d in dead:
                f.write(json.dumps({"payload_b64": base64.b64encode(d.payload).decode(),
                                    "reason": d.reason, "offset": d.offset}) + "\n")
    lines = state["lines"]
    not_due = source.labels_not_due
    if progress:
        late = (f", {not_due:,} labels due after the last transaction not replayed"
                if not_due else "")
        print(f"\rreplay: {lines:,} lines in {elapsed:.1f} s ({lines / elapsed:,.0f}/s), "
              f"{len(dead)} invalid{late}", file=sys.stderr)
    return {"lines": lines, "seconds": elapsed, "eps": lines / elapsed, "invalid": len(dead),
            "labels_not_due": not_due}


def _run(args: argparse.Namespace) -> int:
    if args.no_labels and args.label_delay is not None:
        return _usage("--label-delay cannot be combined with --no-labels")
    delay = None if args.no_labels else (7 * 86400.0 if args.label_delay is None
                                         else args.label_delay)
    if args.workers < 1:
        return _usage(f"--workers must be at least 1, not {args.workers}")
    if not Path(args.input).is_file():
        return _usage(f"no such file: {args.input}")
    for flag, path in (("--scores", args.scores), ("--dlq", args.dlq)):
        if path:  # (created beside any missing directories, as simulate and evaluate do)
            if Path(path).is_dir():
                return _usage(f"{flag} {path} is a directory: give a file name")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                return _usage(f"cannot write {flag} {path}: {e}")
    db_errors: tuple[type[Exception], ...] = ()
    if args.db:
        import psycopg

        db_errors = (psycopg.OperationalError,)
    try:
        run_replay(args.input, args.scores, label_delay=delay, dlq_path=args.dlq,
                   db_url=args.db, workers=args.workers, own_process=True)
    except db_errors as e:
        return _usage(f"cannot reach the database (--db): {e}")
    return 0


def _usage(msg: str) -> int:
    print(f"txwatch replay: {msg}", file=sys.stderr)
    return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay", help="run the dataflow over a JSONL file and write every score",
        description="Run the real dataflow (same operators as the Kafka flow) over a JSONL "
        "file of transactions in event-time order, and write one JSON line per valid "
        "transaction: transaction_id, user_id, timestamp, score, alert, severity, reasons, "
        "components. Labels from the file's is_fraud reach the flow after --label-delay.",
    )
    p.add_argument("--input", required=True, help="transactions, JSON lines, time-ordered")
    p.add_argument("--scores", required=True, help="where to write the scores (JSON lines)")
    p.add_argument("--label-delay", type=duration_arg, default=None,
                   help="delay of the fraud labels: N followed by s, m, h or d (default 7d); "
                   "a label due after the file's last transaction never arrives")
    p.add_argument("--no-labels", action="store_true", help="no labels reach the flow")
    p.add_argument("--dlq", help="write invalid lines here (JSON lines, with the reason)")
    p.add_argument("--db", help="also write alerts to this PostgreSQL URL")
    p.add_argument("--workers", type=int, default=1, help="Bytewax workers (default 1)")
    p.set_defaults(func=_run)
