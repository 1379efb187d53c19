-- Emails each mailbox of a profile sends per minute at most (0: no limit); Microsoft 365
-- takes 30 a minute over SMTP AUTH.
ALTER TABLE server_profiles ADD COLUMN sends_per_minute INTEGER NOT NULL DEFAULT 0;
