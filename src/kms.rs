//! `keyward kms-plugin`: a Kubernetes KMS v2 plugin, so the cluster's own Secrets are encrypted
//! at rest under a keyward KEK.
//!
//! kube-apiserver dials the plugin's unix socket, polls `Status`, and calls `Encrypt` with the
//! seed it derives its data keys from (32 bytes) whenever the key id `Status` reports changes;
//! it keeps our ciphertext, key id and annotations beside every object it encrypts and calls
//! `Decrypt` with all three when it needs the seed again
//! (staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/envelope.go and
//! pkg/server/options/encryptionconfig/config.go `rotateDEKOnKeyIDChange`).
//!
//! Ciphertext: `KWK2 | format 1 | u16 length | keyward envelope | 12-byte nonce | AES-256-GCM`.
//! Each Encrypt draws a fresh 256-bit data key, wraps it with the KEK backend (an envelope bound
//! to the context `keyward-kms/v2` version 1, so no ManagedKey envelope can stand in for it)
//! and seals the plaintext under it with associated data that binds the key id and the
//! annotations: changing any of the three makes Decrypt fail.
//!
//! The key id names the KEK and its version (`keyward:<backend>/<kek id>@<version>`), so a KEK
//! rotation (`keyward kek rotate`) changes it, the apiserver re-encrypts on its next write
//! (or a storage migration), and older ciphertexts keep decrypting because every envelope names
//! its KEK version.

use crate::crypto::{CryptoError, Envelope, KeyContext, SecretBytes, gcm};
use crate::kek::config::{BackendKind, KekArgs};
use crate::kek::{KekError, Keyring};
use crate::proto::kms as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// `StatusResponse.version` the apiserver requires (`KMSAPIVersionv2`).
pub const API_VERSION: &str = "v2";
/// Ciphertext magic.
const MAGIC: &[u8; 4] = b"KWK2";
/// Ciphertext format.
const FORMAT: u8 = 1;
/// Annotation recording the ciphertext format (keys must be DNS names upstream).
pub const FORMAT_ANNOTATION: &str = "version.kms.keyward.io";
/// Upstream limits (envelope.go): key id 1 kB, encrypted DEK source 1 kB, annotations 32 kB.
pub const KEY_ID_MAX: usize = 1024;
/// The largest ciphertext the apiserver stores (`encryptedDEKSourceMaxSize`).
pub const CIPHERTEXT_MAX: usize = 1024;
/// Keys + values of all annotations (`annotationsMaxSize`).
pub const ANNOTATIONS_MAX: usize = 32 * 1024;
/// The largest gRPC message the plugin decodes: requests are a seed or a ciphertext of at
/// most 1 kB plus annotations of at most 32 kB.
pub const MAX_REQUEST: usize = 40 * 1024;

/// Errors of the KMS plugin; messages name what to fix and never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// A request field is malformed or out of bounds.
    #[error("{field}: {detail}")]
    Invalid {
        /// Request field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Authentication failed: ciphertext, key id or annotations were changed, or another
    /// plugin or KEK made the ciphertext.
    #[error(
        "ciphertext does not authenticate with this key id and these annotations (altered, or not made by keyward kms-plugin)"
    )]
    Integrity,
    /// The KEK backend failed or does not hold the KEK version the ciphertext names.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The configuration cannot serve a KMS plugin.
    #[error("{0}")]
    Config(String),
}

impl From<CryptoError> for KmsError {
    fn from(_: CryptoError) -> Self {
        Self::Integrity
    }
}

