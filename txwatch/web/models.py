"""Request and response models of the review application (validated input, documented output).

>>> f = AlertFilter.model_validate({"severity": "", "since": "2018-04-01T10:00", "limit": "20"})
>>> (f.severity, f.since.isoformat(), f.limit)
(None, '2018-04-01T10:00:00+00:00', 20)
>>> AlertFilter(min_amount=5, max_amount=1)
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for AlertFilter
...
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Status = Literal["open", "confirmed", "false_positive", "escalated"]
ReviewStatus = Literal["confirmed", "false_positive", "escalated"]
Severity = Literal["review", "block"]
SortKey = Literal["event_time", "score", "amount"]
SnoozeScope = Literal["user", "terminal"]

#: Sort keys of the list and the column each one orders by; every one has an index
#: ``(column DESC, transaction_id)`` (migrations 0001 and 0002).
SORT_COLUMNS: dict[str, str] = {
    "event_time": "event_time",
    "score": "score",
    "amount": "amount_base",
}

MAX_PAGE = 500
MAX_BULK = 500
MAX_SNOOZE = timedelta(days=90)

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Reviewer = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


def _utc(v: datetime | None) -> datetime | None:
    """Times without an offset (HTML ``datetime-local``) are taken as UTC."""
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class _Blank(BaseModel):
    """Empty strings (unfilled HTML form fields) count as absent."""

    @model_validator(mode="before")
    @classmethod
    def _blank_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: (None if v == "" else v) for k, v in data.items()}
        return data


class AlertFilter(_Blank):
    """Filters, sort and page of the alert list (query parameters of ``/api/alerts``)."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(None, description="event_time >= since (UTC if no offset)")
    until: datetime | None = Field(None, description="event_time < until (UTC if no offset)")
    severity: Severity | None = None
    reason: ReasonCode | None = Field(None, description="alerts with a reason of this code")
    status: Status | None = None
    user: Id | None = Field(None, description="user id, exact")
    terminal: Id | None = Field(None, description="terminal id, exact")
    min_amount: Decimal | None = Field(None, ge=0, description="amount in base currency >=")
    max_amount: Decimal | None = Field(None, ge=0, description="amount in base currency <=")
    sort: SortKey = "event_time"
    order: Literal["desc", "asc"] = "desc"
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(
        None, max_length=512, description="next_cursor of the previous page (same sort)"
    )

    @model_validator(mode="after")
    def _check(self) -> AlertFilter:
        self.since, self.until = _utc(self.since), _utc(self.until)
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if (
            self.min_amount is not None
            and self.max_amount is not None
            and self.min_amount > self.max_amount
        ):
            raise ValueError("min_amount must not exceed max_amount")
        return self

    def query_params(self, *, cursor: str | None = None, drop: tuple[str, ...] = ()) -> dict:
        """The non-default parameters, for links (another page, the CSV of this view)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude_defaults=True).items():
            if name in drop or name == "cursor" or value is None:
                continue
            out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        if cursor:
            out["cursor"] = cursor
        return out


class UpdatesQuery(AlertFilter):
    """The list's filters plus ``after``: how many matching alerts were detected since."""

    after: datetime = Field(description="count alerts with detected_at > after")


class Reason(BaseModel):
    code: str
    text: str = ""
    value: float | None = None


class AlertRow(BaseModel):
    """One alert as listed."""

    transaction_id: str
    user_id: str
    event_time: datetime
    amount: Decimal
    currency: str
    amount_base: Decimal
    merchant_id: str | None = None
    terminal_id: str | None = None
    country: str | None = None
    channel: str | None = None
    score: float
    threshold: float
    severity: str
    reasons: list[Reason] = []
    detected_at: datetime
    status: Status
    reviewed_at: datetime | None = None
    reviewer: str | None = None


class AlertPage(BaseModel):
    items: list[AlertRow]
    next_cursor: str | None = Field(None, description="pass as cursor for the next page")


class Review(BaseModel):
    id: int
    transaction_id: str
    status: Status
    reviewer: str
    note: str | None = None
    reviewed_at: datetime


