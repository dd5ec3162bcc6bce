//! Where wrapped versions live: one Secret per ManagedKey in the controller's own namespace,
//! named by the ManagedKey's UID, never in the tenant's namespace (a tenant with `edit` there
//! could rewrite the lifecycle), and authenticated under the KEK.
//!
//! Data entries: `v<N>` holds version N's envelope; `state.json` the version metadata and
//! handled requests ([`StoredState`]); `state.mac` an HMAC-SHA256 (hex) under the state MAC
//! key (a random key wrapped under the KEK, see [`crate::wrapped_key`]) over the format,
//! the key's namespace, name and UID, `state.json` and the SHA-256 of every envelope. All
//! change in one write, so the Secret is the single source of truth and status is only a
//! projection of it: a crash between writing the Secret and writing status converges on the
//! next reconcile without a second new version.
//!
//! Reading checks, before anything is planned or served: the identity annotations, the MAC
//! (constant time), the generation against the one the controller recorded in status (a
//! rolled-back copy is refused), and the invariants of the state (unique version numbers, at
//! most one Active version, parsable timestamps, material exactly for non-destroyed versions).

use crate::crd::ManagedKey;
use crate::crypto::{Envelope, KeyContext, SecretBytes, ct_eq, hmac_sha256};
use crate::kek::{KekError, Keyring};
use crate::lifecycle::KeyState;
use crate::state::StoredState;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use std::collections::{BTreeMap, BTreeSet};

/// Secret type of keyward storage (format 2: controller namespace, authenticated).
pub const SECRET_TYPE: &str = "keyward.io/key-storage";
/// Secret type of the old per-namespace layout, refused at start-up.
pub const OLD_SECRET_TYPE: &str = "keyward.io/wrapped-key";
/// Label on every storage Secret (bounded value), for the controller's watch.
pub const STORAGE_LABEL: &str = "keyward.io/storage";
/// Value of [`STORAGE_LABEL`].
pub const STORAGE_LABEL_VALUE: &str = "managed-key";
/// Annotation: the ManagedKey's namespace.
pub const NAMESPACE_ANNOTATION: &str = "keyward.io/key-namespace";
/// Annotation: the ManagedKey's name (up to 253 characters, so not a label).
pub const NAME_ANNOTATION: &str = "keyward.io/key-name";
/// Annotation: the ManagedKey's UID.
pub const UID_ANNOTATION: &str = "keyward.io/key-uid";
/// Annotation on a restored key's storage: the UID of the deleted key it was restored from
/// (the sweeper then removes that copy).
pub const RESTORED_FROM_ANNOTATION: &str = "keyward.io/restored-from-uid";
/// Annotation the sweeper puts on an unreadable copy of a deleted key: removed at this time.
pub const ORPHAN_DEADLINE_ANNOTATION: &str = "keyward.io/remove-after";
/// Secret holding the wrapped state MAC key, in the controller's namespace.
pub const MAC_KEY_SECRET: &str = "keyward-state-mac-key";
/// Secret type of [`MAC_KEY_SECRET`].
pub const MAC_KEY_TYPE: &str = "keyward.io/state-mac-key";
const FORMAT: &[u8] = b"keyward-storage-v2";
const STATE_ENTRY: &str = "state.json";
const MAC_ENTRY: &str = "state.mac";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// API call failed (including 409 conflicts: re-read and re-plan).
    #[error("storage Secret {name}: {source}")]
    Kube {
        /// Secret name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The stored copy fails authentication or its invariants: edited, rolled back, swapped
    /// or damaged. Nothing of it is planned on or served.
    #[error("storage Secret {name} failed its integrity check: {detail}")]
    Integrity {
        /// Secret name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The storage object is gone although the controller saved it (generation recorded in
    /// status): deleted outside keyward, or already removed at the end of a deletion.
    #[error("storage Secret {name} is missing, but the controller saved generation {generation}")]
    Missing {
        /// Secret name.
        name: String,
        /// Generation recorded in status.
        generation: u64,
    },
    /// Version material is missing or cannot be unwrapped.
    #[error("version {version} of {key}: {detail}")]
    Material {
        /// `namespace/name`.
        key: String,
        /// Version.
        version: u32,
        /// What failed.
        detail: String,
    },
    /// The KEK backend failed.
    #[error(transparent)]
    Kek(#[from] KekError),
}

impl StorageError {
    /// True for a failed integrity check (reported as a condition, Event and audit record).
    pub fn is_integrity(&self) -> bool {
        matches!(self, Self::Integrity { .. } | Self::Missing { .. })
    }
}

/// The key that authenticates stored state; loaded once per process.
#[derive(Clone)]
pub struct StateMacKey(SecretBytes);

impl std::fmt::Debug for StateMacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMacKey([redacted])")
    }
}

