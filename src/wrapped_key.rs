//! Small random keys the controller and key service share (object-version HMAC key, stored
//! state MAC key), kept in a Secret in the controller's namespace wrapped under the KEK, so
//! whoever reads that Secret without the KEK learns nothing, and every replica derives the
//! same key.

use crate::crypto::{Envelope, KeyContext, SecretBytes};
use crate::kek::{KekError, Keyring};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

const ENTRY: &str = "wrapped";
const KEY_LEN: usize = 32;

/// Loading or creating a wrapped key failed.
#[derive(Debug, thiserror::Error)]
pub enum WrappedKeyError {
    /// API call failed.
    #[error("key Secret {name}: {source}")]
    Kube {
        /// Secret name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The Secret exists but is unusable.
    #[error("key Secret {name} is unusable: {detail}")]
    Corrupt {
        /// Secret name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Wrapping or unwrapping failed.
    #[error(transparent)]
    Kek(#[from] KekError),
}

/// Read the 32-byte key in Secret `namespace/name` (type `secret_type`), unwrapping it with
/// `keyring`; create it once when missing (a concurrent creator wins and is read back).
pub async fn load_or_create(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    secret_type: &str,
    keyring: &Keyring,
) -> Result<SecretBytes, WrappedKeyError> {
    let ctx = KeyContext::new(namespace, name, 1);
    let kerr = |source| WrappedKeyError::Kube {
        name: name.into(),
        source,
    };
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await.map_err(kerr)? {
            if s.type_.as_deref() != Some(secret_type) {
                return Err(WrappedKeyError::Corrupt {
                    name: name.into(),
                    detail: format!("type is {:?}, expected {secret_type}", s.type_),
                });
            }
            let bytes = s.data.as_ref().and_then(|d| d.get(ENTRY)).ok_or_else(|| {
                WrappedKeyError::Corrupt {
                    name: name.into(),
                    detail: format!("no `{ENTRY}` entry"),
                }
            })?;
            let env = Envelope::decode(&bytes.0).map_err(|e| WrappedKeyError::Corrupt {
                name: name.into(),
                detail: e.to_string(),
            })?;
            let key = keyring.unwrap(&env, &ctx).await?;
            // Every key this module creates is 32 bytes; anything else is not one of ours.
            if key.len() != KEY_LEN {
                return Err(WrappedKeyError::Corrupt {
                    name: name.into(),
                    detail: format!("holds a {}-byte key, expected {KEY_LEN}", key.len()),
                });
            }
            return Ok(key);
        }
        let key = SecretBytes::random(KEY_LEN);
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
            type_: Some(secret_type.into()),
            data: Some([(ENTRY.to_string(), ByteString(encoded))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(key),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kerr(e)),
        }
    }
    Err(WrappedKeyError::Corrupt {
        name: name.into(),
        detail: "created concurrently but still not readable".into(),
    })
}
