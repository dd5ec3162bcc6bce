//! Which stored versions a request may receive: a pure function of stored state, grace period,
//! selector and time, so every lifecycle rule is unit-tested without a cluster.

use crate::duration::Duration;
use crate::lifecycle::{KeyState, Use};
use crate::state::{StoredState, StoredVersion};
use jiff::Timestamp;

/// Which versions an object asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The Active version.
    Current,
    /// The newest Deactivated version still within the grace period.
    Previous,
    /// The Active version plus every other servable version (Suspended, Deactivated within
    /// grace) and the pre-published next version.
    All,
    /// One version by number, if its state permits processing.
    Number(u32),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Current => f.write_str("current"),
            Self::Previous => f.write_str("previous"),
            Self::All => f.write_str("all"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// The versions to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Version numbers, ascending.
    pub versions: Vec<u32>,
    /// The Active version among them, if any.
    pub current: Option<u32>,
    /// The pre-published next version among them (PreActivation, staged rotation), if any.
    pub next: Option<u32>,
}

/// Why nothing is served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The key is scheduled for destruction.
    #[error(
        "is pending deletion (destroy at {destroy_at}); nothing is served. Remove spec.deletion to cancel"
    )]
    PendingDeletion {
        /// When material goes.
        destroy_at: String,
    },
    /// The ManagedKey is being deleted (its deletionTimestamp is set; the controller's
    /// finalizer may still be at work): a deletion takes effect at once, not when the
    /// controller gets to it.
    #[error(
        "is being deleted; nothing is served. Its versions stay restorable for the deletion window (docs/controller.md, Deletion)"
    )]
    Deleted,
    /// No Active version (Suspended, Deactivated, Compromised or not yet created).
    #[error("has no Active version to serve as current ({why})")]
    NoCurrent {
        /// Explanation with the fix.
        why: String,
    },
    /// No Deactivated version within the grace period.
    #[error(
        "has no previous version within the grace period ({grace} after rotation); mount version \"current\" or a version number"
    )]
    NoPrevious {
        /// The grace period.
        grace: Duration,
    },
    /// The requested number does not exist.
    #[error("has no version {0}")]
    NoSuchVersion(u32),
    /// The version exists but may not be served.
    #[error("version {version} is {state} and is never served")]
    NotServable {
        /// Version.
        version: u32,
        /// Its state (or "expired").
        state: String,
    },
    /// `all` found nothing servable.
    #[error("has no servable version (none Active, Suspended, or Deactivated within grace)")]
    NothingServable,
}

/// Whether a version may be handed out at all (material present, state permits processing
/// without the compromise override, not expired).
pub fn servable(v: &StoredVersion, now: Timestamp) -> bool {
    v.state.permits(Use::Process, false) && !v.expired(now)
}

/// Whether a version is the pre-published next one: PreActivation with material and not
/// expired. Handed to readers (`all`, a number) so they hold it before it is used; never
/// `current`.
pub fn published(v: &StoredVersion, now: Timestamp) -> bool {
    v.state == KeyState::PreActivation && !v.expired(now)
}