impl StateMacKey {
    /// A fixed key (tests, or one process that never restarts).
    pub fn new(key: SecretBytes) -> Self {
        Self(key)
    }

    /// The shared key from [`MAC_KEY_SECRET`] in `namespace`, created once.
    pub async fn load_or_create(
        client: kube::Client,
        namespace: &str,
        keyring: &Keyring,
    ) -> Result<Self, crate::wrapped_key::WrappedKeyError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        Ok(Self(
            crate::wrapped_key::load_or_create(
                &api,
                namespace,
                MAC_KEY_SECRET,
                MAC_KEY_TYPE,
                keyring,
            )
            .await?,
        ))
    }

    /// The tag of a backup file's body (domain-separated from storage tags).
    pub fn backup_tag(&self, body: &[u8]) -> [u8; 32] {
        hmac_sha256(self.0.expose(), &[b"keyward-backup-v1", body])
    }

    fn tag(
        &self,
        id: &KeyIdentity,
        state_json: &[u8],
        envelopes: &BTreeMap<u32, Vec<u8>>,
    ) -> [u8; 32] {
        let digests: Vec<(Vec<u8>, [u8; 32])> = envelopes
            .iter()
            .map(|(v, e)| (v.to_be_bytes().to_vec(), crate::crypto::module::sha256(e)))
            .collect();
        let mut parts: Vec<&[u8]> = vec![
            FORMAT,
            id.namespace.as_bytes(),
            id.name.as_bytes(),
            id.uid.as_bytes(),
            state_json,
        ];
        for (v, d) in &digests {
            parts.push(v);
            parts.push(d);
        }
        hmac_sha256(self.0.expose(), &parts)
    }
}

/// Which ManagedKey a storage object belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (a re-created key with the same name is another key).
    pub uid: String,
}

impl KeyIdentity {
    /// The identity a storage Secret claims (from its annotations; the MAC proves it).
    pub fn of_storage(secret: &Secret) -> Option<Self> {
        let a = secret.metadata.annotations.as_ref()?;
        Some(Self {
            namespace: a.get(NAMESPACE_ANNOTATION)?.clone(),
            name: a.get(NAME_ANNOTATION)?.clone(),
            uid: a.get(UID_ANNOTATION)?.clone(),
        })
    }

    /// The identity of a ManagedKey object.
    pub fn of(mk: &ManagedKey) -> Self {
        Self {
            namespace: mk.namespace().unwrap_or_default(),
            name: mk.name_any(),
            uid: mk.uid().unwrap_or_default(),
        }
    }
}

/// Where a ManagedKey's storage lives: the controller's namespace and a name from its UID.
#[derive(Debug, Clone)]
pub struct StorageLocation {
    /// Namespace of the controller (and of every storage Secret).
    pub namespace: String,
    /// The MAC key.
    pub mac: StateMacKey,
}

/// The label selector of every storage Secret.
pub fn label_selector() -> String {
    format!("{STORAGE_LABEL}={STORAGE_LABEL_VALUE}")
}

/// When the sweeper removes an unreadable orphan (see [`mark_orphan`]).
pub fn orphan_deadline(secret: &Secret) -> Option<jiff::Timestamp> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(ORPHAN_DEADLINE_ANNOTATION)?
        .parse()
        .ok()
}

/// Record on an unreadable orphan when it will be removed (data untouched; optimistic).
pub async fn mark_orphan(
    loc: &StorageLocation,
    client: &kube::Client,
    secret: &Secret,
    at: jiff::Timestamp,
) -> Result<(), StorageError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let mut s = secret.clone();
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ORPHAN_DEADLINE_ANNOTATION.into(), at.to_string());
    Api::<Secret>::namespaced(client.clone(), &loc.namespace)
        .replace(&name, &PostParams::default(), &s)
        .await
        .map_err(|source| StorageError::Kube { name, source })?;
    Ok(())
}

