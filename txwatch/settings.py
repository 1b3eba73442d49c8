"""All of txwatch's configuration, in one typed, frozen object.

Every field is read from an environment variable named ``TXWATCH_<FIELD>`` (upper case),
with a default for local use. Secrets are :class:`pydantic.SecretStr` so they never appear in
logs or reprs.

>>> s = Settings(threshold=4.0)
>>> s.threshold
4.0
>>> s.transactions_topic
'transactions'
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RATES: dict[str, Decimal] = {
    "EUR": Decimal("1"),
    "USD": Decimal("0.92"),
    "GBP": Decimal("1.17"),
    "CHF": Decimal("1.04"),
    "JPY": Decimal("0.0061"),
    "SEK": Decimal("0.087"),
    "PLN": Decimal("0.23"),
}


class Settings(BaseSettings):
    """txwatch settings; each field's environment variable is ``TXWATCH_`` + its name."""

    model_config = SettingsConfigDict(env_prefix="TXWATCH_", frozen=True, extra="ignore")

    # --- Kafka -----------------------------------------------------------------------------
    kafka_brokers: str = "127.0.0.1:9092"
    """TXWATCH_KAFKA_BROKERS: comma-separated bootstrap servers."""
    kafka_extra_config: dict[str, str] = Field(default_factory=dict)
    """TXWATCH_KAFKA_EXTRA_CONFIG: JSON object of extra librdkafka settings (SASL, TLS...)."""
    kafka_password: SecretStr | None = None
    """TXWATCH_KAFKA_PASSWORD: SASL password, merged into the client config when set."""
    transactions_topic: str = "transactions"
    """TXWATCH_TRANSACTIONS_TOPIC: the input topic, one JSON transaction per message."""
    labels_topic: str = "labels"
    """TXWATCH_LABELS_TOPIC: delayed fraud labels (chargebacks, analysts)."""
    controls_topic: str = "controls"
    """TXWATCH_CONTROLS_TOPIC: operator controls (snoozes) consumed by the flow."""
    dlq_topic: str = "transactions.dlq"
    """TXWATCH_DLQ_TOPIC: dead letters: malformed input with its reason."""
    decisions_topic: str = "decisions"
    """TXWATCH_DECISIONS_TOPIC: every decision (allow/review/block), for downstream systems."""
    publish_decisions: bool = True
    """TXWATCH_PUBLISH_DECISIONS: publish every decision to the decisions topic."""
    kafka_tail: bool = True
    """TXWATCH_KAFKA_TAIL: keep waiting for new messages; false stops at the end (tests)."""
    kafka_batch_size: int = 1000
    """TXWATCH_KAFKA_BATCH_SIZE: messages fetched per partition per poll."""
    kafka_max_rate: float = Field(default=0.0, ge=0.0)
    """TXWATCH_KAFKA_MAX_RATE: transactions read per second from each partition, 0 for no limit
    (paces a backfill or a catch-up so that it leaves room for live traffic and the database)."""
    topic_partitions: int = 4
    """TXWATCH_TOPIC_PARTITIONS: partitions used when txwatch creates topics."""

    # --- PostgreSQL ----------------------------------------------------------------------------
    database_url: SecretStr = SecretStr("postgresql://localhost/txwatch")
    """TXWATCH_DATABASE_URL: libpq URI of the alerts database (credentials live here)."""
    sink_batch_size: int = 500
    """TXWATCH_SINK_BATCH_SIZE: alerts written per database transaction."""
    sink_max_backlog: int = 10_000
    """TXWATCH_SINK_MAX_BACKLOG: unwritten alerts held before the flow stops taking input."""
    sink_retry_max_seconds: float = 30.0
    """TXWATCH_SINK_RETRY_MAX_SECONDS: cap of the exponential retry backoff."""

    # --- Input contract ------------------------------------------------------------------------
    default_currency: str = "EUR"
    """TXWATCH_DEFAULT_CURRENCY: currency of messages that carry none."""
    base_currency: str = "EUR"
    """TXWATCH_BASE_CURRENCY: every amount is converted to this before any feature uses it."""
    currency_rates: dict[str, Decimal] = Field(default_factory=lambda: dict(DEFAULT_RATES))
    """TXWATCH_CURRENCY_RATES: JSON object, units of base currency per unit of each currency."""
    max_message_bytes: int = 16_384
    """TXWATCH_MAX_MESSAGE_BYTES: larger messages are dead-lettered."""
    min_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    """TXWATCH_MIN_TIMESTAMP: earliest accepted event time."""
    max_future_seconds: float = 86_400.0
    """TXWATCH_MAX_FUTURE_SECONDS: latest accepted event time, as seconds after now."""
    replay: bool = False
    """TXWATCH_REPLAY: replaying history: timestamp bounds are off."""
    dedupe_horizon_seconds: float = 7 * 86_400.0
    """TXWATCH_DEDUPE_HORIZON_SECONDS: a transaction id seen again for its user within this
    horizon is dropped before it touches any state."""
    dedupe_max_ids: int = Field(default=2_000_000, ge=1)
    """TXWATCH_DEDUPE_MAX_IDS: most transaction ids kept for de-duplication (over all terminal
    shards; about 190 B each): beyond it the oldest go first, so the horizon is the shorter of
    TXWATCH_DEDUPE_HORIZON_SECONDS and this many transactions (5.5 hours at 100/s)."""

    # --- Event time ----------------------------------------------------------------------------
    lateness_seconds: float = 0.25
    """TXWATCH_LATENESS_SECONDS: event-time lateness of the ordering buffers (watermark)."""
    max_hold_seconds: float = 1.0
    """TXWATCH_MAX_HOLD_SECONDS: once the watermark has stood still for this long (wall clock:
    a partition gone quiet), buffered events that have waited this long are released even if
    the watermark has not passed them (live streams with gaps). While the watermark advances,
    only it releases. Large in reproducible runs."""
    logical_shards: int = 16
    """TXWATCH_LOGICAL_SHARDS: fixed number of shards of user ids and terminal ids; results do
    not depend on the number of workers, but change if this changes."""

    # --- Detection -----------------------------------------------------------------------------
    threshold: float = 3.5
    """TXWATCH_THRESHOLD: review threshold of the score (higher means more suspicious)."""
    block_threshold: float = 8.0
    """TXWATCH_BLOCK_THRESHOLD: scores at or above this are severity ``block``."""
    min_history: int = 5
    """TXWATCH_MIN_HISTORY: transactions of a user before their own model is trusted fully."""
    user_model: Literal["hst", "iforest", "zscore"] = "hst"
    """TXWATCH_USER_MODEL: the per-user anomaly model."""
    model_seed: int = 42
    """TXWATCH_MODEL_SEED: seed of every model (same input and seed give the same scores)."""
    user_ttl_seconds: float = 90 * 86_400.0
    """TXWATCH_USER_TTL_SECONDS: idle users are evicted after this much event time."""
    label_horizon_seconds: float = 14 * 86_400.0
    """TXWATCH_LABEL_HORIZON_SECONDS: how long a scored transaction's supervised inputs wait
    for its label; labels later than this still feed terminal risk, not the model."""
    alert_budget_per_1000: float = 6.5
    """TXWATCH_ALERT_BUDGET_PER_1000: ceiling on alerts per 1,000 transactions (held by each
    logical user shard over its own users); a transaction labelled fraud leaves it, so that
    confirmed fraud does not hold back the alerts on the rest."""
    anomaly_path: bool = True
    """TXWATCH_ANOMALY_PATH: once the supervised model scores (20 frauds learnt), the
    label-free decision still alerts: a transaction whose anomaly score clears the threshold
    and a budget of its own is scored by the share of fraud its labels measured among what it
    flagged at that pace (in a run of transactions or not), that margin and that supervised
    probability, if that is higher. Labelled
    behavioural fraud (card testing, takeovers, sprees) stays alerted once labels flow;
    ``0`` scores by the supervised model alone (README, Accuracy)."""

    # --- Metrics, logs, recovery ---------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    """TXWATCH_METRICS_HOST: address of the /metrics, /healthz and /readyz server."""
    metrics_port: int = 9100
    """TXWATCH_METRICS_PORT: port of that server (0 turns it off); one per process."""
    log_format: Literal["text", "json"] = "text"
    """TXWATCH_LOG_FORMAT: ``json`` writes one JSON object per line."""
    log_level: str = "INFO"
    """TXWATCH_LOG_LEVEL: logging level."""
    recovery_dir: str | None = None
    """TXWATCH_RECOVERY_DIR: Bytewax recovery directory (None: no recovery)."""
    snapshot_interval_seconds: float = 30.0
    """TXWATCH_SNAPSHOT_INTERVAL_SECONDS: epoch/snapshot interval when recovery is on (each
    snapshot copies the shards' whole state: see docs/scaling.md for the measured cost)."""
    gc_threshold: int = Field(default=50_000, ge=0)
    """TXWATCH_GC_THRESHOLD: allocations between two young-generation collections of Python's
    cycle collector (Python's default is 700; 0 keeps it). Each event allocates a few dozen
    short-lived objects, so the default collects every few events: 50,000 made replay 6-25 %
    faster at the same peak memory (see docs/benchmarks.md). `txwatch replay` uses
    1,000,000 unless this is set (a batch job: throughput counts, pauses do not)."""
    recovery_partitions: int = 16
    """TXWATCH_RECOVERY_PARTITIONS: recovery partitions ``txwatch cluster`` creates: at least
    the number of workers of the largest cluster you will run."""

    # --- Retention -------------------------------------------------------------------------------
    alerts_retention_days: int = 365
    """TXWATCH_ALERTS_RETENTION_DAYS: alerts (and their audit trail) older than this are pruned."""
    dead_letters_retention_days: int = 14
    """TXWATCH_DEAD_LETTERS_RETENTION_DAYS: stored dead letters (raw payloads) kept this long."""

    # --- Web -------------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    """TXWATCH_WEB_HOST: address of ``txwatch serve``."""
    web_port: int = 8080
    """TXWATCH_WEB_PORT: port of ``txwatch serve``."""
    web_token: SecretStr | None = None
    """TXWATCH_WEB_TOKEN: token required by every page and API call of ``txwatch serve``."""

    @field_validator("default_currency", "base_currency")
    @classmethod
    def _upper(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError(f"not an ISO 4217 code: {v!r}")
        return v.upper()

    def kafka_config(self) -> dict[str, str]:
        """librdkafka configuration for producers and consumers."""
        cfg = {"bootstrap.servers": self.kafka_brokers, **self.kafka_extra_config}
        if self.kafka_password is not None:
            cfg["sasl.password"] = self.kafka_password.get_secret_value()
        return cfg

    def dsn(self) -> str:
        """The database URL, revealed for the client library only."""
        return self.database_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
