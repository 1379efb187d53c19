-- Console sign-in sessions. The session id travels only in the browser's cookie; the row
-- keeps its SHA-256, so a copy of the database cannot be used to sign in.
CREATE TABLE console_sessions (
    id_hash     TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
