//! Command-line / environment configuration of the KEK backends, and start-up of the Keyring.
//!
//! One primary backend (`--kek-backend`) wraps; an optional secondary (`--secondary-kek-backend`,
//! a different kind) only unwraps, for migrating envelopes off it. Both read their settings
//! from the same per-backend flags, so a migration from `local` to `pkcs11` sets the local
//! flags and the PKCS#11 flags side by side.

use super::awskms::{AwsCredentials, AwsKmsConfig, AwsKmsKek};
use super::local::LocalKek;
use super::passphrase::{Kdf, KdfLimits, PassphraseKek, read_secret_file};
use super::pkcs11::{Pkcs11Config, Pkcs11Kek, TokenSelector};
use super::{KekBackend, KekError, Keyring};
use crate::crypto::{Algorithm, SecretBytes};
use std::path::PathBuf;
use std::sync::Arc;

/// Which backend holds the KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// 256-bit root key in a Kubernetes Secret (or a file).
    Local,
    /// KEK derived from a passphrase (Argon2id / PBKDF2).
    Passphrase,
    /// Non-extractable AES-256 key in a PKCS#11 token (HSM).
    Pkcs11,
    /// AWS KMS symmetric key.
    Awskms,
}

impl BackendKind {
    /// Name as written in envelopes and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Passphrase => "passphrase",
            Self::Pkcs11 => "pkcs11",
            Self::Awskms => "awskms",
        }
    }
}

/// Passphrase KDF choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KdfKind {
    /// Argon2id (default).
    Argon2id,
    /// PBKDF2-HMAC-SHA256 (>= 600,000 iterations).
    Pbkdf2,
}

