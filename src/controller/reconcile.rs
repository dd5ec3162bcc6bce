//! The thin I/O shell around the planner: read, plan, apply in one Secret write, project status.

use super::{Context, Error};
use crate::crd::{
    Condition, FINALIZER, KeyVersionStatus, ManagedKey, ManagedKeyStatus, ROTATE_NOW_ANNOTATION,
    RotationPolicy,
};
use crate::crypto::{KeyContext, SecretBytes, fingerprint};
use crate::lifecycle::KeyState;
use crate::rotation::{self, Action as PlanAction, Plan, PlanInput, Policy, StoredState};
use crate::storage;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Envelopes rewrapped per reconcile at most (bounds the time one reconcile holds a key).
const REWRAP_BATCH: usize = 64;

/// Field manager for everything the controller writes.
pub const MANAGER: &str = "keyward-controller";

/// Reconcile one ManagedKey. Errors are reported as Warning Events and counted.
pub async fn reconcile(mk: Arc<ManagedKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let r = reconcile_inner(&mk, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &r {
        ctx.metrics
            .errors
            .get_or_create(&super::metrics::ErrorLabels {
                reason: e.reason().into(),
            })
            .inc();
        let key = format!("{}/{}", mk.namespace().unwrap_or_default(), mk.name_any());
        if e.is_conflict() {
            // Expected with optimistic concurrency (a stale cache read); retried at once.
            tracing::debug!(%key, error = %e, "reconcile lost a write race; retrying");
        } else {
            tracing::warn!(%key, error = %e, "reconcile failed");
            publish(
                &ctx,
                &mk,
                EventType::Warning,
                "ReconcileFailed",
                "Reconcile",
                e.to_string(),
            )
            .await;
        }
    }
    r
}

/// Requeue policy after an error: conflicts retry at once, others back off briefly.
pub fn error_policy(_mk: Arc<ManagedKey>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        Action::requeue(Duration::from_millis(200))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

async fn publish(
    ctx: &Context,
    mk: &ManagedKey,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &mk.object_ref(&())).await {
        tracing::debug!(error = %e, "event not published");
    }
}

async fn load_policy(
    ctx: &Context,
    ns: &str,
    mk: &ManagedKey,
) -> Result<(Option<Policy>, Option<(String, String)>), Error> {
    let Some(r) = &mk.spec.policy_ref else {
        return Ok((None, None));
    };
    let api: Api<RotationPolicy> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_opt(&r.name).await? {
        None => (
            None,
            Some((
                "PolicyNotFound".into(),
                format!(
                    "RotationPolicy {ns}/{} does not exist: create it or fix spec.policyRef.name",
                    r.name
                ),
            )),
        ),
        Some(rp) => match Policy::from_spec(&rp.spec) {
            Ok(p) => (Some(p), None),
            Err(e) => (
                None,
                Some((
                    "PolicyInvalid".into(),
                    format!("RotationPolicy {ns}/{}: {e}", r.name),
                )),
            ),
        },
    })
}

