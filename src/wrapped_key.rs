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

/// The 32-byte key `secret` holds, unwrapped as Secret `namespace/name` (the wrap is bound
/// to both: a copy under another name or namespace does not unwrap).
pub async fn unwrap_secret(
    secret: &Secret,
    namespace: &str,
    name: &str,
    secret_type: &str,
    keyring: &Keyring,
) -> Result<SecretBytes, WrappedKeyError> {
    if secret.type_.as_deref() != Some(secret_type) {
        return Err(WrappedKeyError::Corrupt {
            name: name.into(),
            detail: format!("type is {:?}, expected {secret_type}", secret.type_),
        });
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(ENTRY))
        .ok_or_else(|| WrappedKeyError::Corrupt {
            name: name.into(),
            detail: format!("no `{ENTRY}` entry"),
        })?;
    let env = Envelope::decode(&bytes.0).map_err(|e| WrappedKeyError::Corrupt {
        name: name.into(),
        detail: e.to_string(),
    })?;
    let key = keyring
        .unwrap(&env, &KeyContext::new(namespace, name, 1))
        .await?;
    // Every key this module creates is 32 bytes; anything else is not one of ours.
    if key.len() != KEY_LEN {
        return Err(WrappedKeyError::Corrupt {
            name: name.into(),
            detail: format!("holds a {}-byte key, expected {KEY_LEN}", key.len()),
        });
    }
    Ok(key)
}

/// A Secret `namespace/name` of `secret_type` holding `key` wrapped under the primary KEK.
pub async fn wrap_secret(
    key: &SecretBytes,
    namespace: &str,
    name: &str,
    secret_type: &str,
    keyring: &Keyring,
) -> Result<Secret, WrappedKeyError> {
    let env = keyring
        .wrap(&KeyContext::new(namespace, name, 1), key)
        .await?;
    let encoded = env.encode().map_err(KekError::from)?;
    Ok(Secret {
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
    })
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
    let kerr = |source| WrappedKeyError::Kube {
        name: name.into(),
        source,
    };
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await.map_err(kerr)? {
            return unwrap_secret(&s, namespace, name, secret_type, keyring).await;
        }
        let key = SecretBytes::random(KEY_LEN);
        let secret = wrap_secret(&key, namespace, name, secret_type, keyring).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::kek::local::LocalKek;
    use k8s_openapi::api::core::v1::Namespace;
    use std::sync::Arc;

    const TYPE: &str = "keyward.io/test-key";

    #[tokio::test]
    async fn stored_key_of_wrong_length_or_bytes_is_refused_naming_the_secret() {
        let server = kube_test_apiserver::TestApiServer::start().await.unwrap();
        let client = server.client().await;
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "ks"}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let api: Api<Secret> = Api::namespaced(client, "ks");
        let kek = LocalKek::in_memory("file", SecretBytes::random(32), Algorithm::Aes256Kwp);
        let ring = Keyring::new(Arc::new(kek.unwrap()));

        let a = load_or_create(&api, "ks", "k", TYPE, &ring).await.unwrap();
        assert_eq!(a.len(), KEY_LEN);
        assert_eq!(
            load_or_create(&api, "ks", "k", TYPE, &ring).await.unwrap(),
            a
        );

        // A genuine envelope (right KEK, right context) around a 16-byte key: not ours.
        let env = ring
            .wrap(&KeyContext::new("ks", "k", 1), &SecretBytes::random(16))
            .await
            .unwrap();
        let put = |bytes: Vec<u8>| {
            let api = api.clone();
            async move {
                let mut s = api.get("k").await.unwrap();
                s.data = Some([(ENTRY.to_string(), ByteString(bytes))].into());
                api.replace("k", &PostParams::default(), &s).await.unwrap();
            }
        };
        put(env.encode().unwrap()).await;
        let e = load_or_create(&api, "ks", "k", TYPE, &ring)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key Secret k") && e.contains("16-byte key"),
            "{e}"
        );

        // A declared length above its bound, and a truncated envelope: named, nothing copied.
        for (bytes, says) in [
            (
                b"KWRD\x01\x03\xff".to_vec(),
                "backend is 255 bytes, at most 32",
            ),
            (
                b"KWRD\x01\x03\x05loc".to_vec(),
                "backend needs 5 bytes, 3 left",
            ),
        ] {
            put(bytes).await;
            let e = load_or_create(&api, "ks", "k", TYPE, &ring)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("key Secret k is unusable") && e.contains(says),
                "{e}"
            );
        }
    }
}
