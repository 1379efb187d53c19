-- A first sync adds thousands of emails a second, and PostgreSQL checked this foreign key row
-- by row: a lookup of the mailbox and a lock on its row for each email, about 5 µs, an eighth
-- of the emails' INSERT (the README's Benchmark). What it guaranteed holds without it: each
-- transaction that adds emails also locks its mailbox's row (the send queue `FOR UPDATE`, a
-- sync batch by updating the mailbox's counters, refused when the mailbox is gone), and
-- deleting a mailbox deletes its emails after its row (`Store::delete_mailbox`), so no email
-- is left without its mailbox.
ALTER TABLE emails DROP CONSTRAINT emails_mailbox_id_fkey;
