//! Where wrapped versions live: one Secret per ManagedKey, owned by it, of type
//! `keyward.io/wrapped-key`.
//!
//! Data entries: `v<N>` holds version N's envelope; `state.json` holds the version metadata
//! and handled requests ([`StoredState`]). Both change in one write, so the Secret is the
//! single source of truth and status is only a projection of it: a crash between writing the
//! Secret and writing status converges on the next reconcile without a second new version.

use crate::crd::ManagedKey;
use crate::crypto::{Envelope, KeyContext, SecretBytes};
use crate::kek::{KekError, Keyring};
use crate::rotation::StoredState;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, ObjectMeta, PostParams};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Secret type for keyward storage.
pub const SECRET_TYPE: &str = "keyward.io/wrapped-key";
/// Label naming the owning ManagedKey.
pub const KEY_LABEL: &str = "keyward.io/managed-key";
const STATE_ENTRY: &str = "state.json";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// API call failed (including 409 conflicts: re-read and re-plan).
    #[error("storage Secret {name}: {source}")]
    Kube {
        /// Secret name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The Secret exists but is not ours or is damaged.
    #[error("storage Secret {name} is unusable: {detail}")]
    Corrupt {
        /// Secret name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Version material is missing or cannot be unwrapped.
    #[error("version {version} of {key}: {detail}")]
    Material {
        /// `namespace/name`.
        key: String,
        /// Version.
        version: u32,
        /// What failed.
        detail: String,
    },
    /// The KEK backend failed.
    #[error(transparent)]
    Kek(#[from] KekError),
}

/// Name of the storage Secret for a ManagedKey name (stays within 253 characters).
pub fn secret_name(key_name: &str) -> String {
    let n = format!("{key_name}.keyward-versions");
    if n.len() <= 253 {
        n
    } else {
        let h = hex::encode(&Sha256::digest(key_name.as_bytes())[..8]);
        format!("{}-{h}.keyward-versions", &key_name[..200])
    }
}

/// A ManagedKey's stored versions as read from the API.
#[derive(Clone, Default)]
pub struct Stored {
    /// Metadata and handled requests.
    pub state: StoredState,
    /// Envelope bytes by version.
    pub envelopes: BTreeMap<u32, Vec<u8>>,
    /// resourceVersion of the Secret, for optimistic concurrency (None = not created yet).
    pub resource_version: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("versions", &self.state.versions.len())
            .field("envelopes", &self.envelopes.keys().collect::<Vec<_>>())
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

/// Parse a storage Secret.
pub fn parse(secret: &Secret) -> Result<Stored, StorageError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(StorageError::Corrupt {
            name,
            detail: format!(
                "type is {:?}, expected {SECRET_TYPE}; rename or delete the conflicting Secret",
                secret.type_
            ),
        });
    }
    let data = secret.data.clone().unwrap_or_default();
    let state: StoredState = match data.get(STATE_ENTRY) {
        Some(b) => serde_json::from_slice(&b.0).map_err(|e| StorageError::Corrupt {
            name: name.clone(),
            detail: format!("{STATE_ENTRY}: {e}"),
        })?,
        None => StoredState::default(),
    };
    let mut envelopes = BTreeMap::new();
    for (k, v) in data {
        if let Some(n) = k.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
            envelopes.insert(n, v.0);
        }
    }
    Ok(Stored {
        state,
        envelopes,
        resource_version: secret.metadata.resource_version.clone(),
    })
}

/// Read a ManagedKey's storage (empty when the Secret does not exist yet).
pub async fn load(api: &Api<Secret>, key_name: &str) -> Result<Stored, StorageError> {
    let name = secret_name(key_name);
    match api.get_opt(&name).await {
        Ok(Some(s)) => parse(&s),
        Ok(None) => Ok(Stored::default()),
        Err(source) => Err(StorageError::Kube { name, source }),
    }
}

/// Write storage with optimistic concurrency: create when new, replace at the read
/// resourceVersion otherwise. A 409 means someone else wrote first: re-read and re-plan.
pub async fn save(
    api: &Api<Secret>,
    mk: &ManagedKey,
    stored: &Stored,
) -> Result<String, StorageError> {
    let key_name = mk.metadata.name.clone().unwrap_or_default();
    let name = secret_name(&key_name);
    let mut data: BTreeMap<String, ByteString> = stored
        .envelopes
        .iter()
        .map(|(v, b)| (format!("v{v}"), ByteString(b.clone())))
        .collect();
    data.insert(
        STATE_ENTRY.into(),
        ByteString(serde_json::to_vec(&stored.state).expect("state serializes")),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: mk.metadata.namespace.clone(),
            labels: Some(
                [
                    (KEY_LABEL.to_string(), key_name),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "keyward".to_string(),
                    ),
                ]
                .into(),
            ),
            owner_references: mk.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: stored.resource_version.clone(),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    };
    let r = if stored.resource_version.is_some() {
        api.replace(&name, &PostParams::default(), &secret).await
    } else {
        api.create(&PostParams::default(), &secret).await
    };
    r.map(|s| s.metadata.resource_version.unwrap_or_default())
        .map_err(|source| StorageError::Kube { name, source })
}

/// Unwrap one version's material.
pub async fn unwrap_version(
    keyring: &Keyring,
    stored: &Stored,
    namespace: &str,
    name: &str,
    version: u32,
) -> Result<SecretBytes, StorageError> {
    let key = format!("{namespace}/{name}");
    let bytes = stored
        .envelopes
        .get(&version)
        .ok_or_else(|| StorageError::Material {
            key: key.clone(),
            version,
            detail: "no material stored (destroyed or never written)".into(),
        })?;
    let env = Envelope::decode(bytes).map_err(|e| StorageError::Material {
        key: key.clone(),
        version,
        detail: e.to_string(),
    })?;
    Ok(keyring
        .unwrap(&env, &KeyContext::new(namespace, name, version))
        .await?)
}