/// Name of the storage Secret for a ManagedKey UID (a UID is 36 characters).
pub fn secret_name(uid: &str) -> String {
    format!("keyward-mk-{uid}")
}

/// A ManagedKey's stored versions as read from the API.
#[derive(Clone, Default)]
pub struct Stored {
    /// Metadata and handled requests.
    pub state: StoredState,
    /// Envelope bytes by version.
    pub envelopes: BTreeMap<u32, Vec<u8>>,
    /// resourceVersion of the Secret, for optimistic concurrency (None = not created yet).
    pub resource_version: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("generation", &self.state.generation)
            .field("versions", &self.state.versions.len())
            .field("envelopes", &self.envelopes.keys().collect::<Vec<_>>())
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

/// A stored state that breaks what the planner and the key service rely on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// Two records for one version number, or version 0.
    #[error("version number {0} appears twice or is 0")]
    DuplicateVersion(u32),
    /// More than one Active version.
    #[error("versions {0:?} are all Active; at most one may be")]
    SeveralActive(Vec<u32>),
    /// Destroyed but material is still there.
    #[error("version {0} is Destroyed but still has material")]
    DestroyedWithMaterial(u32),
    /// A live version without material.
    #[error("version {version} is {state} but has no material")]
    NoMaterial {
        /// Version.
        version: u32,
        /// Its state.
        state: &'static str,
    },
    /// Material for a version the state does not list.
    #[error("material for version {0}, which the state does not list")]
    UnlistedMaterial(u32),
    /// Versions are listed oldest first, numbers increasing.
    #[error("version {found} is listed after version {after}; numbers must increase")]
    NotIncreasing {
        /// The number before.
        after: u32,
        /// The number that does not follow it.
        found: u32,
    },
    /// More than one Suspended version (resuming picks one; the planner never makes two).
    #[error("versions {0:?} are all Suspended; at most one may be")]
    SeveralSuspended(Vec<u32>),
    /// More records, versions with material, or transitions than the planner ever keeps.
    #[error("{what}: {count}, more than the {limit} keyward keeps")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many there are.
        count: usize,
        /// The most the planner and compaction leave.
        limit: usize,
    },
    /// A text field longer than anything keyward writes there.
    #[error("{field} of version {version} is {len} bytes, more than {limit}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Version (0 for key-level fields).
        version: u32,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The pruned summary contradicts the listed versions.
    #[error(
        "pruned summary ({versions} versions through {through}) contradicts the listed versions"
    )]
    Pruned {
        /// Pruned count.
        versions: u32,
        /// Highest pruned number.
        through: u32,
    },
    /// The scheduled destruction is less than 7 days after it was scheduled (keyward writes 7
    /// to 30): destroying on it would destroy before any deletion window ends.
    #[error(
        "pending deletion: destroyAt {destroy_at} is less than 7 days after scheduledAt {scheduled_at}"
    )]
    DeletionWindow {
        /// Scheduled at.
        scheduled_at: jiff::Timestamp,
        /// Destroy at.
        destroy_at: jiff::Timestamp,
    },
}

/// Longest fingerprint keyward writes (`sha256:` and hex), with room.
const MAX_FINGERPRINT: usize = 128;
/// Longest KEK description (`backend/id@version`; AWS key ARNs are about 100 bytes).
const MAX_KEK: usize = 1024;
/// Longest public key PEM (RSA-4096 SPKI is about 800 bytes).
const MAX_PUBLIC_KEY: usize = 4096;
/// Longest transition reason (the planner's cause texts).
const MAX_REASON: usize = 256;
/// Longest UID in `restoredFrom`.
const MAX_UID: usize = 64;