/// KEK flags (each also read from the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct KekArgs {
    /// KEK backend that wraps new DEKs.
    #[arg(long, env = "KEYWARD_KEK_BACKEND", value_enum, default_value = "local")]
    pub kek_backend: BackendKind,

    /// A second backend that only unwraps (the source of a migration); must differ from
    /// --kek-backend. Envelopes it made are rewrapped with the primary.
    #[arg(long, env = "KEYWARD_SECONDARY_KEK_BACKEND", value_enum)]
    pub secondary_kek_backend: Option<BackendKind>,

    /// Wrapping algorithm for backends that wrap locally (local, passphrase). The PKCS#11
    /// backend always uses AES-256-GCM inside the token; AWS KMS uses its own format.
    #[arg(long, env = "KEYWARD_KEK_WRAP_ALGORITHM", default_value = "aes-256-kwp", value_parser = Algorithm::parse)]
    pub kek_wrap_algorithm: Algorithm,

    /// local: name of the Secret (in the controller's namespace) holding the root key.
    #[arg(
        long,
        env = "KEYWARD_LOCAL_KEK_SECRET",
        default_value = "keyward-root-key"
    )]
    pub local_kek_secret: String,

    /// local: read the root key from this file instead of a Secret (32 raw bytes, hex or base64).
    #[arg(long, env = "KEYWARD_LOCAL_KEK_FILE")]
    pub local_kek_file: Option<PathBuf>,

    /// passphrase: file holding the passphrase (a mounted Secret). Without it the passphrase
    /// is read from KEYWARD_PASSPHRASE.
    #[arg(long, env = "KEYWARD_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// passphrase: KEK id recorded in envelopes; give a new passphrase a new id.
    #[arg(long, env = "KEYWARD_PASSPHRASE_KEK_ID", default_value = "passphrase")]
    pub passphrase_kek_id: String,

    /// passphrase: key-derivation function (the `fips` build defaults to pbkdf2 and refuses
    /// argon2id, which FIPS 140-3 does not approve).
    #[cfg_attr(
        not(feature = "fips"),
        arg(long, env = "KEYWARD_KDF", value_enum, default_value = "argon2id")
    )]
    #[cfg_attr(
        feature = "fips",
        arg(long, env = "KEYWARD_KDF", value_enum, default_value = "pbkdf2")
    )]
    pub kdf: KdfKind,

    /// passphrase: Argon2id memory cost in KiB (default 64 MiB).
    #[arg(long, env = "KEYWARD_ARGON2_MEMORY_KIB", default_value_t = 65536)]
    pub argon2_memory_kib: u32,

    /// passphrase: Argon2id passes.
    #[arg(long, env = "KEYWARD_ARGON2_TIME_COST", default_value_t = 3)]
    pub argon2_time_cost: u32,

    /// passphrase: Argon2id lanes.
    #[arg(long, env = "KEYWARD_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// passphrase: PBKDF2-HMAC-SHA256 iterations (at least 600000).
    #[arg(long, env = "KEYWARD_PBKDF2_ITERATIONS", default_value_t = 600_000)]
    pub pbkdf2_iterations: u32,

    /// passphrase: largest Argon2id memory cost (KiB) a stored envelope may name; default the
    /// configured --argon2-memory-kib. Checked before any derivation.
    #[arg(long, env = "KEYWARD_ARGON2_MAX_MEMORY_KIB")]
    pub argon2_max_memory_kib: Option<u32>,

    /// passphrase: most Argon2id passes a stored envelope may name; default --argon2-time-cost.
    #[arg(long, env = "KEYWARD_ARGON2_MAX_TIME_COST")]
    pub argon2_max_time_cost: Option<u32>,

    /// passphrase: most Argon2id lanes a stored envelope may name; default --argon2-parallelism.
    #[arg(long, env = "KEYWARD_ARGON2_MAX_PARALLELISM")]
    pub argon2_max_parallelism: Option<u32>,

    /// passphrase: most PBKDF2 iterations a stored envelope may name; default
    /// --pbkdf2-iterations.
    #[arg(long, env = "KEYWARD_PBKDF2_MAX_ITERATIONS")]
    pub pbkdf2_max_iterations: Option<u32>,

    /// pkcs11: path of the PKCS#11 module (.so).
    #[arg(long, env = "KEYWARD_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,

    /// pkcs11: label of the token that holds the KEK.
    #[arg(long, env = "KEYWARD_PKCS11_TOKEN_LABEL")]
    pub pkcs11_token_label: Option<String>,

    /// pkcs11: slot id, instead of --pkcs11-token-label.
    #[arg(long, env = "KEYWARD_PKCS11_SLOT")]
    pub pkcs11_slot: Option<u64>,

    /// pkcs11: file holding the user PIN (a mounted Secret). Without it the PIN is read
    /// from KEYWARD_PKCS11_PIN.
    #[arg(long, env = "KEYWARD_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// pkcs11: label of the KEK; versions are `<label>-v<N>`.
    #[arg(long, env = "KEYWARD_PKCS11_KEY_LABEL", default_value = "keyward-kek")]
    pub pkcs11_key_label: String,

    /// awskms: KMS key id, ARN, alias name (`alias/...`) or alias ARN.
    #[arg(long, env = "KEYWARD_AWS_KMS_KEY_ID")]
    pub aws_kms_key_id: Option<String>,

    /// awskms: region (falls back to AWS_REGION / AWS_DEFAULT_REGION).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// awskms: endpoint URL (VPC endpoint, FIPS endpoint, or a test server). Defaults to
    /// https://kms.<region>.amazonaws.com.
    #[arg(long, env = "KEYWARD_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// awskms: request timeout in seconds.
    #[arg(long, env = "KEYWARD_AWS_TIMEOUT_SECONDS", default_value_t = 10)]
    pub aws_timeout_seconds: u64,
}

impl Default for KekArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: KekArgs,
        }
        P::parse_from(["keyward"]).a
    }
}

impl KekArgs {
    fn kdf_params(&self) -> Kdf {
        match self.kdf {
            KdfKind::Argon2id => Kdf::Argon2id {
                memory_kib: self.argon2_memory_kib,
                time_cost: self.argon2_time_cost,
                parallelism: self.argon2_parallelism,
            },
            KdfKind::Pbkdf2 => Kdf::Pbkdf2Sha256 {
                iterations: self.pbkdf2_iterations,
            },
        }
    }
}

impl KekArgs {
    /// Ceilings on the costs a stored passphrase envelope may name: the `--*-max-*` flags, or
    /// else the configured costs of each KDF (so envelopes made under older, cheaper costs
    /// unwrap and dearer ones are refused before any derivation).
    pub fn kdf_limits(&self) -> KdfLimits {
        KdfLimits {
            argon2_memory_kib: self.argon2_max_memory_kib.unwrap_or(self.argon2_memory_kib),
            argon2_time_cost: self.argon2_max_time_cost.unwrap_or(self.argon2_time_cost),
            argon2_parallelism: self
                .argon2_max_parallelism
                .unwrap_or(self.argon2_parallelism),
            pbkdf2_iterations: self.pbkdf2_max_iterations.unwrap_or(self.pbkdf2_iterations),
        }
    }
}