impl From<KmsError> for tonic::Status {
    fn from(e: KmsError) -> Self {
        match &e {
            KmsError::Invalid { .. } | KmsError::Integrity => {
                tonic::Status::invalid_argument(e.to_string())
            }
            KmsError::Kek(KekError::UnknownKek { .. }) => {
                tonic::Status::failed_precondition(e.to_string())
            }
            KmsError::Kek(KekError::Crypto(_)) => {
                tonic::Status::invalid_argument(KmsError::Integrity.to_string())
            }
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// The context every KMS data key is wrapped for.
fn wrap_context() -> KeyContext {
    KeyContext::new("keyward-kms", "v2", 1)
}

/// The key id of a KEK: `keyward:<backend>/<kek id>@<version>`.
fn key_id_of(backend: &str, kek_id: &str, version: u32) -> String {
    format!("keyward:{backend}/{kek_id}@{version}")
}

/// `IsFullyQualifiedDomainName` (apimachinery pkg/util/validation/validation.go): at least
/// two dot-separated labels and a DNS-1123 subdomain once a trailing dot is dropped.
fn is_fqdn(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 || n.split('.').count() < 2 {
        return false;
    }
    n.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// The annotation rules the apiserver applies to Encrypt's answer (`validateAnnotations`);
/// Decrypt applies them too before anything else.
fn check_annotations(a: &BTreeMap<String, Vec<u8>>) -> Result<(), KmsError> {
    let mut total = 0usize;
    for (k, v) in a {
        if !is_fqdn(k) {
            return Err(KmsError::Invalid {
                field: "annotations",
                detail: format!(
                    "key {:?} is not a fully qualified domain name",
                    k.chars().take(64).collect::<String>()
                ),
            });
        }
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX {
        return Err(KmsError::Invalid {
            field: "annotations",
            detail: format!("{total} bytes of keys and values, more than {ANNOTATIONS_MAX}"),
        });
    }
    Ok(())
}

/// `ValidateKeyID` (envelope.go): not empty, at most 1 kB.
fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() || key_id.len() > KEY_ID_MAX {
        return Err(KmsError::Invalid {
            field: "key_id",
            detail: format!("must be 1 to {KEY_ID_MAX} bytes, got {}", key_id.len()),
        });
    }
    Ok(())
}

/// Associated data: a domain label, the key id and the annotations, each length-prefixed.
fn associated_data(key_id: &str, annotations: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut a = b"keyward-kms-v2\0".to_vec();
    a.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
    a.extend_from_slice(key_id.as_bytes());
    a.extend_from_slice(&(annotations.len() as u32).to_be_bytes());
    for (k, v) in annotations {
        a.extend_from_slice(&(k.len() as u32).to_be_bytes());
        a.extend_from_slice(k.as_bytes());
        a.extend_from_slice(&(v.len() as u32).to_be_bytes());
        a.extend_from_slice(v);
    }
    a
}

/// What Encrypt returns.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Opaque to the apiserver; at most [`CIPHERTEXT_MAX`] bytes.
    pub ciphertext: Vec<u8>,
    /// The KEK and version that wrapped the data key.
    pub key_id: String,
    /// Stored beside the ciphertext in plaintext, and bound to it.
    pub annotations: BTreeMap<String, Vec<u8>>,
}

/// A cached health answer.
struct Health {
    at: Instant,
    result: Result<(), String>,
}

/// The plugin: a keyring and a cached health check.
pub struct KmsPlugin {
    keyring: Keyring,
    health: tokio::sync::Mutex<Option<Health>>,
    ok_ttl: Duration,
    err_ttl: Duration,
}

impl KmsPlugin {
    /// A plugin over `keyring`; Status re-checks the backend at most every `ok_ttl` while it is
    /// healthy and every `err_ttl` while it is not, however often the apiservers poll.
    pub fn new(keyring: Keyring, ok_ttl: Duration, err_ttl: Duration) -> Self {
        Self {
            keyring,
            health: tokio::sync::Mutex::new(None),
            ok_ttl,
            err_ttl,
        }
    }

    /// The key id new ciphertexts get.
    pub fn key_id(&self) -> String {
        let p = self.keyring.primary();
        key_id_of(p.kind(), &p.kek_id(), p.kek_version())
    }

    /// Health from a real round trip through the KEK (wrap and unwrap a random key), after
    /// re-reading the backend's current KEK version; cached, see [`KmsPlugin::new`].
    pub async fn health(&self) -> Result<(), String> {
        let mut h = self.health.lock().await;
        if let Some(c) = h.as_ref() {
            let ttl = if c.result.is_ok() {
                self.ok_ttl
            } else {
                self.err_ttl
            };
            if c.at.elapsed() < ttl {
                return c.result.clone();
            }
        }
        let result = self.round_trip().await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(error = %e, "KMS plugin: KEK round trip failed");
        }
        *h = Some(Health {
            at: Instant::now(),
            result: result.clone(),
        });
        result
    }

    async fn round_trip(&self) -> Result<(), KmsError> {
        self.keyring.refresh().await?;
        let probe = SecretBytes::random(32);
        let ctx = KeyContext::new("keyward-kms", "health", 1);
        let env = self.keyring.wrap(&ctx, &probe).await?;
        let back = self.keyring.unwrap(&env, &ctx).await?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(back.expose(), probe.expose())) {
            return Err(KmsError::Integrity);
        }
        Ok(())
    }

    /// `Status`: version, `ok` or the failure, and the current key id.
    pub async fn status(&self) -> pb::StatusResponse {
        let healthz = match self.health().await {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("keyward KEK backend unhealthy: {e}"),
        };
        pb::StatusResponse {
            version: API_VERSION.into(),
            healthz,
            key_id: self.key_id(),
        }
    }

    /// `Encrypt`: wrap a fresh data key with the KEK, seal `plaintext` under it.
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::Invalid {
                field: "plaintext",
                detail: "is empty".into(),
            });
        }
        let ctx = wrap_context();
        let data_key = SecretBytes::random(32);
        let env = self.keyring.wrap(&ctx, &data_key).await?;
        let key_id = key_id_of(&env.backend, &env.kek_id, env.kek_version);
        let annotations = BTreeMap::from([(FORMAT_ANNOTATION.to_string(), b"1".to_vec())]);
        let aad = associated_data(&key_id, &annotations);
        let (nonce, sealed) =
            gcm::seal(data_key.expose(), &aad, &SecretBytes::from_slice(plaintext))?;
        let env_bytes = env.encode()?;
        let mut ct = Vec::with_capacity(7 + env_bytes.len() + nonce.len() + sealed.len());
        ct.extend_from_slice(MAGIC);
        ct.push(FORMAT);
        ct.extend_from_slice(&(env_bytes.len() as u16).to_be_bytes());
        ct.extend_from_slice(&env_bytes);
        ct.extend_from_slice(&nonce);
        ct.extend_from_slice(&sealed);
        if ct.len() > CIPHERTEXT_MAX {
            return Err(KmsError::Invalid {
                field: "plaintext",
                detail: format!(
                    "{} bytes make a {}-byte ciphertext; the apiserver stores at most {CIPHERTEXT_MAX}",
                    plaintext.len(),
                    ct.len()
                ),
            });
        }
        check_key_id(&key_id)?;
        Ok(Sealed {
            ciphertext: ct,
            key_id,
            annotations,
        })
    }

    /// `Decrypt`: every bound checked before the KEK is asked; any change to ciphertext, key
    /// id or annotations is [`KmsError::Integrity`].
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &BTreeMap<String, Vec<u8>>,
    ) -> Result<SecretBytes, KmsError> {
        check_key_id(key_id)?;
        check_annotations(annotations)?;
        if ciphertext.len() > CIPHERTEXT_MAX {
            return Err(KmsError::Invalid {
                field: "ciphertext",
                detail: format!("more than {CIPHERTEXT_MAX} bytes"),
            });
        }
        let rest = ciphertext
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| KmsError::Invalid {
                field: "ciphertext",
                detail: "not made by keyward kms-plugin (bad magic)".into(),
            })?;
        let (&format, rest) = rest.split_first().ok_or(KmsError::Integrity)?;
        if format != FORMAT {
            return Err(KmsError::Invalid {
                field: "ciphertext",
                detail: format!("format {format} is not supported (this build reads {FORMAT})"),
            });
        }
        if rest.len() < 2 {
            return Err(KmsError::Integrity);
        }
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        if rest.len() < n + gcm::NONCE_LEN + gcm::TAG_LEN {
            return Err(KmsError::Integrity);
        }
        let (env_bytes, rest) = rest.split_at(n);
        let (nonce, sealed) = rest.split_at(gcm::NONCE_LEN);
        let env = Envelope::decode(env_bytes)?;
        let ctx = wrap_context();
        env.check_context(&ctx)?;
        if key_id != key_id_of(&env.backend, &env.kek_id, env.kek_version) {
            return Err(KmsError::Integrity);
        }
        let data_key = self.keyring.unwrap(&env, &ctx).await?;
        let aad = associated_data(key_id, annotations);
        Ok(gcm::open(data_key.expose(), nonce, &aad, sealed)?)
    }
}

