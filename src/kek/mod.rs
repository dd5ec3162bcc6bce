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

/// The primary backend plus any others whose envelopes must still unwrap.
#[derive(Clone)]
pub struct Keyring {
    primary: Arc<dyn KekBackend>,
    others: Vec<Arc<dyn KekBackend>>,
}

impl Keyring {
    /// A keyring with one backend.
    pub fn new(primary: Arc<dyn KekBackend>) -> Self {
        Self {
            primary,
            others: Vec::new(),
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
}
