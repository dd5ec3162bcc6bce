//! Restore within the deletion window: a new ManagedKey with the same namespace and name as a
//! deleted one, annotated with the deleted key's UID, takes over its versions (the same
//! bytes: envelopes are bound to namespace, name and version, which do not change). Refused
//! for another namespace or name, after the window, or when the copy fails authentication.

use super::super::{Context, Error};
use super::report::{audit, key_of, publish};
use super::status::Problem;
use crate::crd::{ManagedKey, RESTORE_ANNOTATION};
use crate::storage::{self, KeyIdentity, Stored};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::EventType;

fn refused(reason: &'static str, message: String) -> Problem {
    Problem {
        reason,
        message: format!(
            "{message}; remove annotation {RESTORE_ANNOTATION} to start a new key at version 1"
        ),
        audit_action: "restore-refused",
    }
}

/// Take over the versions of the deleted key `from_uid`, or say why not. The new storage is
/// written first and the old copy removed after (the sweeper removes it if this process
/// stops in between), so a crash never loses the material.
pub(super) async fn restore(
    ctx: &Context,
    mk: &ManagedKey,
    from_uid: &str,
    now: Timestamp,
) -> Result<Result<Stored, Problem>, Error> {
    let id = KeyIdentity::of(mk);
    if from_uid == id.uid {
        return Ok(Err(refused(
            "RestoreRefused",
            format!("{RESTORE_ANNOTATION} names this key's own UID"),
        )));
    }
    let old_name = storage::secret_name(from_uid);
    // A UID is 36 characters; anything else cannot name storage (and must not reach a URL).
    let well_formed =
        from_uid.len() == 36 && from_uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let secret = if well_formed {
        Api::<Secret>::namespaced(ctx.client.clone(), &ctx.storage.namespace)
            .get_opt(&old_name)
            .await?
    } else {
        None
    };
    let not_found = || {
        refused(
            "RestoreNotFound",
            format!(
                "no deleted key with UID {:?} can be restored here: its deletion window ended and its material was destroyed, or the UID is wrong",
                from_uid.chars().take(64).collect::<String>()
            ),
        )
    };
    let Some(secret) = secret else {
        return Ok(Err(not_found()));
    };
    // Only the same namespace and name: a key from elsewhere is reported exactly like one
    // that does not exist, so a tenant learns nothing about other namespaces.
    let old_id = KeyIdentity {
        uid: from_uid.to_string(),
        ..id.clone()
    };
    if KeyIdentity::of_storage(&secret).as_ref() != Some(&old_id) {
        return Ok(Err(not_found()));
    }
    let mut old = match storage::parse(&secret, &old_id, &ctx.storage.mac, 0) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(refused(
                "RestoreRefused",
                format!("the deleted key's storage failed its integrity check: {e}"),
            )));
        }
    };
    if let Some(pd) = old.state.pending_deletion
        && now >= pd.destroy_at
    {
        return Ok(Err(refused(
            "RestoreWindowEnded",
            format!(
                "the deletion window of UID {from_uid} ended at {}",
                pd.destroy_at
            ),
        )));
    }
    if old.state.all_destroyed() || old.state.versions.is_empty() {
        return Ok(Err(refused(
            "RestoreRefused",
            format!("UID {from_uid} has no versions left to restore"),
        )));
    }
    old.state.pending_deletion = None;
    old.state.restored_from = Some(from_uid.to_string());
    old.resource_version = None;
    storage::save(&ctx.storage, &ctx.client, &id, &mut old).await?;
    let versions: Vec<u32> = old.state.versions.iter().map(|v| v.version).collect();
    let message = format!(
        "restored versions {versions:?} of deleted key UID {from_uid} (deletion cancelled)"
    );
    audit(ctx, &key_of(mk), "restore", 0, &message);
    publish(
        ctx,
        mk,
        EventType::Normal,
        "KeyRestored",
        "Restore",
        message,
    )
    .await;
    // The old copy goes now; if this fails, the sweeper removes it (the new copy names it).
    // Unconditionally: its versions are all in the new copy, and the only change anything
    // makes to a copy without a live key is the sweeper scheduling its destruction (seen when
    // storage is restored from a backup before its keys: the sweeper at start got there
    // first, and a delete conditional on the version read here failed with a conflict).
    if let Err(e) = storage::delete(&ctx.storage, &ctx.client, from_uid, None).await {
        tracing::warn!(key = %key_of(mk), error = %e, "restored; the old copy is left to the sweeper");
    }
    Ok(Ok(old))
}
