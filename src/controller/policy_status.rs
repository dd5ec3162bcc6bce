//! RotationPolicy status: a `Valid` condition (the same validation the planner applies, so a
//! mistake shows on the policy itself, not only on each key that uses it), the number of keys
//! that reference it, and `observedGeneration`. Read-only towards keys: it never changes one.

use super::Context;
use super::reconcile::MANAGER;
use crate::crd::{Condition, ManagedKey, RotationPolicy, RotationPolicyStatus};
use crate::rotation::Policy;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// What a policy reconcile needs: the API, the ManagedKey controller's cache (counting keys
/// costs no API call) and the clock.
pub struct PolicyContext {
    /// Shared controller context (client, clock).
    pub ctx: Arc<Context>,
    /// ManagedKeys as the key controller's watch sees them.
    pub keys: Store<ManagedKey>,
}

/// Errors of one policy reconcile (status writes only).
#[derive(Debug, thiserror::Error)]
pub enum PolicyStatusError {
    /// The status write failed.
    #[error("RotationPolicy status: {0}")]
    Kube(#[from] kube::Error),
}

/// The status a policy should have: pure, so every rule is a unit test.
pub fn project(
    rp: &RotationPolicy,
    keys: &[Arc<ManagedKey>],
    now: Timestamp,
) -> RotationPolicyStatus {
    let ns = rp.namespace();
    let name = rp.name_any();
    let using = keys
        .iter()
        .filter(|mk| {
            mk.namespace() == ns && mk.spec.policy_ref.as_ref().is_some_and(|r| r.name == name)
        })
        .count();
    let (ok, reason, message) = match Policy::from_spec(&rp.spec) {
        Ok(_) => (
            true,
            "Valid",
            "keys that reference this policy follow it".to_string(),
        ),
        Err(e) => (
            false,
            "Invalid",
            format!("{e}; until fixed, keys that reference it use the default policy"),
        ),
    };
    let old = rp.status.as_ref();
    let status = if ok { "True" } else { "False" };
    // lastTransitionTime moves only when the status does.
    let since = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Valid" && c.status == status)
        })
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| {
            Timestamp::from_second(now.as_second())
                .unwrap_or(now)
                .to_string()
        });
    RotationPolicyStatus {
        keys: u32::try_from(using).unwrap_or(u32::MAX),
        conditions: vec![Condition {
            type_: "Valid".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: rp.meta().generation,
        }],
        observed_generation: rp.meta().generation,
    }
}

/// Reconcile one policy: project and write status when it changed (server-side apply).
pub async fn reconcile(
    rp: Arc<RotationPolicy>,
    pctx: Arc<PolicyContext>,
) -> Result<Action, PolicyStatusError> {
    let status = project(&rp, &pctx.keys.state(), pctx.ctx.clock.now());
    if rp.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": "keyward.io/v1alpha1",
            "kind": "RotationPolicy",
            "status": status,
        });
        Api::<RotationPolicy>::namespaced(
            pctx.ctx.client.clone(),
            &rp.namespace().unwrap_or_default(),
        )
        .patch_status(
            &rp.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    // Key counts also move when keys change; those trigger a reconcile through the key watch,
    // and this bounds drift if one is missed.
    Ok(Action::requeue(pctx.ctx.max_requeue))
}

/// Retry a failed status write after a short pause.
pub fn error_policy(
    rp: Arc<RotationPolicy>,
    e: &PolicyStatusError,
    _pctx: Arc<PolicyContext>,
) -> Action {
    tracing::debug!(policy = %rp.name_any(), error = %e, "policy status not written; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ManagedKeySpec, PolicyRef, RotationPolicySpec};

    fn key(ns: &str, name: &str, policy: Option<&str>) -> Arc<ManagedKey> {
        let mut mk = ManagedKey::new(
            name,
            ManagedKeySpec {
                policy_ref: policy.map(|p| PolicyRef { name: p.into() }),
                ..Default::default()
            },
        );
        mk.metadata.namespace = Some(ns.into());
        Arc::new(mk)
    }

    fn policy(spec: RotationPolicySpec) -> RotationPolicy {
        let mut rp = RotationPolicy::new("p", spec);
        rp.metadata.namespace = Some("a".into());
        rp.metadata.generation = Some(3);
        rp
    }

    #[test]
    fn counts_keys_of_its_namespace_that_reference_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let keys = [
            key("a", "k1", Some("p")),
            key("a", "k2", Some("p")),
            key("a", "k3", Some("other")),
            key("a", "k4", None),
            key("b", "k5", Some("p")),
        ];
        let st = project(&policy(RotationPolicySpec::default()), &keys, now);
        assert_eq!(st.keys, 2);
        assert_eq!(st.observed_generation, Some(3));
        let c = &st.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Valid", "True", "Valid")
        );
        assert_eq!(c.last_transition_time, "2027-01-15T08:00:00Z");
    }

    #[test]
    fn an_invalid_policy_names_the_field_and_keeps_its_transition_time() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut rp = policy(RotationPolicySpec {
            rotation_period: Some("30d".into()),
            pre_publish: Some("40d".into()),
            ..Default::default()
        });
        let st = project(&rp, &[], now);
        let c = &st.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert!(
            c.message.starts_with("spec.prePublish:") && c.message.contains("default policy"),
            "{}",
            c.message
        );
        // Unchanged status keeps its time; a change to True moves it.
        rp.status = Some(st.clone());
        let later = now + jiff::SignedDuration::from_secs(60);
        assert_eq!(project(&rp, &[], later), st);
        rp.spec.pre_publish = Some("2d".into());
        let fixed = project(&rp, &[], later);
        assert_eq!(fixed.conditions[0].status, "True");
        assert_eq!(
            fixed.conditions[0].last_transition_time,
            "2027-01-15T08:01:00Z"
        );
    }
}
