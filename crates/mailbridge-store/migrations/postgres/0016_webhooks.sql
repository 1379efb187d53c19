-- Webhooks: endpoints the admins register, one delivery per (endpoint, event) — made from the
-- event log by a dispatcher that follows it with a cursor per endpoint — and every attempt to
-- deliver it, recorded.

CREATE TABLE webhook_endpoints (
    id                    TEXT    PRIMARY KEY NOT NULL,
    url                   TEXT    NOT NULL,
    description           TEXT,
    -- JSON arrays; NULL means every event type / every mailbox.
    event_types           TEXT,
    mailbox_ids           TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1,
    -- Why it was disabled by Mailbridge (410 Gone, failing for days), for the console.
    disabled_reason       TEXT,
    -- AEAD ciphertexts, associated data 'webhook_endpoints/<column>/<id>'.
    secret                BYTEA   NOT NULL,
    -- The secret before the last rotation: it signs beside the new one until this time.
    previous_secret       BYTEA,
    previous_secret_until BIGINT,
    -- The event log position up to which deliveries were made for this endpoint.
    cursor                BIGINT    NOT NULL,
    -- When its current run of failed attempts began (NULL after a success).
    failing_since         BIGINT,
    created_by            TEXT,
    created_at            BIGINT    NOT NULL,
    updated_at            BIGINT    NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY NOT NULL,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The event's id: webhook-id on every attempt.
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    -- The body, exactly as signed and sent (the same on every attempt).
    payload         TEXT    NOT NULL,
    -- pending | delivered | failed
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    -- A node sending it now, until when (another takes it over after that).
    claimed_by      TEXT,
    claimed_until   BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      BIGINT    NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    id               TEXT    PRIMARY KEY NOT NULL,
    delivery_id      TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    node             TEXT,
    attempted_at     BIGINT    NOT NULL,
    duration_ms      BIGINT    NOT NULL,
    -- The answer's status, or NULL when there was none (the error says why).
    status_code      INTEGER,
    error            TEXT,
    -- The first few hundred characters of the answer.
    response_excerpt TEXT,
    next_attempt_at  BIGINT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at);
