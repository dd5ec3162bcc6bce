//! Backup and restore for disaster recovery: one file holds every ManagedKey, RotationPolicy
//! and key storage object, plus the two shared keys (state MAC key, object-version key), all
//! still wrapped under the KEK. Losing the cluster then loses nothing as long as the KEK
//! survives (an HSM, AWS KMS, or the saved local root key).
//!
//! The file is JSON: `{"format", "body", "mac"}`, where `body` is the backup as a JSON string
//! and `mac` an HMAC-SHA256 of it under a key derived from the state MAC key, which the body
//! carries wrapped under the KEK. Only someone holding the KEK can unwrap that key, so only
//! they can verify, or forge, a backup; an edited, swapped or truncated file is refused
//! before anything is written.
//!
//! Restore writes storage under the source key's UID and creates each ManagedKey with the
//! restore annotation naming that UID: the controller then takes the versions over exactly as
//! it does for a key restored within its deletion window (same bytes, numbers, states and
//! fingerprints; envelopes are bound to namespace, name and version, which do not change).
//! Object versions stay the same because the object-version key comes along. Every step is
//! idempotent: re-running a restore after a crash finishes it.

pub mod cli;

use crate::crd::{ManagedKey, RESTORE_ANNOTATION, RotationPolicy};
use crate::crypto::{Envelope, KeyContext, SecretBytes, ct_eq};
use crate::kek::Keyring;
use crate::keyservice::version_id::VERSION_KEY_TYPE;
use crate::storage::{self, KeyIdentity, MAC_KEY_SECRET, MAC_KEY_TYPE, StateMacKey};
use crate::wrapped_key::{self, WrappedKeyError};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The format this module writes and reads.
pub const FORMAT: &str = "keyward-backup-v1";
/// Largest backup file read (about 100,000 keys with several versions each).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Objects per list page.
const PAGE: u32 = 500;

/// Backup or restore failed; a restore that fails before its first write says so.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Cause.
        source: kube::Error,
    },
    /// The file is not a keyward backup, or was edited or cut.
    #[error("backup file refused, nothing was written: {0}")]
    File(String),
    /// The KEK this process has cannot unwrap what the backup needs.
    #[error(
        "the KEK configured here ({have}) cannot unwrap this backup, which needs {needs}: {detail}; nothing was written. Pass the KEK flags of the source cluster (for the local backend: restore its root-key Secret first)"
    )]
    Kek {
        /// This process's primary KEK.
        have: String,
        /// What the backup needs.
        needs: String,
        /// What failed.
        detail: String,
    },
    /// Storage in the source cluster failed its integrity check: backing it up would carry
    /// damage (or an attacker's edit) into the copy.
    #[error(
        "storage of {} failed its integrity check, no backup written: {}; see the keys' IntegrityFailed conditions",
        .0.len(),
        .0.join("; ")
    )]
    Damaged(Vec<String>),
    /// The target cluster holds objects the restore would overwrite.
    #[error("restore refused, nothing was written:\n  {}", .0.join("\n  "))]
    Conflict(Vec<String>),
    /// A shared key Secret is missing in the source cluster.
    #[error(
        "Secret {0} not found: is the keyward controller installed in this namespace (--namespace), and has it started once?"
    )]
    NoSharedKey(String),
    /// A restore stopped after it had written part of its objects.
    #[error("restore incomplete: {0}; run the same restore again to finish it")]
    Incomplete(String),
    /// Reading or writing a shared key Secret failed.
    #[error(transparent)]
    Wrapped(#[from] WrappedKeyError),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Kube { what, source }
}

/// The signed file.
#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    body: String,
    mac: String,
}

/// What a backup holds.
#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    format: String,
    created_at: Timestamp,
    /// The controller's namespace in the source cluster (the shared keys are bound to it).
    namespace: String,
    kek: KekNeeds,
    state_mac_key: SharedKey,
    object_version_key: SharedKey,
    policies: Vec<serde_json::Value>,
    keys: Vec<KeyEntry>,
    storage: Vec<StorageEntry>,
}

