-- PostgreSQL's migration 0030 deletes a deleted mailbox's emails by a trigger, since its
-- emails have no foreign key to their mailbox (0029). SQLite's key still cascades. Nothing to
-- do here.
SELECT 1;
