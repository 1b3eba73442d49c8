"""A fraud label given on the review page at terminal T reaches the dataflow through the
labels topic and raises T's risk features for later transactions there."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from bytewax.testing import TestingSink, run_main
from fastapi.testclient import TestClient

from dataflow.build import FlowIO, build_flow
from sinks.migrate import migrate
from tests.helpers import produce, tx
from txwatch.settings import Settings
from txwatch.web import create_app

pytestmark = pytest.mark.integration
TOKEN = "review-flow-token"


def _flow_decisions(settings: Settings) -> dict[str, object]:
    out: list = []
    io = FlowIO(alerts=TestingSink([]), dead_letters=TestingSink([]),
                decisions=TestingSink(out), use_controls=False)
    run_main(build_flow(settings, io))
    return {d.txn.transaction_id: d for d in out}


def test_label_from_the_page_raises_terminal_risk(broker, pg, topics):
    migrate(pg)
    now = datetime.now(UTC)
    start = now - timedelta(days=10)
    history = [(f"u{u}".encode(), tx(f"h{u}-{i}", f"u{u}", 30 + u, (start + timedelta(
        days=i, minutes=u)).isoformat(), terminal_id="T9")) for u in range(5) for i in range(8)]
    later = (b"u0", tx("later-1", "u0", 31, (now + timedelta(minutes=2)).isoformat(),
                       terminal_id="T9"))
    produce(broker.brokers, topics["transactions"], [*history, later])

    # the alert an analyst looks at (as the flow would have written it)
    labelled = json.loads(history[3][1])
    with psycopg.connect(pg) as c:
        c.execute(
            "INSERT INTO alerts (transaction_id, user_id, event_time, amount, currency,"
            " amount_base, terminal_id, score, threshold, severity, model_version, worker)"
            " VALUES (%s, %s, %s, 33, 'EUR', 33, 'T9', 5, 3.5, 'review', 'test', 'w')",
            (labelled["transaction_id"], labelled["user_id"], labelled["timestamp"]))
    web = Settings(web_token=TOKEN, kafka_brokers=broker.brokers, database_url=pg,
                   labels_topic=topics["labels"], controls_topic=topics["controls"])
    with TestClient(create_app(web, drain_interval=0, publish_timeout=10.0),
                    base_url="http://127.0.0.1") as client:
        r = client.post(f"/api/alerts/{labelled['transaction_id']}/label",
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        json={"status": "confirmed", "reviewer": "ana", "note": "chargeback"})
    assert r.status_code == 200, r.text
    assert r.json()["publish"]["state"] == "published"

    base = dict(kafka_brokers=broker.brokers, database_url=pg, kafka_tail=False,
                transactions_topic=topics["transactions"], dlq_topic=topics["dlq"],
                decisions_topic=topics["decisions"], controls_topic=topics["controls"],
                lateness_seconds=1e8, max_hold_seconds=1e9, metrics_port=0)
    with_label = _flow_decisions(Settings(labels_topic=topics["labels"], **base))
    without = _flow_decisions(Settings(labels_topic=topics["controls"], **base))  # no labels

    f_with = with_label["later-1"].features
    f_without = without["later-1"].features
    assert f_without["term_days_since_fraud"] == 60.0 and f_without["term_risk_30d"] == 0.0
    assert f_with["term_days_since_fraud"] < 10
    assert f_with["term_risk_30d"] > 0 and f_with["term_lab_risk_30d"] == 1.0
    # the transactions before the label's time were not influenced by it
    for k, d in without.items():
        if k != "later-1":
            assert with_label[k].score == d.score