/// Which KEK the backup needs: the source's primary and every KEK version an envelope in it
/// was wrapped under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KekNeeds {
    /// `backend/id@version` of the source's primary KEK when the backup was taken.
    pub primary: String,
    /// Every `backend/id@version` that wraps something in the backup.
    pub versions: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SharedKey {
    /// Secret name in the source namespace (the wrap is bound to it).
    name: String,
    /// The Secret's `wrapped` entry.
    wrapped: ByteString,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyEntry {
    uid: String,
    /// The ManagedKey as a user would apply it: metadata without server fields, spec.
    manifest: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StorageEntry {
    namespace: String,
    name: String,
    uid: String,
    /// The storage Secret's data (state, MAC, envelopes), as stored.
    data: BTreeMap<String, ByteString>,
    /// Extra annotations (restored-from, orphan deadline).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl StorageEntry {
    fn identity(&self) -> KeyIdentity {
        KeyIdentity {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    /// The entry as the Secret it came from, in `namespace` (input of [`storage::parse`]).
    fn secret(&self, namespace: &str) -> Secret {
        let id = self.identity();
        let mut annotations: BTreeMap<String, String> = [
            (storage::NAMESPACE_ANNOTATION.to_string(), id.namespace),
            (storage::NAME_ANNOTATION.to_string(), id.name),
            (storage::UID_ANNOTATION.to_string(), id.uid),
        ]
        .into();
        annotations.extend(self.annotations.clone());
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(storage::secret_name(&self.uid)),
                namespace: Some(namespace.into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some(storage::SECRET_TYPE.into()),
            data: Some(self.data.clone()),
            ..Default::default()
        }
    }
}

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// ManagedKeys.
    pub keys: usize,
    /// RotationPolicies.
    pub policies: usize,
    /// Storage objects (live keys and deleted keys inside their deletion window).
    pub storage: usize,
    /// What the file needs to be restored.
    pub kek: KekNeeds,
}

/// Where the shared keys and storage live.
#[derive(Debug, Clone)]
pub struct Location {
    /// The controller's namespace.
    pub namespace: String,
    /// Name of the object-version key Secret (`--object-version-key-secret`).
    pub version_key_secret: String,
}

/// Remove what the API server sets, so the object can be created in another cluster.
fn manifest<K: Resource + Serialize>(obj: &K, drop_annotations: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "finalizers",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "selfLink",
        ] {
            m.remove(f);
        }
        if let Some(a) = m.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            for d in drop_annotations {
                a.remove(*d);
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut p = lp.clone().limit(PAGE);
        if let Some(t) = &token {
            p = p.continue_token(t);
        }
        let page = api.list(&p).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

fn kek_of(bytes: &[u8]) -> Option<String> {
    let e = Envelope::decode(bytes).ok()?;
    Some(format!("{}/{}@{}", e.backend, e.kek_id, e.kek_version))
}

async fn shared_key(secrets: &Api<Secret>, name: &str) -> Result<(SharedKey, Secret), BackupError> {
    let s = secrets
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {name}")))?
        .ok_or_else(|| BackupError::NoSharedKey(name.into()))?;
    let wrapped = s
        .data
        .as_ref()
        .and_then(|d| d.get("wrapped"))
        .cloned()
        .ok_or_else(|| {
            BackupError::Wrapped(WrappedKeyError::Corrupt {
                name: name.into(),
                detail: "no `wrapped` entry".into(),
            })
        })?;
    Ok((
        SharedKey {
            name: name.into(),
            wrapped,
        },
        s,
    ))
}

/// Read everything a restore needs from the cluster `client` reaches and write it, signed,
/// as the bytes of a backup file. `progress` gets a line now and then (large clusters).
/// Storage is authenticated as the controller reads it: a damaged copy fails the backup.
pub async fn backup(
    client: &kube::Client,
    keyring: &Keyring,
    loc: &Location,
    now: Timestamp,
    progress: &dyn Fn(&str),
) -> Result<(Vec<u8>, BackupSummary), BackupError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
    let (mac_entry, mac_secret) = shared_key(&secrets, MAC_KEY_SECRET).await?;
    let mac = StateMacKey::new(
        wrapped_key::unwrap_secret(
            &mac_secret,
            &loc.namespace,
            MAC_KEY_SECRET,
            MAC_KEY_TYPE,
            keyring,
        )
        .await?,
    );
    let (version_entry, version_secret) = shared_key(&secrets, &loc.version_key_secret).await?;
    // Proves the key unwraps before a backup relies on it.
    wrapped_key::unwrap_secret(
        &version_secret,
        &loc.namespace,
        &loc.version_key_secret,
        VERSION_KEY_TYPE,
        keyring,
    )
    .await?;
    let policies = list_all(
        &Api::<RotationPolicy>::all(client.clone()),
        ListParams::default(),
    )
    .await
    .map_err(kube_err("listing RotationPolicies"))?;
    // Keys first, storage after: storage is never older than what a key's status recorded.
    let keys = list_all(
        &Api::<ManagedKey>::all(client.clone()),
        ListParams::default(),
    )
    .await
    .map_err(kube_err("listing ManagedKeys"))?;
    progress(&format!(
        "read {} ManagedKeys and {} RotationPolicies",
        keys.len(),
        policies.len()
    ));
    let stored = list_all(
        &secrets,
        ListParams::default().labels(&storage::label_selector()),
    )
    .await
    .map_err(kube_err("listing key storage"))?;
    let live: BTreeMap<String, &ManagedKey> = keys
        .iter()
        .filter(|k| k.metadata.deletion_timestamp.is_none())
        .filter_map(|k| Some((k.uid()?, k)))
        .collect();
    let mut needs = BTreeSet::new();
    for s in [&mac_entry, &version_entry] {
        needs.extend(kek_of(&s.wrapped.0));
    }
    let mut damaged = Vec::new();
    let mut entries = Vec::new();
    for (i, secret) in stored.iter().enumerate() {
        let Some(id) = KeyIdentity::of_storage(secret) else {
            damaged.push(format!(
                "Secret {} has no key identity annotations",
                secret.name_any()
            ));
            continue;
        };
        let key = live.get(&id.uid);
        let min_generation = key
            .and_then(|k| k.status.as_ref())
            .and_then(|s| s.storage_generation)
            .unwrap_or(0);
        let parsed = match storage::parse(secret, &id, &mac, min_generation) {
            Ok(p) => p,
            Err(e) => {
                damaged.push(format!("{}/{}: {e}", id.namespace, id.name));
                continue;
            }
        };
        // Storage without a live key is a deleted key's (inside its window, or not swept
        // yet) or one created after the key list was read; either restores as storage only,
        // and the target's sweeper treats it as this cluster's would.
        for env in parsed.envelopes.values() {
            needs.extend(kek_of(env));
        }
        let annotations = secret
            .annotations()
            .iter()
            .filter(|(k, _)| {
                [
                    storage::RESTORED_FROM_ANNOTATION,
                    storage::ORPHAN_DEADLINE_ANNOTATION,
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        entries.push(StorageEntry {
            namespace: id.namespace,
            name: id.name,
            uid: id.uid,
            data: secret.data.clone().unwrap_or_default(),
            annotations,
        });
        if (i + 1) % 1000 == 0 {
            progress(&format!(
                "authenticated {} of {} storage objects",
                i + 1,
                stored.len()
            ));
        }
    }
    if !damaged.is_empty() {
        return Err(BackupError::Damaged(damaged));
    }
    let kek = KekNeeds {
        primary: keyring.describe(),
        versions: needs.into_iter().collect(),
    };
    let body = Body {
        format: FORMAT.into(),
        created_at: now,
        namespace: loc.namespace.clone(),
        kek: kek.clone(),
        state_mac_key: mac_entry,
        object_version_key: version_entry,
        policies: policies.iter().map(|p| manifest(p, &[])).collect(),
        keys: keys
            .iter()
            .filter(|k| k.metadata.deletion_timestamp.is_none())
            .map(|k| KeyEntry {
                uid: k.uid().unwrap_or_default(),
                manifest: manifest(k, &[RESTORE_ANNOTATION]),
            })
            .collect(),
        storage: entries,
    };
    let body_json = serde_json::to_string(&body).map_err(|e| BackupError::File(e.to_string()))?;
    let file = File {
        format: FORMAT.into(),
        mac: hex::encode(mac.backup_tag(body_json.as_bytes())),
        body: body_json,
    };
    let summary = BackupSummary {
        keys: body.keys.len(),
        policies: body.policies.len(),
        storage: body.storage.len(),
        kek,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| BackupError::File(e.to_string()))?;
    progress(&format!(
        "backed up {} keys, {} policies, {} storage objects ({} bytes)",
        summary.keys,
        summary.policies,
        summary.storage,
        bytes.len()
    ));
    Ok((bytes, summary))
}

/// How a restore treats what the target already has.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Check and report only; write nothing.
    pub dry_run: bool,
    /// Replace RotationPolicies whose spec differs, and delete ManagedKeys of the same name
    /// that are not from this backup first (their versions go into keyward's deletion window,
    /// restorable from there: nothing is destroyed).
    pub overwrite: bool,
    /// Create tenant namespaces the keys need (otherwise a missing one is refused).
    pub create_namespaces: bool,
    /// Keep the target's own object-version key when it differs: object versions then change
    /// once and pods re-mount (nothing else changes).
    pub keep_object_version_key: bool,
    /// How long an overwritten key may take to go (its finalizer needs the controller).
    pub delete_timeout: std::time::Duration,
}

/// What a restore did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Namespaces created.
    pub namespaces_created: Vec<String>,
    /// Shared-key Secrets written (state MAC key, object-version key).
    pub shared_keys_written: Vec<String>,
    /// RotationPolicies created.
    pub policies_created: usize,
    /// RotationPolicies replaced (`overwrite`).
    pub policies_replaced: usize,
    /// RotationPolicies already as in the backup.
    pub policies_unchanged: usize,
    /// Storage objects written.
    pub storage_written: usize,
    /// Storage objects already there (an earlier run, or this is the source cluster).
    pub storage_present: usize,
    /// ManagedKeys created.
    pub keys_created: usize,
    /// ManagedKeys already restored (an earlier run) or the same key (the source cluster).
    pub keys_present: usize,
    /// ManagedKeys of the same name deleted first (`overwrite`).
    pub keys_replaced: Vec<String>,
    /// What the backup needs.
    pub kek: Option<KekNeeds>,
    /// When the backup was taken.
    pub created_at: Option<Timestamp>,
}

/// Check a backup file without a cluster: format, size, MAC (which needs the KEK). The body
/// and the state MAC key it carries.
async fn open(bytes: &[u8], keyring: &Keyring) -> Result<(Body, SecretBytes), BackupError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(BackupError::File(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} a backup may have",
            bytes.len()
        )));
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| {
        BackupError::File(format!("not a keyward backup (cut short or edited?): {e}"))
    })?;
    if file.format != FORMAT {
        return Err(BackupError::File(format!(
            "format {:?}; this keyward reads {FORMAT}",
            file.format.chars().take(64).collect::<String>()
        )));
    }
    let body: Body = serde_json::from_str(&file.body)
        .map_err(|e| BackupError::File(format!("body does not parse: {e}")))?;
    if body.format != FORMAT {
        return Err(BackupError::File(
            "body format differs from the file's".into(),
        ));
    }
    let needs = format!(
        "{} (versions {})",
        body.kek.primary,
        body.kek.versions.join(", ")
    );
    let kek_err = |detail: String| BackupError::Kek {
        have: keyring.describe(),
        needs: needs.clone(),
        detail,
    };
    let mac_key = match unwrap_shared(&body, &body.state_mac_key, MAC_KEY_TYPE, keyring).await {
        Ok(k) => k,
        Err(WrappedKeyError::Kek(e)) => return Err(kek_err(e.to_string())),
        Err(e) => return Err(BackupError::File(e.to_string())),
    };
    let tag = hex::decode(&file.mac).unwrap_or_default();
    let want = StateMacKey::new(mac_key.clone()).backup_tag(file.body.as_bytes());
    if !ct_eq(&tag, &want) {
        return Err(BackupError::File(
            "the MAC does not match: the file was changed after it was written".into(),
        ));
    }
    Ok((body, mac_key))
}

