-- Alert review (issue 8): indexes behind the review list's sorts and filters, and the outbox of
-- messages (labels, controls) that analysts' actions publish to Kafka.
--
-- The list pages by keyset over (sort column DESC, transaction_id), the shape of
-- alerts_event_time_idx in 0001; these add the same shape for the other sort columns. Alerts are
-- a small share of transactions, so the extra write cost for the sink is small.
CREATE INDEX IF NOT EXISTS alerts_score_idx ON alerts (score DESC, transaction_id);
CREATE INDEX IF NOT EXISTS alerts_amount_idx ON alerts (amount_base DESC, transaction_id);
-- Reason-code filter: reasons @> '[{"code": "..."}]'.
CREATE INDEX IF NOT EXISTS alerts_reasons_idx ON alerts USING gin (reasons jsonb_path_ops);

-- Transactional outbox: a review and the message announcing it commit together; a background
-- task of `txwatch serve` publishes pending rows and marks them sent (at-least-once: a message
-- whose delivery report was lost can be sent twice; consumers key on transaction_id / target).
CREATE TABLE IF NOT EXISTS outbox (
    id          BIGSERIAL PRIMARY KEY,
    topic       TEXT NOT NULL,
    key         TEXT,
    payload     TEXT NOT NULL,
    ref         TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
COMMENT ON COLUMN outbox.payload IS 'the message value exactly as published (UTF-8 JSON)';
COMMENT ON COLUMN outbox.ref IS 'what the message is about: a transaction id or snooze:<id>';
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_ref_idx ON outbox (ref, id);
CREATE INDEX IF NOT EXISTS outbox_sent_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
