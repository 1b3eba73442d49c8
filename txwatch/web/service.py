"""What the API and the pages do, once: read views, label alerts, snooze users and terminals."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from operators.records import Control
from txwatch.settings import Settings
from txwatch.web import db, outbox
from txwatch.web.charts import fill_hours
from txwatch.web.labels import KafkaPublisher, control_message, label_for_alert, label_message
from txwatch.web.models import (
    AlertDetail,
    LabelResult,
    Overview,
    PublishState,
    Snooze,
    SnoozeRequest,
    SnoozeResult,
    StatusCounts,
    UserDetail,
)

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    pool: ConnectionPool
    publisher: KafkaPublisher | None = None
    drain_interval: float = 5.0

    # --- publishing ---------------------------------------------------------------------------
    def publish_now(self, ids: Sequence[int]) -> PublishState:
        """Try to publish the outbox rows ``ids`` now; what is left is retried in background."""
        if not ids:
            return PublishState(state="none")
        error: str | None = None
        down = self.publisher.failing_since if self.publisher is not None else None
        if self.publisher is None:
            error = "no Kafka publisher is running"
        elif down is not None and self.drain_interval > 0:
            # Kafka is known to be down: answer at once, the background publisher retries
            since = datetime.fromtimestamp(down, UTC)
            error = f"Kafka unavailable since {since:%H:%M:%S} UTC ({self.publisher.last_error})"
        else:
            try:
                error = outbox.drain(self.pool, self.publisher, ids).first_error
            except Exception:
                log.exception("publishing outbox rows %s failed", list(ids))
                error = "publishing failed (see the server log)"
        pending = outbox.pending_among(self.pool, ids)
        if pending == 0:
            return PublishState(state="published", messages=len(ids))
        retry = (
            f"; the background publisher retries every {self.drain_interval:g} s"
            if self.drain_interval > 0
            else ""
        )
        return PublishState(
            state="pending",
            messages=len(ids),
            error=f"saved, but {pending} message(s) not yet published to Kafka: "
            f"{error or 'being published by the background publisher'}{retry}",
        )

    # --- labelling ----------------------------------------------------------------------------
    def label(
        self, transaction_ids: Sequence[str], status: str, reviewer: str, note: str | None
    ) -> LabelResult:
        """Review alerts: update them, add audit rows and queue their labels, in one transaction."""
        now = datetime.now(UTC)
        topic = self.settings.labels_topic
        with self.pool.connection() as conn, conn.transaction():
            rows = db.set_review(conn, transaction_ids, status, reviewer, note or None, now)
            ids: list[int] = []
            for r in rows:
                lb = label_for_alert(r, status, now)
                if lb is not None:
                    ids += outbox.enqueue(conn, [label_message(lb, topic)], r["transaction_id"])
        found = {r["transaction_id"] for r in rows}
        if rows:
            log.info("%s labelled %d alert(s) %s", reviewer, len(rows), status)
        return LabelResult(
            status=status,  # type: ignore[arg-type]
            labelled=[r["transaction_id"] for r in rows],
            not_found=[t for t in transaction_ids if t not in found],
            publish=self.publish_now(ids),
        )

    def snooze(self, req: SnoozeRequest) -> SnoozeResult:
        """Record a snooze and queue its control message, in one transaction."""
        now = datetime.now(UTC)
        until = req.end(now)
        with self.pool.connection() as conn, conn.transaction():
            row = db.insert_snooze(
                conn, req.scope, req.target, until, req.reviewer, req.note or None, now
            )
            control = Control("snooze", req.scope, req.target, until, now)
            ids = outbox.enqueue(
                conn,
                [control_message(control, self.settings.controls_topic)],
                f"snooze:{row['id']}",
            )
        log.info("%s snoozed %s %s until %s", req.reviewer, req.scope, req.target, until)
        return SnoozeResult(snooze=Snooze(**row), publish=self.publish_now(ids))

    # --- views --------------------------------------------------------------------------------
    def alert(self, transaction_id: str, recent: int = 20) -> AlertDetail | None:
        with self.pool.connection() as conn:
            row = db.get_alert(conn, transaction_id)
            if row is None:
                return None
            return AlertDetail(
                **row,
                reviews=db.reviews_of(conn, transaction_id),
                user_recent=[
                    r
                    for r in db.user_alerts(conn, row["user_id"], recent + 1)
                    if r["transaction_id"] != transaction_id
                ][:recent],
                label_publish=db.label_outbox_state(conn, transaction_id),
            )

    def snoozes_for(self, alert: AlertDetail) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        with self.pool.connection() as conn:
            out = db.snoozes(conn, now, scope="user", target=alert.user_id)
            if alert.terminal_id:
                out += db.snoozes(conn, now, scope="terminal", target=alert.terminal_id)
        return out

    def user(self, user_id: str, limit: int = 50) -> UserDetail | None:
        now = datetime.now(UTC)
        with self.pool.connection() as conn:
            summary = db.user_summary(conn, user_id)
            snoozes = db.snoozes(
                conn, now, scope="user", target=user_id, active_only=False, limit=20
            )
            if summary["total"] == 0 and not snoozes:
                return None
            return UserDetail(
                user_id=user_id,
                counts=StatusCounts(**{k: summary[k] for k in StatusCounts.model_fields}),
                first_alert=summary["first_alert"],
                last_alert=summary["last_alert"],
                alerts=db.user_alerts(conn, user_id, limit),
                reviews=db.user_reviews(conn, user_id, limit),
                snoozes=snoozes,
            )

    def overview(self, hours: int = 24, end: datetime | None = None) -> Overview:
        if end is not None and end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        with self.pool.connection() as conn:
            start, end = db.overview_window(conn, hours, end)
            data = db.overview(conn, start, end)
            active = db.snoozes(conn, datetime.now(UTC), limit=50)
        counts: StatusCounts = data["counts"]
        return Overview(
            start=start,
            end=end,
            hours=fill_hours(data["hourly"], start, end),
            counts=counts,
            by_severity=data["by_severity"],
            share_reviewed=counts.share_reviewed,
            precision=counts.precision,
            active_snoozes=active,
            outbox_pending=data["outbox_pending"],
        )
