//! Deletion that means what it says. Deleting a ManagedKey (or its namespace) records the
//! pending destruction in the key's storage, which lives in the controller's namespace, and
//! lets the object go at once: no namespace stays Terminating for the window. The sweeper
//! destroys (and audits) storage whose key is gone once its window has ended; until then a
//! re-created key may restore it (see [`super::restore`]).

use super::super::{Context, Error};
use super::report::{audit, key_of};
use super::{execute, load_policy, recorded_generation};
use crate::crd::ManagedKey;
use crate::rotation::{self, DEFAULT_WINDOW, PlanInput};
use crate::state::PendingDeletion;
use crate::storage::{self, KeyIdentity, StorageError};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use std::collections::BTreeSet;

/// The finalizer's clean-up for a deleted ManagedKey: keep the material for the window (or
/// remove storage that holds nothing any more), then the finalizer goes.
pub(super) async fn cleanup(mk: &ManagedKey, ctx: &Context) -> Result<Action, Error> {
    let id = KeyIdentity::of(mk);
    ctx.metrics.forget_key(&id.namespace, &id.name);
    let mut stored = match storage::load(&ctx.storage, &ctx.client, &id, recorded_generation(mk))
        .await
    {
        Ok(s) => s,
        // Already removed (a crash after the removal and before the finalizer went).
        Err(StorageError::Missing { .. }) => return Ok(Action::await_change()),
        Err(e) if e.is_integrity() => {
            // Kept as it is, unread: the sweeper schedules its removal after the default
            // window. Holding the object (and its namespace) would not make it readable.
            tracing::error!(key = %key_of(mk), error = %e, "deleted key's storage refused; kept for the window");
            audit(ctx, &key_of(mk), "integrity-failure", 0, &e.to_string());
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };
    if stored.resource_version.is_none() {
        return Ok(Action::await_change());
    }
    if !stored.state.all_destroyed() && !stored.state.versions.is_empty() {
        // The namespace may be going too: a RotationPolicy already gone means the default
        // (longest) window, never a shorter one.
        let policy = load_policy(ctx, mk).await.ok().and_then(|(p, _)| p);
        let plan = rotation::plan(&PlanInput {
            spec: &mk.spec,
            policy: policy.as_ref(),
            state: &stored.state,
            rotate_request: None,
            deleting_since: mk.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            now: ctx.clock.now(),
        })?;
        if !plan.actions.is_empty() {
            execute(ctx, mk, &plan, None, &mut stored, ctx.clock.now()).await?;
        }
    }
    if stored.state.all_destroyed() || stored.state.versions.is_empty() {
        // Nothing left to keep: every version is destroyed and audited.
        storage::delete(&ctx.storage, &ctx.client, &id.uid, None).await?;
    }
    Ok(Action::await_change())
}

/// What one sweep did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Storage of keys that are gone, still inside their window.
    pub kept: usize,
    /// Storage destroyed because its window ended.
    pub destroyed: usize,
    /// Orphans found without a scheduled destruction, now scheduled.
    pub scheduled: usize,
    /// Old copies removed after a restore.
    pub restored: usize,
}

/// Find storage whose ManagedKey is gone (by UID: a re-created key with the same name is
/// another key) and act on it: schedule its destruction if nothing did (a finalizer removed
/// by hand, an unreadable copy), destroy it once the window has ended, and drop copies a
/// restore has taken over. Two list calls per sweep, then one write per change.
pub async fn sweep(ctx: &Context) -> Result<SweepReport, Error> {
    let now = ctx.clock.now();
    // Metadata only (names, annotations): memory per sweep stays small however many keys
    // there are; only orphans are then read in full.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.storage.namespace);
    let stored = secrets
        .list_metadata(&ListParams::default().labels(&storage::label_selector()))
        .await?;
    let live: BTreeSet<String> = Api::<PartialObjectMeta<ManagedKey>>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|k| k.metadata.uid)
        .collect();
    let restored_from: BTreeSet<String> = stored
        .items
        .iter()
        .filter_map(|s| {
            s.metadata
                .annotations
                .as_ref()?
                .get(storage::RESTORED_FROM_ANNOTATION)
                .cloned()
        })
        .collect();
    let mut report = SweepReport::default();
    for meta in &stored.items {
        let Some(uid) = meta
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(storage::UID_ANNOTATION))
        else {
            continue;
        };
        if live.contains(uid) {
            continue;
        }
        let Some(secret) = secrets
            .get_opt(meta.metadata.name.as_deref().unwrap_or_default())
            .await?
        else {
            continue;
        };
        let secret = &secret;
        let Some(id) = KeyIdentity::of_storage(secret) else {
            continue;
        };
        let key = format!("{}/{}", id.namespace, id.name);
        let rv = secret.resource_version();
        if restored_from.contains(&id.uid) {
            storage::delete(&ctx.storage, &ctx.client, &id.uid, rv).await?;
            audit(
                ctx,
                &key,
                "restore-complete",
                0,
                &format!(
                    "copy of deleted key UID {} removed; its versions live on in the restored key",
                    id.uid
                ),
            );
            report.restored += 1;
            continue;
        }
        match storage::parse(secret, &id, &ctx.storage.mac, 0) {
            Ok(mut s) => match s.state.pending_deletion {
                Some(pd) if now >= pd.destroy_at => {
                    storage::delete(&ctx.storage, &ctx.client, &id.uid, rv).await?;
                    for v in s.state.versions.iter().filter(|v| v.state.has_material()) {
                        audit(
                            ctx,
                            &key,
                            "destroy",
                            v.version,
                            "deletion window ended after the ManagedKey was deleted; material erased",
                        );
                    }
                    report.destroyed += 1;
                }
                Some(_) => report.kept += 1,
                None if s.state.all_destroyed() || s.state.versions.is_empty() => {
                    storage::delete(&ctx.storage, &ctx.client, &id.uid, rv).await?;
                    report.destroyed += 1;
                }
                None => {
                    // Deleted without keyward's clean-up (finalizer removed by hand, or the
                    // controller was away): the window starts now.
                    let pd = PendingDeletion {
                        scheduled_at: now,
                        destroy_at: crate::duration::after(now, DEFAULT_WINDOW),
                    };
                    s.state.pending_deletion = Some(pd);
                    storage::save(&ctx.storage, &ctx.client, &id, &mut s).await?;
                    audit(
                        ctx,
                        &key,
                        "schedule-deletion",
                        0,
                        &format!(
                            "ManagedKey gone without clean-up; destroy at {}",
                            pd.destroy_at
                        ),
                    );
                    report.scheduled += 1;
                }
            },
            Err(e) => {
                // Unreadable copy of a deleted key: removed after the default window, counted
                // from when a sweep first saw it (an annotation only the controller writes).
                match storage::orphan_deadline(secret) {
                    Some(at) if now >= at => {
                        storage::delete(&ctx.storage, &ctx.client, &id.uid, rv).await?;
                        audit(
                            ctx,
                            &key,
                            "destroy",
                            0,
                            &format!(
                                "unverifiable storage of a deleted key removed after the window: {e}"
                            ),
                        );
                        report.destroyed += 1;
                    }
                    Some(_) => report.kept += 1,
                    None => {
                        let at = crate::duration::after(now, DEFAULT_WINDOW);
                        storage::mark_orphan(&ctx.storage, &ctx.client, secret, at).await?;
                        audit(
                            ctx,
                            &key,
                            "integrity-failure",
                            0,
                            &format!("{e}; the ManagedKey is gone: removed at {at}"),
                        );
                        report.scheduled += 1;
                    }
                }
            }
        }
    }
    Ok(report)
}
