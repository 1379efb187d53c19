-- max_connections now counts IDLE sessions too (one per mailbox that waits for new mail), not
-- only sync passes. Profiles left at the old default of 10 get room for one session per
-- mailbox plus 10, so their mailboxes keep idling instead of falling back to polling.
UPDATE server_profiles SET max_connections = max_mailboxes + 10 WHERE max_connections = 10;