async fn reconcile_inner(mk: &ManagedKey, ctx: &Context) -> Result<Action, Error> {
    let ns = mk
        .namespace()
        .ok_or_else(|| Error::Invalid("ManagedKey has no namespace".into()))?;
    let name = mk.name_any();
    let now = ctx.clock.now();
    let keys: Api<ManagedKey> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting_since: Option<Timestamp> = mk.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    let has_finalizer = mk.finalizers().iter().any(|f| f == FINALIZER);

    if deleting_since.is_some() && !has_finalizer {
        ctx.metrics.forget_key(&ns, &name);
        return Ok(Action::await_change());
    }
    if deleting_since.is_none() && !has_finalizer {
        // Added before any material exists, so deletion always passes through the window.
        let mut finalizers = mk.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": mk.resource_version()}});
        keys.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }

    let (policy, policy_problem) = load_policy(ctx, &ns, mk).await?;
    let id = storage::KeyIdentity::of(mk);
    let min_generation = mk
        .status
        .as_ref()
        .and_then(|s| s.storage_generation)
        .unwrap_or(0);
    let mut stored = match storage::load(&ctx.storage, &ctx.client, &id, min_generation).await {
        Ok(s) => s,
        // The end of a deletion removes storage before the finalizer: finish that step.
        Err(storage::StorageError::Missing { .. })
            if deleting_since.is_some()
                && mk.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Destroyed") =>
        {
            remove_finalizer(&keys, mk).await?;
            ctx.metrics.forget_key(&ns, &name);
            return Ok(Action::await_change());
        }
        Err(e) if e.is_integrity() => return report_integrity(ctx, mk, &e).await,
        Err(e) => return Err(e.into()),
    };
    let rotate_request = mk
        .annotations()
        .get(ROTATE_NOW_ANNOTATION)
        .map(String::as_str);
    let plan = rotation::plan(&PlanInput {
        spec: &mk.spec,
        policy: policy.as_ref(),
        state: &stored.state,
        rotate_request,
        deleting_since,
        now,
    });

    // KEK rotation or migration: rewrap envelopes made under an older KEK, a bounded batch
    // per reconcile, in the same atomic Secret write as any planned change.
    let stale: Vec<u32> = stored
        .envelopes
        .iter()
        .filter(|(_, b)| {
            crate::crypto::Envelope::decode(b).is_ok_and(|e| ctx.keyring.needs_rewrap(&e))
        })
        .map(|(v, _)| *v)
        .take(REWRAP_BATCH)
        .collect();
    for v in &stale {
        let env = crate::crypto::Envelope::decode(&stored.envelopes[v])?;
        let fresh = ctx
            .keyring
            .rewrap(&env, &KeyContext::new(&ns, &name, *v))
            .await?;
        let kek = format!("{}/{}@{}", fresh.backend, fresh.kek_id, fresh.kek_version);
        stored.envelopes.insert(*v, fresh.encode()?);
        if let Some(rec) = stored.state.versions.iter_mut().find(|x| x.version == *v) {
            rec.kek = Some(kek);
        }
    }

    if !plan.actions.is_empty() || !stale.is_empty() {
        let mut made: BTreeMap<u32, (String, String)> = BTreeMap::new();
        let mut public_keys: BTreeMap<u32, String> = BTreeMap::new();
        for a in &plan.actions {
            match a {
                PlanAction::CreateVersion { version } => {
                    let dek = generate(mk).await?;
                    let env = ctx
                        .keyring
                        .wrap(&KeyContext::new(&ns, &name, *version), &dek)
                        .await?;
                    let kek = format!("{}/{}@{}", env.backend, env.kek_id, env.kek_version);
                    stored.envelopes.insert(*version, env.encode()?);
                    made.insert(*version, (fingerprint(&dek), kek));
                    if let Some(p) = crate::keys::public_pem(mk.spec.algorithm, &dek)
                        .map_err(|e| Error::Invalid(e.to_string()))?
                    {
                        public_keys.insert(*version, p);
                    }
                }
                PlanAction::EraseMaterial { version } => {
                    // Audited by report_actions once the erasure is saved, not before.
                    stored.envelopes.remove(version);
                }
                _ => {}
            }
        }
        let expire = policy.as_ref().and_then(|p| p.expire_after_secs);
        rotation::apply(
            &mut stored.state,
            &plan.actions,
            now,
            &|v| made.get(&v).cloned().unwrap_or_default(),
            expire,
        )
        .map_err(Error::Invalid)?;
        // status.publicKey: the SPKI PEM of each new asymmetric version (public data only).
        for (v, pem) in public_keys {
            if let Some(rec) = stored.state.versions.iter_mut().find(|x| x.version == v) {
                rec.public_key = Some(pem);
            }
        }
        storage::save(&ctx.storage, &ctx.client, mk, &mut stored).await?;
        if !stale.is_empty() {
            ctx.metrics.rewraps.inc_by(stale.len() as u64);
            audit(
                ctx,
                mk,
                "kek-rewrap",
                0,
                &format!(
                    "{} version(s) rewrapped under {}",
                    stale.len(),
                    ctx.keyring.describe()
                ),
            );
        }
        report_actions(ctx, mk, &plan, &stored.state).await;
    }

    if plan.actions.contains(&PlanAction::Finalize) {
        if deleting_since.is_some() {
            // Every version is destroyed and audited. Storage goes first, then the finalizer
            // (a crash in between is finished by the Missing branch above).
            storage::delete(&ctx.storage, &ctx.client, &id.uid).await?;
            remove_finalizer(&keys, mk).await?;
            ctx.metrics.forget_key(&ns, &name);
            return Ok(Action::await_change());
        }
        // Scheduled deletion finished: every version is destroyed; delete the object itself.
        keys.delete(&name, &Default::default()).await?;
    }

    let notify_before = policy.as_ref().and_then(|p| p.notify_before_secs);
    let status = project(
        mk,
        &stored.state,
        &plan,
        policy_problem,
        notify_before,
        ctx,
        now,
    );
    let was_due = mk
        .status
        .as_ref()
        .and_then(|s| s.true_condition("RotationDue"))
        .is_some();
    if let Some(due) = status.true_condition("RotationDue")
        && !was_due
    {
        // Once per notice period: the condition turning True is the trigger.
        publish(
            ctx,
            mk,
            EventType::Warning,
            "RotationDue",
            "Notify",
            due.message.clone(),
        )
        .await;
    }
    if mk.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey", "status": status});
        keys.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    let secs = plan
        .next_rotation
        .map(|t| t.duration_since(now).as_secs_f64());
    ctx.metrics.observe_key(
        &ns,
        &name,
        status.state.as_deref().unwrap_or("Unknown"),
        secs,
    );

    let wait = plan
        .requeue_at
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::from_secs(1)))
        .unwrap_or(ctx.max_requeue)
        .min(ctx.max_requeue)
        .max(Duration::from_millis(500));
    Ok(Action::requeue(wait))
}

