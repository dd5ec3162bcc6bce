//! What the controller tells people: Events on the ManagedKey, audit records, metrics. Each
//! is decided from the planner's typed actions and causes, never from their words.

use super::super::{Context, Error};
use crate::crd::{ManagedKey, ManagedKeyStatus};
use crate::lifecycle::KeyState;
use crate::rotation::{Action as PlanAction, Cause};
use crate::state::StoredState;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

/// The longest Event note the API accepts (events.k8s.io/v1 validation: 1 KiB).
const MAX_NOTE: usize = 1024;

/// `namespace/name`, the key's name in audit records and logs.
pub(super) fn key_of(mk: &ManagedKey) -> String {
    format!("{}/{}", mk.namespace().unwrap_or_default(), mk.name_any())
}

/// Publish an Event (best effort: a refused Event is logged, never a reconcile failure).
pub(super) async fn publish(
    ctx: &Context,
    mk: &ManagedKey,
    type_: EventType,
    reason: &str,
    action: &str,
    mut note: String,
) {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    let published = ctx.recorder.publish(&ev, &mk.object_ref(&())).await;
    if let Err(e) = published {
        tracing::debug!(error = %e, "event not published");
    }
}

/// One audit record of a controller action on `key` (`namespace/name`).
/// Called after the change is saved: a record that cannot be written is counted, logged and
/// declared by a gap record later (the saved change is not undone), hence the ignored result.
pub(crate) fn audit(ctx: &Context, key: &str, action: &str, version: u32, reason: &str) {
    let _ = ctx.audit.record(crate::audit::AuditEvent {
        actor: "controller".into(),
        action: action.into(),
        key: key.into(),
        version: (version > 0).then_some(version),
        outcome: "ok".into(),
        reason: reason.into(),
        ..Default::default()
    });
}

/// A failed reconcile: counted; a Warning Event unless it only lost a write race.
pub(super) async fn failure(ctx: &Context, mk: &ManagedKey, e: &Error) {
    ctx.metrics
        .errors
        .get_or_create(&super::super::metrics::ErrorLabels {
            reason: e.reason().into(),
        })
        .inc();
    let key = key_of(mk);
    if matches!(e, Error::Internal(_)) {
        // Already reported on the key (condition, Warning Event, audit) where it was caught.
        tracing::error!(%key, error = %e, "reconcile panicked; caught");
    } else if e.is_conflict() {
        // Expected with optimistic concurrency (a stale cache read); retried at once.
        tracing::debug!(%key, error = %e, "reconcile lost a write race; retrying");
    } else {
        tracing::warn!(%key, error = %e, "reconcile failed");
        publish(
            ctx,
            mk,
            EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            e.to_string(),
        )
        .await;
    }
}

/// Envelopes moved to the current KEK.
pub(super) fn rewrapped(ctx: &Context, mk: &ManagedKey, count: usize) {
    ctx.metrics.rewraps.inc_by(count as u64);
    audit(
        ctx,
        &key_of(mk),
        "kek-rewrap",
        0,
        &format!(
            "{count} version(s) rewrapped under {}",
            ctx.keyring.describe()
        ),
    );
}

/// A Warning Event when the key reaches its material limit (once, when Degraded turns to
/// that reason), so the owner sees rotations stopped without reading status.
pub(super) async fn version_limit(ctx: &Context, mk: &ManagedKey, new: &ManagedKeyStatus) {
    let reason = |s: &ManagedKeyStatus| {
        s.true_condition("Degraded")
            .is_some_and(|c| c.reason == super::status::VERSION_LIMIT)
    };
    if let Some(c) = new.true_condition("Degraded")
        && reason(new)
        && !mk.status.as_ref().is_some_and(reason)
    {
        publish(
            ctx,
            mk,
            EventType::Warning,
            super::status::VERSION_LIMIT,
            "Rotate",
            c.message.clone(),
        )
        .await;
    }
}

/// One Warning Event per version when it enters its notifyBeforeExpiry window (the versions
/// new in `status.expiryNotified`; the list survives restarts, so no version is announced
/// twice). `expiries` are (version, expiry) soonest first.
pub(super) async fn expiring(
    ctx: &Context,
    mk: &ManagedKey,
    new: &ManagedKeyStatus,
    expiries: &[(u32, jiff::Timestamp)],
) {
    let before: &[u32] = mk
        .status
        .as_ref()
        .map_or(&[], |s| s.expiry_notified.as_slice());
    for v in new.expiry_notified.iter().filter(|v| !before.contains(v)) {
        let at = expiries
            .iter()
            .find(|(x, _)| x == v)
            .map_or_else(String::new, |(_, at)| {
                format!(" at {}", super::status::to_second(*at))
            });
        publish(
            ctx,
            mk,
            EventType::Warning,
            "KeyExpiringSoon",
            "Notify",
            format!(
                "version {v} expires{at} (notifyBeforeExpiry); after that it is never served, so re-encrypt or re-sign what it protects"
            ),
        )
        .await;
    }
}

