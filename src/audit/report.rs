//! Compliance report: every ManagedKey with its state, the age of its current version against
//! its policy, overdue rotations, pending deletions and the KEK in use.

use crate::crd::{ManagedKey, RotationPolicy};
use crate::duration;
use crate::rotation::Policy;
use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

/// One row of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Key-level state.
    pub state: String,
    /// Current version.
    pub current_version: Option<u32>,
    /// Age of the current version in seconds.
    pub current_age_secs: Option<i64>,
    /// Policy name and its rotation period.
    pub policy: Option<String>,
    /// Rotation period in seconds.
    pub period_secs: Option<i64>,
    /// Next rotation due.
    pub next_rotation: Option<String>,
    /// Rotation is overdue.
    pub overdue: bool,
    /// Destruction scheduled at.
    pub pending_deletion: Option<String>,
    /// Versions holding material / total.
    pub versions: String,
    /// KEK in use.
    pub kek: Option<String>,
    /// Problems found.
    pub findings: Vec<String>,
}

/// Build the report (pure: from listed objects and now).
pub fn build(keys: &[ManagedKey], policies: &[RotationPolicy], now: Timestamp) -> Vec<Row> {
    let mut rows: Vec<Row> = keys
        .iter()
        .map(|mk| {
            let ns = mk.namespace().unwrap_or_default();
            let st = mk.status.clone().unwrap_or_default();
            let mut findings = Vec::new();
            let policy = mk.spec.policy_ref.as_ref().map(|r| r.name.clone());
            let parsed = policy.as_ref().and_then(|p| {
                policies
                    .iter()
                    .find(|rp| rp.namespace().as_deref() == Some(&ns) && rp.name_any() == *p)
            });
            if let (Some(p), None) = (&policy, parsed) {
                findings.push(format!("policy {p} not found"));
            }
            let parsed = parsed.and_then(|rp| match Policy::from_spec(&rp.spec) {
                Ok(p) => Some(p),
                Err(e) => {
                    findings.push(format!("policy invalid: {e}"));
                    None
                }
            });
            let cur = st.current_version.and_then(|v| st.version(v));
            let activated: Option<Timestamp> = cur
                .and_then(|c| c.activated.as_deref())
                .and_then(|s| s.parse().ok());
            let age = activated.map(|a| now.duration_since(a).as_secs());
            let due = match (&parsed, activated) {
                (Some(p), Some(a)) => p.due_after(a),
                _ => st.next_rotation.as_deref().and_then(|s| s.parse().ok()),
            };
            let overdue = due.is_some_and(|d| now > d);
            if overdue {
                findings.push(format!(
                    "rotation overdue since {}",
                    due.map(|d| d.to_string()).unwrap_or_default()
                ));
            }
            if policy.is_none() {
                findings.push("no rotation policy".into());
            }
            let pending = st.pending_deletion.as_ref().map(|p| p.destroy_at.clone());
            if let Some(p) = &pending {
                findings.push(format!("destruction scheduled at {p}"));
            }
            let live = st
                .versions
                .iter()
                .filter(|v| v.state.has_material())
                .count();
            Row {
                namespace: ns,
                name: mk.name_any(),
                state: st.state.clone().unwrap_or_else(|| "Unknown".into()),
                current_version: st.current_version,
                current_age_secs: age,
                period_secs: parsed.as_ref().and_then(|p| p.period).map(|d| d.secs()),
                policy,
                next_rotation: due.map(|d| d.to_string()),
                overdue,
                pending_deletion: pending,
                versions: format!("{live}/{}", st.versions.len()),
                kek: st.kek.clone(),
                findings,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// Render as a fixed-width table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<16} {:>4} {:>8} {:>8} {:<8} {:<20} {:<28}\n",
        "NAMESPACE", "NAME", "STATE", "CUR", "AGE", "PERIOD", "OVERDUE", "PENDING-DELETION", "KEK"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:<24} {:<16} {:>4} {:>8} {:>8} {:<8} {:<20} {:<28}\n",
            r.namespace,
            r.name,
            r.state,
            r.current_version
                .map(|v| v.to_string())
                .unwrap_or("-".into()),
            r.current_age_secs
                .map(duration::format)
                .unwrap_or("-".into()),
            r.period_secs.map(duration::format).unwrap_or("-".into()),
            if r.overdue { "YES" } else { "no" },
            r.pending_deletion.as_deref().unwrap_or("-"),
            r.kek.as_deref().unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        KeyVersionStatus, ManagedKeySpec, ManagedKeyStatus, PendingDeletion, PolicyRef,
        RotationPolicySpec,
    };
    use crate::lifecycle::KeyState;

    fn key(name: &str, activated: &str, pending: Option<&str>) -> ManagedKey {
        let mut mk = ManagedKey::new(
            name,
            ManagedKeySpec {
                policy_ref: Some(PolicyRef { name: "p".into() }),
                ..Default::default()
            },
        );
        mk.metadata.namespace = Some("ns".into());
        mk.status = Some(ManagedKeyStatus {
            current_version: Some(1),
            state: Some(
                if pending.is_some() {
                    "PendingDeletion"
                } else {
                    "Active"
                }
                .into(),
            ),
            versions: vec![KeyVersionStatus {
                version: 1,
                state: KeyState::Active,
                created: activated.into(),
                activated: Some(activated.into()),
                deactivated: None,
                expires: None,
                destroyed: None,
                fingerprint: "sha256:00".into(),
                kek: None,
                kid: None,
                public_key: None,
                transitions: vec![],
            }],
            pending_deletion: pending.map(|p| PendingDeletion {
                scheduled_at: activated.into(),
                destroy_at: p.into(),
            }),
            ..Default::default()
        });
        mk
    }

    #[test]
    fn report_flags_an_overdue_key_and_a_key_pending_deletion() {
        let mut rp = RotationPolicy::new(
            "p",
            RotationPolicySpec {
                rotation_period: Some("30d".into()),
                ..Default::default()
            },
        );
        rp.metadata.namespace = Some("ns".into());
        let now: Timestamp = "2027-03-01T00:00:00Z".parse().unwrap();
        let keys = vec![
            key("fresh", "2027-02-20T00:00:00Z", None),
            key("stale", "2027-01-01T00:00:00Z", None),
            key(
                "leaving",
                "2027-02-25T00:00:00Z",
                Some("2027-03-20T00:00:00Z"),
            ),
        ];
        let rows = build(&keys, &[rp], now);
        let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        assert!(!by("fresh").overdue);
        assert!(by("stale").overdue);
        assert!(
            by("stale").findings[0].contains("overdue since 2027-01-31"),
            "{:?}",
            by("stale").findings
        );
        assert_eq!(
            by("leaving").pending_deletion.as_deref(),
            Some("2027-03-20T00:00:00Z")
        );
        assert!(!by("leaving").overdue);
        let t = table(&rows);
        assert!(t.contains("stale") && t.contains("YES"), "{t}");
        assert_eq!(serde_json::to_value(&rows).unwrap()[1]["name"], "leaving");
    }
}
