"""The review application's JSON API and form posts against the embedded PostgreSQL.

Alerts are inserted with SQL; labels and controls are read back from a real Tansu broker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from operators.parse import parse_control, parse_label
from operators.records import Control, Label
from sinks.migrate import migrate
from txwatch.embedded import EmbeddedBroker, free_port, wait_for
from txwatch.settings import Settings
from txwatch.web import create_app, publish_label
from txwatch.web import db as webdb
from txwatch.web.cli import access_problem
from txwatch.web.labels import KafkaPublisher, PublishError, control_to_json
from txwatch.web.models import AlertFilter
from txwatch.web.security import CSRF_COOKIE, SESSION_COOKIE

TOKEN = "test-token-0123456789abcdef"
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DEAD_BROKER = "127.0.0.1:1"

# i: user, severity, score, amount, reason codes, terminal
DATA = [
    ("u1", "review", 4.0, "10", ["AMOUNT_HIGH"], "T1"),
    ("u1", "block", 9.0, "500", ["AMOUNT_HIGH", "NEW_COUNTRY"], "T2"),
    ("u2", "review", 4.0, "20", ["VELOCITY"], "T1"),
    ("u2", "review", 5.5, "1200", ["AMOUNT_HIGH"], "T3"),
    ("u3", "block", 8.5, "50", ["NEW_TERMINAL"], "T1"),
    ("u3", "review", 4.0, "75.5", ["VELOCITY", "NIGHT"], "T2"),
    ("u1", "review", 3.9, "5", ["NIGHT"], "T1"),
    ("u4", "block", 12.0, "3000", ["AMOUNT_HIGH"], "T4"),
    ("u2", "review", 4.0, "33", [], "T1"),
    ("u4", "review", 6.1, "250", ["VELOCITY"], None),
]


def tid(i: int) -> str:
    return f"t{i:03d}"


def alert_row(i: int, **over: Any) -> dict[str, Any]:
    user, sev, score, amount, codes, terminal = DATA[i % len(DATA)]
    row = {
        "transaction_id": tid(i),
        "user_id": user,
        "event_time": BASE + timedelta(minutes=10 * i),
        "amount": Decimal(amount),
        "currency": "EUR",
        "amount_base": Decimal(amount),
        "merchant_id": f"m{i}",
        "terminal_id": terminal,
        "merchant_category": "5411",
        "country": "FR",
        "channel": "pos",
        "score": score,
        "threshold": 3.5,
        "severity": sev,
        "reasons": [{"code": c, "text": f"because {c}", "value": 1.5} for c in codes],
        "features": {"amount_z": 2.5 + i, "tx_count_1h": i},
        "components": {"user": score / 2},
        "model_version": "test-1",
        "worker": "w0",
        "detected_at": BASE + timedelta(minutes=10 * i, seconds=2),
    }
    row.update(over)
    return row


def insert(uri: str, rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    q = "INSERT INTO alerts ({}) VALUES ({})".format(", ".join(cols), ", ".join(["%s"] * len(cols)))
    with psycopg.connect(uri) as c:
        c.cursor().executemany(
            q,
            [
                [Jsonb(r[k]) if k in ("reasons", "features", "components") else r[k] for k in cols]
                for r in rows
            ],
        )


def fetch(uri: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri) as c:
        return c.execute(query, params).fetchall()


def consume(brokers: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """Read ``n`` messages of ``topic`` from the beginning by explicit partition assignment."""
    c = Consumer(
        {"bootstrap.servers": brokers, "group.id": "test-reader", "enable.auto.commit": False}
    )
    try:
        md = c.list_topics(topic, timeout=10)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m)
        assert len(out) == n, f"read {len(out)} of {n} messages from {topic}"
        return out
    finally:
        c.close()


def topic_size(brokers: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": brokers, "group.id": "test-size"})
    try:
        md = c.list_topics(topic, timeout=10)
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in md.topics[topic].partitions
        )
    finally:
        c.close()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture()
def uri(pg: str) -> str:
    migrate(pg)
    insert(pg, [alert_row(i) for i in range(len(DATA))])
    return pg


@pytest.fixture()
def pool(uri: str) -> Iterator[Any]:
    p = webdb.make_pool(uri, max_size=4)
    p.open(wait=True, timeout=30)
    yield p
    p.close()


@pytest.fixture()
def make_client(pool: Any) -> Iterator[Any]:
    opened: list[TestClient] = []

    def make(
        token: str | None = TOKEN,
        brokers: str = DEAD_BROKER,
        topics: dict[str, str] | None = None,
        bearer: bool = True,
        **kw: Any,
    ) -> TestClient:
        topics = topics or {"labels": "labels-x", "controls": "controls-x"}
        settings = Settings(
            web_token=token,
            kafka_brokers=brokers,
            labels_topic=topics["labels"],
            controls_topic=topics["controls"],
        )
        kw.setdefault("drain_interval", 0)
        kw.setdefault("publish_timeout", 1.0 if brokers == DEAD_BROKER else 10.0)
        app = create_app(settings, pool=pool, **kw)
        client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        if bearer and token:
            client.headers["Authorization"] = f"Bearer {token}"
        return client

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Any) -> TestClient:
    return make_client()


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [a["transaction_id"] for a in resp.json()["items"]]


# --- list, filters, sort, paging ------------------------------------------------------------


def test_list_is_newest_first_by_default(client: TestClient) -> None:
    assert ids(client.get("/api/alerts")) == [tid(i) for i in reversed(range(len(DATA)))]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"severity": "block"}, {1, 4, 7}),
        ({"user": "u2"}, {2, 3, 8}),
        ({"terminal": "T1"}, {0, 2, 4, 6, 8}),
        ({"reason": "VELOCITY"}, {2, 5, 9}),
        ({"min_amount": "100", "max_amount": "1200"}, {1, 3, 9}),
        ({"since": "2024-03-01T12:30:00Z", "until": "2024-03-01T13:10:00Z"}, {3, 4, 5, 6}),
        ({"since": "2024-03-01T12:30"}, {3, 4, 5, 6, 7, 8, 9}),  # no offset: UTC
        ({"severity": "review", "reason": "AMOUNT_HIGH"}, {0, 3}),
        ({"status": "open", "user": "u4"}, {7, 9}),
        ({"status": "confirmed"}, set()),
    ],
)
def test_filters(client: TestClient, params: dict[str, str], expected: set[int]) -> None:
    assert set(ids(client.get("/api/alerts", params=params))) == {tid(i) for i in expected}


def test_status_filter_follows_reviews(client: TestClient) -> None:
    r = client.post(f"/api/alerts/{tid(3)}/label", json={"status": "escalated", "reviewer": "ann"})
    assert r.status_code == 200, r.text
    assert ids(client.get("/api/alerts", params={"status": "escalated"})) == [tid(3)]
    assert tid(3) not in ids(client.get("/api/alerts", params={"status": "open"}))


def _key(sort: str, i: int) -> Any:
    row = alert_row(i)
    return {"event_time": row["event_time"], "score": row["score"], "amount": row["amount"]}[sort]


@pytest.mark.parametrize("sort", ["event_time", "score", "amount"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_keyset_paging_walks_every_alert_once(client: TestClient, sort: str, order: str) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"sort": sort, "order": order, "limit": 3}
    pages = 0
    while True:
        r = client.get("/api/alerts", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 3
        seen += [a["transaction_id"] for a in body["items"]]
        pages += 1
        if not body["next_cursor"]:
            break
        params["cursor"] = body["next_cursor"]
    # score has a four-way tie at 4.0 across pages: the transaction id breaks ties, ascending
    # under a descending sort and descending under an ascending one (stable sorts below)
    by_id = sorted(range(len(DATA)), key=tid, reverse=order == "asc")
    expected = sorted(by_id, key=lambda i: _key(sort, i), reverse=order == "desc")
    assert seen == [tid(i) for i in expected]
    assert pages == 4


def test_cursor_of_another_sort_is_rejected(client: TestClient) -> None:
    cursor = client.get("/api/alerts", params={"limit": 2}).json()["next_cursor"]
    assert cursor
    r = client.get("/api/alerts", params={"limit": 2, "sort": "score", "cursor": cursor})
    assert r.status_code == 400
    assert client.get("/api/alerts", params={"cursor": "!!notbase64"}).status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"severity": "bogus"},
        {"sort": "transaction_id"},
        {"sort": "event_time; DROP TABLE alerts"},
        {"limit": "0"},
        {"limit": "100000"},
        {"min_amount": "-1"},
        {"min_amount": "10", "max_amount": "5"},
        {"since": "2024-03-02T00:00:00Z", "until": "2024-03-01T00:00:00Z"},
        {"reason": "a b"},
        {"severty": "block"},  # unknown parameter: an error, not a silent full list
    ],
)
def test_invalid_filters_are_422(client: TestClient, params: dict[str, str]) -> None:
    assert client.get("/api/alerts", params=params).status_code == 422


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_list_query_uses_an_index(uri: str) -> None:
    with psycopg.connect(uri, row_factory=dict_row) as c:
        c.execute(
            "INSERT INTO alerts (transaction_id, user_id, event_time, amount, currency,"
            " amount_base, terminal_id, score, threshold, severity, reasons, model_version,"
            " worker, status)"
            " SELECT 'bulk' || g, 'user' || (g % 2000), timestamptz '2023-01-01' + g * interval"
            " '1 minute', g % 997, 'EUR', g % 997, 'T' || (g % 300), (g % 1000) / 100.0, 3.5,"
            " CASE WHEN g % 10 = 0 THEN 'block' ELSE 'review' END,"
            " jsonb_build_array(jsonb_build_object('code', 'R' || (g % 40))), 'm', 'w',"
            " CASE WHEN g % 7 = 0 THEN 'confirmed' ELSE 'open' END"
            " FROM generate_series(1, 30000) g"
        )
        c.execute("ANALYZE alerts")
        filters = [
            AlertFilter.model_validate(p)
            for p in [
                {},
                {"sort": "score"},
                {"sort": "amount", "order": "asc"},
                {"status": "open"},
                {"user": "user17"},
                {"terminal": "T5"},
                {"reason": "R3"},
                {"severity": "block"},
                {"since": "2023-01-05T00:00:00Z", "until": "2023-01-06T00:00:00Z"},
                {"min_amount": "900"},
            ]
        ]
        for f in filters[:3]:  # a deeper page of each sort: the cursor bound is an index bound
            for _ in range(3):
                _, cursor = webdb.list_alerts(c, f)
                f = f.model_copy(update={"cursor": cursor})
            filters.append(f)
        for f in filters:
            query, args = webdb.list_query(f)
            plan = c.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) ") + query, args).fetchone()
            nodes = list(_plan_nodes(plan["QUERY PLAN"][0]["Plan"]))
            kinds = [n["Node Type"] for n in nodes]
            assert "Seq Scan" not in kinds, (f, kinds)
            assert any("Index" in k for k in kinds), (f, kinds)
            rows = c.execute(query, args).fetchall()
            assert 0 < len(rows) <= 51


# --- CSV ------------------------------------------------------------------------------------


def test_csv_export_of_filtered_view(client: TestClient, uri: str) -> None:
    insert(
        uri,
        [
            alert_row(
                10,
                transaction_id="evil",
                merchant_id='=HYPERLINK("x")',
                severity="block",
                score=20.0,
            )
        ],
    )
    r = client.get("/api/alerts.csv", params={"severity": "block", "sort": "score"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    lines = r.text.strip().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["transaction_id", "user_id", "event_time"]
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    assert [row["transaction_id"] for row in rows] == ["evil", tid(7), tid(1), tid(4)]
    assert rows[2]["reasons"] == "AMOUNT_HIGH NEW_COUNTRY"
    assert rows[2]["amount"] == "500.0000"
    assert '"\'=HYPERLINK(""x"")"' in lines[1]  # neutralised formula


# --- labelling --------------------------------------------------------------------------------


def test_label_single_is_stored_audited_and_published(
    make_client: Any, uri: str, broker: EmbeddedBroker, topics: dict[str, str]
) -> None:
    client = make_client(brokers=broker.brokers, topics=topics)
    r = client.post(
        f"/api/alerts/{tid(4)}/label",
        json={"status": "confirmed", "reviewer": "ann", "note": "card stolen"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labelled"] == [tid(4)]
    assert body["publish"] == {"state": "published", "messages": 1, "error": None}
    ((status, reviewer, note, reviewed_at),) = fetch(
        uri,
        "SELECT status, reviewer, review_note, reviewed_at FROM alerts WHERE transaction_id = %s",
        tid(4),
    )
    assert (status, reviewer, note) == ("confirmed", "ann", "card stolen")
    audit = fetch(uri, "SELECT transaction_id, status, reviewer, note FROM alert_reviews")
    assert audit == [(tid(4), "confirmed", "ann", "card stolen")]
    (msg,) = consume(broker.brokers, topics["labels"], 1)
    assert msg.key() == b"u3"
    label = parse_label(msg.value())
    assert label == Label(tid(4), "u3", "T1", "fraud", alert_row(4)["event_time"], reviewed_at)
    assert fetch(uri, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]


def test_label_bulk(
    make_client: Any, uri: str, broker: EmbeddedBroker, topics: dict[str, str]
) -> None:
    client = make_client(brokers=broker.brokers, topics=topics)
    r = client.post(
        "/api/labels/bulk",
        json={
            "transaction_ids": [tid(0), tid(2), tid(9), "nope", tid(0)],
            "status": "false_positive",
            "reviewer": "bob",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labelled"] == [tid(0), tid(2), tid(9)]
    assert body["not_found"] == ["nope"]
    assert body["publish"]["state"] == "published"
    assert body["publish"]["messages"] == 3
    audit = fetch(uri, "SELECT transaction_id, status, reviewer FROM alert_reviews ORDER BY 1")
    assert audit == [(tid(i), "false_positive", "bob") for i in (0, 2, 9)]
    statuses = fetch(uri, "SELECT status, count(*) FROM alerts GROUP BY 1 ORDER BY 1")
    assert statuses == [("false_positive", 3), ("open", 7)]
    msgs = consume(broker.brokers, topics["labels"], 3)
    labels = sorted((parse_label(m.value()) for m in msgs), key=lambda lb: lb.transaction_id)
    assert [(lb.transaction_id, lb.label, lb.terminal_id) for lb in labels] == [
        (tid(0), "legit", "T1"),
        (tid(2), "legit", "T1"),
        (tid(9), "legit", None),
    ]
    assert {m.key() for m in msgs} == {b"u1", b"u2", b"u4"}


def test_escalation_publishes_nothing_and_relabels_are_audited(
    make_client: Any, uri: str, broker: EmbeddedBroker, topics: dict[str, str]
) -> None:
    client = make_client(brokers=broker.brokers, topics=topics)
    r = client.post(f"/api/alerts/{tid(7)}/label", json={"status": "escalated", "reviewer": "c"})
    assert r.status_code == 200
    assert r.json()["publish"] == {"state": "none", "messages": 0, "error": None}
    r = client.post(f"/api/alerts/{tid(7)}/label", json={"status": "confirmed", "reviewer": "d"})
    assert r.json()["publish"]["state"] == "published"
    assert fetch(
        uri,
        "SELECT status, reviewer FROM alert_reviews WHERE transaction_id = %s ORDER BY id",
        tid(7),
    ) == [("escalated", "c"), ("confirmed", "d")]
    assert topic_size(broker.brokers, topics["labels"]) == 1  # the confirmation only
    detail = client.get(f"/api/alerts/{tid(7)}").json()
    assert [rv["status"] for rv in detail["reviews"]] == ["confirmed", "escalated"]
    assert detail["label_publish"]["sent_at"] is not None


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        ({"status": "open", "reviewer": "a"}, {}, 422),
        ({"status": "confirmed"}, {}, 422),
        ({"status": "confirmed", "reviewer": "   "}, {}, 422),
        ({"status": "confirmed", "reviewer": "a", "extra": 1}, {}, 422),
        ({"status": "confirmed", "reviewer": "a" * 65}, {}, 422),
        ("status=confirmed&reviewer=a", {"content-type": "application/x-www-form-urlencoded"}, 415),
    ],
)
def test_label_input_is_validated(
    client: TestClient, uri: str, body: Any, headers: dict[str, str], code: int
) -> None:
    if isinstance(body, str):
        r = client.post(f"/api/alerts/{tid(1)}/label", content=body, headers=headers)
    else:
        r = client.post(f"/api/alerts/{tid(1)}/label", json=body)
    assert r.status_code == code
    assert fetch(uri, "SELECT count(*) FROM alert_reviews") == [(0,)]


def test_label_of_unknown_alert_is_404(client: TestClient) -> None:
    r = client.post("/api/alerts/nope/label", json={"status": "confirmed", "reviewer": "a"})
    assert r.status_code == 404
    assert client.get("/api/alerts/nope").status_code == 404
    r = client.post(
        "/api/labels/bulk", json={"transaction_ids": [], "status": "confirmed", "reviewer": "a"}
    )
    assert r.status_code == 422


def test_kafka_down_label_is_saved_then_published_by_the_outbox(
    make_client: Any, uri: str, tmp_path: Any
) -> None:
    port = free_port()
    topics = {"labels": "labels-outage", "controls": "controls-outage"}
    client = make_client(
        brokers=f"127.0.0.1:{port}", topics=topics, publish_timeout=2.0, drain_interval=0.2
    )
    t0 = time.monotonic()
    r = client.post(f"/api/alerts/{tid(3)}/label", json={"status": "confirmed", "reviewer": "e"})
    assert time.monotonic() - t0 >= 2.0  # it waited for Kafka's answer
    assert r.status_code == 200, r.text
    publish = r.json()["publish"]
    assert publish["state"] == "pending"
    assert "not yet published to Kafka: Kafka: Local: Message timed out" in publish["error"]
    assert "retries every 0.2 s" in publish["error"]
    assert fetch(uri, "SELECT status FROM alerts WHERE transaction_id = %s", tid(3)) == [
        ("confirmed",)
    ]
    ((attempts, error),) = fetch(uri, "SELECT attempts, last_error FROM outbox")
    assert attempts >= 1 and error
    # Kafka is known to be down now: the next write answers at once, without a 2 s wait
    t0 = time.monotonic()
    r = client.post(
        "/api/labels/bulk",
        json={"transaction_ids": [tid(5)], "status": "false_positive", "reviewer": "e"},
    )
    assert time.monotonic() - t0 < 1.5
    assert r.json()["publish"]["state"] == "pending"
    assert "Kafka unavailable since" in r.json()["publish"]["error"]
    with EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log") as b:
        b.create_topics(topics.values(), partitions=2)
        wait_for(
            lambda: fetch(uri, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)],
            timeout=60,
            what="the outbox to drain",
        )
        msgs = consume(b.brokers, topics["labels"], 2)
        # healthy again: a write is published at once
        r = client.post(
            f"/api/alerts/{tid(6)}/label", json={"status": "confirmed", "reviewer": "e"}
        )
        assert r.json()["publish"]["state"] == "published"
    labels = sorted((parse_label(m.value()) for m in msgs), key=lambda lb: lb.transaction_id)
    assert [(lb.transaction_id, lb.label) for lb in labels] == [
        (tid(3), "fraud"),
        (tid(5), "legit"),
    ]


# --- snoozes --------------------------------------------------------------------------------


def test_snooze_is_stored_and_published(
    make_client: Any, uri: str, broker: EmbeddedBroker, topics: dict[str, str]
) -> None:
    client = make_client(brokers=broker.brokers, topics=topics)
    before = datetime.now(UTC)
    r = client.post(
        "/api/snoozes",
        json={
            "scope": "terminal",
            "target": "T1",
            "minutes": 90,
            "reviewer": "ann",
            "note": "known test terminal",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["publish"]["state"] == "published"
    until = datetime.fromisoformat(body["snooze"]["until"])
    assert timedelta(minutes=89) < until - before < timedelta(minutes=91)
    rows = fetch(uri, "SELECT scope, target, until, reviewer, note FROM snoozes")
    assert rows == [("terminal", "T1", until, "ann", "known test terminal")]
    (msg,) = consume(broker.brokers, topics["controls"], 1)
    assert msg.key() == b"T1"
    control = parse_control(msg.value())
    assert (control.kind, control.scope, control.target, control.until) == (
        "snooze",
        "terminal",
        "T1",
        until,
    )
    active = client.get("/api/snoozes").json()
    assert [(s["scope"], s["target"]) for s in active] == [("terminal", "T1")]


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "user", "target": "u1", "reviewer": "a"},  # no end
        {
            "scope": "user",
            "target": "u1",
            "reviewer": "a",
            "minutes": 5,
            "until": "2099-01-01T00:00:00Z",
        },  # both
        {"scope": "user", "target": "u1", "reviewer": "a", "until": "2001-01-01T00:00:00Z"},
        {"scope": "user", "target": "u1", "reviewer": "a", "minutes": 200_000},
        {"scope": "merchant", "target": "m1", "reviewer": "a", "minutes": 5},
    ],
)
def test_snooze_is_validated(client: TestClient, uri: str, body: dict[str, Any]) -> None:
    assert client.post("/api/snoozes", json=body).status_code == 422
    assert fetch(uri, "SELECT count(*) FROM snoozes") == [(0,)]


# --- views ------------------------------------------------------------------------------------


def test_alert_detail(client: TestClient) -> None:
    a = client.get(f"/api/alerts/{tid(1)}").json()
    assert [r["code"] for r in a["reasons"]] == ["AMOUNT_HIGH", "NEW_COUNTRY"]
    assert a["features"] == {"amount_z": 3.5, "tx_count_1h": 1}
    assert a["amount"] == "500.0000"
    assert [r["transaction_id"] for r in a["user_recent"]] == [tid(6), tid(0)]
    assert a["reviews"] == [] and a["label_publish"] is None


def test_user_view(client: TestClient) -> None:
    client.post(f"/api/alerts/{tid(2)}/label", json={"status": "escalated", "reviewer": "f"})
    u = client.get("/api/users/u2").json()
    assert u["counts"] == {
        "total": 3,
        "open": 2,
        "confirmed": 0,
        "false_positive": 0,
        "escalated": 1,
    }
    assert [a["transaction_id"] for a in u["alerts"]] == [tid(8), tid(3), tid(2)]
    assert [(r["transaction_id"], r["status"]) for r in u["reviews"]] == [(tid(2), "escalated")]
    assert client.get("/api/users/nobody").status_code == 404


def test_overview_counts_share_reviewed_and_precision(client: TestClient) -> None:
    for i, status in [(0, "confirmed"), (1, "confirmed"), (2, "false_positive"), (3, "escalated")]:
        r = client.post(f"/api/alerts/{tid(i)}/label", json={"status": status, "reviewer": "g"})
        assert r.status_code == 200
    ov = client.get("/api/overview").json()
    assert ov["end"] == "2024-03-01T14:00:00Z" and ov["start"] == "2024-02-29T14:00:00Z"
    assert len(ov["hours"]) == 24
    by_hour = {
        h["hour"]: (h["review"], h["block"]) for h in ov["hours"] if h["review"] or h["block"]
    }
    assert by_hour == {"2024-03-01T12:00:00Z": (4, 2), "2024-03-01T13:00:00Z": (3, 1)}
    assert ov["counts"]["total"] == 10
    assert ov["share_reviewed"] == pytest.approx(0.4)
    assert ov["precision"] == pytest.approx(2 / 3)
    assert ov["by_severity"]["block"]["confirmed"] == 1
    assert client.get("/api/overview", params={"hours": 1}).json()["counts"]["total"] == 4
    page = client.get("/overview")
    assert page.status_code == 200
    assert "<svg" in page.text and "66.7 %" in page.text and "40.0 %" in page.text


def test_updates_counts_new_matching_alerts(client: TestClient, uri: str) -> None:
    after = alert_row(9)["detected_at"].isoformat()
    assert client.get("/api/updates", params={"after": after}).json()["new_alerts"] == 0
    late = BASE + timedelta(hours=5)
    insert(uri, [alert_row(11, severity="review", detected_at=late)])
    r = client.get("/api/updates", params={"after": after}).json()
    assert r["new_alerts"] == 1
    assert datetime.fromisoformat(r["latest"]) == late
    r = client.get("/api/updates", params={"after": after, "severity": "block"}).json()
    assert r["new_alerts"] == 0


def test_pages_render_and_escape(client: TestClient, uri: str) -> None:
    insert(
        uri,
        [
            alert_row(
                12, transaction_id="x1", merchant_id="<script>alert(1)</script>", user_id="u<b>"
            )
        ],
    )
    page = client.get("/alerts/x1")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text
    assert "/users/u%3Cb%3E" in page.text
    assert "VELOCITY" in page.text and "amount_z" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    listing = client.get("/alerts", params={"severity": "block", "limit": 25})
    assert listing.status_code == 200
    assert listing.text.count('name="tid"') == 3
    assert client.get("/users/u1").status_code == 200
    bad = client.get("/alerts", params={"severity": "bogus"})
    assert bad.status_code == 200 and "Invalid filter" in bad.text
    assert client.get("/alerts/nope").status_code == 404


def test_ids_with_slashes(client: TestClient, uri: str) -> None:
    insert(uri, [alert_row(13, transaction_id="acq/2024/77", user_id="bank/u1")])
    assert client.get("/api/alerts/acq%2F2024%2F77").json()["user_id"] == "bank/u1"
    assert client.get("/api/users/bank%2Fu1").json()["counts"]["total"] == 1
    listing = client.get("/alerts", params={"user": "bank/u1"}).text
    assert 'href="/alerts/acq%2F2024%2F77"' in listing
    assert client.get("/alerts/acq%2F2024%2F77").status_code == 200
    r = client.post(
        "/api/alerts/acq%2F2024%2F77/label", json={"status": "escalated", "reviewer": "h"}
    )
    assert r.json()["labelled"] == ["acq/2024/77"]


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/alerts"),
        ("GET", "/api/alerts.csv"),
        ("GET", f"/api/alerts/{tid(0)}"),
        ("POST", f"/api/alerts/{tid(0)}/label"),
        ("POST", "/api/labels/bulk"),
        ("GET", "/api/snoozes"),
        ("POST", "/api/snoozes"),
        ("GET", "/api/overview"),
        ("GET", "/api/users/u1"),
        ("GET", "/api/updates"),
        ("GET", "/openapi.json"),
    ],
)
def test_api_requires_the_token(make_client: Any, uri: str, method: str, path: str) -> None:
    anon = make_client(bearer=False)
    body = {"status": "confirmed", "reviewer": "x"} if method == "POST" else None
    r = anon.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = anon.request(method, path, json=body, headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401
    assert fetch(uri, "SELECT count(*) FROM alert_reviews") == [(0,)]


def test_pages_redirect_to_login_and_static_is_public(make_client: Any) -> None:
    anon = make_client(bearer=False)
    r = anon.get("/alerts?severity=block", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Falerts%3Fseverity%3Dblock"
    assert anon.get("/overview", follow_redirects=False).status_code == 303
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/static/app.css").status_code == 200
    assert anon.get("/login").status_code == 200


def _login(c: TestClient, token: str = TOKEN) -> Any:
    c.get("/login")
    return c.post(
        "/login",
        data={
            "token": token,
            "reviewer": "ann",
            "csrf_token": c.cookies[CSRF_COOKIE],
            "next": "/overview",
        },
        follow_redirects=False,
    )


def test_login_sets_an_httponly_session_cookie(make_client: Any) -> None:
    c = make_client(bearer=False)
    r = _login(c)
    assert r.status_code == 303 and r.headers["location"] == "/overview"
    cookies = r.headers.get_list("set-cookie")
    session = next(h for h in cookies if h.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    assert c.get("/alerts").status_code == 200
    assert c.get("/api/alerts").status_code == 200  # the page's own polling
    r = c.post("/logout", data={"csrf_token": c.cookies[CSRF_COOKIE]}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/alerts", follow_redirects=False).status_code == 303


def test_login_with_a_wrong_token_fails_and_is_rate_limited(make_client: Any) -> None:
    c = make_client(bearer=False)
    r = _login(c, "wrong-token")
    assert r.status_code == 401 and "Wrong token" in r.text
    assert SESSION_COOKIE not in c.cookies
    for _ in range(9):
        _login(c, "wrong-token")
    assert _login(c).status_code == 429  # even the right token, for a minute


def test_form_posts_need_the_csrf_token(make_client: Any, uri: str) -> None:
    c = make_client(bearer=False)
    assert _login(c).status_code == 303
    form = {"status": "confirmed", "reviewer": "ann", "note": "n"}
    r = c.post(f"/alerts/{tid(5)}/label", data=form, follow_redirects=False)
    assert r.status_code == 403
    forged = c.post(
        f"/alerts/{tid(5)}/label", data={**form, "csrf_token": "abc.def"}, follow_redirects=False
    )
    assert forged.status_code == 403
    assert fetch(uri, "SELECT status FROM alerts WHERE transaction_id = %s", tid(5)) == [("open",)]
    r = c.post(
        f"/alerts/{tid(5)}/label",
        data={**form, "csrf_token": c.cookies[CSRF_COOKIE]},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/alerts/{tid(5)}"
    assert fetch(uri, "SELECT status FROM alerts WHERE transaction_id = %s", tid(5)) == [
        ("confirmed",)
    ]
    page = c.get(r.headers["location"])
    assert "Alert confirmed as fraud" in page.text
    # the login form is protected too
    c2 = make_client(bearer=False)
    r = c2.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 403 and SESSION_COOKIE not in c2.cookies


def test_bulk_and_snooze_forms(make_client: Any, uri: str) -> None:
    c = make_client(bearer=False)
    _login(c)
    csrf = c.cookies[CSRF_COOKIE]
    r = c.post(
        "/alerts/bulk-label",
        data={
            "tid": [tid(1), tid(4)],
            "status": "escalated",
            "reviewer": "ann",
            "csrf_token": csrf,
            "next": "/alerts?severity=block",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/alerts?severity=block"
    assert "2 alert(s) escalated" in c.get(r.headers["location"]).text
    r = c.post(
        "/alerts/bulk-label",
        data={
            "tid": [tid(1)],
            "status": "escalated",
            "reviewer": "ann",
            "csrf_token": csrf,
            "next": "https://evil.example/",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/alerts"  # no open redirect
    r = c.post(
        "/snoozes",
        data={
            "scope": "user",
            "target": "u3",
            "minutes": "60",
            "reviewer": "ann",
            "csrf_token": csrf,
            "next": "/users/u3",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert fetch(uri, "SELECT scope, target FROM snoozes") == [("user", "u3")]
    assert "snoozed until" in c.get("/users/u3").text


def test_errors_show_no_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("secret-detail from the database layer")

    monkeypatch.setattr(webdb, "get_alert", boom)
    with caplog.at_level(logging.ERROR, logger="txwatch.web"):
        api = client.get(f"/api/alerts/{tid(0)}")
        page = client.get(f"/alerts/{tid(0)}")
    assert api.status_code == 500 and page.status_code == 500
    assert api.json()["detail"] == "internal error"
    for r in (api, page):
        assert "secret-detail" not in r.text and "Traceback" not in r.text
    assert "Something went wrong" in page.text
    error_id = api.json()["error_id"]
    assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in [
        "/api/alerts",
        "/api/alerts/{transaction_id}",
        "/api/alerts/{transaction_id}/label",
        "/api/labels/bulk",
        "/api/snoozes",
        "/api/overview",
        "/api/users/{user_id}",
        "/api/alerts.csv",
    ]:
        assert path in doc["paths"], path
    assert "/alerts" not in doc["paths"]  # pages are not API
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    params = {p["name"] for p in doc["paths"]["/api/alerts"]["get"]["parameters"]}
    assert {"severity", "reason", "status", "user", "min_amount", "cursor", "sort"} <= params


def test_insecure_mode_is_loopback_only(make_client: Any) -> None:
    with pytest.raises(ValueError, match="TXWATCH_WEB_TOKEN"):
        make_client(token=None)
    c = make_client(token=None, insecure_no_auth=True)
    assert c.get("/api/alerts").status_code == 200
    assert c.get("/api/alerts", headers={"host": "evil.example"}).status_code == 400
    s = Settings(web_token=None)
    assert "TXWATCH_WEB_TOKEN is not set" in (access_problem(s, "127.0.0.1", False) or "")
    assert access_problem(s, "127.0.0.1", True) is None
    assert access_problem(s, "::1", True) is None
    assert "loopback" in (access_problem(s, "0.0.0.0", True) or "")
    assert "shorter" in (access_problem(Settings(web_token="short"), "127.0.0.1", False) or "")
    assert access_problem(Settings(web_token=TOKEN), "0.0.0.0", False) is None


def test_serve_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from txwatch.cli import main
    from txwatch.settings import get_settings

    monkeypatch.delenv("TXWATCH_WEB_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["serve"]) == 2
        assert main(["serve", "--insecure-no-auth", "--host", "0.0.0.0"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "TXWATCH_WEB_TOKEN is not set" in err and "only binds to loopback" in err


# --- publishing from Python -------------------------------------------------------------------


def test_publish_label_and_control_from_python(
    broker: EmbeddedBroker, topics: dict[str, str]
) -> None:
    s = Settings(
        kafka_brokers=broker.brokers,
        labels_topic=topics["labels"],
        controls_topic=topics["controls"],
    )
    t = datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    label = Label("tx9", "u9", "T9", "fraud", t, t + timedelta(days=3))
    publish_label(label, s)
    (msg,) = consume(broker.brokers, topics["labels"], 1)
    assert parse_label(msg.value()) == label and msg.key() == b"u9"
    control = Control("snooze", "user", "u9", t + timedelta(hours=1), t)
    assert parse_control(control_to_json(control)) == control
    with pytest.raises(PublishError, match="labels"):
        publish_label(label, Settings(kafka_brokers=f"127.0.0.1:{free_port()}"), timeout=1.0)


def test_publisher_reports_each_message(broker: EmbeddedBroker, topics: dict[str, str]) -> None:
    from txwatch.web.labels import Message

    pub = KafkaPublisher({"bootstrap.servers": broker.brokers}, timeout=5.0)
    try:
        out = pub.publish(
            [
                Message(topics["labels"], "k", b"{}"),
                Message(topics["labels"], None, json.dumps({"a": 1}).encode()),
            ]
        )
        assert out == [None, None]
    finally:
        pub.close()


def test_publishing_own_rows_waits_for_the_background_drain_that_holds_them(
    pool: Any, uri: str
) -> None:
    """A label's request publishes its own outbox rows; when the background publisher holds
    them (mid-publish), the request waits for its outcome instead of answering "pending" for
    rows that are being sent (and never sends them twice)."""
    import threading

    from txwatch.web import outbox
    from txwatch.web.labels import Message

    with pool.connection() as conn, conn.transaction():
        [row_id] = outbox.enqueue(conn, [Message("labels-x", "k", b"{}")], "race")
    pub = KafkaPublisher({"bootstrap.servers": DEAD_BROKER}, timeout=1.0)
    done: dict[str, Any] = {}
    with psycopg.connect(uri) as holder:  # the background drain, mid-publish
        holder.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE", [row_id])
        t = threading.Thread(target=lambda: done.update(r=outbox.drain(pool, pub, [row_id])))
        t.start()
        wait_for(
            lambda: fetch(uri, "SELECT count(*) FROM pg_stat_activity"
                          " WHERE wait_event_type = 'Lock'") == [(1,)],
            timeout=10, what="the request to wait for the row's lock",
        )
        holder.execute("UPDATE outbox SET sent_at = now() WHERE id = %s", [row_id])
        holder.commit()
        t.join(timeout=10)
    pub.close(0)
    assert not t.is_alive()
    assert (done["r"].sent, done["r"].failed) == (0, 0)  # sent by the holder, not again
    assert outbox.pending_among(pool, [row_id]) == 0
