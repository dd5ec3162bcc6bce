//! KEK backends: where the root of the key hierarchy lives.
//!
//! Every backend wraps a DEK into an [`Envelope`] that records the backend kind, KEK id and
//! KEK version, so envelopes from several backends or KEK versions coexist during a migration
//! or KEK rotation. A [`Keyring`] wraps with its primary backend and unwraps with whichever
//! backend an envelope names.

pub mod awskms;
pub mod config;
pub mod keyfile;
pub mod local;
pub mod passphrase;
pub mod pkcs11;

use crate::crypto::{CryptoError, Envelope, KeyContext, SecretBytes};
use std::sync::Arc;

/// Errors at the KEK boundary. Messages name the setting to fix; never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The backend cannot be reached or refused us.
    #[error("KEK backend {backend} unavailable: {detail} (check {setting})")]
    Unavailable {
        /// Backend kind.
        backend: &'static str,
        /// Flag or env var to check.
        setting: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The configuration is wrong.
    #[error("KEK backend misconfigured: {setting}: {detail}")]
    Misconfigured {
        /// Flag or env var to fix.
        setting: &'static str,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// The envelope names a backend or KEK version this keyring does not hold.
    #[error(
        "no KEK for envelope: backend {backend}, KEK {kek_id} version {version} (configure that backend as a secondary KEK, or finish the migration before removing it)"
    )]
    UnknownKek {
        /// Backend kind in the envelope.
        backend: String,
        /// KEK id in the envelope.
        kek_id: String,
        /// KEK version in the envelope.
        version: u32,
    },
    /// A stored passphrase envelope names KDF costs above what this process is configured to
    /// spend. Refused before any derivation, so an edited envelope cannot make the controller
    /// allocate gigabytes or spin for minutes.
    #[error(
        "passphrase envelope refused before key derivation: {parameter} {value} is above the configured maximum {max} (if the envelope is genuine, raise {setting})"
    )]
    KdfCostRefused {
        /// The cost parameter, e.g. `Argon2 memory (KiB)`.
        parameter: &'static str,
        /// What the envelope claims.
        value: u32,
        /// The configured ceiling.
        max: u32,
        /// Flag that sets the ceiling.
        setting: &'static str,
    },
    /// A PKCS#11 object carries the KEK label but is not a KEK keyward generated (wrong type
    /// or length, extractable, not sensitive, imported, or without keyward's marker). Using it
    /// would put DEKs under a key whose value may exist outside the token.
    #[error(
        "PKCS#11 object {object} is not a keyward KEK: {attribute} {detail} (delete or relabel that object, or choose another --pkcs11-key-label)"
    )]
    ForeignKeyObject {
        /// Token, label and CKA_ID (hex) of the object.
        object: String,
        /// The failing attribute, e.g. `CKA_EXTRACTABLE`.
        attribute: &'static str,
        /// What it is and what it must be.
        detail: String,
    },
    /// A key file (root key, passphrase, PIN) is unreadable or has an unsafe mode.
    #[error("KEK backend misconfigured: {0}")]
    KeyFile(#[from] keyfile::KeyFileError),
    /// Wrapping or unwrapping failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Kubernetes API error while reading or storing KEK material.
    #[error("KEK storage in Kubernetes failed: {0}")]
    Kube(#[from] kube::Error),
}

impl KekError {
    /// No KEK here for the backend, KEK id and version `env` names.
    pub fn unknown_kek(env: &Envelope) -> Self {
        Self::UnknownKek {
            backend: env.backend.clone(),
            kek_id: env.kek_id.clone(),
            version: env.kek_version,
        }
    }
}

/// Refuse, before any crypto or remote call, an envelope that backend `kind` with KEK `kek_id`
/// did not make: every backend's `unwrap` starts here.
pub fn check_owner(env: &Envelope, kind: &str, kek_id: &str) -> Result<(), KekError> {
    if env.backend == kind && env.kek_id == kek_id {
        Ok(())
    } else {
        Err(KekError::unknown_kek(env))
    }
}

/// One KEK backend.
#[async_trait::async_trait]
pub trait KekBackend: Send + Sync + 'static {
    /// Backend kind recorded in envelopes (`local`, `passphrase`, `pkcs11`, `awskms`).
    fn kind(&self) -> &'static str;
    /// KEK identifier within the backend.
    fn kek_id(&self) -> String;
    /// KEK version that new wraps use.
    fn kek_version(&self) -> u32;
    /// Wrap `dek` for `ctx` under the current KEK version.
    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError>;
    /// Unwrap an envelope this backend made, after checking it belongs to `ctx`.
    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError>;
    /// Cheap reachability check for readiness probes and start-up.
    async fn health(&self) -> Result<(), KekError>;
    /// Create a new KEK version and make it current; old versions keep unwrapping.
    async fn rotate(&self) -> Result<u32, KekError>;
    /// Re-read the backend's current KEK version (another replica or `keyward kek rotate`
    /// may have rotated it). Backends without shared state keep the default.
    async fn refresh(&self) -> Result<(), KekError> {
        Ok(())
    }
}

/// How long [`Keyring::health_cached`] reuses a result: readiness probes (every few seconds,
/// per replica, plus anyone who can reach the port) then cost at most one KMS request or HSM
/// call per 10 s.
pub const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The last health result and when it was taken (errors kept as text: `KekError` is not Clone).
type HealthSlot = Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>>;

