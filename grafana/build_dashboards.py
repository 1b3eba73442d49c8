"""Writes the Grafana dashboards of txwatch (grafana/dashboards/*.json) from the panel lists below.

    python grafana/build_dashboards.py           # rewrite the JSON files
    python grafana/build_dashboards.py --check   # exit 1 if the files are not up to date

The JSON files are what Grafana provisions (and what tests and scripts/render_dashboards.py
read); this module is their source. Queries use the dashboard variables ``$process`` (the
``process`` target label: worker-0, worker-1) and ``$worker`` (bytewax's ``worker_index``).
Every txwatch metric is exported from startup with its labelled series at zero
(txwatch.observability.init_metrics), so no query needs ``or vector(0)`` to show data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "prometheus"}
PG = {"type": "grafana-postgresql-datasource", "uid": "postgres"}
P = 'process=~"$process"'
RI = "$__rate_interval"


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    t = {"datasource": PROM, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
         "range": True, "instant": False}
    t.update(extra)
    return t


def _targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [_target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(pairs)]


def timeseries(title: str, desc: str, targets: list[dict[str, Any]], unit: str = "short",
               w: int = 12, h: int = 8, stack: bool = False, **fc: Any) -> dict[str, Any]:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": PROM,
        "targets": targets, "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom, **fc}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, desc: str, expr: str, unit: str = "short", w: int = 6, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": desc, "datasource": PROM,
        "targets": [_target(expr, "", "A")], "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 2,
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def heatmap(title: str, desc: str, expr: str, w: int = 12, h: int = 8) -> dict[str, Any]:
    return {
        "type": "heatmap", "title": title, "description": desc, "datasource": PROM,
        "targets": [_target(expr, "{{le}}", "A", format="heatmap")], "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}},
                        "overrides": []},
        "options": {"calculate": False, "yAxis": {"axisPlacement": "left", "unit": "short"},
                    "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "cellGap": 1, "tooltip": {"mode": "single", "yHistogram": True},
                    "rowsFrame": {"layout": "auto"}},
    }


def sql_table(title: str, desc: str, sql: str, w: int = 24, h: int = 10) -> dict[str, Any]:
    return {
        "type": "table", "title": title, "description": desc, "datasource": PG,
        "targets": [{"datasource": PG, "refId": "A", "format": "table", "rawQuery": True,
                     "editorMode": "code", "rawSql": sql}],
        "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
                        "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def q(quantile: float, metric: str, sel: str = P) -> str:
    return f"histogram_quantile({quantile}, sum by (le) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left-to-right, top-to-bottom placement on Grafana's 24-column grid; ids in order."""
    x = y = row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i
        x += w
        row_h = max(row_h, h)
        out.append(p)
    return out


def _variables(with_worker: bool) -> list[dict[str, Any]]:
    def var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": f"{name}-var", "qryType": 1},
            "definition": query, "refresh": 2, "includeAll": True, "multi": True,
            "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0, "options": [], "regex": "",
        }

    out = [var("process", "Process", "label_values(txwatch_ready, process)")]
    if with_worker:
        out.append(var("worker", "Bytewax worker",
                       f"label_values(bytewax_item_out_count_total{{{P}}}, worker_index)"))
    return out


def dashboard(uid: str, title: str, desc: str, panels: list[dict[str, Any]],
              with_worker: bool) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["txwatch"],
        "editable": False, "graphTooltip": 1, "timezone": "utc", "refresh": "30s",
        "schemaVersion": 39, "version": 1, "fiscalYearStartMonth": 0, "liveNow": False,
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
        "annotations": {"list": []}, "links": [],
        "templating": {"list": _variables(with_worker)},
        "panels": _layout(panels),
    }


