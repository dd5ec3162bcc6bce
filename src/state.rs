//! The stored key state: every version a ManagedKey ever had, its lifecycle and timestamps,
//! and the requests already handled. It is the single source of truth the storage Secret
//! holds (authenticated, see [`crate::storage`]); the planner reads it and the CRD status is a
//! projection of it ([`StoredState::version_statuses`]), never the other way round.
//!
//! The state is bounded whatever the rotation count: records of destroyed versions beyond the
//! newest [`DESTROYED_RECORDS_KEPT`] collapse into a [`Pruned`] summary and each version keeps
//! at most [`TRANSITIONS_KEPT`] recent steps (plus those up to its first activation, which the
//! rotation clock reads); the audit log keeps the whole history. Without that, the storage
//! Secret passes the apiserver's 1 MiB limit after about 1,500 rotations and every later save
//! fails.
//!
//! Timestamps are typed (`jiff::Timestamp`, RFC 3339 on the wire), so an unparsable time in a
//! stored copy is refused when it is read instead of being treated as "now" somewhere later.

use crate::crd::{KeyVersionStatus, PendingDeletion as PendingDeletionStatus};
use crate::duration::Duration;
use crate::lifecycle::{KeyState, TransitionError, TransitionRecord};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Records of destroyed versions kept in full; older ones only count in [`Pruned`].
pub const DESTROYED_RECORDS_KEPT: usize = 16;

/// Transitions kept per version after its first activation (the first steps up to and
/// including the first activation are always kept: rotation clocks run from there).
pub const TRANSITIONS_KEPT: usize = 8;

/// What compaction removed, so version numbers are never reused and counts stay true.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    /// Destroyed versions whose records were dropped.
    pub versions: u32,
    /// The highest version number among them.
    pub through_version: u32,
}

/// One lifecycle step of a version, kept for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// State before.
    pub from: KeyState,
    /// State after.
    pub to: KeyState,
    /// When.
    pub at: Timestamp,
    /// Why, in words (the planner's [`crate::rotation::Cause`] text).
    pub reason: String,
}

/// One key version's record (never the material: that is the envelope beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredVersion {
    /// Version number, from 1, never reused.
    pub version: u32,
    /// SP 800-57 state.
    pub state: KeyState,
    /// Generated at.
    pub created: Timestamp,
    /// Last activated at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<Timestamp>,
    /// First left Active (or was compromised) at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated: Option<Timestamp>,
    /// Not served after this time (policy expireAfter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// Material erased at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<Timestamp>,
    /// SHA-256 fingerprint of the material (hex prefix), for status and audit.
    pub fingerprint: String,
    /// The KEK that wraps the material (`backend/id@version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// SPKI PEM for asymmetric keys (public data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Transitions, oldest first: the steps up to the first activation and the most recent
    /// [`TRANSITIONS_KEPT`] (the audit log has every one).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Transitions dropped from the middle of `transitions` by compaction.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub transitions_pruned: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StoredVersion {
    /// Drop middle transitions beyond [`TRANSITIONS_KEPT`], keeping the prefix up to the first
    /// activation.
    fn compact(&mut self) {
        let head = self
            .transitions
            .iter()
            .position(|r| r.to == KeyState::Active)
            .map_or(1, |i| i + 1)
            .min(self.transitions.len());
        // Beyond the prefix, keep the last TRANSITIONS_KEPT (dropping none is a no-op).
        let drop = (self.transitions.len() - head).saturating_sub(TRANSITIONS_KEPT);
        self.transitions.drain(head..head + drop);
        self.transitions_pruned = self
            .transitions_pruned
            .saturating_add(u32::try_from(drop).unwrap_or(u32::MAX));
    }

    /// When the version first became Active: rotation clocks run from here, so suspending a
    /// key does not extend its life.
    pub fn first_activated(&self) -> Option<Timestamp> {
        self.transitions
            .iter()
            .find(|r| r.to == KeyState::Active)
            .map(|r| r.at)
    }

    /// Whether `expires` has passed.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Deactivated and still inside the grace period after which "previous" stops.
    pub fn in_grace(&self, grace: Duration, now: Timestamp) -> bool {
        self.state == KeyState::Deactivated
            && self
                .deactivated
                .is_some_and(|d| now < crate::duration::after(d, grace))
    }

    /// The status view: the last `keep_transitions` steps, times as RFC 3339 strings.
    pub fn status(&self, keep_transitions: usize) -> KeyVersionStatus {
        let skip = self.transitions.len().saturating_sub(keep_transitions);
        KeyVersionStatus {
            version: self.version,
            state: self.state,
            created: self.created.to_string(),
            activated: self.activated.map(|t| t.to_string()),
            deactivated: self.deactivated.map(|t| t.to_string()),
            expires: self.expires.map(|t| t.to_string()),
            destroyed: self.destroyed.map(|t| t.to_string()),
            fingerprint: self.fingerprint.clone(),
            kek: self.kek.clone(),
            kid: None,
            public_key: self.public_key.clone(),
            transitions: self.transitions[skip..]
                .iter()
                .map(|r| TransitionRecord {
                    from: r.from,
                    to: r.to,
                    at: r.at.to_string(),
                    reason: r.reason.clone(),
                })
                .collect(),
        }
    }
}