/// The primary backend plus any others whose envelopes must still unwrap.
#[derive(Clone)]
pub struct Keyring {
    primary: Arc<dyn KekBackend>,
    others: Vec<Arc<dyn KekBackend>>,
    health: HealthSlot,
}

impl Keyring {
    /// A keyring with one backend.
    pub fn new(primary: Arc<dyn KekBackend>) -> Self {
        Self {
            primary,
            others: Vec::new(),
            health: HealthSlot::default(),
        }
    }

    /// Add a backend that only unwraps (the source of a migration).
    pub fn with_secondary(mut self, b: Arc<dyn KekBackend>) -> Self {
        self.others.push(b);
        self
    }

    /// The backend new wraps use.
    pub fn primary(&self) -> &Arc<dyn KekBackend> {
        &self.primary
    }

    /// `backend/id@version` of the primary KEK, for status.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}@{}",
            self.primary.kind(),
            self.primary.kek_id(),
            self.primary.kek_version()
        )
    }

    /// Wrap with the primary backend.
    pub async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        self.primary.wrap(ctx, dek).await
    }

    /// Unwrap with the backend the envelope names.
    pub async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        let b = std::iter::once(&self.primary)
            .chain(self.others.iter())
            .find(|b| check_owner(env, b.kind(), &b.kek_id()).is_ok())
            .ok_or_else(|| KekError::unknown_kek(env))?;
        b.unwrap(env, ctx).await
    }

    /// Whether an envelope should be rewrapped (other backend or an older KEK version).
    pub fn needs_rewrap(&self, env: &Envelope) -> bool {
        env.backend != self.primary.kind()
            || env.kek_id != self.primary.kek_id()
            || env.kek_version != self.primary.kek_version()
    }

    /// Unwrap with whatever made `env`, wrap again with the primary's current KEK.
    pub async fn rewrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<Envelope, KekError> {
        let dek = self.unwrap(env, ctx).await?;
        self.wrap(ctx, &dek).await
    }

    /// Refresh every backend's view of its current KEK version.
    pub async fn refresh(&self) -> Result<(), KekError> {
        self.primary.refresh().await?;
        for b in &self.others {
            b.refresh().await?;
        }
        Ok(())
    }

    /// Health of every backend.
    pub async fn health(&self) -> Result<(), KekError> {
        self.primary.health().await?;
        for b in &self.others {
            b.health().await?;
        }
        Ok(())
    }

    /// [`Keyring::health`], reused for [`HEALTH_TTL`] (success or failure), for `/readyz`.
    /// Concurrent callers wait for one check instead of each calling the backends, so probes
    /// cannot hammer AWS KMS or the HSM. Clones of a keyring share the cache.
    pub async fn health_cached(&self) -> Result<(), String> {
        let mut slot = self.health.lock().await;
        if let Some((at, r)) = slot.as_ref()
            && at.elapsed() < HEALTH_TTL
        {
            return r.clone();
        }
        let r = self.health().await.map_err(|e| e.to_string());
        *slot = Some((tokio::time::Instant::now(), r.clone()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A backend that counts health checks and fails them on demand.
    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl KekBackend for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn kek_id(&self) -> String {
            "c".into()
        }
        fn kek_version(&self) -> u32 {
            1
        }
        async fn wrap(&self, _: &KeyContext, _: &SecretBytes) -> Result<Envelope, KekError> {
            Err(KekError::Misconfigured {
                setting: "-",
                detail: "test backend does not wrap".into(),
            })
        }
        async fn unwrap(&self, e: &Envelope, _: &KeyContext) -> Result<SecretBytes, KekError> {
            Err(KekError::unknown_kek(e))
        }
        async fn health(&self) -> Result<(), KekError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if self.down.load(Ordering::SeqCst) {
                Err(KekError::Unavailable {
                    backend: "counting",
                    setting: "--x",
                    detail: "down".into(),
                })
            } else {
                Ok(())
            }
        }
        async fn rotate(&self) -> Result<u32, KekError> {
            Ok(1)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_checks_call_the_backend_at_most_once_per_ttl() {
        let b = Arc::new(Counting::default());
        let ring = Keyring::new(b.clone());
        let clone = ring.clone();
        // A burst of probes, concurrent and sequential, on the keyring and a clone of it.
        let burst: Vec<_> = (0..50)
            .map(|i| {
                let r = if i % 2 == 0 {
                    ring.clone()
                } else {
                    clone.clone()
                };
                tokio::spawn(async move { r.health_cached().await })
            })
            .collect();
        for h in burst {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        for _ in 0..50 {
            assert_eq!(ring.health_cached().await, Ok(()));
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);

        // The backend goes down: still the cached answer until the TTL passes, then one call
        // whose failure is cached too.
        b.down.store(true, Ordering::SeqCst);
        tokio::time::advance(HEALTH_TTL - std::time::Duration::from_millis(1)).await;
        assert_eq!(ring.health_cached().await, Ok(()));
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(std::time::Duration::from_millis(2)).await;
        for _ in 0..20 {
            let e = ring.health_cached().await.unwrap_err();
            assert!(e.contains("down") && e.contains("--x"), "{e}");
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
        // Recovery is seen after the next TTL.
        b.down.store(false, Ordering::SeqCst);
        tokio::time::advance(HEALTH_TTL).await;
        assert_eq!(ring.health_cached().await, Ok(()));
        assert_eq!(b.calls.load(Ordering::SeqCst), 3);
        // The uncached check still calls every time (start-up uses it).
        ring.health().await.unwrap();
        assert_eq!(b.calls.load(Ordering::SeqCst), 4);
    }
}