def pipeline() -> dict[str, Any]:
    W = f'{P},worker_index=~"$worker"'
    panels = [
        stat("Ready processes", "Processes whose source is assigned and database reachable.",
             f"sum(txwatch_ready{{{P}}})", thresholds=[(None, "red"), (1, "green")]),
        stat("Consumed", "Transactions consumed per second, every outcome.",
             f"sum(rate(txwatch_transactions_consumed_total{{{P}}}[{RI}]))", unit="reqps"),
        stat("Consumer lag", "Messages on the brokers not yet read, every topic and partition.",
             f"sum(bytewax_kafka_consumer_lag{{{P}}})",
             thresholds=[(None, "green"), (10000, "orange"), (100000, "red")]),
        stat("Decision latency p99", "99th percentile, arrival in Kafka to decision. "
             "Objective: 99 % within 2.5 s.", q(0.99, "txwatch_decision_latency_seconds"),
             unit="s", thresholds=[(None, "green"), (1.5, "orange"), (2.5, "red")]),
        row("Throughput and lag"),
        timeseries("Throughput by outcome", "Transactions consumed per second: scored, "
                   "invalid (dead-lettered), duplicate (dropped), late (processed late).",
                   [_target(f"sum by (outcome) (rate(txwatch_transactions_consumed_total{{{P}}}"
                            f"[{RI}]))", "{{outcome}}")], unit="reqps", stack=True),
        timeseries("Consumer lag by topic", "bytewax_kafka_consumer_lag: last offset on the "
                   "broker minus the offset read, summed over partitions.",
                   [_target(f"sum by (topic) (bytewax_kafka_consumer_lag{{{P}}})", "{{topic}}")]),
        timeseries("Decision latency", "Seconds from the message's Kafka timestamp to its "
                   "decision.", _targets(
                       (q(0.5, "txwatch_decision_latency_seconds"), "p50"),
                       (q(0.99, "txwatch_decision_latency_seconds"), "p99")), unit="s"),
        timeseries("Items through the flow per worker", "Items emitted by every step of each "
                   "Bytewax worker, per second: the balance between workers.",
                   [_target(f"sum by (process, worker_index) (rate(bytewax_item_out_count_total"
                            f"{{{W}}}[{RI}]))", "{{process}} worker {{worker_index}}")],
                   unit="ops"),
        row("Alerts sink"),
        timeseries("Sink write latency", "Seconds per successful database write batch.",
                   _targets((q(0.5, "txwatch_sink_write_seconds"), "p50"),
                            (q(0.99, "txwatch_sink_write_seconds"), "p99")), unit="s", w=8),
        timeseries("Sink rows written", "Rows written per second by sink, and mean batch size.",
                   _targets((f"sum by (sink) (rate(txwatch_sink_rows_written_total{{{P}}}"
                             f"[{RI}]))", "{{sink}} rows/s"),
                            (f"sum(rate(txwatch_sink_batch_size_sum{{{P}}}[{RI}])) / "
                             f"sum(rate(txwatch_sink_batch_size_count{{{P}}}[{RI}]))",
                             "mean batch size")), w=8),
        timeseries("Sink backlog", "Alerts accepted by a sink and not yet written; at "
                   "TXWATCH_SINK_MAX_BACKLOG the flow stops consuming.",
                   [_target(f"sum by (process, sink) (txwatch_sink_backlog{{{P}}})",
                            "{{process}} {{sink}}")], w=8),
        timeseries("Errors and retries", "Failed sink writes and retries per second, and "
                   "malformed messages by input.", _targets(
                       (f"sum by (sink) (rate(txwatch_sink_errors_total{{{P}}}[{RI}]))",
                        "errors {{sink}}"),
                       (f"sum by (sink) (rate(txwatch_sink_retries_total{{{P}}}[{RI}]))",
                        "retries {{sink}}"),
                       (f"sum by (input) (rate(txwatch_invalid_messages_total{{{P}}}[{RI}]))",
                        "invalid {{input}}")), unit="ops"),
        timeseries("Dead letters and late events", "Messages written to the dead-letter "
                   "topic, and events later than the allowed lateness, per second.", _targets(
                       (f"sum(rate(txwatch_dead_letters_total{{{P}}}[{RI}]))", "dead letters"),
                       (f"sum by (stage) (rate(txwatch_late_events_total{{{P}}}[{RI}]))",
                        "late ({{stage}})")), unit="ops"),
        row("State and recovery"),
        timeseries("State size per process", "Approximate snapshot bytes of detection state.",
                   [_target(f"sum by (process, stage) (txwatch_state_bytes{{{P}}})",
                            "{{process}} {{stage}}")], unit="bytes", w=8),
        timeseries("Users and terminals in state", "Keys held by each process; idle users "
                   "are evicted after TXWATCH_USER_TTL_SECONDS.", _targets(
                       (f"sum by (process) (txwatch_users_in_state{{{P}}})", "{{process}} users"),
                       (f"sum by (process) (txwatch_terminals_in_state{{{P}}})",
                        "{{process}} terminals"),
                       (f"sum by (process) (rate(txwatch_evicted_users_total{{{P}}}[{RI}]))",
                        "{{process}} evicted/s")), w=8),
        timeseries("Resident memory", "Resident memory of each worker process.",
                   [_target(f'sum by (process) (process_resident_memory_bytes{{job="txwatch",'
                            f"{P}}})", "{{process}}")], unit="bytes", w=8),
        timeseries("Recovery snapshots", "State snapshots taken per second by each worker "
                   "(Bytewax, with a recovery directory).",
                   [_target(f"sum by (process, worker_index) (rate("
                            f"bytewax_snapshot_duration_seconds_count{{{W}}}[{RI}]))",
                            "{{process}} worker {{worker_index}}")], unit="ops"),
        timeseries("Snapshot duration", "Seconds per state snapshot (Bytewax).", _targets(
            (q(0.5, "bytewax_snapshot_duration_seconds", W), "p50"),
            (q(0.99, "bytewax_snapshot_duration_seconds", W), "p99")), unit="s"),
    ]
    return dashboard("txwatch-pipeline", "txwatch — pipeline",
                     "Throughput, lag, latency, sinks, state and recovery of the dataflow.",
                     panels, with_worker=True)


