-- Sign-in: pending authorization requests, each mailbox's tokens, and alerts for people.

-- One row per consent page opened; deleted when its callback arrives (single use).
CREATE TABLE oauth_states (
    -- SHA-256 of the state value, hex: the state itself only travels in the browser.
    state_hash     TEXT    PRIMARY KEY NOT NULL,
    mailbox_id     TEXT    NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    user_id        TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- AEAD ciphertext, associated data 'oauth_states/pkce_verifier/<state_hash>'.
    pkce_verifier  BYTEA   NOT NULL,
    expires_at     BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX oauth_states_expires ON oauth_states (expires_at);

CREATE TABLE mailbox_tokens (
    mailbox_id      TEXT    PRIMARY KEY NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    -- The account that consented (checked equal to the mailbox's address).
    account_email   TEXT    NOT NULL,
    -- AEAD ciphertexts, associated data 'mailbox_tokens/<column>/<mailbox_id>'.
    access_token    BYTEA   NOT NULL,
    refresh_token   BYTEA   NOT NULL,
    expires_at      BIGINT  NOT NULL,
    -- Granted scopes, space-separated.
    scopes          TEXT    NOT NULL,
    -- Set when the provider refused the refresh token (invalid_grant): sign in again.
    invalid_since   BIGINT,
    invalid_reason  TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);

CREATE TABLE alerts (
    id            TEXT    PRIMARY KEY NOT NULL,
    mailbox_id    TEXT    REFERENCES mailboxes (id) ON DELETE CASCADE,
    -- The person told: a mailbox's owner, or a profile's owner.
    user_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    -- What to do about it, in words.
    hint          TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    dismissed_at  BIGINT
);
CREATE INDEX alerts_mailbox ON alerts (mailbox_id, created_at);
CREATE INDEX alerts_user ON alerts (user_id, created_at);