/// Pick the versions `sel` resolves to.
pub fn select(
    state: &StoredState,
    grace: Duration,
    sel: Selector,
    now: Timestamp,
) -> Result<Selection, SelectError> {
    if let Some(pd) = &state.pending_deletion {
        return Err(SelectError::PendingDeletion {
            destroy_at: pd.destroy_at.to_string(),
        });
    }
    let current = state
        .active()
        .filter(|v| servable(v, now))
        .map(|v| v.version);
    match sel {
        Selector::Current => {
            let v = current.ok_or_else(|| SelectError::NoCurrent {
                why: no_current_reason(state, now),
            })?;
            Ok(Selection {
                versions: vec![v],
                current: Some(v),
                next: None,
            })
        }
        Selector::Previous => {
            let v = state
                .previous_in_grace(grace, now)
                .filter(|v| servable(v, now))
                .ok_or(SelectError::NoPrevious { grace })?;
            Ok(Selection {
                versions: vec![v.version],
                current: None,
                next: None,
            })
        }
        Selector::Number(n) => {
            let v = state
                .versions
                .iter()
                .find(|v| v.version == n)
                .ok_or(SelectError::NoSuchVersion(n))?;
            let next = published(v, now);
            if !servable(v, now) && !next {
                return Err(SelectError::NotServable {
                    version: n,
                    state: if v.expired(now) {
                        "expired".into()
                    } else {
                        v.state.as_str().into()
                    },
                });
            }
            Ok(Selection {
                versions: vec![n],
                current: (current == Some(n)).then_some(n),
                next: next.then_some(n),
            })
        }
        Selector::All => {
            let mut versions: Vec<u32> = state
                .versions
                .iter()
                .filter(|v| {
                    (servable(v, now)
                        && (matches!(v.state, KeyState::Active | KeyState::Suspended)
                            || v.in_grace(grace, now)))
                        || published(v, now)
                })
                .map(|v| v.version)
                .collect();
            versions.sort_unstable();
            versions.dedup();
            if versions.is_empty() {
                return Err(SelectError::NothingServable);
            }
            let next = state
                .versions
                .iter()
                .rev()
                .find(|v| published(v, now))
                .map(|v| v.version);
            Ok(Selection {
                versions,
                current,
                next,
            })
        }
    }
}

