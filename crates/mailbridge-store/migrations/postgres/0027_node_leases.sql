-- A node's leases run out together, a lease time after its last heartbeat: the time is kept
-- once on the node, not on each of its mailboxes' lease rows, so a renewal rewrites one row
-- however many mailboxes the node works (10,000 rows every few seconds per node before).
ALTER TABLE nodes ADD COLUMN leases_until BIGINT NOT NULL DEFAULT 0;
UPDATE nodes SET leases_until = COALESCE(
    (SELECT MAX(l.expires_at) FROM mailbox_leases l WHERE l.node_id = nodes.id), 0);
-- A lease row now says only who holds the lease (or that it was released, 0); while held its
-- expires_at is the largest value, and the lease is live while its node's leases_until is
-- ahead.
UPDATE mailbox_leases SET expires_at = 9223372036854775807 WHERE expires_at > 0;
