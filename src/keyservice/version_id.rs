//! Opaque object versions: HMAC of key id and version number under a key only the key
//! service holds, so the driver's SecretProviderClassPodStatus reveals nothing and stays
//! stable across pod and service restarts.

use crate::crypto::{SecretBytes, hmac_sha256};
use crate::kek::Keyring;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

/// The JWK `kid` of a version: the first 22 characters of its object version (88 bits of the
/// HMAC; short enough for token headers). One definition for the provider's JWKs and the
/// `kid` the controller records in status.
pub fn jwk_kid(version_id: &str) -> String {
    version_id.chars().take(22).collect()
}

/// Secret type of the object-version key.
pub const VERSION_KEY_TYPE: &str = "keyward.io/object-version-key";

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
#[error(
    "object-version key (delete its Secret to create a new one; object versions then change once): {0}"
)]
pub struct VersionIdError(#[from] pub crate::wrapped_key::WrappedKeyError);

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

    /// The JWK `kid` pods receive for that version (see [`jwk_kid`]).
    pub fn kid(&self, namespace: &str, name: &str, version: u32) -> String {
        jwk_kid(&self.id(namespace, name, version))
    }

    /// Read the key from Secret `name` in `api`'s namespace (wrapped under the KEK), creating
    /// it once when missing.
    pub async fn load_or_create(
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        keyring: &Keyring,
    ) -> Result<Self, VersionIdError> {
        Ok(Self(
            crate::wrapped_key::load_or_create(api, namespace, name, VERSION_KEY_TYPE, keyring)
                .await?,
        ))
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