LATEST_ALERTS = """SELECT detected_at AS "detected", event_time AS "event time", transaction_id,
  user_id, severity, round(score::numeric, 2) AS score, amount_base AS "amount (base)",
  merchant_category, country, channel, reasons, status
FROM alerts
ORDER BY detected_at DESC, transaction_id
LIMIT 50"""

REVIEW_QUEUE = """SELECT status, severity, count(*) AS alerts,
  min(event_time) AS "oldest event", max(detected_at) AS "last detected"
FROM alerts
GROUP BY status, severity
ORDER BY status, severity"""


def detection() -> dict[str, Any]:
    scored = f"sum(rate(txwatch_score_count{{{P}}}[{RI}]))"
    alerts_rate = f"sum(rate(txwatch_alerts_total{{{P}}}[{RI}]))"
    decisions_rate = f"sum(rate(txwatch_decisions_total{{{P}}}[{RI}]))"
    labelled = f"txwatch_labelled_alerts_total{{{P}}}"
    panels = [
        stat("Alerts per 1,000", "Alerts per 1,000 decisions, all processes.",
             f"1000 * {alerts_rate} / {decisions_rate}"),
        stat("Alert budget per 1,000", "TXWATCH_ALERT_BUDGET_PER_1000.",
             f"max(txwatch_alert_budget_per_1000{{{P}}})"),
        stat("Cold-start share", "Share of scores made mainly by the population model.",
             f"sum(rate(txwatch_cold_start_scores_total{{{P}}}[{RI}])) / {scored}",
             unit="percentunit"),
        stat("Alert precision (labelled)", "Of the alerts whose label arrived in the time "
             "range, the share labelled fraud.",
             f'sum(increase({labelled[:-1]},label="fraud"}}[$__range])) / '
             f"sum(increase({labelled}[$__range]))", unit="percentunit"),
        row("Alerts"),
        timeseries("Alert rate by severity", "Alerts raised per second (review, block).",
                   [_target(f"sum by (severity) (rate(txwatch_alerts_total{{{P}}}[{RI}]))",
                            "{{severity}}")], unit="ops", stack=True),
        timeseries("Alert reasons", "Reason codes attached to alerts, per second.",
                   [_target(f"sum by (code) (rate(txwatch_alert_reasons_total{{{P}}}[{RI}]))",
                            "{{code}}")], unit="ops"),
        timeseries("Alert budget against actual", "Alerts per 1,000 decisions, all processes "
                   "and as each process reports it, against the configured budget.", _targets(
                       (f"1000 * {alerts_rate} / {decisions_rate}", "actual"),
                       (f"max(txwatch_alert_budget_per_1000{{{P}}})", "budget"),
                       (f"max by (process) (txwatch_alert_rate_per_1000{{{P}}})",
                        "{{process}} (window)"))),
        timeseries("Decisions by severity", "Decisions per second: allow, review, block.",
                   [_target(f"sum by (severity) (rate(txwatch_decisions_total{{{P}}}[{RI}]))",
                            "{{severity}}")], unit="ops", stack=True),
        row("Scores"),
        heatmap("Score distribution", "Decisions per score bucket (higher is more "
                "suspicious; review from TXWATCH_THRESHOLD).",
                f"sum by (le) (increase(txwatch_score_bucket{{{P}}}[{RI}]))"),
        timeseries("Score quantiles", "Score percentiles of every decision.", _targets(
            (q(0.5, "txwatch_score"), "p50"),
            (q(0.9, "txwatch_score"), "p90"),
            (q(0.99, "txwatch_score"), "p99")), w=6),
        timeseries("Share of scores in cold start", "Scores made mainly by the population "
                   "model, because the user has fewer than TXWATCH_MIN_HISTORY transactions.",
                   [_target(f"sum(rate(txwatch_cold_start_scores_total{{{P}}}[{RI}])) / "
                            f"{scored}", "cold start")], unit="percentunit", w=6),
        row("Labels"),
        timeseries("Labels received", "Fraud and legit labels received per second, and "
                   "those that concern an alert.", _targets(
                       (f"sum by (label) (rate(txwatch_labels_received_total{{{P}}}[{RI}]))",
                        "{{label}}"),
                       (f"sum by (label) (rate({labelled}[{RI}]))", "alerts labelled {{label}}")),
                   unit="ops", w=8),
        timeseries("Label lag", "Event time from a transaction to its label.", _targets(
            (q(0.5, "txwatch_label_lag_seconds"), "p50"),
            (q(0.9, "txwatch_label_lag_seconds"), "p90")), unit="s", w=8),
        timeseries("Alert precision from labels", "Share of labelled alerts labelled fraud "
                   "(true positives), over the last hour. Legit labels are a sample "
                   "(the producer's --label-share), so this overstates precision.",
                   [_target(f'sum(increase({labelled[:-1]},label="fraud"}}[1h])) / '
                            f"sum(increase({labelled}[1h]))", "precision (1h)")],
                   unit="percentunit", w=8),
        row("Alerts in PostgreSQL"),
        sql_table("Latest alerts", "The 50 alerts detected last, from the alerts table.",
                  LATEST_ALERTS, h=12),
        sql_table("Review queue", "Alerts by review status and severity.", REVIEW_QUEUE, h=7),
    ]
    return dashboard("txwatch-detection", "txwatch — detection",
                     "What the detector decides: alerts, reasons, scores, labels, precision.",
                     panels, with_worker=False)


DASHBOARDS = {"pipeline.json": pipeline, "detection.json": detection}


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: json.dumps(fn(), indent=2, ensure_ascii=False) + "\n"
            for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the files are current")
    args = ap.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}: run python grafana/build_dashboards.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
