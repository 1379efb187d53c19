-- An alert about a whole server profile (more than half of its mailboxes failing) names the
-- profile, so each profile's alert is raised, found and dismissed on its own.
ALTER TABLE alerts ADD COLUMN profile_id TEXT REFERENCES server_profiles (id) ON DELETE CASCADE;
CREATE INDEX alerts_profile ON alerts (profile_id);
