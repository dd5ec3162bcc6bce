//! KEK rotation or migration: envelopes made under an older KEK are rewrapped, a bounded
//! batch per reconcile, in the same storage write as any planned change.

use super::super::{Context, Error};
use crate::crypto::{Envelope, KeyContext};
use crate::storage::{KeyIdentity, Stored};

/// Envelopes rewrapped per reconcile at most (bounds the time one reconcile holds a key).
const REWRAP_BATCH: usize = 64;

/// Rewrap up to a batch of stale envelopes in `stored` (not saved here); returns how many.
pub(super) async fn stale_envelopes(
    ctx: &Context,
    id: &KeyIdentity,
    stored: &mut Stored,
) -> Result<usize, Error> {
    let stale: Vec<u32> = stored
        .envelopes
        .iter()
        .filter(|(_, b)| Envelope::decode(b).is_ok_and(|e| ctx.keyring.needs_rewrap(&e)))
        .map(|(v, _)| *v)
        .take(REWRAP_BATCH)
        .collect();
    for v in &stale {
        let env = Envelope::decode(&stored.envelopes[v])?;
        let fresh = ctx
            .keyring
            .rewrap(&env, &KeyContext::new(&id.namespace, &id.name, *v))
            .await?;
        let kek = format!("{}/{}@{}", fresh.backend, fresh.kek_id, fresh.kek_version);
        stored.envelopes.insert(*v, fresh.encode()?);
        if let Some(rec) = stored.state.version_mut(*v) {
            rec.kek = Some(kek);
        }
    }
    Ok(stale.len())
}
