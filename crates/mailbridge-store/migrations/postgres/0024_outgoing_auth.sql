-- How mailboxes log in to the outgoing server: 'mailbox' (their own login, as before) or
-- 'none' (a relay that accepts mail from this service without a login).
ALTER TABLE server_profiles ADD COLUMN outgoing_authentication TEXT NOT NULL DEFAULT 'mailbox';
