-- A raw message (compressed by zstd, not again by PostgreSQL: 0023) stays in its row up to
-- about a page, instead of going to the TOAST table whenever its row passes 2 KB: most mail
-- compresses to a few KB, and each out-of-line value cost a TOAST row and a TOAST index entry
-- of its own (about a tenth of the server's CPU in bench/first-sync). Larger messages still go
-- to TOAST; rows stored before stay where they are. SQLite keeps a row's bytes in its own
-- pages already (overflow pages of the same b-tree), so it has no counterpart to this.
ALTER TABLE emails SET (toast_tuple_target = 8160);
