-- Several nodes share the mailboxes: each node registers itself and works a mailbox only
-- while it holds that mailbox's lease.

-- email_router delivery: the node group whose nodes work this mailbox.
ALTER TABLE mailboxes ADD COLUMN router_group TEXT;

CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    node_group    TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    -- A draining node releases its leases and takes no new ones.
    draining      INTEGER NOT NULL DEFAULT 0,
    -- Set when the node stopped cleanly (its leases were released at once).
    stopped_at    INTEGER
);
CREATE INDEX nodes_name ON nodes (name);

CREATE TABLE mailbox_leases (
    mailbox_id  TEXT PRIMARY KEY REFERENCES mailboxes (id) ON DELETE CASCADE,
    node_id     TEXT NOT NULL,
    -- Fencing token: grows with every new holder. A write for the mailbox's sync commits only
    -- while the writer's epoch is still the lease's, and the lease has not expired.
    epoch       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX mailbox_leases_node ON mailbox_leases (node_id);

-- Which node stored an email, and which node is sending one.
ALTER TABLE emails ADD COLUMN stored_by TEXT;
ALTER TABLE emails ADD COLUMN sending_node TEXT;
