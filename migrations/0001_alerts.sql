-- Alerts raised by the dataflow; review fields belong to analysts and are never touched by the
-- detector's upserts.
CREATE TABLE IF NOT EXISTS alerts (
    transaction_id   TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    amount           NUMERIC(18, 4) NOT NULL,
    currency         CHAR(3) NOT NULL,
    amount_base      NUMERIC(18, 4) NOT NULL,
    merchant_id      TEXT,
    terminal_id      TEXT,
    merchant_category TEXT,
    country          CHAR(2),
    channel          TEXT,
    score            DOUBLE PRECISION NOT NULL,
    threshold        DOUBLE PRECISION NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('review', 'block')),
    reasons          JSONB NOT NULL DEFAULT '[]'::jsonb,
    features         JSONB NOT NULL DEFAULT '{}'::jsonb,
    components       JSONB NOT NULL DEFAULT '{}'::jsonb,
    model_version    TEXT NOT NULL,
    worker           TEXT NOT NULL,
    detected_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    status           TEXT NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'confirmed', 'false_positive', 'escalated')),
    reviewed_at      TIMESTAMPTZ,
    reviewer         TEXT,
    review_note      TEXT
);

CREATE INDEX IF NOT EXISTS alerts_event_time_idx ON alerts (event_time DESC, transaction_id);
CREATE INDEX IF NOT EXISTS alerts_user_idx ON alerts (user_id, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_status_idx ON alerts (status, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_severity_idx ON alerts (severity, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_terminal_idx ON alerts (terminal_id, event_time DESC);
CREATE INDEX IF NOT EXISTS alerts_detected_idx ON alerts (detected_at DESC);

-- Every change an analyst makes to an alert, kept for audit.
CREATE TABLE IF NOT EXISTS alert_reviews (
    id              BIGSERIAL PRIMARY KEY,
    transaction_id  TEXT NOT NULL REFERENCES alerts (transaction_id) ON DELETE CASCADE,
    status          TEXT NOT NULL
                    CHECK (status IN ('open', 'confirmed', 'false_positive', 'escalated')),
    reviewer        TEXT NOT NULL,
    note            TEXT,
    reviewed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alert_reviews_tx_idx ON alert_reviews (transaction_id, reviewed_at);
CREATE INDEX IF NOT EXISTS alert_reviews_time_idx ON alert_reviews (reviewed_at);

-- Snoozes: no alert for a user or terminal until the snooze ends.
CREATE TABLE IF NOT EXISTS snoozes (
    id          BIGSERIAL PRIMARY KEY,
    scope       TEXT NOT NULL CHECK (scope IN ('user', 'terminal')),
    target      TEXT NOT NULL,
    until       TIMESTAMPTZ NOT NULL,
    reviewer    TEXT NOT NULL,
    note        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS snoozes_target_idx ON snoozes (scope, target, until DESC);
