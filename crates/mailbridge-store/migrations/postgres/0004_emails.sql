-- Email records, their attachments, where each folder's sync stands, and the application's
-- contacts (for the known_contacts tracking rule).

CREATE TABLE emails (
    id              TEXT    PRIMARY KEY NOT NULL,
    mailbox_id      TEXT    NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    direction       TEXT    NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
    -- The message's identity on its server: 'gmail/<X-GM-MSGID>', 'imap/<folder>/<uidvalidity>/<uid>',
    -- 'pop3/<UIDL>'; 'out/<id>' for mail sent from here.
    remote_key      TEXT    NOT NULL,
    -- SHA-256 of the raw bytes, hex: after a UIDVALIDITY change, a message read again under
    -- its new UID is matched to its record by this and re-keyed, not stored twice.
    content_sha256  TEXT    NOT NULL,
    folder          TEXT,
    uid             BIGINT,
    gmail_labels    TEXT,
    message_id      TEXT,
    in_reply_to     TEXT,
    -- Space-separated message ids of the References header.
    references_ids  TEXT,
    subject         TEXT,
    from_address    TEXT,
    from_name       TEXT,
    to_json         TEXT    NOT NULL DEFAULT '[]',
    cc_json         TEXT    NOT NULL DEFAULT '[]',
    sent_at         BIGINT,
    text_body       TEXT,
    html_body       TEXT,
    raw             BYTEA   NOT NULL,
    size            BIGINT  NOT NULL,
    -- Set when the message could not be parsed: it is kept raw and flagged.
    parse_error     TEXT,
    conversation_id TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    UNIQUE (mailbox_id, remote_key)
);
CREATE INDEX emails_mailbox ON emails (mailbox_id, id);
CREATE INDEX emails_message_id ON emails (message_id);
CREATE INDEX emails_conversation ON emails (conversation_id);
CREATE INDEX emails_content ON emails (mailbox_id, content_sha256);

CREATE TABLE attachments (
    id            TEXT    PRIMARY KEY NOT NULL,
    email_id      TEXT    NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    filename      TEXT,
    content_type  TEXT    NOT NULL,
    size          BIGINT  NOT NULL,
    content       BYTEA   NOT NULL
);
CREATE INDEX attachments_email ON attachments (email_id);

CREATE TABLE folder_states (
    mailbox_id      TEXT    NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    folder          TEXT    NOT NULL,
    uid_validity    BIGINT  NOT NULL,
    last_uid        BIGINT  NOT NULL,
    highest_modseq  BIGINT,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (mailbox_id, folder)
);

-- POP3 has no UIDs to count up: the UIDLs already processed, kept or not.
CREATE TABLE pop3_seen (
    mailbox_id  TEXT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uidl        TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, uidl)
);

CREATE TABLE contacts (
    email       TEXT    PRIMARY KEY NOT NULL,
    name        TEXT,
    updated_at  BIGINT  NOT NULL
);

ALTER TABLE mailboxes ADD COLUMN last_sync_at BIGINT;
ALTER TABLE mailboxes ADD COLUMN items_processed BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE mailboxes ADD COLUMN items_failed BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE mailboxes ADD COLUMN last_sync_error TEXT;
