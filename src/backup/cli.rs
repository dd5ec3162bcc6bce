//! `keyward backup` and `keyward restore`: flags, the file on disk, and what is printed.

use super::{BackupError, Location, MAX_FILE_BYTES, RestoreOptions, RestoreReport};
use crate::kek::config::KekArgs;
use crate::kek::{KekError, Keyring};
use k8s_openapi::api::core::v1::Secret;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the controller keeps its shared keys, as the controller's flags name them.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Namespace the controller runs in (key storage, shared keys, the local root key).
    #[arg(long, env = "POD_NAMESPACE", default_value = "keyward-system")]
    pub namespace: String,
    /// Secret holding the object-version key (the controller's flag of the same name).
    #[arg(long, default_value = "keyward-object-version-key")]
    pub object_version_key_secret: String,
    /// The same KEK flags the controller uses.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// `keyward backup`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// File to write (mode 0600, replaced atomically), or `-` for standard output.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `keyward restore`.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file, or `-` for standard input.
    pub file: PathBuf,
    /// Check everything and say what would be written; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Check the file's integrity and print what it holds and needs; no cluster is read.
    #[arg(long, conflicts_with_all = ["dry_run", "overwrite"])]
    pub verify_only: bool,
    /// Replace RotationPolicies whose spec differs and delete ManagedKeys of the same name
    /// that are other keys first (their versions stay restorable for their deletion window).
    #[arg(long)]
    pub overwrite: bool,
    /// Create the tenant namespaces the keys need.
    #[arg(long)]
    pub create_namespaces: bool,
    /// Keep this cluster's own object-version key when it differs from the backup's (pods
    /// then see new object versions and re-mount once).
    #[arg(long)]
    pub keep_object_version_key: bool,
    /// With --overwrite: how long a replaced key may take to go (its finalizer needs the
    /// controller running).
    #[arg(long, default_value_t = 120)]
    pub delete_timeout_seconds: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// What the commands can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Backup or restore refused or failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The KEK flags do not give a usable keyring.
    #[error("KEK: {0}")]
    Kek(#[from] KekError),
    /// No cluster to talk to.
    #[error("connecting to the cluster (kubeconfig or in-cluster config): {0}")]
    Connect(#[source] kube::Error),
    /// The local root key Secret is not in this cluster.
    #[error(
        "Secret {namespace}/{name} (the local backend's root key) does not exist here. A backup can only be opened with the root key it was made under: restore that Secret first (from where you saved it; backups never contain the KEK), or give --local-kek-file. Nothing was written"
    )]
    NoRootKey {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The keyring from the KEK flags, never creating anything: the local backend's root-key
/// Secret must already exist (creating a fresh one, as the controller does on first start,
/// would leave a key that opens nothing and block restoring the real one).
async fn keyring(args: &ClusterArgs, client: Option<&kube::Client>) -> Result<Keyring, CliError> {
    if keyring_needs_cluster(args) {
        let Some(client) = client else {
            return Err(CliError::Kek(KekError::Misconfigured {
                setting: "--local-kek-file (KEYWARD_LOCAL_KEK_FILE)",
                detail: "--verify-only reads no cluster: give the root key as a file".into(),
            }));
        };
        let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &args.namespace);
        let found = api
            .get_metadata_opt(&args.kek.local_kek_secret)
            .await
            .map_err(|source| BackupError::Kube {
                what: format!("reading Secret {}", args.kek.local_kek_secret),
                source,
            })?;
        if found.is_none() {
            return Err(CliError::NoRootKey {
                namespace: args.namespace.clone(),
                name: args.kek.local_kek_secret.clone(),
            });
        }
    }
    Ok(crate::kek::config::build_keyring(&args.kek, client.cloned(), &args.namespace).await?)
}

fn location(args: &ClusterArgs) -> Location {
    Location {
        namespace: args.namespace.clone(),
        version_key_secret: args.object_version_key_secret.clone(),
    }
}

async fn client() -> Result<kube::Client, CliError> {
    kube::Client::try_default().await.map_err(CliError::Connect)
}

fn progress(line: &str) {
    eprintln!("{line}");
}

/// Write `bytes` to `path` readable by the owner only, replacing it atomically: a crash
/// leaves the old file or the new one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| CliError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Read a backup file (or standard input), refusing more than [`MAX_FILE_BYTES`] before
/// holding it all in memory.
pub fn read_limited(path: &Path) -> Result<Vec<u8>, CliError> {
    read_at_most(path, MAX_FILE_BYTES)
}

fn read_at_most(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    let too_big = || {
        CliError::Backup(BackupError::File(format!(
            "larger than the {limit} bytes a backup may have"
        )))
    };
    let mut input: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(path).map_err(io(path))?;
        if f.metadata().map_err(io(path))?.len() > limit {
            return Err(too_big());
        }
        Box::new(f)
    };
    let mut bytes = Vec::new();
    input
        .by_ref()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// `keyward backup`: the summary line printed at the end.
