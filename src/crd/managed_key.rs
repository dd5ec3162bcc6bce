use super::Condition;
use crate::lifecycle::{KeyState, TransitionRecord};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that asks for an immediate rotation; its value is a request id (any string),
/// handled once (the controller records the last handled id in status).
pub const ROTATE_NOW_ANNOTATION: &str = "keyward.io/rotate-now";
/// Finalizer that makes a deletion pass through the controller, which records the pending
/// destruction in storage (kept in the controller's namespace for the deletion window) and
/// then lets the object go at once.
pub const FINALIZER: &str = "keyward.io/deletion-window";
/// Annotation on a new ManagedKey asking to restore a deleted key's versions: its value is the
/// deleted key's UID. Same namespace and name only, and only within the deletion window.
pub const RESTORE_ANNOTATION: &str = "keyward.io/restore-from-uid";

/// A data key keyward generates, wraps, rotates and serves.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "keyward.io",
    version = "v1alpha1",
    kind = "ManagedKey",
    namespaced,
    status = "ManagedKeyStatus",
    shortname = "mk",
    category = "keyward",
    // Next-Rotation stays a string: a `date` column is printed as time since, and kubectl
    // shows "<invalid>" for every future time (apimachinery duration.HumanDuration).
    // Last-Rotation is in the past, so it reads as an age.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentVersion"}"#,
    printcolumn = r#"{"name":"Next-Rotation","type":"string","jsonPath":".status.nextRotation"}"#,
    printcolumn = r#"{"name":"Last-Rotation","type":"date","jsonPath":".status.lastRotation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","priority":1,"jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Next","type":"integer","priority":1,"jsonPath":".status.nextVersion"}"#,
    printcolumn = r#"{"name":"Versions","type":"integer","priority":1,"jsonPath":".status.versionCount"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","priority":1,"jsonPath":".spec.policyRef.name"}"#,
    printcolumn = r#"{"name":"KEK","type":"string","priority":1,"jsonPath":".status.kek"}"#,
    validation = r#"!has(self.spec.algorithm) || !has(oldSelf.spec) || !has(oldSelf.spec.algorithm) || self.spec.algorithm == oldSelf.spec.algorithm"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedKeySpec {
    /// Key type; immutable once set (a new algorithm is a new key).
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// The RotationPolicy (same namespace) that schedules rotation; none = never rotates
    /// on a schedule (rotate-now still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,
    /// What the owner wants the key to be. Compromised rotates at once and never serves the
    /// old version again.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// Who may receive the key through the CSI provider.
    #[serde(default)]
    pub access: AccessPolicy,
    /// Schedule destruction (like AWS KMS ScheduleKeyDeletion); remove to cancel within the
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<DeletionRequest>,
}

/// Key algorithms. Asymmetric private keys are stored as PKCS#8 DER inside the envelope.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyAlgorithm {
    /// 256-bit AES data key (default).
    #[default]
    #[serde(rename = "aes-256")]
    Aes256,
    /// HMAC-SHA256 secret (JWT HS256).
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA384 secret.
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA512 secret.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
    /// RSA 2048 (JWT RS256).
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 3072.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA 4096.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    /// ECDSA P-256 (ES256).
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA P-384 (ES384).
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// Ed25519 (EdDSA).
    #[serde(rename = "ed25519")]
    Ed25519,
    /// X25519 key agreement (successor of classic Diffie-Hellman).
    #[serde(rename = "x25519")]
    X25519,
}

impl KeyAlgorithm {
    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256 => "aes-256",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::X25519 => "x25519",
        }
    }

    /// Symmetric keys have no public part.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            Self::Aes256 | Self::HmacSha256 | Self::HmacSha384 | Self::HmacSha512
        )
    }
}

/// Reference to a RotationPolicy in the key's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PolicyRef {
    /// RotationPolicy name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The owner's wish for the key as a whole.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    /// Served and rotated.
    #[default]
    Active,
    /// Temporarily not served as current; older material still processes.
    Suspended,
    /// Retired: no new use, existing data may still be processed.
    Deactivated,
    /// Rotate at once; the old version is never served again.
    Compromised,
}

/// Which workloads may receive the key.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    /// Service accounts allowed to mount the key.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<ServiceAccountRef>,
}

/// One allowed service account.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Namespace of the service account (usually the key's own; another namespace shares
    /// the key with it explicitly).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Service account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Only public parts (verifiers of signatures, JWKS consumers): the key service never
    /// sends private material for this grant, and only public formats can be mounted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_only: bool,
}

/// A scheduled destruction.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionRequest {
    /// Must be true; present so that the field can be removed to cancel.
    pub scheduled: bool,
}

/// Observed state. Metadata and fingerprints only: never key bytes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedKeyStatus {
    /// Version served as current (the Active one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u32>,
    /// Key-level state: the current version's state, or Suspended/Deactivated/PendingDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Number of versions recorded.
    #[serde(default)]
    pub version_count: u32,
    /// Every version, newest first.
    #[serde(default)]
    pub versions: Vec<KeyVersionStatus>,
    /// The pre-published version that becomes current at the next rotation (RotationPolicy
    /// prePublish): readers receive it with `version: all` and in JWKS already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_version: Option<u32>,
    /// Versions whose expiry warning (a Warning Event at notifyBeforeExpiry) was sent: each
    /// version is announced once, across controller restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiry_notified: Vec<u32>,
    /// When the next rotation is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
    /// When the last rotation happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    /// Last rotate-now request id handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// Pending destruction, if scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deletion: Option<PendingDeletion>,
    /// KEK (backend/id/version) that wraps the newest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// Conditions with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Generation of the stored state the controller last saved (only the controller writes
    /// status): a stored copy older than this is refused as a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_generation: Option<u64>,
}

/// Destruction scheduled for the whole key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingDeletion {
    /// When destruction was scheduled.
    pub scheduled_at: String,
    /// When material will be destroyed.
    pub destroy_at: String,
}

/// One key version's metadata.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersionStatus {
    /// Version number, from 1.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time.
    pub created: String,
    /// Activation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<String>,
    /// Deactivation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated: Option<String>,
    /// Expiry time (policy expireAfter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Destruction time, once destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<String>,
    /// One-way fingerprint of the material (`sha256:` + 32 hex).
    pub fingerprint: String,
    /// KEK that wraps this version (`backend/id@version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// The `kid` of this version's JWKs as pods receive them (also its object version in the
    /// driver's pod status): an opaque id that reveals nothing about the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Public key (SPKI PEM) of an asymmetric version; public parts may be shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Lifecycle history.
    #[serde(default)]
    pub transitions: Vec<TransitionRecord>,
}

impl ManagedKeyStatus {
    /// The version record with number `v`.
    pub fn version(&self, v: u32) -> Option<&KeyVersionStatus> {
        self.versions.iter().find(|x| x.version == v)
    }

    /// The condition of type `type_` if its status is True.
    pub fn true_condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    }
}
