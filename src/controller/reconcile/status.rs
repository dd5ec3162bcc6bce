//! Status as a projection of stored state (fingerprints and times, never key bytes), its
//! conditions, and the one write that puts it on the object (server-side apply).

use super::super::{Context, Error};
use super::MANAGER;
use super::report::{audit, key_of, publish};
use crate::crd::{Condition, ManagedKey, ManagedKeyStatus};
use crate::lifecycle::KeyState;
use crate::rotation::{Plan, Policy, VersionLimit};
use crate::state::StoredState;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

/// Status keeps the last few transitions per version; storage keeps all of them.
const STATUS_TRANSITIONS: usize = 5;

/// Degraded reason when the planner could not create a version (material limit reached).
pub(super) const VERSION_LIMIT: &str = "VersionLimit";

/// What is blocked, until when, and the fix.
fn version_limit_message(mk: &ManagedKey, b: &VersionLimit) -> String {
    let until = b.frees_at.map_or_else(
        || "when an old version is destroyed".to_string(),
        |t| format!("after {t}, when the oldest may be destroyed"),
    );
    let policy = mk
        .spec
        .policy_ref
        .as_ref()
        .map_or("the default policy".to_string(), |p| {
            format!("RotationPolicy {}", p.name)
        });
    format!(
        "no new version ({}): {} versions still hold material, the limit for {}; it resumes {until}. \
         Lengthen rotationPeriod or shorten gracePeriod/deletionWindowDays in {policy}, or send \
         fewer rotate-now requests",
        b.cause,
        b.with_material,
        mk.spec.algorithm.as_str(),
    )
}

/// A condition, keeping `lastTransitionTime` while its status does not change.
pub(super) fn condition(
    old: Option<&ManagedKeyStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        })
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The projection of stored state and plan.
pub(super) fn project(
    mk: &ManagedKey,
    st: &StoredState,
    plan: &Plan,
    policy_problem: Option<(&'static str, String)>,
    (notify_before, expiry): (Option<crate::duration::Duration>, &[(u32, Timestamp)]),
    ctx: &Context,
    now: Timestamp,
) -> ManagedKeyStatus {
    let old = mk.status.as_ref();
    let generation = mk.metadata.generation;
    let current = st.current();
    let state = if st.pending_deletion.is_some() {
        "PendingDeletion".to_string()
    } else if let Some(c) = current {
        c.state.as_str().to_string()
    } else if st.versions.iter().any(|v| v.state == KeyState::Deactivated) {
        "Deactivated".into()
    } else if st.all_destroyed() {
        "Destroyed".into()
    } else {
        "Pending".into()
    };
    let mut conditions = Vec::new();
    let ready =
        current.is_some_and(|c| c.state == KeyState::Active) && st.pending_deletion.is_none();
    let (r, m) = if ready {
        (
            "KeyActive".to_string(),
            format!(
                "version {} is active",
                current.map(|c| c.version).unwrap_or(0)
            ),
        )
    } else {
        (
            format!("Key{state}"),
            format!("no active version is served (state {state})"),
        )
    };
    conditions.push(condition(old, "Ready", ready, &r, m, generation, now));
    // Degraded is True when something needs the owner's attention.
    let (degraded, r, m) = match (policy_problem, plan.blocked) {
        (Some((r, m)), _) => (true, r, m),
        (None, Some(b)) => (true, VERSION_LIMIT, version_limit_message(mk, &b)),
        (None, None) => (
            false,
            "AsExpected",
            "policy and storage are healthy".to_string(),
        ),
    };
    conditions.push(condition(old, "Degraded", degraded, r, m, generation, now));
    if let Some(next) = plan.next_rotation
        && st.pending_deletion.is_none()
    {
        let version = current.map(|c| c.version).unwrap_or(0);
        let notice = notify_before.and_then(|n| next.checked_sub(n.signed()).ok());
        let (due, reason, message) = if next <= now {
            (
                true,
                "Overdue",
                format!(
                    "version {version} was due for rotation at {next} and is not rotated (state {state})"
                ),
            )
        } else if notice.is_some_and(|n| now >= n) {
            (
                true,
                "DueSoon",
                format!("version {version} rotates or expires at {next} (notifyBeforeExpiry)"),
            )
        } else {
            (false, "NotDue", format!("next rotation at {next}"))
        };
        conditions.push(condition(
            old,
            "RotationDue",
            due,
            reason,
            message,
            generation,
            now,
        ));
    }
    let expiring: Vec<(u32, Timestamp)> = match notify_before {
        Some(n) => expiry
            .iter()
            .copied()
            .filter(|(_, at)| crate::duration::before(*at, n) <= now)
            .collect(),
        None => Vec::new(),
    };
    if let Some((v, at)) = expiry.first()
        && st.pending_deletion.is_none()
    {
        let (soon, reason, message) = if expiring.is_empty() {
            (
                false,
                "NotExpiring",
                format!("the next expiry is version {v} at {}", to_second(*at)),
            )
        } else {
            // At most 8 named (a key may hold 256 versions); the count says how many more.
            let mut list = expiring
                .iter()
                .take(8)
                .map(|(v, at)| format!("version {v} at {}", to_second(*at)))
                .collect::<Vec<_>>()
                .join(", ");
            if expiring.len() > 8 {
                list.push_str(&format!(" and {} more", expiring.len() - 8));
            }
            (
                true,
                "VersionsExpiring",
                format!(
                    "expiring within notifyBeforeExpiry: {list}; an expired version is never served again, so data it protects must be re-encrypted or re-signed before then"
                ),
            )
        };
        conditions.push(condition(
            old,
            "ExpiringSoon",
            soon,
            reason,
            message,
            generation,
            now,
        ));
    }
    // Each version is announced once: remembered while it still holds material.
    let mut expiry_notified: Vec<u32> = old
        .map(|s| s.expiry_notified.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| st.version(*v).is_some_and(|x| x.state.has_material()))
        .chain(expiring.iter().map(|(v, _)| *v))
        .collect();
    expiry_notified.sort_unstable();
    expiry_notified.dedup();
    if let Some(pd) = &st.pending_deletion {
        conditions.push(condition(
            old,
            "PendingDeletion",
            true,
            "DeletionScheduled",
            format!("material will be destroyed at {}", pd.destroy_at),
            generation,
            now,
        ));
    }
    ManagedKeyStatus {
        current_version: current.map(|c| c.version),
        state: Some(state),
        version_count: st.version_count(),
        versions: {
            let mut vs = st.version_statuses(STATUS_TRANSITIONS);
            if let Some(ids) = &ctx.version_ids {
                let (ns, name) = (mk.namespace().unwrap_or_default(), mk.name_any());
                for v in &mut vs {
                    v.kid = Some(ids.kid(&ns, &name, v.version));
                }
            }
            vs
        },
        next_version: st
            .versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::PreActivation)
            .map(|v| v.version),
        expiry_notified,
        // To the second: these are read by people (`kubectl get mk`), and the planner's
        // sub-second precision only made the column unreadable.
        next_rotation: plan.next_rotation.map(to_second),
        last_rotation: st
            .versions
            .iter()
            .rev()
            .find_map(|v| v.activated.map(to_second)),
        last_rotate_request: st.last_rotate_request.clone(),
        pending_deletion: st.pending_deletion.map(|p| p.status()),
        kek: Some(ctx.keyring.describe()),
        conditions,
        observed_generation: generation,
        storage_generation: (st.generation > 0).then_some(st.generation),
    }
}

