-- When the mailbox was last known current: a sync pass that ended without error, new mail or
-- not (written by the node that works it, in batches).
ALTER TABLE mailboxes ADD COLUMN current_at BIGINT;
