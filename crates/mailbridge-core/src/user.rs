//! [`Role`]: what a user may do.

crate::string_enum! {
    /// `admin` manages users, profiles and every mailbox; `user` sees only their own mailboxes.
    Role {
        Admin => "admin",
        User => "user",
    }
}
