-- Test & Enable: each direction's last result with the reason and what to do, and the
-- settings it needs: a profile's connection limit, and password logins per mailbox.

ALTER TABLE server_profiles ADD COLUMN max_connections INTEGER NOT NULL DEFAULT 10;

ALTER TABLE mailboxes ADD COLUMN login_name TEXT;
-- AEAD ciphertext, associated data 'mailboxes/password/<id>'.
ALTER TABLE mailboxes ADD COLUMN password BLOB;
ALTER TABLE mailboxes ADD COLUMN incoming_status_reason TEXT;
ALTER TABLE mailboxes ADD COLUMN incoming_status_hint TEXT;
ALTER TABLE mailboxes ADD COLUMN incoming_tested_at INTEGER;
ALTER TABLE mailboxes ADD COLUMN outgoing_status_reason TEXT;
ALTER TABLE mailboxes ADD COLUMN outgoing_status_hint TEXT;
ALTER TABLE mailboxes ADD COLUMN outgoing_tested_at INTEGER;
