-- The whole mailbox: which folders a profile (and a mailbox) synchronizes besides INBOX and
-- Sent (a JSON array of names), and whether Mailbridge files a copy of what it sends in Sent (servers other
-- than Gmail do not do it themselves).
ALTER TABLE server_profiles ADD COLUMN folders TEXT;
ALTER TABLE mailboxes ADD COLUMN folders TEXT;
ALTER TABLE server_profiles ADD COLUMN append_sent INTEGER NOT NULL DEFAULT 1;
UPDATE server_profiles SET append_sent = 0 WHERE auth_method = 'gmail_oauth';
-- A message's flags on the server (\Seen \Flagged \Answered \Draft, space-separated), and
-- when the server stopped having it (expunged, or on Gmail in no synchronized folder).
ALTER TABLE emails ADD COLUMN flags TEXT;
ALTER TABLE emails ADD COLUMN deleted_on_server_at INTEGER;
-- A folder that failed on its last pass: why, and since when; the other folders go on.
ALTER TABLE folder_states ADD COLUMN error TEXT;
ALTER TABLE folder_states ADD COLUMN failing_since INTEGER;
-- Answers found before the message they answer (Sent is read before INBOX): the message
-- joins their conversation, looked up by the id it answers.
CREATE INDEX emails_in_reply_to ON emails (mailbox_id, in_reply_to) WHERE in_reply_to IS NOT NULL;
