-- What the foreign key's cascade did before migration 0029, kept in the schema rather than in
-- one code path: deleting a mailbox deletes its emails (their attachments follow by their own
-- key), whoever deletes it — `Store::delete_mailbox`, a node of an older version, or a DELETE
-- typed by hand. Once per deleted mailbox, nothing per email added. The trigger's DELETE runs
-- after the mailbox's row is deleted, with a snapshot of its own (a volatile function, read
-- committed): it sees the emails of a transaction the deletion waited for.
CREATE FUNCTION delete_mailbox_emails() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM emails WHERE mailbox_id = OLD.id;
    RETURN OLD;
END
$$;
CREATE TRIGGER mailboxes_delete_emails AFTER DELETE ON mailboxes
    FOR EACH ROW EXECUTE FUNCTION delete_mailbox_emails();
