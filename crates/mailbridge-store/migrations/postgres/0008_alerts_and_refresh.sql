-- An alert about a whole server profile (more than half of its mailboxes failing) names the
-- profile, so each profile's alert is raised, found and dismissed on its own.
ALTER TABLE alerts ADD COLUMN profile_id TEXT REFERENCES server_profiles (id) ON DELETE CASCADE;
CREATE INDEX alerts_profile ON alerts (profile_id);

-- One token refresh per mailbox across nodes: a node claims the refresh until this time
-- (so a node that dies mid-refresh holds it only briefly); the others wait for its result.
ALTER TABLE mailbox_tokens ADD COLUMN refreshing_until BIGINT;
