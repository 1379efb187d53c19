-- Sending limits per mailbox, set on its profile: how many emails may wait to be sent, and how
-- many may be queued within 24 hours (Gmail suspends an account's sending for a day past 500).
ALTER TABLE server_profiles ADD COLUMN daily_send_limit BIGINT NOT NULL DEFAULT 10000;
ALTER TABLE server_profiles ADD COLUMN max_queued_emails BIGINT NOT NULL DEFAULT 1000;
UPDATE server_profiles SET daily_send_limit = 500 WHERE auth_method = 'gmail_oauth';
-- Counting a mailbox's outgoing mail (waiting, or queued today) reads only its outgoing rows.
CREATE INDEX emails_outgoing ON emails (mailbox_id, created_at) WHERE direction = 'outgoing';
