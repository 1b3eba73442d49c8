"""Screenshots of the review pages for docs/review.md, from demo data.

Starts an embedded PostgreSQL in a temporary directory, fills it with a day of plausible
alerts (some reviewed, one snooze), serves ``txwatch serve``'s application on a free loopback
port and photographs the alert list, an alert and the overview with headless Chromium.

    .venv/bin/python scripts/screenshot_review.py [--out docs/img]

Needs /usr/bin/chromium (Debian package ``chromium``) and the dev extra; no Kafka (nothing is
published: reviews are written with SQL).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "screenshot-token-0123456789"  # noqa: S105 - a throwaway demo server's token
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
END = datetime(2024, 5, 14, 18, 40, tzinfo=UTC)

REASONS = [
    ("amount_vs_user_mean", "amount {v:.1f}× this user's 30-day mean", (2.5, 9.0)),
    (
        "amount_vs_user_median",
        "amount {v:.1f} robust deviations above this user's median",
        (3.0, 12.0),
    ),
    ("new_terminal", "first transaction at this terminal", (1.0, 1.0)),
    ("new_country", "first transaction in this country", (1.0, 1.0)),
    ("velocity_1h", "{v:.0f} transactions in the last hour", (5, 14)),
    ("terminal_risk", "{v:.0%} of recent transactions at this terminal were fraud", (0.1, 0.6)),
    ("unusual_hour", "unusual hour of day for this user", (2.0, 4.0)),
    (
        "travel_speed",
        "implied travel speed {v:.0f} km/h since the previous transaction",
        (900, 4000),
    ),
]
COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL", "US", "GB"]
CHANNELS = ["pos", "ecom", "contactless"]


def demo_alerts(n: int = 90, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        t = END - timedelta(minutes=rnd.uniform(0, 24 * 60))
        score = round(rnd.uniform(3.6, 7.9) if rnd.random() < 0.8 else rnd.uniform(8.0, 14), 2)
        amount = Decimal(str(round(rnd.lognormvariate(4.5, 1.1), 2)))
        picks = rnd.sample(REASONS, rnd.randint(1, 3))
        reasons = []
        for code, text, (lo, hi) in picks:
            v = rnd.uniform(lo, hi)
            reasons.append({"code": code, "text": text.format(v=v), "value": round(v, 3)})
        user = f"user-{rnd.randint(1000, 1060)}"
        out.append(
            {
                "transaction_id": f"tx-{20240514_000000 + i * 7919:x}",
                "user_id": user,
                "event_time": t,
                "amount": amount,
                "currency": "EUR",
                "amount_base": amount,
                "merchant_id": f"mer-{rnd.randint(1, 400):04d}",
                "terminal_id": f"term-{rnd.randint(1, 120):04d}",
                "merchant_category": rnd.choice(["5411", "5812", "5999", "4829", "7995"]),
                "country": rnd.choice(COUNTRIES),
                "channel": rnd.choice(CHANNELS),
                "score": score,
                "threshold": 3.5,
                "severity": "block" if score >= 8.0 else "review",
                "reasons": reasons,
                "features": {
                    "amt_ratio_mean": round(rnd.uniform(0.5, 9), 3),
                    "amt_robust_z": round(rnd.uniform(-1, 12), 3),
                    "amt_pctl": round(rnd.uniform(0.2, 1.0), 3),
                    "u_n": rnd.randint(5, 400),
                    "tx_count_1h": rnd.randint(0, 14),
                    "tx_count_1d": rnd.randint(1, 40),
                    "new_terminal": float(rnd.random() < 0.3),
                    "new_country": float(rnd.random() < 0.15),
                    "terminal_fraud_share": round(rnd.uniform(0, 0.5), 3),
                    "km_from_home": round(rnd.uniform(0, 2500), 1),
                    "hour_of_day_local": rnd.randint(0, 23),
                },
                "components": {
                    "user_model": round(score * 0.6, 3),
                    "terminal": round(score * 0.3, 3),
                    "population": round(score * 0.1, 3),
                },
                "model_version": "hst-2024.05.1",
                "worker": f"worker-{rnd.randint(0, 1)}",
                "detected_at": t + timedelta(milliseconds=rnd.randint(40, 900)),
            }
        )
    return out


def fill(uri: str) -> str:
    """Insert the demo data; returns the id of the alert to photograph."""
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    rows = demo_alerts()
    cols = list(rows[0])
    rnd = random.Random(3)
    with psycopg.connect(uri) as c:
        c.cursor().executemany(
            sql.SQL("INSERT INTO alerts ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join([sql.Placeholder()] * len(cols)),
            ),
            [[Jsonb(r[k]) if isinstance(r[k], dict | list) else r[k] for k in cols] for r in rows],
        )
        reviewed = sorted(rows, key=lambda r: r["event_time"])[:45]
        for r in reviewed:
            status = rnd.choices(["confirmed", "false_positive", "escalated"], [3, 5, 1])[0]
            who = rnd.choice(["ann", "bo", "chen"])
            at = r["detected_at"] + timedelta(minutes=rnd.randint(5, 200))
            c.execute(
                "UPDATE alerts SET status = %s, reviewer = %s, reviewed_at = %s"
                " WHERE transaction_id = %s",
                [status, who, at, r["transaction_id"]],
            )
            c.execute(
                "INSERT INTO alert_reviews (transaction_id, status, reviewer, reviewed_at)"
                " VALUES (%s, %s, %s, %s)",
                [r["transaction_id"], status, who, at],
            )
        c.execute(
            "INSERT INTO snoozes (scope, target, until, reviewer, note)"
            " VALUES ('terminal', 'term-0042', now() + interval '20 hours', 'ann',"
            " 'merchant test terminal, confirmed by phone')"
        )
        # the photographed alert: a recent open one whose user has other alerts
        users = [r["user_id"] for r in rows]
        target = max(
            (r for r in rows if r["event_time"] > END - timedelta(hours=6)),
            key=lambda r: (users.count(r["user_id"]), len(r["reasons"]), r["score"]),
        )
        c.execute(
            "INSERT INTO alert_reviews (transaction_id, status, reviewer, note, reviewed_at)"
            " VALUES (%s, 'escalated', 'bo', 'asked the card holder by SMS', %s)",
            [target["transaction_id"], target["detected_at"] + timedelta(minutes=12)],
        )
        c.execute(
            "UPDATE alerts SET status = 'escalated', reviewer = 'bo', reviewed_at = %s,"
            " review_note = 'asked the card holder by SMS' WHERE transaction_id = %s",
            [target["detected_at"] + timedelta(minutes=12), target["transaction_id"]],
        )
    return str(target["transaction_id"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)

    import uvicorn
    from playwright.sync_api import sync_playwright

    from sinks.migrate import migrate
    from txwatch.embedded import EmbeddedPostgres, free_port, wait_for
    from txwatch.settings import Settings
    from txwatch.web import create_app

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        print("needs /usr/bin/chromium: apt-get install -y chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("txwatch.web.kafka").setLevel(logging.CRITICAL)  # no Kafka here, on purpose
    with tempfile.TemporaryDirectory(prefix="txwatch-shots-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            migrate(pg.uri)
            alert_id = fill(pg.uri)
            settings = Settings(
                web_token=TOKEN, database_url=pg.uri, kafka_brokers=f"127.0.0.1:{free_port()}"
            )
            app = create_app(settings, drain_interval=0, poll_seconds=60)
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            wait_for(lambda: server.started, timeout=30, what="the server")
            url = f"http://127.0.0.1:{port}"
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
                    page = browser.new_page(viewport={"width": 1360, "height": 900})
                    page.goto(url + "/login")
                    page.fill("input[name=token]", TOKEN)
                    page.fill("input[name=reviewer]", "ann")
                    page.click("button:has-text('Log in')")
                    page.wait_for_url(url + "/alerts")
                    page.goto(url + "/alerts?status=open&limit=25")
                    page.screenshot(path=str(args.out / "review-list.png"))
                    page.goto(f"{url}/alerts/{alert_id}")
                    page.screenshot(path=str(args.out / "review-alert.png"), full_page=True)
                    page.goto(url + "/overview")
                    page.screenshot(path=str(args.out / "review-overview.png"), full_page=True)
                    browser.close()
            finally:
                server.should_exit = True
                thread.join(timeout=15)
        finally:
            pg.stop()
    for name in ("review-list.png", "review-alert.png", "review-overview.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
