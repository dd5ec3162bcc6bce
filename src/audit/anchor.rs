//! The head of the audit chain, kept outside the log files: at every checkpoint the
//! controller copies {seq, prev, hash, every, sig} into the ConfigMap `keyward-audit-anchor`
//! in its namespace (one data entry per replica, each written by its own server-side-apply
//! field manager, so replicas never overwrite each other and a repeated write is a no-op).
//! Someone who can rewrite the files but not that ConfigMap cannot hide a cut tail: `keyward
//! audit verify --anchor` requires the log to reach the anchored checkpoint and hold it
//! byte for byte.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

/// Name of the ConfigMap holding every replica's anchor.
pub const CONFIGMAP: &str = "keyward-audit-anchor";

/// A checkpoint as seen from outside the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// Its `prev` (hash of the record before it).
    pub prev: String,
    /// SHA-256 of the checkpoint's own line.
    pub hash: String,
    /// The cadence it signed.
    pub every: u64,
    /// Its signature (hex), when checkpoints are signed: a forged anchor is then refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// When it was written.
    pub time: String,
}

/// Anchor errors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The API call failed.
    #[error("audit anchor ConfigMap {namespace}/{CONFIGMAP}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Cause.
        source: kube::Error,
    },
    /// Not there.
    #[error(
        "no audit anchor for {entry:?} in ConfigMap {namespace}/{CONFIGMAP}; entries: {known:?}"
    )]
    Missing {
        /// Namespace.
        namespace: String,
        /// The replica asked for.
        entry: String,
        /// Replicas that have one.
        known: Vec<String>,
    },
    /// Unreadable JSON.
    #[error(
        "audit anchor {source_name}: not an anchor ({detail}); expected JSON {{seq, prev, hash, every, sig, time}}"
    )]
    Parse {
        /// File or entry.
        source_name: String,
        /// Parser message.
        detail: String,
    },
}

impl Anchor {
    /// Parse an anchor (as `keyward audit verify --anchor FILE` reads it).
    pub fn parse(text: &str, source_name: &str) -> Result<Self, AnchorError> {
        serde_json::from_str(text.trim()).map_err(|e| AnchorError::Parse {
            source_name: source_name.into(),
            detail: e.to_string(),
        })
    }
}

/// The data key for a replica: ConfigMap keys allow `[-._a-zA-Z0-9]`, which pod names meet.
fn entry(identity: &str) -> String {
    identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(253)
        .collect()
}

/// Write this replica's anchor (server-side apply with field manager
/// `keyward-audit-<identity>`: idempotent, and it owns only its own entry).
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    identity: &str,
    anchor: &Anchor,
) -> Result<(), AnchorError> {
    let key = entry(identity);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "namespace": namespace},
        "data": {key.clone(): serde_json::to_string(anchor).unwrap_or_default()},
    });
    let manager: String = format!("keyward-audit-{key}").chars().take(128).collect();
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            CONFIGMAP,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
        .map_err(|source| AnchorError::Api {
            namespace: namespace.into(),
            source,
        })
}

/// Create the (empty) ConfigMap if it is not there yet. Done with `create` rather than by the
/// apply itself: Kubernetes authorizes an apply that creates as `create`, which RBAC cannot
/// limit to one name, while the later applies need only `patch` on this one name.
pub async fn ensure_configmap(client: &kube::Client, namespace: &str) -> Result<(), AnchorError> {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &cm)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(AnchorError::Api {
            namespace: namespace.into(),
            source,
        }),
    }
}

/// Read a replica's anchor from the cluster (`keyward audit verify --anchor-from-cluster`).
pub async fn fetch(
    client: &kube::Client,
    namespace: &str,
    identity: &str,
) -> Result<Anchor, AnchorError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(CONFIGMAP)
        .await
        .map_err(|source| AnchorError::Api {
            namespace: namespace.into(),
            source,
        })?;
    let data = cm.data.unwrap_or_default();
    let key = entry(identity);
    let text = data.get(&key).ok_or_else(|| AnchorError::Missing {
        namespace: namespace.into(),
        entry: key.clone(),
        known: data.keys().cloned().collect(),
    })?;
    Anchor::parse(text, &format!("{namespace}/{CONFIGMAP}[{key}]"))
}

/// Copy every new checkpoint to the ConfigMap until `shutdown`, then checkpoint and anchor
/// once more; the newest wins (a burst of checkpoints is one write), and a failed write is
/// retried after a short wait, logged and counted in `keyward_audit_write_failures_total`.
pub async fn run_publisher(
    audit: std::sync::Arc<super::Audit>,
    client: kube::Client,
    namespace: String,
    identity: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut rx = audit.anchors();
    let mut published: Option<Anchor> = None;
    let mut exists = false;
    tokio::pin!(shutdown);
    loop {
        if !exists {
            match ensure_configmap(&client, &namespace).await {
                Ok(()) => exists = true,
                Err(e) => {
                    audit.failures.inc();
                    tracing::error!(error = %e, "AUDIT ANCHOR CONFIGMAP NOT CREATED");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                        _ = &mut shutdown => return,
                    }
                }
            }
        }
        let current = rx.borrow_and_update().clone();
        if let Some(a) = current
            && published.as_ref() != Some(&a)
        {
            match publish(&client, &namespace, &identity, &a).await {
                Ok(()) => published = Some(a),
                Err(e) => {
                    audit.failures.inc();
                    tracing::error!(error = %e, seq = a.seq, "AUDIT ANCHOR NOT WRITTEN");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                        _ = &mut shutdown => return,
                    }
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = &mut shutdown => break,
        }
    }
    // Shutting down: sign what follows the last checkpoint and anchor it (bounded wait), so
    // a clean stop leaves no unanchored tail.
    audit.checkpoint();
    let last = rx.borrow().clone();
    if let Some(a) = last
        && published.as_ref() != Some(&a)
    {
        let wait = std::time::Duration::from_secs(2);
        match tokio::time::timeout(wait, publish(&client, &namespace, &identity, &a)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, seq = a.seq, "AUDIT ANCHOR NOT WRITTEN"),
            Err(_) => tracing::error!(seq = a.seq, "AUDIT ANCHOR NOT WRITTEN: timed out"),
        }
    }
}