/// A scheduled destruction of the whole key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDeletion {
    /// Scheduled at (the deletion request or the object's deletionTimestamp).
    pub scheduled_at: Timestamp,
    /// Material is destroyed at or after this time.
    pub destroy_at: Timestamp,
}

impl PendingDeletion {
    /// The status view.
    pub fn status(&self) -> PendingDeletionStatus {
        PendingDeletionStatus {
            scheduled_at: self.scheduled_at.to_string(),
            destroy_at: self.destroy_at.to_string(),
        }
    }
}

/// A change the stored state cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The version is not in the state.
    #[error("version {0} does not exist")]
    NoSuchVersion(u32),
    /// Version numbers are used up (u32): no new version can be numbered.
    #[error("version numbers are used up: no new version can be created")]
    VersionNumbersExhausted,
    /// SP 800-57 does not allow the step.
    #[error("version {version}: {source}")]
    Illegal {
        /// Version.
        version: u32,
        /// The refused step.
        #[source]
        source: TransitionError,
    },
}

/// What the storage Secret holds besides the envelopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredState {
    /// Incremented by every save; the copy the controller last saved carries the highest, and
    /// `status.storageGeneration` records it where only the controller writes, so a stored
    /// copy older than that is a rollback.
    #[serde(default)]
    pub generation: u64,
    /// Every version ever created, oldest first.
    #[serde(default)]
    pub versions: Vec<StoredVersion>,
    /// Last rotate-now request id acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// Set when a desiredState=Compromised request has been handled; cleared when the desired
    /// state changes back, so a later compromise is handled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromise_handled_at: Option<Timestamp>,
    /// Scheduled destruction of the whole key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deletion: Option<PendingDeletion>,
    /// The UID of the deleted ManagedKey this state was restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Destroyed versions whose records compaction dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
}

