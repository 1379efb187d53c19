-- Indexes over columns that only some emails have: leave the others out. Incoming mail has no
-- tracking token, idempotency key or send state, and only Gmail mail has a thread id; indexing
-- their NULLs cost four of the ten index writes of every synced message.
-- (A query on `col = …` or `col IN (…)` implies `col IS NOT NULL`, so both databases still
-- use these indexes.)
DROP INDEX emails_tracking_token;
CREATE UNIQUE INDEX emails_tracking_token ON emails (tracking_token) WHERE tracking_token IS NOT NULL;
DROP INDEX emails_gmail_thread;
CREATE INDEX emails_gmail_thread ON emails (mailbox_id, gmail_thread_id) WHERE gmail_thread_id IS NOT NULL;
DROP INDEX emails_idempotency;
CREATE UNIQUE INDEX emails_idempotency ON emails (mailbox_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX emails_due;
CREATE INDEX emails_due ON emails (status, next_attempt_at) WHERE status IS NOT NULL;