/// The RotationDue condition turned True: one Warning Event per notice period.
pub(super) async fn rotation_due(ctx: &Context, mk: &ManagedKey, new: &ManagedKeyStatus) {
    let was_due = mk
        .status
        .as_ref()
        .and_then(|s| s.true_condition("RotationDue"))
        .is_some();
    if let Some(due) = new.true_condition("RotationDue")
        && !was_due
    {
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
}

/// Events, audit records and metrics for saved actions.
pub(super) async fn actions(
    ctx: &Context,
    mk: &ManagedKey,
    actions: &[PlanAction],
    state: &StoredState,
) {
    let key = key_of(mk);
    let fp = |v: u32| {
        state
            .version(v)
            .map(|x| x.fingerprint.clone())
            .unwrap_or_default()
    };
    let deleted = mk.meta().deletion_timestamp.is_some();
    for a in actions {
        match a {
            PlanAction::Transition {
                version,
                to: KeyState::Active,
                cause,
            } => {
                let created = *version == 1;
                let (reason, verb, action) = match cause {
                    _ if created => ("KeyCreated", "created", "create"),
                    Cause::Resumed => ("KeyResumed", "resumed", "rotate"),
                    _ => ("KeyRotated", "activated", "rotate"),
                };
                if !created && cause.is_rotation() {
                    ctx.metrics.rotations.inc();
                }
                publish(
                    ctx,
                    mk,
                    EventType::Normal,
                    reason,
                    "Rotate",
                    format!(
                        "version {version} {verb} ({cause}); fingerprint {}",
                        fp(*version)
                    ),
                )
                .await;
                audit(ctx, &key, action, *version, cause.as_str());
            }
            PlanAction::Transition { version, to, cause } => {
                // A destruction is one record: `destroy`, written for its EraseMaterial below.
                let destroyed_here = *to == KeyState::Destroyed
                    && actions.contains(&PlanAction::EraseMaterial { version: *version });
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
                    format!("version {version} -> {} ({cause})", to.as_str()),
                )
                .await;
                if !destroyed_here {
                    audit(
                        ctx,
                        &key,
                        &format!("transition-to-{}", to.as_str()),
                        *version,
                        cause.as_str(),
                    );
                }
            }
            PlanAction::ScheduleDeletion { destroy_at, .. } => {
                let (why, how) = if deleted {
                    (
                        "ManagedKey deleted",
                        format!(
                            "re-create it with annotation {}={} before then to restore it",
                            crate::crd::RESTORE_ANNOTATION,
                            mk.uid().unwrap_or_default()
                        ),
                    )
                } else {
                    (
                        "spec.deletion scheduled",
                        "remove spec.deletion to cancel".into(),
                    )
                };
                audit(
                    ctx,
                    &key,
                    "schedule-deletion",
                    0,
                    &format!("{why}; destroy at {destroy_at}"),
                );
                publish(
                    ctx,
                    mk,
                    EventType::Warning,
                    "DeletionScheduled",
                    "ScheduleDeletion",
                    format!("material will be destroyed at {destroy_at}; {how}"),
                )
                .await;
            }
            PlanAction::CancelDeletion => {
                audit(ctx, &key, "cancel-deletion", 0, "spec.deletion removed");
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
                let cause = actions.iter().find_map(|a| match a {
                    PlanAction::Transition {
                        version: v,
                        to: KeyState::Destroyed,
                        cause,
                    } if v == version => Some(cause.as_str()),
                    _ => None,
                });
                let reason = match cause {
                    Some(c) => format!("material erased ({c})"),
                    None => "material erased".into(),
                };
                audit(ctx, &key, "destroy", *version, &reason);
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
            PlanAction::CreateVersion { version }
                if !actions.iter().any(
                    |a| matches!(a, PlanAction::Transition { version: v, .. } if v == version),
                ) =>
            {
                // Staged rotation: made now, Active at the rotation (reported then).
                audit(
                    ctx,
                    &key,
                    "pre-publish",
                    *version,
                    Cause::PrePublish.as_str(),
                );
                publish(
                    ctx,
                    mk,
                    EventType::Normal,
                    "KeyPrePublished",
                    "Rotate",
                    format!(
                        "version {version} created in PreActivation ({}); readers of version all and JWKS receive it now, it becomes current at the next rotation; fingerprint {}",
                        Cause::PrePublish,
                        fp(*version)
                    ),
                )
                .await;
            }
            PlanAction::CreateVersion { .. }
            | PlanAction::MarkRotateRequest(_)
            | PlanAction::MarkCompromise(_)
            | PlanAction::Finalize => {}
        }
    }
}