/// Check what a planner and the key service rely on (timestamps are already typed: an
/// unparsable one fails deserialization): unique, increasing version numbers; at most one
/// Active and one Suspended version; material exactly for the versions not Destroyed; counts
/// and text sizes within what the planner and compaction ever write; a deletion window of at
/// least 7 days (a longer one only delays destruction). Linear in the state's size and allocation-free beyond a set of version numbers.
pub fn check_invariants(
    state: &StoredState,
    envelopes: &BTreeMap<u32, Vec<u8>>,
) -> Result<(), InvariantError> {
    use crate::rotation::{MAX_MATERIAL_LIMIT, MAX_ROTATE_REQUEST};
    use crate::state::{DESTROYED_RECORDS_KEPT, TRANSITIONS_KEPT};
    let records_limit = MAX_MATERIAL_LIMIT as usize + DESTROYED_RECORDS_KEPT;
    if state.versions.len() > records_limit {
        return Err(InvariantError::TooMany {
            what: "version records",
            count: state.versions.len(),
            limit: records_limit,
        });
    }
    let with_material = state.with_material() as usize;
    if with_material > MAX_MATERIAL_LIMIT as usize {
        return Err(InvariantError::TooMany {
            what: "versions with material",
            count: with_material,
            limit: MAX_MATERIAL_LIMIT as usize,
        });
    }
    let too_long = |field, version, len, limit| {
        (len > limit).then_some(InvariantError::TooLong {
            field,
            version,
            len,
            limit,
        })
    };
    let key_level = [
        (
            "lastRotateRequest",
            state.last_rotate_request.as_ref().map_or(0, String::len),
            MAX_ROTATE_REQUEST,
        ),
        (
            "restoredFrom",
            state.restored_from.as_ref().map_or(0, String::len),
            MAX_UID,
        ),
    ];
    for (field, len, limit) in key_level {
        if let Some(e) = too_long(field, 0, len, limit) {
            return Err(e);
        }
    }
    if let Some(pd) = state.pending_deletion {
        let window = pd.destroy_at.duration_since(pd.scheduled_at);
        if window < jiff::SignedDuration::from_secs(7 * 86_400) {
            return Err(InvariantError::DeletionWindow {
                scheduled_at: pd.scheduled_at,
                destroy_at: pd.destroy_at,
            });
        }
    }
    let mut seen = BTreeSet::new();
    let mut active = Vec::new();
    let mut suspended = Vec::new();
    let mut previous = 0u32;
    // Up to the first activation (2 steps) plus the recent ones compaction keeps.
    let transitions_limit = 2 + TRANSITIONS_KEPT;
    for v in &state.versions {
        if v.version == 0 || !seen.insert(v.version) {
            return Err(InvariantError::DuplicateVersion(v.version));
        }
        if v.version <= previous {
            return Err(InvariantError::NotIncreasing {
                after: previous,
                found: v.version,
            });
        }
        previous = v.version;
        match v.state {
            KeyState::Active => active.push(v.version),
            KeyState::Suspended => suspended.push(v.version),
            _ => {}
        }
        if v.transitions.len() > transitions_limit {
            return Err(InvariantError::TooMany {
                what: "transitions of one version",
                count: v.transitions.len(),
                limit: transitions_limit,
            });
        }
        let texts = [
            ("fingerprint", v.fingerprint.len(), MAX_FINGERPRINT),
            ("kek", v.kek.as_ref().map_or(0, String::len), MAX_KEK),
            (
                "publicKey",
                v.public_key.as_ref().map_or(0, String::len),
                MAX_PUBLIC_KEY,
            ),
            (
                "transition reason",
                v.transitions
                    .iter()
                    .map(|t| t.reason.len())
                    .max()
                    .unwrap_or(0),
                MAX_REASON,
            ),
        ];
        for (field, len, limit) in texts {
            if let Some(e) = too_long(field, v.version, len, limit) {
                return Err(e);
            }
        }
        let has = envelopes.contains_key(&v.version);
        if v.state == KeyState::Destroyed && has {
            return Err(InvariantError::DestroyedWithMaterial(v.version));
        }
        if v.state != KeyState::Destroyed && !has {
            return Err(InvariantError::NoMaterial {
                version: v.version,
                state: v.state.as_str(),
            });
        }
    }
    if active.len() > 1 {
        return Err(InvariantError::SeveralActive(active));
    }
    if suspended.len() > 1 {
        return Err(InvariantError::SeveralSuspended(suspended));
    }
    if let Some(p) = state.pruned
        && (p.versions > p.through_version || seen.contains(&p.through_version))
    {
        return Err(InvariantError::Pruned {
            versions: p.versions,
            through: p.through_version,
        });
    }
    if let Some(extra) = envelopes.keys().find(|v| !seen.contains(v)) {
        return Err(InvariantError::UnlistedMaterial(*extra));
    }
    Ok(())
}

