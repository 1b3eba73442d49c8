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

import os
import socket
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from operators.ordering import Watermark
from operators.records import Control, DeadLetter, Label, Txn
from operators.sharding import all_terminal_keys, all_user_keys, terminal_key, user_key
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


def stage_config(settings: Settings, source_partitions: int, **kw: Any) -> StageConfig:
    from operators.detector import make_detector_factory

    cfg = StageConfig(
        lateness=settings.lateness_seconds,
        max_hold=settings.max_hold_seconds,
        terminal_shards=settings.logical_shards,
        user_shards=settings.logical_shards,
        source_partitions=source_partitions,
        dedupe_horizon=settings.dedupe_horizon_seconds,
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


def build_flow(settings: Settings, io: FlowIO | None = None) -> Dataflow:
    """The txwatch dataflow. With no ``io``, it reads Kafka and writes PostgreSQL and Kafka
    as configured in ``settings``."""
    from dataflow.sources import ControlSource, LabelSource, TransactionSource
    from sinks.kafka import dead_letter_message, decision_message, kafka_sink
    from sinks.postgres import AlertSink, alert_row

    io = io or FlowIO()
    S = settings.logical_shards
    tx_source = io.transactions or TransactionSource(settings)
    n_parts = len(tx_source.list_parts()) if hasattr(tx_source, "list_parts") else 1
    cfg = stage_config(settings, n_parts)
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
        op.output("dlq", op.map("dlq_msg", dead, dead_letter_message),
                  kafka_sink(settings, settings.dlq_topic))

    # --- route to terminal shards -----------------------------------------------------------
    t_keys = all_terminal_keys(S)
    u_keys = all_user_keys(S)

    def route_terminal(x: Any) -> list[tuple[str, Any]]:
        # shape: Txn | Label -> (terminal shard, item); Watermark -> to every terminal shard;
        # Control -> to the user shard(s) it concerns (bypasses the terminal stage)
        if isinstance(x, Txn):
            return [(terminal_key(x.terminal_id, S), x)]
        if isinstance(x, Label):
            return [(terminal_key(x.terminal_id, S), x)]
        if isinstance(x, Watermark):
            return [(k, ("w", k, x)) for k in t_keys]
        return []

    good = split.falses
    controls = op.filter("controls_only", good, lambda x: isinstance(x, Control))
    by_terminal = op.flat_map("route_terminal", good, route_terminal)

    def build_terminal(resume: bytes | None) -> TerminalStage:
        return _KeyedTerminal(cfg, resume)

    term_out = op.stateful("terminal", by_terminal, build_terminal)  # (t-shard, out item)

    def route_user(kv: tuple[str, Any]) -> list[tuple[str, Any]]:
        item = kv[1]
        kind = item[0]
        if kind == "t":
            return [(user_key(item[1].user_id, S), item)]
        if kind == "l":
            return [(user_key(item[1].user_id, S), item)]
        if kind == "w":
            return [(k, ("w", k, item[1])) for k in u_keys]
        return []

    def route_control(c: Control) -> list[tuple[str, Any]]:
        if c.scope == "user":
            return [(user_key(c.target, S), ("c", c))]
        return [(k, ("c", c)) for k in u_keys]

    by_user = op.merge(
        "merge_user",
        op.flat_map("route_user", term_out, route_user),
        op.flat_map("route_control", controls, route_control),
    )

    def build_user(resume: bytes | None) -> UserStage:
        # built on the worker's own thread: the name tells workers of one process apart
        return _KeyedUser(cfg, resume, f"{worker}:{threading.get_native_id()}")

    decisions = op.stateful("user", by_user, build_user)  # (u-shard, Decision)

    alerts = op.filter("alerts_only", decisions, lambda kv: kv[1].is_alert)
    if io.alerts is not None:
        op.output("alerts_out", alerts, io.alerts)
    else:
        rows = op.map_value("alert_row", alerts, alert_row)
        op.output(
            "alerts_out",
            rows,
            AlertSink(settings.dsn(), u_keys, settings.sink_batch_size,
                      settings.sink_max_backlog, settings.sink_retry_max_seconds),
        )
    if io.decisions is not None:
        op.output("decisions_out", op.key_rm("decisions_rm", decisions), io.decisions)
    elif settings.publish_decisions:
        msgs = op.map("decision_msg", op.key_rm("decisions_rm", decisions),
                      decision_message)
        op.output("decisions_out", msgs, kafka_sink(settings, settings.decisions_topic))
    return flow


class _KeyedTerminal(TerminalStage):
    """Learns its shard key from the first watermark broadcast to it."""

    def __init__(self, cfg: StageConfig, resume: bytes | None) -> None:
        super().__init__("", cfg, resume)

    def on_item(self, value: Any) -> Any:
        if isinstance(value, tuple) and value[0] == "w":
            self.key = value[1]
            return super().on_item(value[2])
        return super().on_item(value)

    def snapshot(self) -> bytes:
        return super().snapshot()


class _KeyedUser(UserStage):
    def __init__(self, cfg: StageConfig, resume: bytes | None, worker: str) -> None:
        super().__init__("", cfg, resume, worker)

    def on_item(self, value: Any) -> Any:
        if value[0] == "w":
            self.key = value[1]
            return super().on_item(("w", value[2]))
        return super().on_item(value)