class PublishState(BaseModel):
    """What happened to the Kafka messages of a write.

    ``published``: every message delivered; ``pending``: saved in PostgreSQL, not (yet)
    delivered, retried by the background publisher (``error`` says why); ``none``: nothing to
    publish (an escalation).
    """

    state: Literal["published", "pending", "none"]
    messages: int = 0
    error: str | None = None


class AlertDetail(AlertRow):
    merchant_category: str | None = None
    features: dict[str, Any] = {}
    components: dict[str, Any] = {}
    model_version: str
    worker: str
    review_note: str | None = None
    reviews: list[Review] = []
    user_recent: list[AlertRow] = []
    label_publish: dict[str, Any] | None = Field(
        None, description="the latest outbox row of this alert's label, if any"
    )


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: ReviewStatus = Field(
        description="confirmed (fraud), false_positive (legit) or escalated (no label published)"
    )
    reviewer: Reviewer
    note: Note | None = None


class BulkLabelRequest(LabelRequest):
    transaction_ids: list[Id] = Field(min_length=1, max_length=MAX_BULK)

    @model_validator(mode="after")
    def _unique(self) -> BulkLabelRequest:
        self.transaction_ids = list(dict.fromkeys(self.transaction_ids))
        return self


class LabelResult(BaseModel):
    status: ReviewStatus
    labelled: list[str]
    not_found: list[str] = []
    publish: PublishState


class SnoozeRequest(_Blank):
    model_config = ConfigDict(extra="forbid")

    scope: SnoozeScope
    target: Id
    until: datetime | None = Field(None, description="end of the snooze; or give minutes")
    minutes: int | None = Field(None, ge=1, le=int(MAX_SNOOZE.total_seconds() // 60))
    reviewer: Reviewer
    note: Note | None = None

    @model_validator(mode="after")
    def _one_end(self) -> SnoozeRequest:
        if (self.until is None) == (self.minutes is None):
            raise ValueError("give exactly one of until and minutes")
        self.until = _utc(self.until)
        return self

    def end(self, now: datetime) -> datetime:
        """The end of the snooze; it must lie in the future and at most 90 days ahead."""
        until = self.until if self.until is not None else now + timedelta(minutes=self.minutes or 0)
        if until <= now:
            raise ValueError("until must be in the future")
        if until - now > MAX_SNOOZE:
            raise ValueError("a snooze lasts at most 90 days")
        return until


class Snooze(BaseModel):
    id: int
    scope: SnoozeScope
    target: str
    until: datetime
    reviewer: str
    note: str | None = None
    created_at: datetime


class SnoozeResult(BaseModel):
    snooze: Snooze
    publish: PublishState


class HourBucket(BaseModel):
    hour: datetime
    review: int = 0
    block: int = 0


class StatusCounts(BaseModel):
    total: int = 0
    open: int = 0
    confirmed: int = 0
    false_positive: int = 0
    escalated: int = 0

    @property
    def reviewed(self) -> int:
        return self.total - self.open

    @property
    def share_reviewed(self) -> float | None:
        return self.reviewed / self.total if self.total else None

    @property
    def precision(self) -> float | None:
        """Confirmed over confirmed plus false positives (escalations are undecided)."""
        decided = self.confirmed + self.false_positive
        return self.confirmed / decided if decided else None


class Overview(BaseModel):
    start: datetime
    end: datetime
    hours: list[HourBucket]
    counts: StatusCounts
    by_severity: dict[str, StatusCounts]
    share_reviewed: float | None = Field(description="reviewed alerts / alerts in the window")
    precision: float | None = Field(description="confirmed / (confirmed + false_positive)")
    active_snoozes: list[Snooze]
    outbox_pending: int


class UserDetail(BaseModel):
    user_id: str
    counts: StatusCounts
    first_alert: datetime | None
    last_alert: datetime | None
    alerts: list[AlertRow]
    reviews: list[Review]
    snoozes: list[Snooze]


class Updates(BaseModel):
    new_alerts: int = Field(description="matching alerts detected after `after` (capped)")
    latest: datetime | None = Field(description="detected_at of the newest of them")
