-- A message larger than the service's max_message_bytes is stored as its header only:
-- truncated = 1, and size is the whole message's size on the server.
ALTER TABLE emails ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