fn no_current_reason(state: &StoredState, now: Timestamp) -> String {
    if let Some(a) = state.active()
        && a.expired(now)
    {
        return format!("version {} expired; rotate the key", a.version);
    }
    if state
        .versions
        .iter()
        .any(|v| v.state == KeyState::Suspended)
    {
        "the key is Suspended; set spec.desiredState to Active to resume".into()
    } else if state.versions.is_empty() {
        "no version exists yet; wait for the controller to create one".into()
    } else {
        "no version is Active; check spec.desiredState and the controller's Events".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(50);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    /// v1 Deactivated at t(100), v2 Active since t(100).
    fn rotated() -> StoredState {
        let mut s = StoredState::default();
        s.add_version(1, t(0), "fp1".into(), Some("k".into()), None);
        s.transition(1, KeyState::Active, t(0), "first").unwrap();
        s.add_version(2, t(100), "fp2".into(), Some("k".into()), None);
        s.transition(1, KeyState::Deactivated, t(100), "rotated")
            .unwrap();
        s.transition(2, KeyState::Active, t(100), "rotated")
            .unwrap();
        s
    }

    #[test]
    fn current_is_the_active_version() {
        let s = rotated();
        let r = select(&s, G, Selector::Current, t(120)).unwrap();
        assert_eq!(r.versions, vec![2]);
        assert_eq!(r.current, Some(2));
    }

    #[test]
    fn previous_only_within_grace() {
        let s = rotated();
        assert_eq!(
            select(&s, G, Selector::Previous, t(149)).unwrap().versions,
            vec![1]
        );
        assert_eq!(
            select(&s, G, Selector::Previous, t(150)),
            Err(SelectError::NoPrevious { grace: G })
        );
    }

    #[test]
    fn all_includes_previous_in_grace_only() {
        let s = rotated();
        let r = select(&s, G, Selector::All, t(120)).unwrap();
        assert_eq!(r.versions, vec![1, 2]);
        assert_eq!(r.current, Some(2));
        let r = select(&s, G, Selector::All, t(200)).unwrap();
        assert_eq!(r.versions, vec![2]);
    }

    #[test]
    fn number_serves_processable_states_only() {
        let mut s = rotated();
        // Deactivated outside grace still processes when asked for by number.
        assert_eq!(
            select(&s, G, Selector::Number(1), t(1000))
                .unwrap()
                .versions,
            vec![1]
        );
        assert_eq!(
            select(&s, G, Selector::Number(9), t(120)),
            Err(SelectError::NoSuchVersion(9))
        );
        s.transition(1, KeyState::Compromised, t(130), "leak")
            .unwrap();
        let e = select(&s, G, Selector::Number(1), t(131)).unwrap_err();
        assert!(e.to_string().contains("Compromised"), "{e}");
        assert_eq!(
            select(&s, G, Selector::Previous, t(131)),
            Err(SelectError::NoPrevious { grace: G })
        );
        assert_eq!(
            select(&s, G, Selector::All, t(131)).unwrap().versions,
            vec![2]
        );
        // A pre-published version (PreActivation): handed to readers by number and in
        // `all`, marked next, never current; not once expired.
        s.add_version(3, t(140), "fp3".into(), Some("k".into()), Some(t(200)));
        let by_number = select(&s, G, Selector::Number(3), t(141)).unwrap();
        assert_eq!((by_number.current, by_number.next), (None, Some(3)));
        let all = select(&s, G, Selector::All, t(141)).unwrap();
        assert_eq!(
            (all.versions, all.current, all.next),
            (vec![2, 3], Some(2), Some(3))
        );
        assert_eq!(
            select(&s, G, Selector::Current, t(141)).unwrap().versions,
            vec![2]
        );
        let e = select(&s, G, Selector::Number(3), t(200)).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert_eq!(
            select(&s, G, Selector::All, t(200)).unwrap().versions,
            vec![2]
        );
        s.transition(1, KeyState::Destroyed, t(150), "gone")
            .unwrap();
        assert!(select(&s, G, Selector::Number(1), t(151)).is_err());
    }

    #[test]
    fn suspended_is_not_current() {
        let mut s = rotated();
        s.transition(2, KeyState::Suspended, t(200), "pause")
            .unwrap();
        let e = select(&s, G, Selector::Current, t(201)).unwrap_err();
        // The Suspended reason, not the generic "no version is Active" one (both name
        // desiredState).
        assert!(
            e.to_string()
                .contains("the key is Suspended; set spec.desiredState to Active"),
            "{e}"
        );
        // Still processes by number and through `all`, but `all` then has no current.
        assert!(select(&s, G, Selector::Number(2), t(201)).is_ok());
        let r = select(&s, G, Selector::All, t(201)).unwrap();
        assert_eq!((r.versions, r.current), (vec![2], None));
    }

    #[test]
    fn a_numbered_version_is_current_only_when_it_is_the_active_one() {
        let s = rotated();
        let r = select(&s, G, Selector::Number(2), t(120)).unwrap();
        assert_eq!((r.versions, r.current), (vec![2], Some(2)));
        let r = select(&s, G, Selector::Number(1), t(120)).unwrap();
        assert_eq!((r.versions, r.current), (vec![1], None));
    }

    #[test]
    fn no_current_reasons_name_the_cause() {
        let empty = StoredState::default();
        let e = select(&empty, G, Selector::Current, t(0)).unwrap_err();
        assert!(e.to_string().contains("no version exists yet"), "{e}");
        let mut retired = rotated();
        retired
            .transition(2, KeyState::Deactivated, t(200), "retire")
            .unwrap();
        let e = select(&retired, G, Selector::Current, t(201)).unwrap_err();
        assert!(e.to_string().contains("no version is Active"), "{e}");
    }

    /// The selector's text is what audit records and refusals name (`fail(name, &sel...)`).
    #[test]
    fn selectors_print_as_the_objects_parameter_spells_them() {
        let shown: Vec<String> = [
            Selector::Current,
            Selector::Previous,
            Selector::All,
            Selector::Number(7),
        ]
        .iter()
        .map(Selector::to_string)
        .collect();
        assert_eq!(shown, ["current", "previous", "all", "7"]);
    }

    #[test]
    fn pending_deletion_serves_nothing() {
        let mut s = rotated();
        s.pending_deletion = Some(crate::state::PendingDeletion {
            scheduled_at: t(0),
            destroy_at: t(86_400),
        });
        for sel in [
            Selector::Current,
            Selector::Previous,
            Selector::All,
            Selector::Number(2),
        ] {
            let e = select(&s, G, sel, t(120)).unwrap_err();
            assert!(matches!(e, SelectError::PendingDeletion { .. }), "{sel}");
        }
    }

    #[test]
    fn expired_versions_are_not_served() {
        let mut s = StoredState::default();
        s.add_version(1, t(0), "fp".into(), Some("k".into()), Some(t(10)));
        s.transition(1, KeyState::Active, t(0), "first").unwrap();
        assert!(select(&s, G, Selector::Current, t(9)).is_ok());
        let e = select(&s, G, Selector::Current, t(10)).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
