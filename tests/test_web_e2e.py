"""End to end in headless Chromium: log in, filter, label, bulk-label, snooze, export, and see
labels and controls reach Kafka (a real Tansu broker) and new alerts announced by polling.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); Playwright drives it, no browser
download. Missing Chromium is a failure, not a skip.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg.types.json import Jsonb

from operators.parse import parse_control, parse_label
from sinks.migrate import migrate
from txwatch.embedded import EmbeddedBroker, free_port, wait_for
from txwatch.settings import Settings
from txwatch.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
# Headless flags that work as root (docs: platform notes). Playwright gives every browser a
# fresh temporary profile itself and refuses --user-data-dir in launch().
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "e2e-token-0123456789abcdef"
BASE = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
USERS = ["u1", "u2", "u3"]


def alert(i: int, **over: Any) -> dict[str, Any]:
    block = i % 4 == 0
    row = {
        "transaction_id": f"tx-{i:03d}",
        "user_id": USERS[i % 3],
        "event_time": BASE + timedelta(minutes=7 * i),
        "amount": Decimal(25 + 40 * i),
        "currency": "EUR",
        "amount_base": Decimal(25 + 40 * i),
        "merchant_id": f"m{i % 5}",
        "terminal_id": f"T{i % 4}",
        "merchant_category": "5999",
        "country": "DE",
        "channel": "ecom",
        "score": 9.0 + i / 10 if block else 4.0 + i / 10,
        "threshold": 3.5,
        "severity": "block" if block else "review",
        "reasons": [{"code": "AMOUNT_HIGH", "text": "amount far above usual", "value": 4.2}],
        "features": {"amount_z": 4.2, "tx_count_1h": 3},
        "components": {"user": 3.0},
        "model_version": "e2e",
        "worker": "w0",
        "detected_at": BASE + timedelta(minutes=7 * i, seconds=1),
    }
    row.update(over)
    return row


def insert(uri: str, rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    q = "INSERT INTO alerts ({}) VALUES ({})".format(", ".join(cols), ", ".join(["%s"] * len(cols)))
    values = [
        [Jsonb(r[k]) if k in ("reasons", "features", "components") else r[k] for k in cols]
        for r in rows
    ]
    with psycopg.connect(uri) as c:
        c.cursor().executemany(q, values)


class Reader:
    """Reads a topic from the beginning by explicit partition assignment."""

    def __init__(self, brokers: str, topic: str) -> None:
        self.c = Consumer(
            {"bootstrap.servers": brokers, "group.id": "e2e", "enable.auto.commit": False}
        )
        md = self.c.list_topics(topic, timeout=10)
        self.c.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions]
        )
        self.seen: list[Any] = []

    def wait(self, n: int, timeout: float = 30.0) -> list[Any]:
        """All messages so far, once there are at least ``n``."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < n and time.monotonic() < deadline:
            m = self.c.poll(0.2)
            if m is not None and m.error() is None:
                self.seen.append(m)
        assert len(self.seen) >= n, f"got {len(self.seen)} of {n} messages"
        return self.seen

    def close(self) -> None:
        self.c.close()


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture()
def site(pg: str, broker: EmbeddedBroker, topics: dict[str, str]) -> Iterator[dict[str, Any]]:
    migrate(pg)
    insert(pg, [alert(i) for i in range(12)])
    settings = Settings(
        web_token=TOKEN,
        database_url=pg,
        kafka_brokers=broker.brokers,
        labels_topic=topics["labels"],
        controls_topic=topics["controls"],
    )
    app = create_app(settings, publish_timeout=10.0, drain_interval=1.0, poll_seconds=0.5)
    labels = Reader(broker.brokers, topics["labels"])
    controls = Reader(broker.brokers, topics["controls"])
    try:
        with ServerThread(app) as server:
            yield {"url": server.url, "uri": pg, "labels": labels, "controls": controls}
    finally:
        labels.close()
        controls.close()


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get install -y chromium, or scripts/ensure-debian-packages.sh chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1400, "height": 900}
        )
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        pg.on(
            "console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        pg.set_default_timeout(15_000)
        yield pg
        try:
            # no script error, no CSP violation, no failed resource but the one 401 of the
            # deliberately wrong login
            wrong_login = "the server responded with a status of 401"
            assert [e for e in errors if wrong_login not in e] == []
            assert sum(wrong_login in e for e in errors) == 1
        finally:
            browser.close()


def rows(page: Any) -> Any:
    return page.locator("tbody tr[data-tid]")


def test_review_in_the_browser(site: dict[str, Any], page: Any) -> None:
    from playwright.sync_api import expect

    url = site["url"]
    # every page needs the token: the list redirects to the login form
    page.goto(url + "/alerts")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Falerts$"))
    page.fill("input[name=token]", "not-the-token")
    page.click("button:has-text('Log in')")
    expect(page.locator(".flash.error")).to_have_text("Wrong token.")
    page.fill("input[name=token]", TOKEN)
    page.fill("input[name=reviewer]", "Ann Analyst")
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(url + "/alerts")
    expect(rows(page)).to_have_count(12)
    expect(rows(page).first).to_have_attribute("data-tid", "tx-011")  # newest first

    # filter: block alerts of user u1 (tx-000 and tx-… with i % 4 == 0 and i % 3 == 0)
    page.select_option("select[name=severity]", "block")
    page.fill("input[name=user]", "u1")
    page.click("#apply-filters")
    expect(page).to_have_url(re.compile(r"severity=block"))
    expect(rows(page)).to_have_count(1)
    page.fill("input[name=user]", "")
    page.click("#apply-filters")
    expect(rows(page)).to_have_count(3)  # tx-000, tx-004, tx-008
    expect(page.locator("tbody .sev-review")).to_have_count(0)

    # CSV of the filtered view
    with page.expect_download() as dl:
        page.click("#csv-link")
    csv_lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert [line.split(",")[0] for line in csv_lines] == [
        "transaction_id", "tx-008", "tx-004", "tx-000",
    ]  # fmt: skip

    # one alert: confirm fraud with a note; the label reaches the labels topic
    page.click("a:has-text('tx-004')")
    expect(page.locator("h1")).to_contain_text("tx-004")
    expect(page.locator("code.reason").first).to_have_text("AMOUNT_HIGH")
    form = page.locator("#label-form")
    expect(form.locator("input[name=reviewer]")).to_have_value("Ann Analyst")
    form.locator("input[name=note]").fill("cardholder confirmed theft")
    form.locator("button:has-text('Confirm fraud')").click()
    expect(page.locator("#flash")).to_have_text("Alert confirmed as fraud; published to Kafka.")
    expect(page.locator(".facts .st-confirmed")).to_have_text("Fraud")
    expect(page.locator("table.grid").filter(has_text="cardholder confirmed theft")).to_be_visible()
    (msg,) = site["labels"].wait(1)
    label = parse_label(msg.value())
    assert (label.transaction_id, label.label, label.user_id, label.terminal_id) == (
        "tx-004", "fraud", "u2", "T0",
    )  # fmt: skip
    assert label.transaction_time == alert(4)["event_time"]

    # snooze the alert's terminal
    page.locator("form.snooze").filter(has_text="terminal").locator("button").click()
    expect(page.locator("#flash")).to_contain_text("Terminal T0 snoozed until")
    (cmsg,) = site["controls"].wait(1)
    control = parse_control(cmsg.value())
    assert (control.scope, control.target) == ("terminal", "T0")
    assert timedelta(hours=23) < control.until - datetime.now(UTC) <= timedelta(hours=24)

    # bulk: two open review alerts marked false positive
    page.goto(url + "/alerts?severity=review&status=open&sort=score&order=asc")
    expect(rows(page)).to_have_count(9)
    bulk = page.locator("#bulk")
    expect(bulk.locator("button:has-text('False positive')")).to_be_disabled()
    rows(page).nth(0).locator("input[name=tid]").check()
    rows(page).nth(1).locator("input[name=tid]").check()
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    bulk.locator("button:has-text('False positive')").click()
    expect(page.locator("#flash")).to_have_text(
        "2 alert(s) marked as false positive; published to Kafka."
    )
    expect(rows(page)).to_have_count(7)  # the filter is kept: they are no longer open
    labels = [parse_label(m.value()) for m in site["labels"].wait(3)[1:]]
    assert sorted((lb.transaction_id, lb.label) for lb in labels) == [
        ("tx-001", "legit"), ("tx-002", "legit"),
    ]  # fmt: skip

    # a new alert lands: the list announces it without a reload
    insert(site["uri"], [alert(20, severity="review", detected_at=datetime.now(UTC))])
    expect(page.locator("#updates")).to_be_visible()
    expect(page.locator("#updates-text")).to_have_text("1 new alert since this page loaded.")
    page.click("#updates-reload")
    expect(rows(page)).to_have_count(8)

    # overview: chart and precision of the reviewed alerts (1 fraud, 2 false positives)
    page.click("header nav a:has-text('Overview')")
    expect(page.locator("svg.chart rect").first).to_be_visible()
    expect(page.locator("#stat-precision")).to_have_text("33.3 %")

    # logging out ends the session
    page.click("button:has-text('Log out')")
    expect(page).to_have_url(url + "/login")
    page.goto(url + "/overview")
    expect(page).to_have_url(re.compile(r"/login"))
