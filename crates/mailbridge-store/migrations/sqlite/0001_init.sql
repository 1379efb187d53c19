-- Users, email server profiles, mailboxes and the audit log of admin actions.
-- Times are Unix milliseconds (UTC); ids are UUIDv7 text; booleans are 0/1 integers, so the
-- same queries and row types serve SQLite and PostgreSQL.

CREATE TABLE users (
    id          TEXT    PRIMARY KEY NOT NULL,
    email       TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL CHECK (role IN ('admin', 'user')),
    -- SHA-256 of the API token, hex; the token itself is shown once and never stored.
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE server_profiles (
    id                            TEXT    PRIMARY KEY NOT NULL,
    name                          TEXT    NOT NULL UNIQUE,
    owner_user_id                 TEXT    REFERENCES users (id) ON DELETE SET NULL,
    incoming_protocol             TEXT    NOT NULL,
    incoming_host                 TEXT    NOT NULL,
    incoming_port                 INTEGER NOT NULL,
    incoming_security             TEXT    NOT NULL,
    outgoing_host                 TEXT    NOT NULL,
    outgoing_port                 INTEGER NOT NULL,
    outgoing_security             TEXT    NOT NULL,
    auth_method                   TEXT    NOT NULL,
    oauth_client_id               TEXT,
    -- AEAD ciphertext (see crypto.rs), associated data 'server_profiles/oauth_client_secret/<id>'.
    oauth_client_secret           BLOB,
    oauth_authorization_url       TEXT,
    oauth_token_url               TEXT,
    oauth_revocation_url          TEXT,
    oauth_userinfo_url            TEXT,
    -- Space-separated, as in an OAuth scope parameter.
    oauth_scopes                  TEXT,
    max_mailboxes                 INTEGER NOT NULL,
    poll_interval_seconds         INTEGER NOT NULL,
    process_emails_received_after TEXT,
    created_at                    INTEGER NOT NULL,
    updated_at                    INTEGER NOT NULL
);

CREATE TABLE mailboxes (
    id               TEXT    PRIMARY KEY NOT NULL,
    owner_user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    email            TEXT    NOT NULL UNIQUE,
    profile_id       TEXT    NOT NULL REFERENCES server_profiles (id) ON DELETE RESTRICT,
    incoming_method  TEXT    NOT NULL,
    outgoing_method  TEXT    NOT NULL,
    tracking_rule    TEXT    NOT NULL,
    incoming_status  TEXT    NOT NULL DEFAULT 'not_run',
    outgoing_status  TEXT    NOT NULL DEFAULT 'not_run',
    enabled          INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX mailboxes_profile ON mailboxes (profile_id);
CREATE INDEX mailboxes_owner ON mailboxes (owner_user_id);

CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    -- The acting user's id, or NULL for the command line.
    actor_user_id  TEXT,
    -- The acting user's email at the time, or 'cli'.
    actor          TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    target_kind    TEXT    NOT NULL,
    target_id      TEXT    NOT NULL,
    -- JSON; never holds a secret.
    detail         TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
