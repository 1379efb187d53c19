-- When a mailbox's current run of failed sync passes began (NULL while it syncs): when most of
-- a profile's mailboxes are failing at once, the server is down, and none is disabled for it.
ALTER TABLE mailboxes ADD COLUMN failing_since BIGINT;