/// The gRPC face of a [`KmsPlugin`].
pub struct KmsService(pub Arc<KmsPlugin>);

#[tonic::async_trait]
impl pb::key_management_service_server::KeyManagementService for KmsService {
    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.status().await))
    }

    async fn decrypt(
        &self,
        req: tonic::Request<pb::DecryptRequest>,
    ) -> Result<tonic::Response<pb::DecryptResponse>, tonic::Status> {
        let r = req.into_inner();
        let annotations: BTreeMap<String, Vec<u8>> = r.annotations.into_iter().collect();
        match self.0.decrypt(&r.ciphertext, &r.key_id, &annotations).await {
            Ok(pt) => Ok(tonic::Response::new(pb::DecryptResponse {
                plaintext: bytes::Bytes::from_owner(Zeroizing::new(pt.expose().to_vec())),
            })),
            Err(e) => {
                tracing::warn!(uid = %bounded(&r.uid), error = %e, "KMS Decrypt refused");
                Err(e.into())
            }
        }
    }

    async fn encrypt(
        &self,
        req: tonic::Request<pb::EncryptRequest>,
    ) -> Result<tonic::Response<pb::EncryptResponse>, tonic::Status> {
        let r = req.into_inner();
        let uid = r.uid.clone();
        let plaintext = Zeroizing::new(r.plaintext);
        match self.0.encrypt(&plaintext).await {
            Ok(s) => Ok(tonic::Response::new(pb::EncryptResponse {
                ciphertext: s.ciphertext,
                key_id: s.key_id,
                annotations: s.annotations.into_iter().collect(),
            })),
            Err(e) => {
                tracing::warn!(uid = %bounded(&uid), error = %e, "KMS Encrypt refused");
                Err(e.into())
            }
        }
    }
}

