-- An email's bodies and its attachments' contents are read from its raw message when asked
-- for, not stored beside it: they doubled what a first sync writes and what the database
-- keeps (2.3 times the raw bytes on the SpamAssassin corpus). The n-th attachment record of
-- an email, by id, is the message's n-th attachment.
ALTER TABLE emails DROP COLUMN text_body;
ALTER TABLE emails DROP COLUMN html_body;
ALTER TABLE attachments DROP COLUMN content;
