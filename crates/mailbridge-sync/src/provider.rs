//! The OAuth client of a mailbox's profile.

use mailbridge_core::ProfileId;
use mailbridge_oauth::Provider;
use mailbridge_store::{Store, StoreError};

/// The profile's OAuth client, or `None` when the profile authenticates with passwords.
pub(crate) async fn for_profile(
    store: &Store,
    http: &reqwest::Client,
    profile: ProfileId,
    redirect_uri: &str,
) -> Result<Option<Provider>, StoreError> {
    let record = store.get_profile(profile).await?;
    let Some(settings) = record.spec.oauth else {
        return Ok(None);
    };
    let secret = store.profile_client_secret(profile).await?;
    Ok(Some(Provider::new(
        http.clone(),
        record.spec.auth,
        settings,
        secret,
        redirect_uri.to_owned(),
    )))
}