fn secret_from_file_or_env(
    file: Option<&std::path::Path>,
    env: &str,
    setting: &'static str,
) -> Result<SecretBytes, KekError> {
    if let Some(p) = file {
        return read_secret_file(p, setting);
    }
    match std::env::var_os(env) {
        Some(v) => Ok(SecretBytes::new(v.into_encoded_bytes())),
        None => Err(KekError::Misconfigured {
            setting,
            detail: format!("not set: give the file flag or set {env}"),
        }),
    }
}

/// Build one backend of `kind` from `args`.
pub async fn build_backend(
    kind: BackendKind,
    args: &KekArgs,
    client: Option<kube::Client>,
    namespace: &str,
) -> Result<Arc<dyn KekBackend>, KekError> {
    if matches!(kind, BackendKind::Local | BackendKind::Passphrase)
        && !Algorithm::sealable_with_raw_kek().contains(&args.kek_wrap_algorithm)
    {
        // Only the fips build leaves one out (aes-256-gcm): the envelope header, nonce
        // included, is GCM's AAD, so the nonce must be chosen before sealing, and the FIPS
        // module approves GCM encryption only under nonces it draws itself. Opening existing
        // GCM envelopes stays possible.
        return Err(KekError::Misconfigured {
            setting: "--kek-wrap-algorithm",
            detail: "aes-256-gcm under a local KEK is not approved in keyward's FIPS build \
                     (the nonce would come from outside the module); use aes-256-kwp"
                .into(),
        });
    }
    Ok(match kind {
        BackendKind::Local => match (&args.local_kek_file, client) {
            (Some(f), _) => Arc::new(LocalKek::from_file(f, args.kek_wrap_algorithm)?),
            (None, Some(c)) => Arc::new(
                LocalKek::from_secret(
                    c,
                    namespace,
                    &args.local_kek_secret,
                    args.kek_wrap_algorithm,
                )
                .await?,
            ),
            (None, None) => {
                return Err(KekError::Misconfigured {
                    setting: "--local-kek-file (KEYWARD_LOCAL_KEK_FILE)",
                    detail: "no Kubernetes client to read --local-kek-secret; give a root-key file"
                        .into(),
                });
            }
        },
        BackendKind::Passphrase => {
            let pass = secret_from_file_or_env(
                args.passphrase_file.as_deref(),
                "KEYWARD_PASSPHRASE",
                "--passphrase-file (KEYWARD_PASSPHRASE_FILE) / KEYWARD_PASSPHRASE",
            )?;
            Arc::new(
                PassphraseKek::with_limits(
                    &args.passphrase_kek_id,
                    pass,
                    args.kdf_params(),
                    args.kdf_limits(),
                    args.kek_wrap_algorithm,
                )
                .await?,
            )
        }
        BackendKind::Pkcs11 => build_pkcs11(args).await?,
        BackendKind::Awskms => build_awskms(args).await?,
    })
}

async fn build_pkcs11(args: &KekArgs) -> Result<Arc<dyn KekBackend>, KekError> {
    let module = args
        .pkcs11_module
        .clone()
        .ok_or_else(|| KekError::Misconfigured {
            setting: "--pkcs11-module (KEYWARD_PKCS11_MODULE)",
            detail: "not set: give the path of the PKCS#11 module".into(),
        })?;
    let token = match (&args.pkcs11_token_label, args.pkcs11_slot) {
        (Some(l), _) => TokenSelector::Label(l.clone()),
        (None, Some(s)) => TokenSelector::Slot(s),
        (None, None) => {
            return Err(KekError::Misconfigured {
                setting: "--pkcs11-token-label (KEYWARD_PKCS11_TOKEN_LABEL) / --pkcs11-slot",
                detail: "not set: name the token that holds the KEK".into(),
            });
        }
    };
    let pin = secret_from_file_or_env(
        args.pkcs11_pin_file.as_deref(),
        "KEYWARD_PKCS11_PIN",
        "--pkcs11-pin-file (KEYWARD_PKCS11_PIN_FILE) / KEYWARD_PKCS11_PIN",
    )?;
    Ok(Arc::new(
        Pkcs11Kek::connect(Pkcs11Config {
            module,
            token,
            pin,
            key_label: args.pkcs11_key_label.clone(),
        })
        .await?,
    ))
}

