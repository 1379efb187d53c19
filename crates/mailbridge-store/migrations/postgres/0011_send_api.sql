-- The send API: what an outgoing email goes to is kept as the application gave it, not read
-- back from the message (a bcc is never written into the message), and the fingerprint of the
-- request that queued it, so a reused Idempotency-Key with a different email is refused.

-- JSON array of parties: the blind copies.
ALTER TABLE emails ADD COLUMN bcc_json TEXT;
-- JSON array of addresses: every RCPT TO (to, cc and bcc).
ALTER TABLE emails ADD COLUMN envelope_json TEXT;
-- SHA-256 (hex) over the request's content.
ALTER TABLE emails ADD COLUMN request_sha256 TEXT;
