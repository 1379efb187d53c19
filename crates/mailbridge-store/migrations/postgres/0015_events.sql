-- The event log: every change a host application cares about, appended in the transaction
-- that makes the change, so an event exists exactly when its change committed. `seq` is the
-- feed's cursor. A sequence value is taken before commit, so rows could become visible out
-- of order; appends take a transaction-scoped advisory lock right before inserting and hold
-- it to commit, which makes seq order commit order (see `events::append`).
CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    type           TEXT    NOT NULL,
    mailbox_id     TEXT,
    -- Whose it is: the mailbox's owner (or the alert's recipient); users see only their own.
    owner_user_id  TEXT,
    created_at     BIGINT  NOT NULL,
    -- JSON: a small summary of what changed; bodies stay behind the API.
    data           TEXT    NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_owner ON events (owner_user_id, seq);
CREATE INDEX events_mailbox ON events (mailbox_id, seq);

-- How far retention has deleted: a cursor below this names events that are gone.
CREATE TABLE event_log (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT  NOT NULL DEFAULT 0
);
INSERT INTO event_log (id, pruned_through) VALUES (1, 0);
