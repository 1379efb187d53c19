-- Hosted sign-in: a single-use link the host application sends its own user to; the sign-in
-- it starts remembers where to send the user back (one of the allowed return URLs).
CREATE TABLE sign_in_links (
    -- SHA-256 (hex) of the link's token; the token itself is never stored.
    token_hash  TEXT    PRIMARY KEY NOT NULL,
    mailbox_id  TEXT    NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    -- Who made the link (the mailbox's owner or an admin): the sign-in runs as them.
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    return_url  TEXT    NOT NULL,
    expires_at  INTEGER    NOT NULL,
    used_at     INTEGER,
    created_at  INTEGER    NOT NULL
);
CREATE INDEX sign_in_links_expires ON sign_in_links (expires_at);

ALTER TABLE oauth_states ADD COLUMN return_url TEXT;
