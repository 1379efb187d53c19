-- How a reply finds its conversation beyond In-Reply-To/References.

-- Outgoing mail: the token put in its subject ("[MB-7K3QZ9PA]"); a reply whose subject
-- carries it joins the conversation even when its client dropped the reply headers.
ALTER TABLE emails ADD COLUMN tracking_token TEXT;
-- Gmail: the conversation (X-GM-THRID) Gmail filed the message under.
ALTER TABLE emails ADD COLUMN gmail_thread_id TEXT;
CREATE UNIQUE INDEX emails_tracking_token ON emails (tracking_token);
CREATE INDEX emails_gmail_thread ON emails (mailbox_id, gmail_thread_id);
