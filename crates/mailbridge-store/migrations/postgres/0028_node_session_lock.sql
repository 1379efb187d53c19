-- Whether the node holds a session lock (PostgreSQL; `node_session_lock`, on unless the nodes
-- reach the database through a pooler in transaction mode). Only such a node can be found dead
-- by its session: one without a lock would always look gone.
ALTER TABLE nodes ADD COLUMN session_lock BIGINT NOT NULL DEFAULT 1;