/// Parse and authenticate a storage Secret for `id`. `min_generation` is the generation the
/// controller last recorded (status.storageGeneration): an older copy is a rollback.
pub fn parse(
    secret: &Secret,
    id: &KeyIdentity,
    mac: &StateMacKey,
    min_generation: u64,
) -> Result<Stored, StorageError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bad = |detail: String| StorageError::Integrity {
        name: name.clone(),
        detail,
    };
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(bad(format!(
            "type is {:?}, expected {SECRET_TYPE}",
            secret.type_
        )));
    }
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    for (k, want) in [
        (NAMESPACE_ANNOTATION, &id.namespace),
        (NAME_ANNOTATION, &id.name),
        (UID_ANNOTATION, &id.uid),
    ] {
        if ann.get(k) != Some(want) {
            return Err(bad(format!(
                "annotation {k} is {:?}, the ManagedKey's is {want:?}",
                ann.get(k)
            )));
        }
    }
    let data = secret.data.clone().unwrap_or_default();
    let state_json = data
        .get(STATE_ENTRY)
        .map(|b| b.0.clone())
        .ok_or_else(|| bad(format!("no {STATE_ENTRY}")))?;
    let mut envelopes = BTreeMap::new();
    for (k, v) in &data {
        if let Some(n) = k.strip_prefix('v') {
            let n: u32 = n
                .parse()
                .map_err(|_| bad(format!("unexpected entry {k:?}")))?;
            envelopes.insert(n, v.0.clone());
        }
    }
    let tag = data
        .get(MAC_ENTRY)
        .and_then(|b| hex::decode(&b.0).ok())
        .ok_or_else(|| bad(format!("no valid {MAC_ENTRY}")))?;
    if !ct_eq(&tag, &mac.tag(id, &state_json, &envelopes)) {
        return Err(bad(
            "the MAC does not match: the state or material was changed outside keyward".into(),
        ));
    }
    let state: StoredState =
        decode_state(&state_json).map_err(|e| bad(format!("{STATE_ENTRY}: {e}")))?;
    if state.generation < min_generation {
        return Err(bad(format!(
            "generation {} is older than the {min_generation} the controller last saved: a rolled-back copy",
            state.generation
        )));
    }
    check_invariants(&state, &envelopes).map_err(|e| bad(e.to_string()))?;
    Ok(Stored {
        state,
        envelopes,
        resource_version: secret.metadata.resource_version.clone(),
    })
}

/// `state.json` as a [`StoredState`]; the error names the field that failed (e.g.
/// `pendingDeletion.destroyAt: ...`), so an operator sees which stored value is bad.
pub fn decode_state(json: &[u8]) -> Result<StoredState, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let state = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    // Nothing may follow the document (as `serde_json::from_slice` checks).
    de.end().map_err(|e| e.to_string())?;
    Ok(state)
}

/// Read a ManagedKey's storage (empty when none exists yet, unless the controller already
/// saved some: then a missing object is an integrity failure, not a fresh start).
pub async fn load(
    loc: &StorageLocation,
    client: &kube::Client,
    id: &KeyIdentity,
    min_generation: u64,
) -> Result<Stored, StorageError> {
    let name = secret_name(&id.uid);
    let api: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
    match api.get_opt(&name).await {
        Ok(Some(s)) => parse(&s, id, &loc.mac, min_generation),
        Ok(None) if min_generation > 0 => Err(StorageError::Missing {
            name,
            generation: min_generation,
        }),
        Ok(None) => Ok(Stored::default()),
        Err(source) => Err(StorageError::Kube { name, source }),
    }
}

/// The storage Secret for `stored` as `id`'s, with its MAC (pure; [`save`] writes it).
pub fn to_secret(
    loc: &StorageLocation,
    id: &KeyIdentity,
    stored: &Stored,
) -> Result<Secret, StorageError> {
    let name = secret_name(&id.uid);
    let state_json = serde_json::to_vec(&stored.state).map_err(|e| StorageError::Integrity {
        name: name.clone(),
        detail: format!("state does not serialize: {e}"),
    })?;
    let mut secret = sealed(loc, id, state_json, &stored.envelopes);
    secret.metadata.resource_version = stored.resource_version.clone();
    if let Some(u) = stored.state.restored_from.clone() {
        secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(RESTORED_FROM_ANNOTATION.to_string(), u);
    }
    Ok(secret)
}

