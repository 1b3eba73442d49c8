"""Every Prometheus metric of txwatch, in one object built on an injected registry.

Names carry the ``txwatch_`` prefix and base units. No label ever carries a user id, card,
terminal or any other personal value: labels are small fixed vocabularies (outcome, severity,
reason code, model, stage).

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics.create(CollectorRegistry())
>>> m.consumed.labels(outcome="scored").inc()
>>> m.registry.get_sample_value("txwatch_transactions_consumed_total", {"outcome": "scored"})
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Decision latency: sub-millisecond in replay, up to seconds when a sink holds back.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Scores are in "z-like" units: most traffic below 2, alerts from about 3.5, blocks from 8.
SCORE_BUCKETS = (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 15, 25)
# Sink batches: one row to a full batch.
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_BUCKETS = (60, 600, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)

OUTCOMES = ("scored", "invalid", "duplicate", "late")


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    consumed: Counter
    invalid: Counter
    dead_letters: Counter
    decisions: Counter
    alerts: Counter
    alert_reasons: Counter
    score: Histogram
    decision_latency: Histogram
    sink_batch_size: Histogram
    sink_write_seconds: Histogram
    sink_errors: Counter
    sink_retries: Counter
    sink_backlog: Gauge
    sink_rows_written: Counter
    users_in_state: Gauge
    terminals_in_state: Gauge
    state_bytes: Gauge
    evicted_users: Counter
    cold_start_scores: Counter
    labels_received: Counter
    label_lag: Histogram
    labelled_alerts: Counter
    alert_budget: Gauge
    alert_rate: Gauge
    late_events: Counter
    ready: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY, prefix: str = "txwatch") -> Metrics:
        p = prefix
        r = registry
        return cls(
            registry=r,
            consumed=Counter(
                f"{p}_transactions_consumed",
                "Transactions consumed, by outcome (scored, invalid, duplicate, late).",
                ["outcome"],
                registry=r,
            ),
            invalid=Counter(
                f"{p}_invalid_messages",
                "Malformed messages, by input (transactions, labels, controls).",
                ["input"],
                registry=r,
            ),
            dead_letters=Counter(
                f"{p}_dead_letters",
                "Dead letters written to the dead-letter topic.",
                registry=r,
            ),
            decisions=Counter(
                f"{p}_decisions",
                "Decisions made, by severity (allow, review, block).",
                ["severity"],
                registry=r,
            ),
            alerts=Counter(
                f"{p}_alerts",
                "Alerts raised (decisions review or block, not snoozed), by severity.",
                ["severity"],
                registry=r,
            ),
            alert_reasons=Counter(
                f"{p}_alert_reasons",
                "Reasons attached to alerts, by reason code.",
                ["code"],
                registry=r,
            ),
            score=Histogram(
                f"{p}_score", "Score of every decision.", buckets=SCORE_BUCKETS, registry=r
            ),
            decision_latency=Histogram(
                f"{p}_decision_latency_seconds",
                "Seconds from message arrival (Kafka timestamp) to decision.",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            sink_batch_size=Histogram(
                f"{p}_sink_batch_size",
                "Rows per database write batch.",
                buckets=BATCH_BUCKETS,
                registry=r,
            ),
            sink_write_seconds=Histogram(
                f"{p}_sink_write_seconds",
                "Seconds per successful database write batch.",
                buckets=WRITE_BUCKETS,
                registry=r,
            ),
            sink_errors=Counter(
                f"{p}_sink_errors", "Failed sink writes, by sink.", ["sink"], registry=r
            ),
            sink_retries=Counter(
                f"{p}_sink_retries", "Sink write retries, by sink.", ["sink"], registry=r
            ),
            sink_backlog=Gauge(
                f"{p}_sink_backlog",
                "Alerts accepted by the sink and not yet written.",
                ["sink"],
                registry=r,
            ),
            sink_rows_written=Counter(
                f"{p}_sink_rows_written", "Rows written, by sink.", ["sink"], registry=r
            ),
            users_in_state=Gauge(
                f"{p}_users_in_state", "Users held in state by this process.", registry=r
            ),
            terminals_in_state=Gauge(
                f"{p}_terminals_in_state", "Terminals held in state by this process.", registry=r
            ),
            state_bytes=Gauge(
                f"{p}_state_bytes",
                "Approximate snapshot bytes of detection state, by stage (user, terminal).",
                ["stage"],
                registry=r,
            ),
            evicted_users=Counter(
                f"{p}_evicted_users", "Idle users evicted after the TTL.", registry=r
            ),
            cold_start_scores=Counter(
                f"{p}_cold_start_scores",
                "Scores made mainly by the population model (users in cold start).",
                registry=r,
            ),
            labels_received=Counter(
                f"{p}_labels_received", "Labels received, by label (fraud, legit).", ["label"],
                registry=r,
            ),
            label_lag=Histogram(
                f"{p}_label_lag_seconds",
                "Event-time seconds from a transaction to its label.",
                buckets=LAG_BUCKETS,
                registry=r,
            ),
            labelled_alerts=Counter(
                f"{p}_labelled_alerts",
                "Alerts whose label arrived, by label (fraud = true positive).",
                ["label"],
                registry=r,
            ),
            alert_budget=Gauge(
                f"{p}_alert_budget_per_1000",
                "Configured ceiling of alerts per 1,000 transactions.",
                registry=r,
            ),
            alert_rate=Gauge(
                f"{p}_alert_rate_per_1000",
                "Alerts per 1,000 transactions over the recent window, this process.",
                registry=r,
            ),
            late_events=Counter(
                f"{p}_late_events",
                "Events later than the allowed lateness (still processed), by stage.",
                ["stage"],
                registry=r,
            ),
            ready=Gauge(
                f"{p}_ready", "1 when the source is assigned and the database reachable.",
                registry=r,
            ),
        )


_METRICS: Metrics | None = None


def get_metrics() -> Metrics:
    """The process-wide metrics on the default registry (created once)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics.create()
    return _METRICS


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, memoised: the hot path calls this per event, and
    prometheus-client's ``labels()`` costs a lock and a dict build each time."""
    key = (id(metric), values)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN[key] = metric.labels(*values)
    return c
