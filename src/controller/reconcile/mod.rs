//! The thin I/O shell around the planner: read, plan, apply in one storage write, project
//! status. In pieces a reader can hold: [`deletion`] (the finalizer's clean-up: the deletion
//! window outlives the object), [`restore`] (a re-created key asking for a deleted key's
//! versions), [`rewrap`] (KEK migration), [`status`] (the projection and its conditions) and
//! [`report`] (Events, audit records and metrics, decided from typed actions).

mod deletion;
mod report;
mod restore;
mod rewrap;
mod status;

pub use deletion::{SweepReport, sweep};

use super::self_writes::Kind;
use super::{Context, Error};
use crate::crd::{
    FINALIZER, ManagedKey, RESTORE_ANNOTATION, ROTATE_NOW_ANNOTATION, RotationPolicy,
};
use crate::crypto::{KeyContext, fingerprint};
use crate::rotation::{self, Action as PlanAction, Plan, PlanInput, Policy};
use crate::storage::{self, KeyIdentity, Stored};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Field manager for everything the controller writes.
pub const MANAGER: &str = "keyward-controller";

/// Reconcile one ManagedKey. Errors are reported as Warning Events and counted. A panic
/// inside is caught here (kube-runtime would re-raise it and end the process, and with it the
/// key service and every other key): it becomes an error on this key only.
pub async fn reconcile(mk: Arc<ManagedKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    use futures::FutureExt;
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let guarded = async {
        if let Some(hook) = &ctx.reconcile_hook {
            hook(&mk);
        }
        dispatch(mk.clone(), &ctx).await
    };
    let r = match std::panic::AssertUnwindSafe(guarded).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => {
            let what = panic_message(payload);
            Err(internal_error(&ctx, &mk, what).await)
        }
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &r {
        report::failure(&ctx, &mk, e).await;
    }
    r
}

/// A caught panic: Degraded `InternalError` with a Warning Event and an audit record on the
/// key (nothing was saved: storage is written in one call, which did not happen or completed).
/// The panic's own message (a Rust runtime message such as an overflow, never key material:
/// material types redact themselves) is kept short.
async fn internal_error(ctx: &Context, mk: &ManagedKey, what: String) -> Error {
    let problem = status::Problem {
        reason: INTERNAL_ERROR,
        message: format!(
            "the reconcile of this key failed unexpectedly ({what}); nothing was changed and it is retried; other keys are unaffected. Please report this keyward bug"
        ),
        audit_action: "internal-error",
    };
    if let Err(e) = status::report_problem(ctx, mk, problem).await {
        tracing::warn!(key = %report::key_of(mk), error = %e, "internal error not recorded in status");
    }
    Error::Internal(what)
}

/// The text of a panic payload, at most 200 characters.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "panic".to_string(), |s| s.to_string()),
    };
    text.chars().take(200).collect()
}

/// Degraded/Ready reason (and Event reason) of a caught panic.
pub const INTERNAL_ERROR: &str = "InternalError";