/// A shared key the backup carries, unwrapped as the Secret it was in the source cluster (the
/// wrap is bound to that namespace and name).
async fn unwrap_shared(
    body: &Body,
    entry: &SharedKey,
    type_: &str,
    keyring: &Keyring,
) -> Result<SecretBytes, WrappedKeyError> {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(entry.name.clone()),
            namespace: Some(body.namespace.clone()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some([("wrapped".to_string(), entry.wrapped.clone())].into()),
        ..Default::default()
    };
    wrapped_key::unwrap_secret(&secret, &body.namespace, &entry.name, type_, keyring).await
}

/// Read and verify a backup file without touching a cluster (`keyward restore --verify-only`):
/// what it holds and what it needs.
pub async fn verify(bytes: &[u8], keyring: &Keyring) -> Result<RestoreReport, BackupError> {
    let (body, _) = open(bytes, keyring).await?;
    Ok(RestoreReport {
        policies_created: body.policies.len(),
        keys_created: body.keys.len(),
        storage_written: body.storage.len(),
        kek: Some(body.kek),
        created_at: Some(body.created_at),
        ..Default::default()
    })
}

/// The shared key a restore uses in the target: the target's own when it has one, the
/// backup's `from_backup` (wrapped again for the target namespace) otherwise. `(key bytes,
/// Secret to create)`.
async fn target_shared_key(
    secrets: &Api<Secret>,
    keyring: &Keyring,
    from_backup: SecretBytes,
    target_ns: &str,
    target_name: &str,
    type_: &str,
) -> Result<(SecretBytes, Option<Secret>), BackupError> {
    match secrets
        .get_opt(target_name)
        .await
        .map_err(kube_err(format!("reading Secret {target_name}")))?
    {
        Some(s) => Ok((
            wrapped_key::unwrap_secret(&s, target_ns, target_name, type_, keyring).await?,
            None,
        )),
        None => {
            let secret =
                wrapped_key::wrap_secret(&from_backup, target_ns, target_name, type_, keyring)
                    .await?;
            Ok((from_backup, Some(secret)))
        }
    }
}

