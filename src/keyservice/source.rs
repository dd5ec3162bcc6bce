//! Where the key service reads ManagedKeys, their storage and their policy.

use crate::crd::{ManagedKey, RotationPolicy};
use crate::duration::Duration;
use crate::rotation::{DEFAULT_GRACE, Policy};
use crate::storage::{self, StorageError, StorageLocation, Stored};
use kube::api::Api;

/// One key as the key service needs it.
#[derive(Clone)]
pub struct KeyRecord {
    /// The ManagedKey object.
    pub key: ManagedKey,
    /// Its stored versions and envelopes.
    pub stored: Stored,
    /// Grace period of its policy (default 7 days without one).
    pub grace: Duration,
}

/// Reads keys; the Kubernetes implementation is [`ApiKeySource`].
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key `namespace/name`, or None when the ManagedKey does not exist.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<KeyRecord>, SourceError>;
}

/// Reading a key failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// API call failed.
    #[error("reading ManagedKey {key}: {source}")]
    Kube {
        /// `namespace/name`.
        key: String,
        /// Cause.
        source: kube::Error,
    },
    /// Storage Secret unreadable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The source cannot answer with current data now (a watch cache not yet synced, or one
    /// whose watch failed): refused rather than answered from possibly stale data.
    #[error("{0}")]
    Unavailable(String),
}

/// Direct reads from the API server: one GET of the ManagedKey, its storage Secret and its
/// policy per key per Mount, so a revocation is effective on the next Mount.
pub struct ApiKeySource {
    client: kube::Client,
    storage: StorageLocation,
}

impl ApiKeySource {
    /// Reads with `client`'s credentials (needs `get` on managedkeys and rotationpolicies, and
    /// on Secrets only in the controller's namespace, where storage lives).
    pub fn new(client: kube::Client, storage: StorageLocation) -> Self {
        Self { client, storage }
    }
}

#[async_trait::async_trait]
impl KeySource for ApiKeySource {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<KeyRecord>, SourceError> {
        let kerr = |source| SourceError::Kube {
            key: format!("{namespace}/{name}"),
            source,
        };
        let keys: Api<ManagedKey> = Api::namespaced(self.client.clone(), namespace);
        let Some(key) = keys.get_opt(name).await.map_err(kerr)? else {
            return Ok(None);
        };
        // Authenticated and checked against the generation the controller recorded: an
        // edited or rolled-back copy is refused, never served.
        let min_generation = key
            .status
            .as_ref()
            .and_then(|s| s.storage_generation)
            .unwrap_or(0);
        let id = storage::KeyIdentity::of(&key);
        let stored_f = storage::load(&self.storage, &self.client, &id, min_generation);
        let grace_f = async {
            match &key.spec.policy_ref {
                None => Ok(DEFAULT_GRACE),
                Some(r) => {
                    let pols: Api<RotationPolicy> = Api::namespaced(self.client.clone(), namespace);
                    // A missing or invalid policy falls back to the default grace period, as
                    // the controller's planner does.
                    Ok(pols
                        .get_opt(&r.name)
                        .await
                        .map_err(kerr)?
                        .and_then(|p| Policy::from_spec(&p.spec).ok())
                        .map_or(DEFAULT_GRACE, |p| p.grace))
                }
            }
        };
        let (stored, grace) =
            futures::try_join!(async { stored_f.await.map_err(SourceError::from) }, grace_f)?;
        Ok(Some(KeyRecord { key, stored, grace }))
    }
}
