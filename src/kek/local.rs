//! The embedded default: a 256-bit root key kept in a Secret in the controller's namespace
//! (created once, never overwritten) or read from a file.
//!
//! Risk: anyone who can read that Secret (or etcd without encryption at rest) can unwrap
//! every key. Turn on etcd encryption at rest, restrict `get secrets` in the controller's
//! namespace, and move to the PKCS#11 or AWS KMS backend for production; a Keyring with the
//! local backend as secondary migrates keys without re-creating them.

use super::{KekBackend, KekError};
use crate::crypto::{Algorithm, Envelope, KeyContext, SecretBytes};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::sync::RwLock;

const KIND: &str = "local";
const CURRENT_KEY: &str = "current";

/// Where the root key lives.
#[derive(Clone)]
enum Source {
    Secret { api: Box<Api<Secret>>, name: String },
    Fixed,
}

/// Local root-key backend.
pub struct LocalKek {
    id: String,
    algorithm: Algorithm,
    source: Source,
    versions: RwLock<BTreeMap<u32, SecretBytes>>,
    current: RwLock<u32>,
}

fn version_key(v: u32) -> String {
    format!("kek-v{v}")
}

fn parse_secret(s: &Secret) -> Result<(BTreeMap<u32, SecretBytes>, u32), KekError> {
    let bad = |detail: String| KekError::Misconfigured {
        setting: "--local-kek-secret",
        detail,
    };
    let data = s.data.clone().unwrap_or_default();
    let mut versions = BTreeMap::new();
    for (k, v) in &data {
        if let Some(n) = k.strip_prefix("kek-v") {
            let n: u32 = n
                .parse()
                .map_err(|_| bad(format!("entry {k} is not kek-v<N>")))?;
            if v.0.len() != 32 {
                return Err(bad(format!(
                    "entry {k} must hold 32 bytes, holds {}",
                    v.0.len()
                )));
            }
            versions.insert(n, SecretBytes::from_slice(&v.0));
        }
    }
    let current = data
        .get(CURRENT_KEY)
        .and_then(|b| std::str::from_utf8(&b.0).ok()?.trim().parse::<u32>().ok())
        .ok_or_else(|| bad("missing or invalid `current` entry".into()))?;
    if !versions.contains_key(&current) {
        return Err(bad(format!(
            "current version {current} has no kek-v{current} entry"
        )));
    }
    Ok((versions, current))
}

fn secret_with(
    name: &str,
    ns: &str,
    versions: &BTreeMap<u32, SecretBytes>,
    current: u32,
) -> Secret {
    let mut data: BTreeMap<String, ByteString> = versions
        .iter()
        .map(|(v, k)| (version_key(*v), ByteString(k.expose().to_vec())))
        .collect();
    data.insert(
        CURRENT_KEY.into(),
        ByteString(current.to_string().into_bytes()),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "keyward".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("keyward.io/root-key".into()),
        data: Some(data),
        ..Default::default()
    }
}

impl LocalKek {
    /// A root key held only in memory (tests, and `from_file`).
    pub fn in_memory(id: &str, key: SecretBytes, algorithm: Algorithm) -> Result<Self, KekError> {
        if key.len() != 32 {
            return Err(KekError::Misconfigured {
                setting: "--local-kek-file",
                detail: format!("the root key must be 32 bytes, got {}", key.len()),
            });
        }
        Ok(Self {
            id: id.into(),
            algorithm,
            source: Source::Fixed,
            versions: RwLock::new([(1, key)].into()),
            current: RwLock::new(1),
        })
    }

    /// Read the root key from a file: 32 raw bytes, or 64 hex / 44 base64 characters. The
    /// file must be a regular file readable by its owner (and group) only (see
    /// [`super::keyfile`]): a root key others could read is refused.
    pub fn from_file(path: &std::path::Path, algorithm: Algorithm) -> Result<Self, KekError> {
        let raw = super::keyfile::read_key_file(path, "--local-kek-file")?;
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        let hex_key = (text.len() == 64).then(|| hex::decode(text).ok()).flatten();
        let key = if raw.len() == 32 {
            SecretBytes::from_slice(&raw)
        } else if let Some(k) = hex_key {
            SecretBytes::new(k)
        } else if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(text) {
            SecretBytes::new(b)
        } else {
            return Err(KekError::Misconfigured {
                setting: "--local-kek-file",
                detail: format!(
                    "{} must hold 32 raw bytes, 64 hex characters or base64 of 32 bytes",
                    path.display()
                ),
            });
        };
        Self::in_memory("file", key, algorithm)
    }