pub async fn run_backup(args: &BackupArgs) -> Result<String, CliError> {
    let client = client().await?;
    let ring = keyring(&args.cluster, Some(&client)).await?;
    let (bytes, summary) = super::backup(
        &client,
        &ring,
        &location(&args.cluster),
        jiff::Timestamp::now(),
        &progress,
    )
    .await?;
    if args.output == Path::new("-") {
        std::io::stdout()
            .write_all(&bytes)
            .map_err(io(&args.output))?;
    } else {
        write_private(&args.output, &bytes)?;
    }
    Ok(format!(
        "backup of {} ManagedKeys, {} RotationPolicies and {} storage objects written to {}; restoring it needs KEK {} (versions used: {}). The file holds no key in the clear; keep the KEK (or the local root-key Secret) safe separately",
        summary.keys,
        summary.policies,
        summary.storage,
        args.output.display(),
        summary.kek.primary,
        summary.kek.versions.join(", ")
    ))
}

/// `keyward restore`: the report, as printed.
pub async fn run_restore(args: &RestoreArgs) -> Result<String, CliError> {
    let bytes = read_limited(&args.file)?;
    if args.verify_only {
        let client = match keyring_needs_cluster(&args.cluster) {
            true => Some(client().await?),
            false => None,
        };
        let ring = keyring(&args.cluster, client.as_ref()).await?;
        let r = super::verify(&bytes, &ring).await?;
        return Ok(format!("intact: {}", describe(&r, true)));
    }
    let client = client().await?;
    let ring = keyring(&args.cluster, Some(&client)).await?;
    let opts = RestoreOptions {
        dry_run: args.dry_run,
        overwrite: args.overwrite,
        create_namespaces: args.create_namespaces,
        keep_object_version_key: args.keep_object_version_key,
        delete_timeout: std::time::Duration::from_secs(args.delete_timeout_seconds),
    };
    let r = super::restore(
        &client,
        &ring,
        &location(&args.cluster),
        &bytes,
        &opts,
        &progress,
    )
    .await?;
    Ok(if args.dry_run {
        format!(
            "dry run, nothing written; would restore {}",
            describe(&r, false)
        )
    } else {
        format!("restored {}", describe(&r, false))
    })
}

/// The KEK flags read the local root key from a Secret (primary or secondary backend `local`
/// without `--local-kek-file`): the rule the KMS plugin applies to refuse in-cluster keys.
fn keyring_needs_cluster(args: &ClusterArgs) -> bool {
    crate::kms::check_backend(&args.kek).is_err()
}

/// One paragraph a person reads.
pub fn describe(r: &RestoreReport, verify_only: bool) -> String {
    let taken = r
        .created_at
        .map(|t| format!(" (backup taken {t})"))
        .unwrap_or_default();
    let needs = r
        .kek
        .as_ref()
        .map(|k| format!("; KEK {} (versions {})", k.primary, k.versions.join(", ")))
        .unwrap_or_default();
    if verify_only {
        return format!(
            "{} ManagedKeys, {} RotationPolicies, {} storage objects{taken}{needs}",
            r.keys_created, r.policies_created, r.storage_written
        );
    }
    let mut parts = vec![
        format!(
            "ManagedKeys: {} created, {} already there",
            r.keys_created, r.keys_present
        ),
        format!(
            "RotationPolicies: {} created, {} replaced, {} unchanged",
            r.policies_created, r.policies_replaced, r.policies_unchanged
        ),
        format!(
            "storage: {} written, {} already there",
            r.storage_written, r.storage_present
        ),
    ];
    if !r.keys_replaced.is_empty() {
        parts.push(format!(
            "deleted first (--overwrite): {}",
            r.keys_replaced.join(", ")
        ));
    }
    if !r.namespaces_created.is_empty() {
        parts.push(format!(
            "namespaces created: {}",
            r.namespaces_created.join(", ")
        ));
    }
    if !r.shared_keys_written.is_empty() {
        parts.push(format!(
            "shared key Secrets written: {}",
            r.shared_keys_written.join(", ")
        ));
    }
    format!("{}{taken}{needs}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn backups_are_written_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let e = write_private(&dir.path().join("missing/b.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing/b.json"), "{e}");
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, [b'x'; 65]).unwrap();
        let e = read_at_most(&p, 64).unwrap_err().to_string();
        assert!(e.contains("larger than the 64 bytes"), "{e}");
        std::fs::write(&p, b"{}").unwrap();
        assert_eq!(read_at_most(&p, 64).unwrap(), b"{}");
        let e = read_limited(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }
}
