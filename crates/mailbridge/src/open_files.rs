//! The open-file limit. Every mailbox a node holds keeps a connection to its mail server open
//! (IDLE), and sending or testing opens another for a while: under the usual soft limit of
//! 1,024 a node fails with "too many open files" after a few hundred mailboxes. At start the
//! service raises its soft limit as far as the hard limit allows, and says so clearly when even
//! that is below what the enabled mailboxes may need.

/// Descriptors the service may need with `mailboxes` enabled mailboxes and at most
/// `http_connections` HTTP connections: two per mailbox (its IDLE connection, and one more
/// while it sends or is tested), the HTTP connections, and a margin for the database, the
/// listener and the log.
pub fn needed(mailboxes: u64, http_connections: u64) -> u64 {
    mailboxes
        .saturating_mul(2)
        .saturating_add(http_connections)
        .saturating_add(128)
}

/// Raises the soft open-file limit to the hard limit; the limit now in force.
pub fn raise() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn two_descriptors_per_mailbox_beside_the_http_connections() {
        assert_eq!(needed(0, 1024), 1152);
        assert_eq!(needed(10_000, 1024), 21_152);
        assert_eq!(needed(u64::MAX, 1), u64::MAX);
    }
}