/// Restore a verified backup into the cluster `client` reaches. Everything is checked
/// before the first write (file, KEK, namespaces, conflicts); the writes are each idempotent,
/// so a restore cut short is finished by running it again.
pub async fn restore(
    client: &kube::Client,
    keyring: &Keyring,
    loc: &Location,
    bytes: &[u8],
    opts: &RestoreOptions,
    progress: &dyn Fn(&str),
) -> Result<RestoreReport, BackupError> {
    let (body, source_mac_key) = open(bytes, keyring).await?;
    let source_mac = StateMacKey::new(source_mac_key.clone());
    let mut report = RestoreReport {
        kek: Some(body.kek.clone()),
        created_at: Some(body.created_at),
        ..Default::default()
    };
    // Every envelope's KEK version must unwrap here; one envelope per version proves it.
    let mut proven = BTreeSet::new();
    for e in &body.storage {
        for (k, v) in &e.data {
            let Some(n) = k.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some(kek) = kek_of(&v.0) else { continue };
            if !proven.insert(kek.clone()) {
                continue;
            }
            let env = Envelope::decode(&v.0).map_err(|e| BackupError::File(e.to_string()))?;
            if let Err(err) = keyring
                .unwrap(&env, &KeyContext::new(&e.namespace, &e.name, n))
                .await
            {
                return Err(BackupError::Kek {
                    have: keyring.describe(),
                    needs: kek,
                    detail: err.to_string(),
                });
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(&loc.namespace)
        .await
        .map_err(kube_err("reading namespaces"))?
        .is_none()
    {
        return Err(BackupError::Conflict(vec![format!(
            "namespace {} (keyward's) does not exist: create it (or install the chart with the controller scaled to 0) and run restore again",
            loc.namespace
        )]));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
    let mut conflicts = Vec::new();
    let (mac_key, mac_secret) = target_shared_key(
        &secrets,
        keyring,
        source_mac_key,
        &loc.namespace,
        MAC_KEY_SECRET,
        MAC_KEY_TYPE,
    )
    .await?;
    let target_mac = StateMacKey::new(mac_key);
    let backup_version_key =
        unwrap_shared(&body, &body.object_version_key, VERSION_KEY_TYPE, keyring).await?;
    let (version_key, version_secret) = target_shared_key(
        &secrets,
        keyring,
        backup_version_key.clone(),
        &loc.namespace,
        &loc.version_key_secret,
        VERSION_KEY_TYPE,
    )
    .await?;
    // The target had its own object-version key (nothing to create): same as the backup's?
    if version_secret.is_none()
        && !opts.keep_object_version_key
        && !ct_eq(backup_version_key.expose(), version_key.expose())
    {
        conflicts.push(format!(
            "Secret {}/{} holds another object-version key (this cluster's controller made one): pods would see new object versions and re-mount once. Delete that Secret before the controller starts (then restart it), or pass --keep-object-version-key to accept that",
            loc.namespace, loc.version_key_secret
        ));
    }
    // Tenant namespaces.
    let mut missing_ns = BTreeSet::new();
    let wanted: BTreeSet<String> = body
        .keys
        .iter()
        .filter_map(|k| {
            k.manifest["metadata"]["namespace"]
                .as_str()
                .map(String::from)
        })
        .chain(
            body.policies
                .iter()
                .filter_map(|p| p["metadata"]["namespace"].as_str().map(String::from)),
        )
        .collect();
    for ns in &wanted {
        if namespaces
            .get_opt(ns)
            .await
            .map_err(kube_err("reading namespaces"))?
            .is_none()
        {
            missing_ns.insert(ns.clone());
        }
    }
    if !missing_ns.is_empty() && !opts.create_namespaces {
        conflicts.push(format!(
            "namespaces {missing_ns:?} do not exist: create them, or pass --create-namespaces"
        ));
    }
    // Policies.
    let mut policy_plan = Vec::new();
    for p in &body.policies {
        let rp: RotationPolicy = serde_json::from_value(p.clone())
            .map_err(|e| BackupError::File(format!("a RotationPolicy: {e}")))?;
        let ns = rp.namespace().unwrap_or_default();
        let api: Api<RotationPolicy> = Api::namespaced(client.clone(), &ns);
        let existing = if missing_ns.contains(&ns) {
            None
        } else {
            api.get_opt(&rp.name_any())
                .await
                .map_err(kube_err("reading RotationPolicies"))?
        };
        match existing {
            None => policy_plan.push((api, rp, None)),
            Some(e)
                if serde_json::to_value(&e.spec).ok() == serde_json::to_value(&rp.spec).ok() =>
            {
                report.policies_unchanged += 1
            }
            Some(e) if opts.overwrite => {
                let rv = e.resource_version();
                policy_plan.push((api, rp, rv))
            }
            Some(_) => conflicts.push(format!(
                "RotationPolicy {ns}/{} exists with another spec: pass --overwrite to replace it",
                rp.name_any()
            )),
        }
    }
    // Keys.
    let storage_uids: BTreeSet<&str> = body.storage.iter().map(|s| s.uid.as_str()).collect();
    let mut key_plan = Vec::new();
    for k in &body.keys {
        let mut mk: ManagedKey = serde_json::from_value(k.manifest.clone())
            .map_err(|e| BackupError::File(format!("a ManagedKey: {e}")))?;
        let ns = mk.namespace().unwrap_or_default();
        let name = mk.name_any();
        let api: Api<ManagedKey> = Api::namespaced(client.clone(), &ns);
        let existing = if missing_ns.contains(&ns) {
            None
        } else {
            api.get_opt(&name)
                .await
                .map_err(kube_err("reading ManagedKeys"))?
        };
        let ours = |e: &ManagedKey| {
            e.uid().as_deref() == Some(&k.uid)
                || e.annotations().get(RESTORE_ANNOTATION) == Some(&k.uid)
        };
        let replace = match &existing {
            Some(e) if ours(e) => {
                report.keys_present += 1;
                continue;
            }
            Some(_) if opts.overwrite => true,
            Some(_) => {
                conflicts.push(format!(
                    "ManagedKey {ns}/{name} exists and is another key: pass --overwrite to delete it first (its versions stay restorable for its deletion window)"
                ));
                continue;
            }
            None => false,
        };
        if storage_uids.contains(k.uid.as_str()) {
            mk.annotations_mut()
                .insert(RESTORE_ANNOTATION.into(), k.uid.clone());
        }
        key_plan.push((api, mk, replace));
    }
    // Storage: authenticated under the source's MAC key once more (the file MAC covers it,
    // this also checks the state's invariants), then sealed under the target's.
    let mut storage_plan = Vec::new();
    for e in &body.storage {
        let id = e.identity();
        let mut stored = storage::parse(&e.secret(&body.namespace), &id, &source_mac, 0)
            .map_err(|err| BackupError::File(err.to_string()))?;
        stored.resource_version = None;
        let target = storage::StorageLocation {
            namespace: loc.namespace.clone(),
            mac: target_mac.clone(),
        };
        let mut secret = storage::to_secret(&target, &id, &stored)
            .map_err(|err| BackupError::File(err.to_string()))?;
        for (k, v) in &e.annotations {
            secret
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(k.clone(), v.clone());
        }
        storage_plan.push(secret);
    }
    if !conflicts.is_empty() {
        return Err(BackupError::Conflict(conflicts));
    }
    report.policies_created = policy_plan.iter().filter(|p| p.2.is_none()).count();
    report.policies_replaced = policy_plan.len() - report.policies_created;
    report.keys_replaced = key_plan
        .iter()
        .filter(|k| k.2)
        .map(|k| format!("{}/{}", k.1.namespace().unwrap_or_default(), k.1.name_any()))
        .collect();
    report.namespaces_created = missing_ns.iter().cloned().collect();
    report.shared_keys_written = [mac_secret.as_ref(), version_secret.as_ref()]
        .into_iter()
        .flatten()
        .map(|s| s.name_any())
        .collect();
    if opts.dry_run {
        for s in &storage_plan {
            if secrets
                .get_opt(&s.name_any())
                .await
                .map_err(kube_err("reading key storage"))?
                .is_some()
            {
                report.storage_present += 1;
            } else {
                report.storage_written += 1;
            }
        }
        report.keys_created = key_plan.len();
        return Ok(report);
    }
    // Writes, in an order a crash may cut anywhere: shared keys, namespaces, policies,
    // storage, then the keys that point at it.
    for s in [mac_secret, version_secret].into_iter().flatten() {
        create_or_exists(&secrets, &s, "shared key Secret").await?;
    }
    for ns in &missing_ns {
        let n: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
            .map_err(|e| BackupError::File(e.to_string()))?;
        create_or_exists(&namespaces, &n, "namespace").await?;
    }
    for (api, mut rp, rv) in policy_plan {
        match rv {
            None => {
                create_or_exists(&api, &rp, "RotationPolicy").await?;
            }
            Some(rv) => {
                rp.metadata.resource_version = Some(rv);
                api.replace(&rp.name_any(), &PostParams::default(), &rp)
                    .await
                    .map_err(kube_err(format!(
                        "replacing RotationPolicy {}",
                        rp.name_any()
                    )))?;
            }
        }
    }
    progress(&format!("writing {} storage objects", storage_plan.len()));
    for (i, s) in storage_plan.iter().enumerate() {
        if create_or_exists(&secrets, s, "key storage").await? {
            report.storage_written += 1;
        } else {
            report.storage_present += 1;
        }
        if (i + 1) % 1000 == 0 {
            progress(&format!(
                "wrote {} of {} storage objects",
                i + 1,
                storage_plan.len()
            ));
        }
    }
    for (api, mk, replace) in key_plan {
        let name = mk.name_any();
        if replace {
            delete_and_wait(&api, &name, opts.delete_timeout).await?;
        }
        if create_or_exists(&api, &mk, "ManagedKey").await? {
            report.keys_created += 1;
        } else {
            report.keys_present += 1;
        }
    }
    progress(&format!(
        "restored {} keys ({} already there), {} storage objects; the controller takes the versions over at its next reconcile",
        report.keys_created, report.keys_present, report.storage_written
    ));
    Ok(report)
}

/// Create `obj`; true when created, false when one of that name was there already.
async fn create_or_exists<K>(api: &Api<K>, obj: &K, what: &str) -> Result<bool, BackupError>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(BackupError::Kube {
            what: format!("creating {what} {}", obj.name_any()),
            source,
        }),
    }
}

async fn delete_and_wait(
    api: &Api<ManagedKey>,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(), BackupError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(source) => {
            return Err(BackupError::Kube {
                what: format!("deleting ManagedKey {name}"),
                source,
            });
        }
    }
    let until = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < until {
        if api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading ManagedKey {name}")))?
            .is_none()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(BackupError::Incomplete(format!(
        "ManagedKey {name} is still being deleted after {}s (its finalizer needs the keyward controller running)",
        timeout.as_secs()
    )))
}