/// Upcoming expiries of versions that still serve or decrypt (not Compromised, not yet
/// destroyed), soonest first: as stored at creation, or sooner under the policy's expireAfter.
pub(super) fn expiries(
    st: &StoredState,
    policy: Option<&Policy>,
    now: Timestamp,
) -> Vec<(u32, Timestamp)> {
    let mut out: Vec<(u32, Timestamp)> = st
        .versions
        .iter()
        .filter(|v| {
            matches!(
                v.state,
                KeyState::PreActivation
                    | KeyState::Active
                    | KeyState::Suspended
                    | KeyState::Deactivated
            )
        })
        .filter_map(|v| {
            let at = match policy {
                Some(p) => p.expiry_of(v),
                None => v.expires,
            }?;
            (at > now).then_some((v.version, at))
        })
        .collect();
    out.sort_by_key(|(v, at)| (*at, *v));
    out
}

/// RFC 3339 at whole seconds (rounded down).
pub(super) fn to_second(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// Write status when it changed (server-side apply, forced: the controller owns status).
pub(super) async fn write(
    ctx: &Context,
    mk: &ManagedKey,
    status: &ManagedKeyStatus,
) -> Result<(), Error> {
    if mk.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey", "status": status});
    let ns = mk.namespace().unwrap_or_default();
    let written = Api::<ManagedKey>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &mk.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    // Its watch event is not news unless someone changed an input since this reconcile read.
    if crate::controller::self_writes::same_inputs(mk, &written) {
        ctx.self_writes.record(
            crate::controller::self_writes::Kind::Key,
            &ns,
            &written.name_any(),
            written.resource_version().as_deref(),
        );
    }
    Ok(())
}

/// Why a key serves nothing and plans nothing until its owner acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Condition reason (also the Event reason).
    pub reason: &'static str,
    /// What is wrong and the fix.
    pub message: String,
    /// Audit action recorded with it.
    pub audit_action: &'static str,
}

impl Problem {
    /// Stored state that failed its integrity check.
    pub(super) fn integrity(e: &crate::storage::StorageError) -> Self {
        Self {
            reason: "StorageIntegrity",
            message: e.to_string(),
            audit_action: "integrity-failure",
        }
    }
}

/// Serve and plan nothing; say so once (Ready False, Degraded True, a Warning Event and an
/// audit record), then look again later.
pub(super) async fn report_problem(
    ctx: &Context,
    mk: &ManagedKey,
    p: Problem,
) -> Result<Action, Error> {
    let already = mk
        .status
        .as_ref()
        .and_then(|s| s.true_condition("Degraded"))
        .is_some_and(|c| c.reason == p.reason && c.message == p.message);
    if !already {
        let (action, message) = (p.audit_action, p.message.clone());
        tracing::error!(key = %key_of(mk), reason = p.reason, error = %p.message, "key refused");
        publish(
            ctx,
            mk,
            EventType::Warning,
            p.reason,
            "Verify",
            p.message.clone(),
        )
        .await;
        let now = ctx.clock.now();
        let old = mk.status.as_ref();
        let generation = mk.metadata.generation;
        let mut status = old.cloned().unwrap_or_default();
        status
            .conditions
            .retain(|c| c.type_ != "Ready" && c.type_ != "Degraded");
        status.conditions.push(condition(
            old,
            "Ready",
            false,
            p.reason,
            "nothing is served until this is resolved (see the Degraded condition)".into(),
            generation,
            now,
        ));
        status.conditions.push(condition(
            old, "Degraded", true, p.reason, p.message, generation, now,
        ));
        write(ctx, mk, &status).await?;
        // Recorded once the condition is saved: a failed write retries, and records, later.
        audit(ctx, &key_of(mk), action, 0, &message);
    }
    Ok(Action::requeue(ctx.max_requeue))
}
