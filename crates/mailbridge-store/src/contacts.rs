//! Contacts: the application's email-enabled records, matched by the `known_contacts`
//! tracking rule.

use mailbridge_core::EmailAddress;

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Contact {
    pub email: String,
    pub name: Option<String>,
}

impl Store {
    /// Inserts or updates contacts by address, in one transaction.
    pub async fn upsert_contacts(
        &self,
        contacts: &[(EmailAddress, Option<String>)],
    ) -> Result<usize> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        for (email, name) in contacts {
            sqlx::query(
                "INSERT INTO contacts (email, name, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (email) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
            )
            .bind(email.as_str().to_ascii_lowercase())
            .bind(name.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(contacts.len())
    }

    /// Contacts in address order, after `after`, at most `limit`.
    pub async fn list_contacts(&self, after: Option<&str>, limit: i64) -> Result<Vec<Contact>> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT email, name FROM contacts WHERE email > $1 ORDER BY email LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(email, name)| Contact { email, name })
            .collect())
    }

    pub async fn delete_contact(&self, email: &EmailAddress) -> Result<()> {
        let key = email.as_str().to_ascii_lowercase();
        let done = sqlx::query("DELETE FROM contacts WHERE email = $1")
            .bind(&key)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "contact",
                id: key,
            });
        }
        Ok(())
    }
}
