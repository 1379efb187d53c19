-- A mailbox whose provider said it is over a limit (Gmail: "[OVERQUOTA] Account exceeded
-- command or bandwidth limits") waits until this time, without counting as failing.
ALTER TABLE mailboxes ADD COLUMN paused_until INTEGER;
