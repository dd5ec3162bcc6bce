//! Opaque object versions: HMAC of key id and version number under a key only the key
//! service holds, so the driver's SecretProviderClassPodStatus reveals nothing and stays
//! stable across pod and service restarts.

use crate::crypto::{KeyContext, SecretBytes, hmac_sha256};
use crate::kek::{KekError, Keyring};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

const ENTRY: &str = "wrapped";

/// The HMAC key for object versions.
#[derive(Clone)]
pub struct VersionIdKey(SecretBytes);

impl std::fmt::Debug for VersionIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VersionIdKey([redacted])")
    }
}

/// Loading or creating the key failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionIdError {
    /// API call failed.
    #[error("object-version key Secret {name}: {source}")]
    Kube {
        /// Secret name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The Secret exists but is unusable.
    #[error(
        "object-version key Secret {name} is unusable: {detail} (delete it to create a new one; object versions then change once)"
    )]
    Corrupt {
        /// Secret name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Unwrapping failed.
    #[error(transparent)]
    Kek(#[from] KekError),
}

impl VersionIdKey {
    /// A fixed key (tests, or a key managed elsewhere).
    pub fn new(key: SecretBytes) -> Self {
        Self(key)
    }

    /// The opaque version of `namespace/name` version `version`.
    pub fn id(&self, namespace: &str, name: &str, version: u32) -> String {
        let mac = hmac_sha256(
            self.0.expose(),
            &[
                b"keyward-object-version-v1",
                namespace.as_bytes(),
                name.as_bytes(),
                &version.to_be_bytes(),
            ],
        );
        hex::encode(&mac[..16])
    }

    /// Read the key from Secret `name` in `api`'s namespace (wrapped under the KEK), creating
    /// it once when missing.
    pub async fn load_or_create(
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        keyring: &Keyring,
    ) -> Result<Self, VersionIdError> {
        let ctx = KeyContext::new(namespace, name, 1);
        let kerr = |source| VersionIdError::Kube {
            name: name.into(),
            source,
        };
        for _ in 0..3 {
            if let Some(s) = api.get_opt(name).await.map_err(kerr)? {
                let bytes = s.data.as_ref().and_then(|d| d.get(ENTRY)).ok_or_else(|| {
                    VersionIdError::Corrupt {
                        name: name.into(),
                        detail: format!("no `{ENTRY}` entry"),
                    }
                })?;
                let env = crate::crypto::Envelope::decode(&bytes.0).map_err(|e| {
                    VersionIdError::Corrupt {
                        name: name.into(),
                        detail: e.to_string(),
                    }
                })?;
                return Ok(Self(keyring.unwrap(&env, &ctx).await?));
            }
            let key = SecretBytes::random(32);
            let env = keyring.wrap(&ctx, &key).await?;
            let encoded = env.encode().map_err(KekError::from)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "keyward".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                type_: Some("keyward.io/object-version-key".into()),
                data: Some([(ENTRY.to_string(), ByteString(encoded))].into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(Self(key)),
                // Another replica created it first: read theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(kerr(e)),
            }
        }
        Err(VersionIdError::Corrupt {
            name: name.into(),
            detail: "created concurrently but still not readable".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_opaque() {
        let k = VersionIdKey::new(SecretBytes::from_slice(&[7; 32]));
        let a = k.id("ns", "db", 1);
        assert_eq!(a, k.id("ns", "db", 1));
        assert_eq!(a.len(), 32);
        assert_ne!(a, k.id("ns", "db", 2));
        assert_ne!(a, k.id("ns2", "db", 1));
        assert_ne!(a, k.id("ns", "db2", 1));
        // Length-prefixed parts: no ambiguity between ("ab","c") and ("a","bc").
        assert_ne!(k.id("ab", "c", 1), k.id("a", "bc", 1));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let other = VersionIdKey::new(SecretBytes::from_slice(&[8; 32]));
        assert_ne!(a, other.id("ns", "db", 1));
        assert_eq!(format!("{k:?}"), "VersionIdKey([redacted])");
    }
}
