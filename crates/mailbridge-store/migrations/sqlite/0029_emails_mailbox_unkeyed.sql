-- PostgreSQL's migration 0029 drops the foreign key from emails to their mailbox (checked row
-- by row there, it slowed a first sync). SQLite keeps it: its check is a lookup in the same
-- process, and dropping it would mean rebuilding the table. Nothing to do here.
SELECT 1;