/// A request uid for a log line: at most 64 characters, control characters escaped.
fn bounded(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_default).collect()
}

/// `keyward kms-plugin` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct KmsPluginArgs {
    /// Unix socket kube-apiserver dials (the `endpoint: unix:///...` of the
    /// EncryptionConfiguration).
    #[arg(
        long,
        env = "KEYWARD_KMS_SOCKET",
        default_value = "/var/run/keyward-kms/kms.sock"
    )]
    pub socket: PathBuf,
    /// Seconds a healthy KEK round trip is trusted before Status checks again.
    #[arg(long, default_value_t = 20)]
    pub health_ok_seconds: u64,
    /// Seconds a failed KEK round trip is reported before Status checks again.
    #[arg(long, default_value_t = 3)]
    pub health_error_seconds: u64,
    /// The KEK backend (the same flags as the controller's).
    #[command(flatten)]
    pub kek: KekArgs,
}

/// Refuse KEK configurations that would live inside the cluster they protect.
pub fn check_backend(args: &KekArgs) -> Result<(), KmsError> {
    for kind in std::iter::once(args.kek_backend).chain(args.secondary_kek_backend) {
        if kind == BackendKind::Local && args.local_kek_file.is_none() {
            return Err(KmsError::Config(
                "--kek-backend local reads its root key from a Secret in the cluster whose Secrets this plugin encrypts (a circle: the key would be sealed by itself). Give --local-kek-file with a root key on the control-plane node, or use passphrase, pkcs11 or awskms".into(),
            ));
        }
    }
    Ok(())
}

/// `keyward kms-plugin`: build the keyring (no Kubernetes client: the apiserver may not be up
/// yet, and the KEK must not live in it), then serve until SIGTERM/SIGINT.
pub async fn run(args: KmsPluginArgs) -> Result<(), KmsError> {
    check_backend(&args.kek)?;
    let keyring = crate::kek::config::build_keyring(&args.kek, None, "").await?;
    let plugin = Arc::new(KmsPlugin::new(
        keyring,
        Duration::from_secs(args.health_ok_seconds),
        Duration::from_secs(args.health_error_seconds),
    ));
    let listener =
        crate::provider::bind_socket(&args.socket).map_err(|e| KmsError::Config(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Only kube-apiserver (root on the control-plane node) dials it.
        std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| KmsError::Config(format!("{}: chmod: {e}", args.socket.display())))?;
    }
    tracing::info!(socket = %args.socket.display(), key_id = %plugin.key_id(), "KMS v2 plugin listening");
    let shutdown = crate::shutdown::Shutdown::on_signals();
    let r = tonic::transport::Server::builder()
        .add_service(
            pb::key_management_service_server::KeyManagementServiceServer::new(KmsService(plugin))
                .max_decoding_message_size(MAX_REQUEST),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move { shutdown.wait().await },
        )
        .await;
    let _ = std::fs::remove_file(&args.socket);
    r.map_err(|e| KmsError::Config(format!("gRPC server: {e}")))
}

#[cfg(test)]
mod tests;
