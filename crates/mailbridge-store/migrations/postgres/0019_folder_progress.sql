-- How far the last sync pass over a folder is, for the mailbox's status: the messages on the
-- server when the pass began, the messages the pass set out to read, how many it has read, and
-- when it began (the time left is estimated from them).
ALTER TABLE folder_states ADD COLUMN messages BIGINT;
ALTER TABLE folder_states ADD COLUMN pass_total BIGINT;
ALTER TABLE folder_states ADD COLUMN pass_done BIGINT;
ALTER TABLE folder_states ADD COLUMN pass_started_at BIGINT;