/// Requeue policy after an error: conflicts retry at once, others back off briefly.
pub fn error_policy(_mk: Arc<ManagedKey>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        Action::requeue(Duration::from_millis(200))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

/// The finalizer decides: a live key is reconciled, a deleted one cleaned up (its material
/// stays in storage for the window; the object goes at once).
async fn dispatch(mk: Arc<ManagedKey>, ctx: &Context) -> Result<Action, Error> {
    let ns = mk
        .namespace()
        .ok_or(Error::Invalid("ManagedKey has no namespace"))?;
    if mk.meta().deletion_timestamp.is_some() && !mk.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.metrics.forget_key(&ns, &mk.name_any());
        return Ok(Action::await_change());
    }
    let api: Api<ManagedKey> = Api::namespaced(ctx.client.clone(), &ns);
    // Added here, before any material exists, with a merge patch guarded by the
    // resourceVersion, and the reconcile goes on with the patched object. (The helper below
    // would add it and then wait for the watch event of its own patch; the controller bench
    // showed keys that never got that second reconcile.)
    let mk = if mk.meta().deletion_timestamp.is_none()
        && !mk.finalizers().iter().any(|f| f == FINALIZER)
    {
        let mut finalizers = mk.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": mk.resource_version()}});
        let patched = api
            .patch(
                &mk.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::Finalizer)?;
        // This reconcile goes on with what it wrote: the watch event of it is not news.
        ctx.self_writes.record(
            Kind::Key,
            &ns,
            &patched.name_any(),
            patched.resource_version().as_deref(),
        );
        Arc::new(patched)
    } else {
        mk
    };
    finalizer(&api, FINALIZER, mk, |event| async move {
        match event {
            FinalizerEvent::Apply(mk) => apply(&mk, ctx).await,
            FinalizerEvent::Cleanup(mk) => deletion::cleanup(&mk, ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// The policy a key references, or why it cannot be used (reason, message for the
/// Degraded condition). A missing or invalid policy means the defaults apply.
async fn load_policy(
    ctx: &Context,
    mk: &ManagedKey,
) -> Result<(Option<Policy>, Option<(&'static str, String)>), Error> {
    let Some(r) = &mk.spec.policy_ref else {
        return Ok((None, None));
    };
    let ns = mk.namespace().unwrap_or_default();
    let cache = ctx
        .policy_cache
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // The cache once it has listed (a reconcile waits for that: a policy missing from a cache
    // that has not listed yet is not missing); the API without one, or if its watch ended.
    let cached = match cache {
        Some(cache) if cache.wait_until_ready().await.is_ok() => Some(
            cache
                .get(&ObjectRef::<RotationPolicy>::new(&r.name).within(&ns))
                .map(|rp| (*rp).clone()),
        ),
        _ => None,
    };
    let found = match cached {
        Some(found) => found,
        None => {
            Api::<RotationPolicy>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&r.name)
                .await?
        }
    };
    Ok(match found {
        None => (
            None,
            Some((
                "PolicyNotFound",
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
                    "PolicyInvalid",
                    format!("RotationPolicy {ns}/{}: {e}", r.name),
                )),
            ),
        },
    })
}

/// The generation the controller last recorded: an older stored copy is a rollback.
fn recorded_generation(mk: &ManagedKey) -> u64 {
    mk.status
        .as_ref()
        .and_then(|s| s.storage_generation)
        .unwrap_or(0)
}

/// A live key: plan from stored state, carry the plan out, project status.
async fn apply(mk: &ManagedKey, ctx: &Context) -> Result<Action, Error> {
    let ns = mk.namespace().unwrap_or_default();
    let name = mk.name_any();
    let now = ctx.clock.now();
    let (policy, mut policy_problem) = load_policy(ctx, mk).await?;
    let rotate_request = mk
        .annotations()
        .get(ROTATE_NOW_ANNOTATION)
        .map(String::as_str);
    if let Some(r) = rotate_request
        && r.len() > rotation::MAX_ROTATE_REQUEST
        && policy_problem.is_none()
    {
        // Not acted on (the planner ignores it too) and not stored.
        policy_problem = Some((
            "RotateRequestInvalid",
            format!(
                "annotation {ROTATE_NOW_ANNOTATION} is {} bytes; use a request id of at most {} (e.g. $(date +%s))",
                r.len(),
                rotation::MAX_ROTATE_REQUEST
            ),
        ));
    }
    let id = KeyIdentity::of(mk);
    let mut stored =
        match storage::load(&ctx.storage, &ctx.client, &id, recorded_generation(mk)).await {
            Ok(s) => s,
            Err(e) if e.is_integrity() => {
                let problem = status::Problem::integrity(&e);
                return status::report_problem(ctx, mk, problem).await;
            }
            Err(e) => return Err(e.into()),
        };
    if stored.resource_version.is_none()
        && let Some(from) = mk.annotations().get(RESTORE_ANNOTATION)
    {
        match restore::restore(ctx, mk, from, now).await? {
            Ok(restored) => stored = restored,
            Err(problem) => return status::report_problem(ctx, mk, problem).await,
        }
    }
    let plan = rotation::plan(&PlanInput {
        spec: &mk.spec,
        policy: policy.as_ref(),
        state: &stored.state,
        rotate_request,
        deleting_since: None,
        now,
    })?;
    let rewrapped = rewrap::stale_envelopes(ctx, &id, &mut stored).await?;
    if !plan.actions.is_empty() || rewrapped > 0 {
        let expire = policy.as_ref().and_then(|p| p.expire_after);
        execute(ctx, mk, &plan, expire, &mut stored, now).await?;
        if rewrapped > 0 {
            report::rewrapped(ctx, mk, rewrapped);
        }
    }
    if plan.actions.contains(&PlanAction::Finalize) {
        // A scheduled deletion finished (every version destroyed and audited): delete the
        // object; its clean-up removes the emptied storage.
        Api::<ManagedKey>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &Default::default())
            .await?;
        return Ok(Action::await_change());
    }
    let expiries = status::expiries(&stored.state, policy.as_ref(), now);
    let notify_before = policy.as_ref().and_then(|p| p.notify_before);
    let st = status::project(
        mk,
        &stored.state,
        &plan,
        policy_problem,
        (notify_before, &expiries),
        ctx,
        now,
    );
    report::rotation_due(ctx, mk, &st).await;
    report::version_limit(ctx, mk, &st).await;
    report::expiring(ctx, mk, &st, &expiries).await;
    status::write(ctx, mk, &st).await?;
    ctx.metrics.observe_key(
        &ns,
        &name,
        &crate::controller::metrics::KeyObservation {
            state: st.state.clone().unwrap_or_else(|| "Unknown".into()),
            next_rotation: plan.next_rotation,
            expiry: expiries.first().map(|(_, at)| *at),
            last_rotation: stored
                .state
                .versions
                .iter()
                .filter_map(|v| v.activated)
                .max(),
            expiring_soon: st.true_condition("ExpiringSoon").is_some(),
            overdue: plan.next_rotation.is_some_and(|t| t <= now),
        },
    );
    let requeue = requeue_after(&plan, ctx, now);
    // Look again when the next expiry notice is due (the planner knows rotations only).
    let notice = notify_before.and_then(|n| {
        expiries
            .iter()
            .map(|(_, at)| crate::duration::before(*at, n))
            .filter(|t| *t > now)
            .min()
    });
    let requeue = match notice {
        Some(t) => requeue.min(
            Duration::try_from(t.duration_since(now))
                .unwrap_or(requeue)
                .max(Duration::from_millis(500)),
        ),
        None => requeue,
    };
    Ok(Action::requeue(requeue))
}

fn requeue_after(plan: &Plan, ctx: &Context, now: Timestamp) -> Duration {
    plan.requeue_at
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::from_secs(1)))
        .unwrap_or(ctx.max_requeue)
        .min(ctx.max_requeue)
        .max(Duration::from_millis(500))
}

/// Carry a plan out: generate and wrap new versions, erase destroyed ones, apply the state
/// change, write storage once, then report (audit records follow the save, never precede it).
async fn execute(
    ctx: &Context,
    mk: &ManagedKey,
    plan: &Plan,
    expire_after: Option<crate::duration::Duration>,
    stored: &mut Stored,
    now: Timestamp,
) -> Result<(), Error> {
    let id = KeyIdentity::of(mk);
    let mut made: BTreeMap<u32, (String, Option<String>)> = BTreeMap::new();
    let mut public_keys: BTreeMap<u32, String> = BTreeMap::new();
    for a in &plan.actions {
        match a {
            PlanAction::CreateVersion { version } => {
                let dek = generate(mk).await?;
                let env = ctx
                    .keyring
                    .wrap(&KeyContext::new(&id.namespace, &id.name, *version), &dek)
                    .await?;
                let kek = format!("{}/{}@{}", env.backend, env.kek_id, env.kek_version);
                stored.envelopes.insert(*version, env.encode()?);
                made.insert(*version, (fingerprint(&dek), Some(kek)));
                if let Some(p) = crate::keys::public_pem(mk.spec.algorithm, &dek)? {
                    public_keys.insert(*version, p);
                }
            }
            PlanAction::EraseMaterial { version } => {
                stored.envelopes.remove(version);
            }
            _ => {}
        }
    }
    rotation::apply(
        &mut stored.state,
        &plan.actions,
        now,
        &|v| made.get(&v).cloned().unwrap_or_default(),
        expire_after,
    )?;
    // status.publicKey: the SPKI PEM of each new asymmetric version (public data only).
    for (v, pem) in public_keys {
        if let Some(rec) = stored.state.version_mut(v) {
            rec.public_key = Some(pem);
        }
    }
    storage::save(&ctx.storage, &ctx.client, &id, stored).await?;
    ctx.self_writes.record(
        Kind::Storage,
        &ctx.storage.namespace,
        &storage::secret_name(&id.uid),
        stored.resource_version.as_deref(),
    );
    report::actions(ctx, mk, &plan.actions, &stored.state).await;
    Ok(())
}

/// Generate material for the key's algorithm. RSA generation takes up to seconds, so every
/// generation runs on a blocking thread and never stalls other reconciles.
async fn generate(mk: &ManagedKey) -> Result<crate::crypto::SecretBytes, Error> {
    let alg = mk.spec.algorithm;
    Ok(tokio::task::spawn_blocking(move || crate::keys::generate(alg)).await??)
}
