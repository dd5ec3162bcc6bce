use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest GCM usage limit: SP 800-38D caps random-nonce GCM at 2^32 invocations per key;
/// keyward stops strictly below it.
pub const MAX_GCM_USAGE_LIMIT: u64 = (1 << 32) - 1;

/// How often keys rotate, how long old versions stay usable, and when they are destroyed.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keyward.io",
    version = "v1alpha1",
    kind = "RotationPolicy",
    namespaced,
    shortname = "rp",
    category = "keyward",
    status = "RotationPolicyStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.rotationPeriod"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Retain","type":"integer","jsonPath":".spec.retainVersions"}"#,
    printcolumn = r#"{"name":"Grace","type":"string","jsonPath":".spec.gracePeriod"}"#,
    printcolumn = r#"{"name":"Pre-Publish","type":"string","priority":1,"jsonPath":".spec.prePublish"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = r#"has(self.spec.rotationPeriod) || has(self.spec.schedule)"#
)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicySpec {
    /// Rotate when the current version is this old: `90d`, `2160h` or ISO 8601 `P90D`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::optional_schema")]
    pub rotation_period: Option<String>,
    /// Cron schedule (5 fields, UTC), e.g. `0 3 * * 1`; rotates at each firing. With a period
    /// too, whichever comes first wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128))]
    pub schedule: Option<String>,
    /// A version expires (stops being served at all) this long after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::optional_schema")]
    pub expire_after: Option<String>,
    /// Warn (condition and Event) this long before expiry or a due rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::optional_schema")]
    pub notify_before_expiry: Option<String>,
    /// Staged rotation: create the next version this long before it becomes Active. Until then
    /// it is PreActivation and published to readers (`version: all`, JWKS, the `.next` file)
    /// but never served as `current`, so verifiers and decrypters hold it before anyone signs or
    /// encrypts with it. Shorter than rotationPeriod and expireAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::optional_schema")]
    pub pre_publish: Option<String>,
    /// Versions to keep with material (current included); older ones are destroyed after the
    /// grace period and deletion window.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 32))]
    pub retain_versions: u32,
    /// How long the previous version keeps being served (dual-key verification, decryption of
    /// recent data) after a rotation.
    #[serde(default = "default_grace")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub grace_period: String,
    /// Days between scheduling destruction and destroying material, 7 to 30 (as AWS KMS).
    #[serde(default = "default_window")]
    #[schemars(range(min = 7, max = 30))]
    pub deletion_window_days: u32,
    /// Rotate an AES-GCM data key before it has been used this many times (below 2^32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u64))]
    pub gcm_usage_limit: Option<u64>,
}

/// What the controller observed of a policy: whether keys can use it, and how many do.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicyStatus {
    /// ManagedKeys of this namespace whose spec.policyRef names this policy.
    #[serde(default)]
    pub keys: u32,
    /// `Valid`: True when the spec parses and is consistent; False names the field and the
    /// fix (keys that reference an invalid policy fall back to the defaults and say so).
    #[serde(default)]
    pub conditions: Vec<super::Condition>,
    /// Generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_retain() -> u32 {
    3
}
fn default_grace() -> String {
    "7d".into()
}
fn default_window() -> u32 {
    30
}

impl Default for RotationPolicySpec {
    fn default() -> Self {
        Self {
            rotation_period: Some("90d".into()),
            schedule: None,
            expire_after: None,
            notify_before_expiry: None,
            pre_publish: None,
            retain_versions: default_retain(),
            grace_period: default_grace(),
            deletion_window_days: default_window(),
            gcm_usage_limit: None,
        }
    }
}