async fn build_awskms(args: &KekArgs) -> Result<Arc<dyn KekBackend>, KekError> {
    let key_id = args
        .aws_kms_key_id
        .clone()
        .ok_or_else(|| KekError::Misconfigured {
            setting: "--aws-kms-key-id (KEYWARD_AWS_KMS_KEY_ID)",
            detail: "not set: give a key id, key ARN or alias/NAME".into(),
        })?;
    let region = args
        .aws_region
        .clone()
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_default();
    Ok(Arc::new(
        AwsKmsKek::connect(AwsKmsConfig {
            key_id,
            region,
            endpoint: args.aws_endpoint_url.clone(),
            credentials: AwsCredentials::from_env()?,
            timeout: std::time::Duration::from_secs(args.aws_timeout_seconds.max(1)),
        })
        .await?,
    ))
}

/// Build the primary (and optional secondary) backend and health-check them. Errors name the
/// flag or environment variable to fix.
pub async fn build_keyring(
    args: &KekArgs,
    client: Option<kube::Client>,
    namespace: &str,
) -> Result<Keyring, KekError> {
    if args.secondary_kek_backend == Some(args.kek_backend) {
        return Err(KekError::Misconfigured {
            setting: "--secondary-kek-backend (KEYWARD_SECONDARY_KEK_BACKEND)",
            detail: format!(
                "must differ from --kek-backend ({}); both would read the same flags",
                args.kek_backend.name()
            ),
        });
    }
    let primary = build_backend(args.kek_backend, args, client.clone(), namespace).await?;
    let mut ring = Keyring::new(primary);
    if let Some(kind) = args.secondary_kek_backend {
        ring = ring.with_secondary(build_backend(kind, args, client, namespace).await?);
    }
    ring.health().await?;
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kek: KekArgs,
    }

    /// The start-up error `args` lead to (they must lead to one).
    async fn refusal(args: &KekArgs) -> String {
        match build_keyring(args, None, "ns").await {
            Ok(_) => panic!("build_keyring accepted {args:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_and_flags_parse() {
        let d = KekArgs::default();
        assert_eq!(d.kek_backend, BackendKind::Local);
        assert_eq!(d.local_kek_secret, "keyward-root-key");
        assert_eq!(d.kek_wrap_algorithm, Algorithm::Aes256Kwp);
        let c = Cli::parse_from([
            "x",
            "--kek-backend",
            "passphrase",
            "--kdf",
            "pbkdf2",
            "--kek-wrap-algorithm",
            "aes-256-gcm",
            "--secondary-kek-backend",
            "local",
        ]);
        assert_eq!(c.kek.kek_backend, BackendKind::Passphrase);
        assert_eq!(c.kek.kdf, KdfKind::Pbkdf2);
        assert_eq!(c.kek.kek_wrap_algorithm, Algorithm::Aes256Gcm);
        assert!(Cli::try_parse_from(["x", "--kek-wrap-algorithm", "des"]).is_err());
    }

    #[tokio::test]
    async fn missing_passphrase_file_names_the_flag() {
        let a = KekArgs {
            kek_backend: BackendKind::Passphrase,
            passphrase_file: Some("/nonexistent/keyward-pass".into()),
            ..KekArgs::default()
        };
        let e = refusal(&a).await;
        assert!(e.contains("--passphrase-file"), "{e}");
    }

    #[tokio::test]
    async fn pbkdf2_below_floor_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pp");
        std::fs::write(&f, "a long enough passphrase\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = KekArgs {
            kek_backend: BackendKind::Passphrase,
            passphrase_file: Some(f),
            kdf: KdfKind::Pbkdf2,
            pbkdf2_iterations: 100_000,
            ..KekArgs::default()
        };
        let e = refusal(&a).await;
        assert!(e.contains("--pbkdf2-iterations"), "{e}");
    }

    #[tokio::test]
    async fn same_secondary_as_primary_refused() {
        let a = KekArgs {
            secondary_kek_backend: Some(BackendKind::Local),
            ..KekArgs::default()
        };
        let e = refusal(&a).await;
        assert!(e.contains("--secondary-kek-backend"), "{e}");
    }

    #[tokio::test]
    async fn local_without_client_or_file_names_the_flag() {
        let e = refusal(&KekArgs::default()).await;
        assert!(e.contains("--local-kek-file"), "{e}");
    }
}