/// A storage Secret holding `state_json` as given (any bytes) and `envelopes`, with a valid
/// MAC over them: what [`to_secret`] writes, and what the fuzzing harness
/// (`tests/fuzz/state.rs`) feeds [`parse`] to reach the checks behind the MAC.
pub fn sealed(
    loc: &StorageLocation,
    id: &KeyIdentity,
    state_json: Vec<u8>,
    envelopes: &BTreeMap<u32, Vec<u8>>,
) -> Secret {
    let name = secret_name(&id.uid);
    let tag = loc.mac.tag(id, &state_json, envelopes);
    let mut data: BTreeMap<String, ByteString> = envelopes
        .iter()
        .map(|(v, b)| (format!("v{v}"), ByteString(b.clone())))
        .collect();
    data.insert(STATE_ENTRY.into(), ByteString(state_json));
    data.insert(MAC_ENTRY.into(), ByteString(hex::encode(tag).into_bytes()));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(loc.namespace.clone()),
            labels: Some(
                [
                    (STORAGE_LABEL.to_string(), STORAGE_LABEL_VALUE.to_string()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "keyward".to_string(),
                    ),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (NAMESPACE_ANNOTATION.to_string(), id.namespace.clone()),
                    (NAME_ANNOTATION.to_string(), id.name.clone()),
                    (UID_ANNOTATION.to_string(), id.uid.clone()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Write storage with optimistic concurrency: create when new, replace at the read
/// resourceVersion otherwise (a 409 means someone else wrote first: re-read and re-plan).
/// The generation goes up by one; returns the saved generation.
pub async fn save(
    loc: &StorageLocation,
    client: &kube::Client,
    id: &KeyIdentity,
    stored: &mut Stored,
) -> Result<u64, StorageError> {
    let name = secret_name(&id.uid);
    let previous = stored.state.generation;
    stored.state.generation = previous + 1;
    let written = match to_secret(loc, id, stored) {
        Ok(secret) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
            let r = if stored.resource_version.is_some() {
                api.replace(&name, &PostParams::default(), &secret).await
            } else {
                api.create(&PostParams::default(), &secret).await
            };
            r.map_err(|source| StorageError::Kube { name, source })
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(s) => {
            stored.resource_version = s.metadata.resource_version;
            Ok(stored.state.generation)
        }
        // Nothing was written: the caller may retry from the same state.
        Err(e) => {
            stored.state.generation = previous;
            Err(e)
        }
    }
}

/// Remove a ManagedKey's storage (idempotent). With `resource_version`, only the copy that
/// was read (a 409 means it changed since: re-read and decide again).
pub async fn delete(
    loc: &StorageLocation,
    client: &kube::Client,
    uid: &str,
    resource_version: Option<String>,
) -> Result<(), StorageError> {
    let name = secret_name(uid);
    let api: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
    let dp = DeleteParams {
        preconditions: resource_version.map(|rv| kube::api::Preconditions {
            resource_version: Some(rv),
            uid: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(StorageError::Kube { name, source }),
    }
}

/// Unwrap one version's material.
pub async fn unwrap_version(
    keyring: &Keyring,
    stored: &Stored,
    namespace: &str,
    name: &str,
    version: u32,
) -> Result<SecretBytes, StorageError> {
    let key = format!("{namespace}/{name}");
    let bytes = stored
        .envelopes
        .get(&version)
        .ok_or_else(|| StorageError::Material {
            key: key.clone(),
            version,
            detail: "no material stored (destroyed or never written)".into(),
        })?;
    let env = Envelope::decode(bytes).map_err(|e| StorageError::Material {
        key: key.clone(),
        version,
        detail: e.to_string(),
    })?;
    Ok(keyring
        .unwrap(&env, &KeyContext::new(namespace, name, version))
        .await?)
}

/// ManagedKeys that still have versions from the old per-namespace layout (status lists
/// versions but no storage generation was ever recorded): the controller refuses to start.
pub fn old_layout_keys(keys: &[ManagedKey]) -> Vec<String> {
    keys.iter()
        .filter(|k| {
            k.status
                .as_ref()
                .is_some_and(|s| s.version_count > 0 && s.storage_generation.is_none())
        })
        .map(|k| format!("{}/{}", k.namespace().unwrap_or_default(), k.name_any()))
        .collect()
}

#[cfg(test)]
mod tests;
