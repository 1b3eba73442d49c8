"""Builds the txwatch dataflow from settings. No I/O happens here: clients open in the
sources' and sinks' ``build`` methods, on the workers.

Where things happen::

    transactions ─► parse (sources) ─┬─► dead letters ─► DLQ topic
    labels ───────► parse ───────────┤
                                     └─► "terminal" stage (by terminal shard, event-time
                                          order): dedupe, terminal windows, label risk
                                            └─► "user" stage (by user shard, event-time
                                                 order): user features, models, decision
                                                   ├─► alerts ─► PostgreSQL
                                                   └─► decisions ─► decisions topic
    controls ─► parse ─────────────────────────────────┘ (snoozes)

Step ids are recovery keys: never rename one without a state migration.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import Sink

from operators.records import Control, DeadLetter, Decision
from operators.sharding import ShardKeys, TerminalRoute, UserRoute, all_user_keys
from operators.stages import StageConfig, TerminalStage, UserStage
from txwatch.metrics import get_metrics
from txwatch.settings import Settings


@dataclass
class FlowIO:
    """Sources and sinks of a flow; ``None`` means "from settings" (Kafka and Postgres) or,
    for optional parts, "not used"."""

    transactions: Source[Any] | None = None
    labels: Source[Any] | None = None
    controls: Source[Any] | None = None
    alerts: Sink[Any] | None = None
    dead_letters: Sink[Any] | None = None
    decisions: Sink[Any] | None = None
    use_labels: bool = True
    use_controls: bool = True
    labels_in_transactions: bool = False
    """The transactions source also emits labels (``txwatch replay`` with a label delay)."""


def stage_config(settings: Settings, source_partitions: int, **kw: Any) -> StageConfig:
    from operators.detector import make_detector_factory

    cfg = StageConfig(
        lateness=settings.lateness_seconds,
        max_hold=settings.max_hold_seconds,
        terminal_shards=settings.logical_shards,
        user_shards=settings.logical_shards,
        source_partitions=source_partitions,
        dedupe_horizon=settings.dedupe_horizon_seconds,
        dedupe_max_ids=settings.dedupe_max_ids,
        threshold=settings.threshold,
        block_threshold=settings.block_threshold,
        user_ttl=settings.user_ttl_seconds,
        label_horizon=settings.label_horizon_seconds,
        detector_factory=make_detector_factory(settings),
        snapshots=recovery_enabled(settings),
    )
    return replace(cfg, **kw) if kw else cfg


def recovery_enabled(settings: Settings) -> bool:
    """Whether this process runs with Bytewax recovery (then the stages snapshot their state)."""
    argv = sys.argv
    return (
        settings.recovery_dir is not None
        or any(a.startswith(("-r", "--recovery-directory")) for a in argv)
        or bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    )


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def tune_gc(settings: Settings) -> None:
    """Collect young garbage every ``TXWATCH_GC_THRESHOLD`` allocations instead of every 700
    (the flow's state is long-lived; its per-event garbage is freed by reference counting,
    not by the cycle collector), and freeze what exists now (modules, models' shared
    structures) out of every later collection. Process-wide, so the entry points that own
    their process call it (the worker's ``dataflow.flow``, ``txwatch replay``, the bench),
    not :func:`build_flow`."""
    if settings.gc_threshold <= 0:
        return
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(settings.gc_threshold, max(g1, 50), max(g2, 100))
    gc.freeze()


def build_flow(settings: Settings, io: FlowIO | None = None) -> Dataflow:
    """The txwatch dataflow. With no ``io``, it reads Kafka and writes PostgreSQL and Kafka
    as configured in ``settings``."""
    # (the Kafka and PostgreSQL connectors are imported where they are used: a flow given its
    # sources and sinks, as `txwatch replay`'s, does not load psycopg nor confluent_kafka)
    from dataflow.sources import ControlSource, LabelSource, TransactionSource

    io = io or FlowIO()
    S = settings.logical_shards
    tx_source = io.transactions or TransactionSource(settings)
    n_parts = len(tx_source.list_parts()) if hasattr(tx_source, "list_parts") else 1
    cfg = stage_config(settings, n_parts,
                       labels=io.use_labels or io.labels_in_transactions)
    worker = _worker_name()
    m = get_metrics()

    flow = Dataflow("txwatch")
    tx = op.input("transactions", flow, tx_source)
    inputs = [tx]
    if io.use_labels:
        inputs.append(op.input("labels", flow, io.labels or LabelSource(settings)))
    if io.use_controls:
        inputs.append(op.input("controls", flow, io.controls or ControlSource(settings)))
    merged = op.merge("merge_inputs", *inputs)
    split = op.branch("split_dead", merged, lambda x: isinstance(x, DeadLetter))

    # --- dead letters -----------------------------------------------------------------------
    dead = split.trues

    def _count_dead(d: DeadLetter) -> DeadLetter:
        m.dead_letters.inc()
        return d

    dead = op.map("count_dead", dead, _count_dead)
    if io.dead_letters is not None:
        op.output("dlq", dead, io.dead_letters)
    else:
        from sinks.kafka import dead_letter_message, kafka_sink

        op.output("dlq", op.map("dlq_msg", dead, dead_letter_message),
                  kafka_sink(settings, settings.dlq_topic))

    # --- route to terminal shards -----------------------------------------------------------
    u_keys = all_user_keys(S)
    u_key = ShardKeys("u", S)
    good = split.falses
    # Txn | Label -> (terminal shard, item); the batch's watermarks to every terminal shard;
    # controls go to the user shard(s) they concern (route_control)
    by_terminal = op.flat_map_batch("route_terminal", good, TerminalRoute(S))

    def build_terminal(resume: bytes | None) -> TerminalStage:
        return TerminalStage("", cfg, resume)

    term_out = _stateful_batch("terminal", by_terminal, build_terminal)  # (t-shard, out item)

    user_in = op.flat_map_batch("route_user", term_out, UserRoute(S))
    if io.use_controls:
        def route_control(xs: list[Any]) -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            for c in xs:
                if type(c) is Control:
                    if c.scope == "user":
                        out.append((u_key(c.target), ("c", c)))
                    else:
                        out.extend((k, ("c", c)) for k in u_keys)
            return out

        user_in = op.merge("merge_user", user_in,
                           op.flat_map_batch("route_control", good, route_control))

    def build_user(resume: bytes | None) -> UserStage:
        # built on the worker's own thread: the name tells workers of one process apart
        return UserStage("", cfg, resume, f"{worker}:{threading.get_native_id()}")

    # (u-shard, Decision)
    decisions = _stateful_batch("user", user_in, build_user)

    def alerts_only(kds: list[tuple[str, Decision]]) -> list[tuple[str, Decision]]:
        return [kd for kd in kds if kd[1].is_alert]

    alerts = op.flat_map_batch("alerts_only", decisions, alerts_only)
    if io.alerts is not None:
        op.output("alerts_out", alerts, io.alerts)
    else:
        from sinks.postgres import AlertSink

        op.output(
            "alerts_out",
            alerts,  # rows are made in the sink, per batch
            AlertSink(settings.dsn(), u_keys, settings.sink_batch_size,
                      settings.sink_max_backlog, settings.sink_retry_max_seconds),
        )
    if io.decisions is not None:
        op.output("decisions_out", op.flat_map_batch("decisions_rm", decisions, _values),
                  io.decisions)
    elif settings.publish_decisions:
        from sinks.kafka import DecisionSink, decision_messages

        msgs = op.flat_map_batch("decision_msg", decisions, decision_messages)
        op.output("decisions_out", msgs,
                  DecisionSink(settings, settings.decisions_topic, u_keys))
    return flow


def _values(kvs: list[tuple[str, Any]]) -> list[Any]:
    """The values of a batch of ``(key, value)`` items."""
    return [v for _, v in kvs]


@operator
def _stateful_batch(
    step_id: str,
    up: KeyedStream[Any],
    builder: Callable[[bytes | None], StatefulBatchLogic[Any, Any, bytes]],
) -> KeyedStream[Any]:
    """``op.stateful_batch`` nested as ``op.stateful`` nests it, so the recovery key of the
    stage (``<flow>.<step_id>.stateful_batch``) is the one earlier releases used: an older
    snapshot is found, and refused by its state version rather than ignored."""
    return op.stateful_batch("stateful_batch", up, builder)