/// Drop keyward's finalizer; the JSON-patch `test` makes a concurrent finalizer change a
/// conflict (retried) instead of a lost update.
async fn remove_finalizer(keys: &Api<ManagedKey>, mk: &ManagedKey) -> Result<(), Error> {
    let patch = serde_json::json!([
        {"op": "test", "path": "/metadata/finalizers", "value": mk.finalizers()},
        {"op": "replace", "path": "/metadata/finalizers", "value": mk.finalizers().iter().filter(|f| *f != FINALIZER).collect::<Vec<_>>()},
    ]);
    let patch = serde_json::from_value(patch)
        .map_err(|e| Error::Invalid(format!("finalizer patch: {e}")))?;
    keys.patch(
        &mk.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// The stored state failed its integrity check: serve and plan nothing; say so once with a
/// Degraded condition, a Warning Event and an audit record, and look again later.
async fn report_integrity(
    ctx: &Context,
    mk: &ManagedKey,
    err: &storage::StorageError,
) -> Result<Action, Error> {
    let message = err.to_string();
    let already = mk
        .status
        .as_ref()
        .and_then(|s| s.true_condition("Degraded"))
        .is_some_and(|c| c.reason == "StorageIntegrity" && c.message == message);
    if !already {
        tracing::error!(key = %format!("{}/{}", mk.namespace().unwrap_or_default(), mk.name_any()), error = %message, "stored state refused");
        publish(
            ctx,
            mk,
            EventType::Warning,
            "StorageIntegrity",
            "Verify",
            message.clone(),
        )
        .await;
        audit(ctx, mk, "integrity-failure", 0, &message);
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
            "StorageIntegrity",
            "nothing is served: the stored state failed its integrity check".into(),
            generation,
            now,
        ));
        status.conditions.push(condition(
            old,
            "Degraded",
            true,
            "StorageIntegrity",
            message,
            generation,
            now,
        ));
        let patch = serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey", "status": status});
        Api::<ManagedKey>::namespaced(ctx.client.clone(), &mk.namespace().unwrap_or_default())
            .patch_status(
                &mk.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    Ok(Action::requeue(ctx.max_requeue))
}

/// Generate material for the key's algorithm. RSA generation takes up to seconds, so every
/// generation runs on a blocking thread and never stalls other reconciles.
async fn generate(mk: &ManagedKey) -> Result<SecretBytes, Error> {
    let alg = mk.spec.algorithm;
    tokio::task::spawn_blocking(move || crate::keys::generate(alg))
        .await
        .map_err(|e| Error::Invalid(format!("key generation task failed: {e}")))
}

async fn report_actions(ctx: &Context, mk: &ManagedKey, plan: &Plan, state: &StoredState) {
    let fp = |v: u32| {
        state
            .versions
            .iter()
            .find(|x| x.version == v)
            .map(|x| x.fingerprint.clone())
            .unwrap_or_default()
    };
    for a in &plan.actions {
        match a {
            PlanAction::Transition {
                version,
                to: KeyState::Active,
                reason,
            } => {
                let first = *version == 1;
                if !first && reason != "resumed" {
                    ctx.metrics.rotations.inc();
                }
                let (r, verb) = if first {
                    ("KeyCreated", "created")
                } else if reason == "resumed" {
                    ("KeyResumed", "resumed")
                } else {
                    ("KeyRotated", "activated")
                };
                publish(
                    ctx,
                    mk,
                    EventType::Normal,
                    r,
                    "Rotate",
                    format!(
                        "version {version} {verb} ({reason}); fingerprint {}",
                        fp(*version)
                    ),
                )
                .await;
                audit(
                    ctx,
                    mk,
                    if first { "create" } else { "rotate" },
                    *version,
                    reason,
                );
            }
            PlanAction::Transition {
                version,
                to,
                reason,
            } => {
                let t = if *to == KeyState::Compromised {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                publish(
                    ctx,
                    mk,
                    t,
                    "KeyStateChanged",
                    "Transition",
                    format!("version {version} -> {} ({reason})", to.as_str()),
                )
                .await;
                audit(
                    ctx,
                    mk,
                    &format!("transition-to-{}", to.as_str()),
                    *version,
                    reason,
                );
            }
            PlanAction::ScheduleDeletion { destroy_at, .. } => {
                audit(
                    ctx,
                    mk,
                    "schedule-deletion",
                    0,
                    &format!("destroy at {destroy_at}"),
                );
                publish(
                    ctx,
                    mk,
                    EventType::Warning,
                    "DeletionScheduled",
                    "ScheduleDeletion",
                    format!(
                        "material will be destroyed at {destroy_at}; remove spec.deletion to cancel"
                    ),
                )
                .await;
            }
            PlanAction::CancelDeletion => {
                audit(ctx, mk, "cancel-deletion", 0, "spec.deletion removed");
                publish(
                    ctx,
                    mk,
                    EventType::Normal,
                    "DeletionCancelled",
                    "CancelDeletion",
                    "scheduled deletion cancelled".into(),
                )
                .await;
            }
            PlanAction::EraseMaterial { version } => {
                audit(ctx, mk, "destroy", *version, "material erased");
                publish(
                    ctx,
                    mk,
                    EventType::Normal,
                    "MaterialDestroyed",
                    "Destroy",
                    format!("version {version} material erased"),
                )
                .await;
            }
            _ => {}
        }
    }
}

fn audit(ctx: &Context, mk: &ManagedKey, action: &str, version: u32, reason: &str) {
    ctx.audit.record(crate::audit::AuditEvent {
        actor: "controller".into(),
        action: action.into(),
        key: format!("{}/{}", mk.namespace().unwrap_or_default(), mk.name_any()),
        version: (version > 0).then_some(version),
        outcome: "ok".into(),
        reason: reason.into(),
        ..Default::default()
    });
}

fn condition(
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

/// Status as a projection of stored state (no key bytes: fingerprints only).
fn project(
    mk: &ManagedKey,
    st: &StoredState,
    plan: &Plan,
    policy_problem: Option<(String, String)>,
    notify_before_secs: Option<i64>,
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
    } else if st.versions.iter().all(|v| v.state == KeyState::Destroyed) && !st.versions.is_empty()
    {
        "Destroyed".into()
    } else {
        "Pending".into()
    };
    let mut versions: Vec<KeyVersionStatus> = st.versions.iter().rev().cloned().collect();
    for v in &mut versions {
        // Status keeps the last few transitions per version; the Secret keeps all of them.
        if v.transitions.len() > 5 {
            v.transitions.drain(..v.transitions.len() - 5);
        }
    }
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
    let (ok, r, m) = match &policy_problem {
        Some((r, m)) => (false, r.clone(), m.clone()),
        None => (
            true,
            "AsExpected".into(),
            "policy and storage are healthy".into(),
        ),
    };
    // Degraded is True when something needs the owner's attention.
    let mut d = condition(old, "Degraded", !ok, &r, m, generation, now);
    if ok {
        d.status = "False".into();
    }
    conditions.push(d);
    if let Some(next) = plan.next_rotation
        && st.pending_deletion.is_none()
    {
        let version = current.map(|c| c.version).unwrap_or(0);
        let notice = notify_before_secs
            .and_then(|s| next.checked_sub(jiff::SignedDuration::from_secs(s)).ok());
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
        version_count: st.versions.len() as u32,
        versions,
        next_rotation: plan.next_rotation.map(|t| t.to_string()),
        last_rotation: st.versions.iter().rev().find_map(|v| v.activated.clone()),
        last_rotate_request: st.last_rotate_request.clone(),
        pending_deletion: st.pending_deletion.clone(),
        kek: Some(ctx.keyring.describe()),
        conditions,
        observed_generation: generation,
        storage_generation: (st.generation > 0).then_some(st.generation),
    }
}