    /// Load the root key from `namespace/name`, creating it on first start. Creation uses
    /// `create` (never update): when two controllers race, one wins and the other reads it.
    pub async fn from_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
        algorithm: Algorithm,
    ) -> Result<Self, KekError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let existing = match api.get_opt(name).await {
            Ok(s) => s,
            Err(e) => {
                return Err(KekError::Unavailable {
                    backend: KIND,
                    setting: "--local-kek-secret / RBAC get secrets",
                    detail: format!("reading Secret {namespace}/{name}: {e}"),
                });
            }
        };
        let secret = match existing {
            Some(s) => s,
            None => {
                let fresh = secret_with(name, namespace, &[(1, SecretBytes::random(32))].into(), 1);
                match api.create(&PostParams::default(), &fresh).await {
                    Ok(s) => s,
                    Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let (versions, current) = parse_secret(&secret)?;
        Ok(Self {
            id: format!("{namespace}/{name}"),
            algorithm,
            source: Source::Secret {
                api: Box::new(api),
                name: name.into(),
            },
            versions: RwLock::new(versions),
            current: RwLock::new(current),
        })
    }

    fn key(&self, v: u32) -> Option<SecretBytes> {
        self.versions.read().expect("lock").get(&v).cloned()
    }

    async fn reload(&self) -> Result<(), KekError> {
        if let Source::Secret { api, name } = &self.source {
            let (versions, current) = parse_secret(&api.get(name).await?)?;
            *self.versions.write().expect("lock") = versions;
            *self.current.write().expect("lock") = current;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl KekBackend for LocalKek {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn kek_id(&self) -> String {
        self.id.clone()
    }

    fn kek_version(&self) -> u32 {
        *self.current.read().expect("lock")
    }

    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        let v = self.kek_version();
        // The Secret is re-read by refresh(); if someone removed the current entry between
        // the two reads, say so instead of panicking.
        let kek = self.key(v).ok_or_else(|| KekError::Misconfigured {
            setting: "--local-kek-secret",
            detail: format!("the current KEK version {v} has no kek-v{v} entry"),
        })?;
        Ok(
            Envelope::for_context(self.algorithm, KIND, &self.id, v, ctx)
                .seal_with_raw_kek(&kek, dek)?,
        )
    }

    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        super::check_owner(env, KIND, &self.id)?;
        if self.key(env.kek_version).is_none() {
            // Another replica may have rotated the KEK since we loaded it.
            self.reload().await?;
        }
        let kek = self
            .key(env.kek_version)
            .ok_or_else(|| KekError::unknown_kek(env))?;
        Ok(env.open_with_raw_kek(&kek, ctx)?)
    }

    async fn health(&self) -> Result<(), KekError> {
        match &self.source {
            Source::Fixed => Ok(()),
            Source::Secret { api, name } => {
                api.get(name)
                    .await
                    .map(|_| ())
                    .map_err(|e| KekError::Unavailable {
                        backend: KIND,
                        setting: "--local-kek-secret",
                        detail: e.to_string(),
                    })
            }
        }
    }

    async fn refresh(&self) -> Result<(), KekError> {
        self.reload().await
    }

    async fn rotate(&self) -> Result<u32, KekError> {
        let Source::Secret { api, name } = &self.source else {
            return Err(KekError::Misconfigured {
                setting: "--local-kek-file",
                detail: "a file-based root key cannot be rotated by keyward; write a new file and migrate with a Keyring, or use --local-kek-secret".into(),
            });
        };
        loop {
            let secret = api.get(name).await?;
            let (mut versions, current) = parse_secret(&secret)?;
            let next = versions.keys().max().copied().unwrap_or(current) + 1;
            versions.insert(next, SecretBytes::random(32));
            let mut updated = secret_with(
                name,
                secret.metadata.namespace.as_deref().unwrap_or_default(),
                &versions,
                next,
            );
            updated.metadata.resource_version = secret.metadata.resource_version.clone();
            match api.replace(name, &PostParams::default(), &updated).await {
                Ok(_) => {
                    *self.versions.write().expect("lock") = versions;
                    *self.current.write().expect("lock") = next;
                    return Ok(next);
                }
                // Lost a race with another replica: re-read and try once more from fresh state.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::Keyring;
    use std::sync::Arc;

    #[tokio::test]
    async fn local_round_trip_and_wrong_context_fails() {
        for &alg in Algorithm::sealable_with_raw_kek() {
            let k = LocalKek::in_memory("t", SecretBytes::random(32), alg).unwrap();
            let ctx = KeyContext::new("ns", "k", 1);
            let dek = SecretBytes::random(32);
            let env = k.wrap(&ctx, &dek).await.unwrap();
            assert_eq!(env.backend, "local");
            assert_eq!(k.unwrap(&env, &ctx).await.unwrap(), dek);
            assert!(
                k.unwrap(&env, &KeyContext::new("ns", "k", 2))
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test]
    async fn keyring_migrates_between_backends() {
        let old: Arc<dyn KekBackend> = Arc::new(
            LocalKek::in_memory("old", SecretBytes::random(32), Algorithm::Aes256Kwp).unwrap(),
        );
        let new: Arc<dyn KekBackend> = Arc::new(
            LocalKek::in_memory(
                "new",
                SecretBytes::random(32),
                *Algorithm::sealable_with_raw_kek().last().unwrap(),
            )
            .unwrap(),
        );
        let ctx = KeyContext::new("ns", "k", 7);
        let dek = SecretBytes::random(32);
        let env = Keyring::new(old.clone()).wrap(&ctx, &dek).await.unwrap();
        let ring = Keyring::new(new.clone()).with_secondary(old);
        assert!(ring.needs_rewrap(&env));
        let moved = ring.rewrap(&env, &ctx).await.unwrap();
        assert!(!ring.needs_rewrap(&moved));
        assert_eq!(moved.kek_id, "new");
        assert_eq!(Keyring::new(new).unwrap(&moved, &ctx).await.unwrap(), dek);
    }

    #[test]
    fn from_file_refuses_short_keys_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "abcd").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = LocalKek::from_file(&p, Algorithm::Aes256Kwp)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--local-kek-file") && e.contains("32"), "{e}");
    }

    #[test]
    fn from_file_refuses_unsafe_modes_and_reads_safe_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        std::fs::write(&p, hex::encode([9u8; 32])).unwrap();
        for mode in [0o644, 0o755, 0o4600, 0o1600, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = LocalKek::from_file(&p, Algorithm::Aes256Kwp).err().unwrap();
            assert!(
                matches!(
                    &e,
                    KekError::KeyFile(super::super::keyfile::KeyFileError::Mode { .. })
                ),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("--local-kek-file"), "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(LocalKek::from_file(&p, Algorithm::Aes256Kwp).is_ok());
    }
}
