//! The key lifecycle of NIST SP 800-57 Part 1 Rev. 5, section 7, as pure code.
//!
//! Only the transitions the standard draws are legal; everything else is refused with an
//! error naming both states, so a controller bug or a bad edit cannot skip a state (for
//! example bring a Destroyed key back, or re-activate a Compromised one).

use serde::{Deserialize, Serialize};

/// A key version's lifecycle state.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum KeyState {
    /// Generated, not yet usable.
    PreActivation,
    /// Usable to protect (encrypt/sign) and process; served as "current".
    Active,
    /// Temporarily out of use; may still process (decrypt/verify).
    Suspended,
    /// No longer used to protect; may still process existing data.
    Deactivated,
    /// Integrity or secrecy is in doubt; processes only with an explicit override.
    Compromised,
    /// Material erased; only metadata remains.
    Destroyed,
}

/// Every state, for table tests and metrics.
pub const ALL_STATES: [KeyState; 6] = [
    KeyState::PreActivation,
    KeyState::Active,
    KeyState::Suspended,
    KeyState::Deactivated,
    KeyState::Compromised,
    KeyState::Destroyed,
];

/// A refused transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "illegal key state transition {from:?} -> {to:?} (SP 800-57 Part 1 section 7 allows from {from:?}: {allowed})"
)]
pub struct TransitionError {
    /// State the key is in.
    pub from: KeyState,
    /// State requested.
    pub to: KeyState,
    /// Legal targets from `from`, for the message.
    pub allowed: String,
}

/// What a caller wants to do with a key version's material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Protect new data (encrypt, sign, wrap); also "serve as current".
    Protect,
    /// Process existing data (decrypt, verify, unwrap).
    Process,
}

impl KeyState {
    /// Stable name used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreActivation => "PreActivation",
            Self::Active => "Active",
            Self::Suspended => "Suspended",
            Self::Deactivated => "Deactivated",
            Self::Compromised => "Compromised",
            Self::Destroyed => "Destroyed",
        }
    }

    /// Legal next states.
    pub fn successors(self) -> &'static [KeyState] {
        use KeyState::*;
        match self {
            PreActivation => &[Active, Compromised, Destroyed],
            Active => &[Suspended, Deactivated, Compromised],
            Suspended => &[Active, Deactivated, Compromised, Destroyed],
            Deactivated => &[Compromised, Destroyed],
            Compromised => &[Destroyed],
            Destroyed => &[],
        }
    }

    /// Check a transition.
    pub fn transition(self, to: KeyState) -> Result<KeyState, TransitionError> {
        if self.successors().contains(&to) {
            Ok(to)
        } else {
            let allowed = if self.successors().is_empty() {
                "none".to_string()
            } else {
                self.successors()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(TransitionError {
                from: self,
                to,
                allowed,
            })
        }
    }

    /// Whether material in this state may be used for `u`. `override_compromised` is the
    /// explicit, audited override that lets Compromised material decrypt existing data.
    pub fn permits(self, u: Use, override_compromised: bool) -> bool {
        match (self, u) {
            (Self::Active, _) => true,
            (Self::Suspended | Self::Deactivated, Use::Process) => true,
            (Self::Compromised, Use::Process) => override_compromised,
            _ => false,
        }
    }

    /// Whether material exists at all.
    pub fn has_material(self) -> bool {
        self != Self::Destroyed
    }
}

/// One recorded transition: when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRecord {
    /// Previous state.
    pub from: KeyState,
    /// New state.
    pub to: KeyState,
    /// RFC 3339 time.
    pub at: String,
    /// Human-readable reason (never key material).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    #[test]
    fn all_36_state_pairs_follow_sp_800_57() {
        let legal = [
            (PreActivation, Active),
            (PreActivation, Compromised),
            (PreActivation, Destroyed),
            (Active, Suspended),
            (Active, Deactivated),
            (Active, Compromised),
            (Suspended, Active),
            (Suspended, Deactivated),
            (Suspended, Compromised),
            (Suspended, Destroyed),
            (Deactivated, Compromised),
            (Deactivated, Destroyed),
            (Compromised, Destroyed),
        ];
        let mut checked = 0;
        for from in ALL_STATES {
            for to in ALL_STATES {
                let r = from.transition(to);
                if legal.contains(&(from, to)) {
                    assert_eq!(r, Ok(to), "{from:?} -> {to:?} must be legal");
                } else {
                    let e = r.expect_err("must be refused");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(from.as_str()) && msg.contains(to.as_str()),
                        "{msg}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 36);
    }

    #[test]
    fn only_active_protects_and_compromised_needs_override() {
        for s in ALL_STATES {
            assert_eq!(s.permits(Use::Protect, true), s == Active, "{s:?}");
        }
        assert!(Suspended.permits(Use::Process, false));
        assert!(Deactivated.permits(Use::Process, false));
        assert!(!Compromised.permits(Use::Process, false));
        assert!(Compromised.permits(Use::Process, true));
        assert!(!Destroyed.permits(Use::Process, true));
        assert!(!PreActivation.permits(Use::Process, true));
        assert!(!Destroyed.has_material());
    }
}