impl StoredState {
    /// The Active version, if any.
    pub fn active(&self) -> Option<&StoredVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::Active)
    }

    /// The newest Suspended version, if any.
    pub fn suspended(&self) -> Option<&StoredVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::Suspended)
    }

    /// The version a "current" request resolves to (Active, or Suspended while suspended).
    pub fn current(&self) -> Option<&StoredVersion> {
        self.active().or_else(|| self.suspended())
    }

    /// A version by number.
    pub fn version(&self, version: u32) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// A version by number, for changes.
    pub fn version_mut(&mut self, version: u32) -> Option<&mut StoredVersion> {
        self.versions.iter_mut().find(|v| v.version == version)
    }

    /// Numbers of the versions in any of `states`, oldest first.
    pub fn in_states(&self, states: &[KeyState]) -> Vec<u32> {
        self.versions
            .iter()
            .filter(|v| states.contains(&v.state))
            .map(|v| v.version)
            .collect()
    }

    /// Highest version number used so far (pruned records included: numbers are never
    /// reused).
    pub fn max_version(&self) -> u32 {
        let listed = self.versions.iter().map(|v| v.version).max().unwrap_or(0);
        listed.max(self.pruned.map_or(0, |p| p.through_version))
    }

    /// Versions ever created, pruned records included.
    pub fn version_count(&self) -> u32 {
        let listed = u32::try_from(self.versions.len()).unwrap_or(u32::MAX);
        listed.saturating_add(self.pruned.map_or(0, |p| p.versions))
    }

    /// Versions that still hold material (every state but Destroyed).
    pub fn with_material(&self) -> u32 {
        let n = self
            .versions
            .iter()
            .filter(|v| v.state != KeyState::Destroyed)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Bound the state: drop the records of destroyed versions beyond the newest
    /// [`DESTROYED_RECORDS_KEPT`] and old middle transitions of every version. Live versions
    /// are never dropped. Idempotent.
    pub fn compact(&mut self) {
        for v in &mut self.versions {
            v.compact();
        }
        let destroyed = self
            .versions
            .iter()
            .filter(|v| v.state == KeyState::Destroyed)
            .count();
        let mut excess = destroyed.saturating_sub(DESTROYED_RECORDS_KEPT);
        if excess == 0 {
            return;
        }
        let mut pruned = self.pruned.unwrap_or_default();
        // Oldest first: the list is in creation order.
        self.versions.retain(|v| {
            if excess > 0 && v.state == KeyState::Destroyed {
                excess -= 1;
                pruned.versions = pruned.versions.saturating_add(1);
                pruned.through_version = pruned.through_version.max(v.version);
                false
            } else {
                true
            }
        });
        self.pruned = Some(pruned);
    }

    /// The newest Deactivated version still within the grace period: what "previous" serves.
    pub fn previous_in_grace(&self, grace: Duration, now: Timestamp) -> Option<&StoredVersion> {
        self.versions.iter().rev().find(|v| v.in_grace(grace, now))
    }

    /// Whether every version is destroyed (and there was at least one).
    pub fn all_destroyed(&self) -> bool {
        !self.versions.is_empty() && self.versions.iter().all(|v| v.state == KeyState::Destroyed)
    }

    /// Apply a state transition with its record.
    pub fn transition(
        &mut self,
        version: u32,
        to: KeyState,
        at: Timestamp,
        reason: &str,
    ) -> Result<(), StateError> {
        let v = self
            .version_mut(version)
            .ok_or(StateError::NoSuchVersion(version))?;
        let from = v.state;
        from.transition(to)
            .map_err(|source| StateError::Illegal { version, source })?;
        v.state = to;
        match to {
            KeyState::Active => v.activated = Some(at),
            KeyState::Deactivated | KeyState::Compromised if v.deactivated.is_none() => {
                v.deactivated = Some(at)
            }
            KeyState::Destroyed => v.destroyed = Some(at),
            _ => {}
        }
        v.transitions.push(Transition {
            from,
            to,
            at,
            reason: reason.into(),
        });
        Ok(())
    }

    /// Record a new PreActivation version.
    pub fn add_version(
        &mut self,
        version: u32,
        at: Timestamp,
        fingerprint: String,
        kek: Option<String>,
        expires: Option<Timestamp>,
    ) {
        self.versions.push(StoredVersion {
            version,
            state: KeyState::PreActivation,
            created: at,
            activated: None,
            deactivated: None,
            expires,
            destroyed: None,
            fingerprint,
            kek,
            public_key: None,
            transitions: vec![Transition {
                from: KeyState::PreActivation,
                to: KeyState::PreActivation,
                at,
                reason: "generated".into(),
            }],
            transitions_pruned: 0,
        });
    }

    /// The status view of every version, newest first, with the last `keep_transitions`
    /// steps each (the stored state keeps all of them).
    pub fn version_statuses(&self, keep_transitions: usize) -> Vec<KeyVersionStatus> {
        self.versions
            .iter()
            .rev()
            .map(|v| v.status(keep_transitions))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    /// `transitionsPruned` is stored only when something was pruned (old states, written
    /// before compaction existed, have no such field and must read the same).
    #[test]
    fn transitions_pruned_is_stored_only_when_not_zero() {
        let mut st = StoredState::default();
        st.add_version(1, t(0), "fp".into(), None, None);
        let json = serde_json::to_value(&st).unwrap();
        assert!(
            json["versions"][0].get("transitionsPruned").is_none(),
            "{json}"
        );
        st.versions[0].transitions_pruned = 3;
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["versions"][0]["transitionsPruned"], 3);
    }

    #[test]
    fn all_destroyed_needs_a_version_and_every_one_destroyed() {
        let mut st = StoredState::default();
        assert!(!st.all_destroyed(), "no versions");
        st.add_version(1, t(0), "fp".into(), None, None);
        st.add_version(2, t(0), "fp".into(), None, None);
        for v in [1, 2] {
            st.transition(v, KeyState::Destroyed, t(1), "x").unwrap();
        }
        assert!(st.all_destroyed());
        st.add_version(3, t(2), "fp".into(), None, None);
        assert!(!st.all_destroyed(), "version 3 is not destroyed");
    }

    /// `deactivated` is when a version first stopped being used: a later Compromised keeps it
    /// (grace and deletion-window clocks run from there).
    #[test]
    fn deactivation_time_is_the_first_one() {
        let mut st = StoredState::default();
        st.add_version(1, t(0), "fp".into(), None, None);
        st.transition(1, KeyState::Active, t(1), "first").unwrap();
        st.transition(1, KeyState::Deactivated, t(2), "rotated")
            .unwrap();
        st.transition(1, KeyState::Compromised, t(3), "leaked")
            .unwrap();
        assert_eq!(st.versions[0].deactivated, Some(t(2)));
        assert_eq!(st.versions[0].state, KeyState::Compromised);
    }

    #[test]
    fn unparsable_timestamps_are_refused_on_read() {
        let mut st = StoredState::default();
        st.add_version(1, t(0), "fp".into(), None, None);
        let mut json = serde_json::to_value(&st).unwrap();
        json["versions"][0]["created"] = "yesterday".into();
        let e = serde_json::from_value::<StoredState>(json).unwrap_err();
        assert!(e.to_string().contains("year"), "{e}");
    }

    #[test]
    fn illegal_steps_and_unknown_versions_are_typed_errors() {
        let mut st = StoredState::default();
        st.add_version(1, t(0), "fp".into(), None, None);
        assert_eq!(
            st.transition(2, KeyState::Active, t(1), "x"),
            Err(StateError::NoSuchVersion(2))
        );
        st.transition(1, KeyState::Active, t(1), "first").unwrap();
        st.transition(1, KeyState::Destroyed, t(2), "x")
            .expect_err("Active cannot go straight to Destroyed");
        assert_eq!(st.versions[0].state, KeyState::Active);
        assert_eq!(st.versions[0].transitions.len(), 2);
    }

    #[test]
    fn status_is_a_projection_with_recent_transitions_only() {
        let mut st = StoredState::default();
        st.add_version(1, t(0), "fp1".into(), Some("local/root@1".into()), None);
        st.transition(1, KeyState::Active, t(1), "first version")
            .unwrap();
        for i in 0..4 {
            st.transition(1, KeyState::Suspended, t(2 + 2 * i), "s")
                .unwrap();
            st.transition(1, KeyState::Active, t(3 + 2 * i), "resumed")
                .unwrap();
        }
        let s = st.version_statuses(5);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].transitions.len(), 5);
        assert_eq!(s[0].created, t(0).to_string());
        assert_eq!(s[0].activated, Some(t(9).to_string()));
        assert_eq!(st.versions[0].first_activated(), Some(t(1)));
        assert_eq!(st.versions[0].transitions.len(), 10);
    }

    #[test]
    fn compaction_keeps_live_versions_first_activation_and_numbers() {
        let mut st = StoredState::default();
        // v1 stays Compromised (live) forever; v2..=v60 are destroyed in turn.
        st.add_version(1, t(0), "fp1".into(), None, None);
        st.transition(1, KeyState::Active, t(1), "first").unwrap();
        st.transition(1, KeyState::Compromised, t(2), "c").unwrap();
        for v in 2..=60 {
            st.add_version(v, t(v as i64 * 10), format!("fp{v}"), None, None);
            st.transition(v, KeyState::Active, t(v as i64 * 10 + 1), "r")
                .unwrap();
            st.transition(v, KeyState::Deactivated, t(v as i64 * 10 + 2), "r")
                .unwrap();
            st.transition(v, KeyState::Destroyed, t(v as i64 * 10 + 3), "r")
                .unwrap();
            st.compact();
        }
        st.add_version(61, t(700), "fp61".into(), None, None);
        st.transition(61, KeyState::Active, t(701), "r").unwrap();
        // Many suspend/resume cycles on the active version.
        for i in 0..50 {
            st.transition(61, KeyState::Suspended, t(702 + 2 * i), "s")
                .unwrap();
            st.transition(61, KeyState::Active, t(703 + 2 * i), "r")
                .unwrap();
        }
        st.compact();
        let again = st.clone();
        st.compact();
        assert_eq!(st, again, "compaction is idempotent");
        assert_eq!(st.version(1).map(|v| v.state), Some(KeyState::Compromised));
        let destroyed = st.in_states(&[KeyState::Destroyed]);
        assert_eq!(destroyed, (45..=60).collect::<Vec<_>>());
        assert_eq!(
            st.pruned,
            Some(Pruned {
                versions: 43,
                through_version: 44
            })
        );
        assert_eq!(st.max_version(), 61);
        assert_eq!(st.version_count(), 61);
        assert_eq!(st.with_material(), 2);
        let v61 = st.version(61).unwrap();
        assert_eq!(v61.transitions.len(), 2 + TRANSITIONS_KEPT);
        assert_eq!(v61.transitions_pruned, 100 - TRANSITIONS_KEPT as u32);
        assert_eq!(v61.first_activated(), Some(t(701)));
        assert_eq!(v61.transitions.last().unwrap().at, t(801));
        // The summary survives a round trip (it is what keeps numbers from being reused).
        let back: StoredState = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        // Everything destroyed and pruned down to the kept records: still "all destroyed".
        let mut gone = StoredState::default();
        for v in 1..=40 {
            gone.add_version(v, t(0), "fp".into(), None, None);
            gone.transition(v, KeyState::Destroyed, t(1), "x").unwrap();
        }
        gone.compact();
        assert!(gone.all_destroyed());
        assert_eq!(gone.versions.len(), DESTROYED_RECORDS_KEPT);
        assert_eq!(gone.max_version(), 40);
    }
}
