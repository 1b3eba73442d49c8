"""``txwatch simulate`` (a labelled dataset to a JSON-lines file) and ``txwatch produce``
(the stream to Kafka). See docs/simulator.md for the scenarios and examples.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any, TextIO

from producer.config import SimConfig, parse_scenarios
from producer.durations import duration_arg
from producer.labels import DEFAULT_LEGIT_SHARE, LabelPolicy
from producer.progress import ProgressLine, bar

DEFAULTS = SimConfig()


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _positive_float(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return x


def _share(text: str) -> float:
    x = float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return x


def _scenarios(text: str) -> frozenset[int]:
    try:
        return parse_scenarios(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulation")
    g.add_argument("--customers", type=_positive_int, default=DEFAULTS.n_customers,
                   help="number of customers (default %(default)s)")
    g.add_argument("--terminals", type=_positive_int, default=DEFAULTS.n_terminals,
                   help="number of grid terminals (default %(default)s)")
    g.add_argument("--days", type=_positive_int, default=DEFAULTS.n_days,
                   help="simulated days (default %(default)s)")
    g.add_argument("--start", type=date.fromisoformat, default=DEFAULTS.start,
                   help="first simulated day, YYYY-MM-DD (default %(default)s)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default 0)")
    g.add_argument("--radius", type=_positive_float, default=DEFAULTS.radius,
                   help="customers use terminals within this many km (default %(default)s)")
    g.add_argument("--scenarios", type=_scenarios, default=DEFAULTS.scenarios,
                   help="fraud scenarios on: e.g. 1,2,3 (the handbook's), all (default), none")
    g.add_argument("--id-prefix", default=None,
                   help="transaction id prefix (default tx; in live mode tx<hex start time>-)")


def _add_label_args(p: argparse.ArgumentParser, delay_help: str) -> None:
    g = p.add_argument_group("labels")
    g.add_argument("--label-delay", type=duration_arg, default=7 * 86400.0, help=delay_help)
    g.add_argument("--label-share", type=_share, default=DEFAULT_LEGIT_SHARE,
                   help="share of legitimate transactions labelled legit (default 0.05)")


def register(subparsers: Any) -> None:
    """Add ``simulate`` and ``produce`` to the ``txwatch`` command line."""
    s = subparsers.add_parser(
        "simulate", help="write a labelled transaction dataset (JSON lines)",
        description="Simulate labelled card transactions (the handbook's design plus scenarios "
                    "4-6) and write them in time order, one JSON object per line.")
    s.add_argument("--out", required=True, metavar="FILE.jsonl",
                   help="output file ('-' for standard output)")
    s.add_argument("--labels-out", metavar="FILE.jsonl",
                   help="also write the delayed labels (labels topic format) to this file")
    _add_sim_args(s)
    _add_label_args(s, "label delay after the transaction, simulated time (default 7d)")
    s.add_argument("--stats", action="store_true",
                   help="print counts per scenario next to the handbook's reference figures")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_simulate)

    p = subparsers.add_parser(
        "produce", help="stream simulated transactions and labels to Kafka",
        description="Send simulated (or recorded) transactions to the transactions topic and "
                    "their delayed labels to the labels topic, keyed by user id. Live mode "
                    "(default) stamps each transaction with the time it is sent.")
    p.add_argument("--from", dest="source", metavar="FILE.jsonl",
                   help="replay this file instead of simulating")
    _add_sim_args(p)
    t = p.add_argument_group("event time and pace")
    t.add_argument("--replay", action="store_true",
                   help="keep the simulated (or recorded) timestamps instead of stamping now")
    t.add_argument("--compress", type=_positive_float, metavar="N",
                   help="pace by event time, one simulated day per N seconds (history too)")
    t.add_argument("--history-days", type=float, metavar="N",
                   help="first send N days of history at full speed, ending now, then go live")
    pace = t.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive_float, metavar="N",
                      help="transactions per second (live default: 100)")
    pace.add_argument("--max-speed", action="store_true", help="as fast as possible")
    _add_label_args(p, "label delay, on the transactions' clock: wall-clock in live mode "
                       "(e.g. 30s), simulated when replaying (default 7d)")
    p.add_argument("--no-labels", action="store_true", help="do not send labels")
    stop = p.add_argument_group("stopping")
    stop.add_argument("--max-events", type=_positive_int, metavar="N",
                      help="stop after N transactions")
    stop.add_argument("--duration", type=duration_arg, metavar="S",
                      help="stop after this long (e.g. 90s, 10m)")
    p.add_argument("--strip-truth", action="store_true",
                   help="leave is_fraud and fraud_scenario out of the transactions")
    p.add_argument("--create-topics", action="store_true",
                   help="create the transactions and labels topics if missing")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_produce)


def _config(args: argparse.Namespace, id_prefix: str | None = None) -> SimConfig:
    return SimConfig(
        n_customers=args.customers, n_terminals=args.terminals, n_days=args.days,
        start=args.start, seed=args.seed, radius=args.radius, scenarios=args.scenarios,
        id_prefix=args.id_prefix or id_prefix or "tx",
    )


@contextlib.contextmanager
def _open_out(path: str | None) -> Iterator[TextIO | None]:
    if path is None:
        yield None
    elif path == "-":
        yield sys.stdout
    else:
        with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
            yield fh


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write the dataset (and labels); print the summary with ``--stats``."""
    from producer.jsonl import write_jsonl
    from producer.simulator import Simulation

    cfg = _config(args)
    progress = ProgressLine(enabled=not args.quiet)

    def on_day(batch: Any, st: Any) -> None:
        done = (batch.day + 1) / cfg.n_days
        progress.show(f"day {batch.day + 1}/{cfg.n_days} {bar(done)} "
                      f"{st.transactions:,} transactions {st.elapsed_seconds:.1f} s",
                      force=batch.day + 1 == cfg.n_days)

    policy = LabelPolicy(delay_seconds=args.label_delay, legit_share=args.label_share)
    with _open_out(args.out) as out, _open_out(args.labels_out) as labels_out:
        assert out is not None
        stats = write_jsonl(Simulation(cfg), out, labels_out, policy, on_day)
    progress.close()
    if args.stats:
        print(stats.report(cfg), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (a second Ctrl-C interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_produce(args: argparse.Namespace) -> int:
    """Stream to Kafka; exit 1 if a delivery failed, 130 when stopped by a signal."""
    from producer import stream
    from producer.jsonl import read_jsonl
    from producer.kafka import produce_stream
    from producer.simulator import iter_transactions
    from txwatch.settings import Settings

    if args.replay and args.history_days:
        print("--replay and --history-days exclude each other (history is followed by live)",
              file=sys.stderr)
        return 2
    if args.compress and args.rate:
        print("--compress paces by event time: give it or --rate, not both", file=sys.stderr)
        return 2
    live = not args.replay
    settings = Settings()
    if args.create_topics:
        from txwatch.embedded import create_topics

        create_topics(settings.kafka_brokers,
                      [settings.transactions_topic, settings.labels_topic],
                      settings.topic_partitions)
    cfg = _config(args, id_prefix=f"tx{int(time.time()):x}-" if live else None)
    source = read_jsonl(args.source) if args.source else iter_transactions(cfg)
    stop = threading.Event()
    rate = None if args.max_speed or args.compress else (args.rate or (100.0 if live else None))
    if args.history_days:
        records = stream.history_then_live(
            source, history_days=args.history_days,
            start=None if args.source else cfg.start_epoch, compress_history=args.compress,
            rate=rate, seconds_per_day=args.compress, stop_event=stop)
    elif live:
        records = stream.live_stream(source, rate=rate, seconds_per_day=args.compress,
                                     stop_event=stop)
    else:
        records = stream.replay_stream(source, rate=rate, seconds_per_day=args.compress,
                                       stop_event=stop)
    policy = None if args.no_labels else LabelPolicy(args.label_delay, args.label_share)
    progress = ProgressLine(enabled=not args.quiet, interval=0.0)

    def on_progress(st: Any) -> None:
        progress.show(f"{st.transactions:,} transactions ({st.rate:,.0f}/s), {st.labels:,} "
                      f"labels, {st.delivered:,} delivered, {st.failed:,} failed, "
                      f"event time {st.last_event_time or '-'}")

    with _stop_on_signals(stop):
        stats = produce_stream(
            settings, records, stop_event=stop, on_progress=on_progress, labels=policy,
            label_clock=time.time if live else None, max_events=args.max_events,
            duration=args.duration, strip_truth=args.strip_truth)
    progress.close()
    print(stats.summary(), file=sys.stderr)
    if not stats.ok:
        return 1
    return 130 if stats.interrupted else 0
