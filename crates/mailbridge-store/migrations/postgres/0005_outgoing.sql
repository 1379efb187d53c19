-- Outgoing mail: each email sent from a mailbox is a record too, with its sending state.

-- pending_send | sending | sent | failed (NULL for incoming mail).
ALTER TABLE emails ADD COLUMN status TEXT;
-- The client's Idempotency-Key: the same key for the same mailbox creates one email only.
ALTER TABLE emails ADD COLUMN idempotency_key TEXT;
ALTER TABLE emails ADD COLUMN send_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE emails ADD COLUMN next_attempt_at BIGINT;
-- The server's words: the final 250 reply when sent, the refusal when not.
ALTER TABLE emails ADD COLUMN send_reply TEXT;
ALTER TABLE emails ADD COLUMN delivered_at BIGINT;
CREATE UNIQUE INDEX emails_idempotency ON emails (mailbox_id, idempotency_key);
CREATE INDEX emails_due ON emails (status, next_attempt_at);
