//! The rotation planner: a pure function of (spec, policy, stored versions, now) -> actions.
//!
//! The controller reads the ManagedKey and its storage Secret, asks the planner what to do,
//! applies the actions to the stored state in one Secret write, and projects status from it.
//! Keeping the planner pure makes every rule testable without a cluster and makes a crash
//! harmless: re-planning from the stored state after a crash yields no duplicate work.

use crate::crd::{
    DesiredState, KeyVersionStatus, ManagedKeySpec, PendingDeletion, RotationPolicySpec,
};
use crate::duration;
use crate::lifecycle::{KeyState, TransitionRecord};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Default grace period when no policy applies.
pub const DEFAULT_GRACE_SECS: i64 = 7 * 86_400;
/// Default deletion window when no policy applies (AWS KMS's default too).
pub const DEFAULT_WINDOW_DAYS: u32 = 30;

/// A validated RotationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rotate when the current version is this old.
    pub period_secs: Option<i64>,
    /// Cron schedule (UTC).
    pub schedule: Option<croner::Cron>,
    /// Versions expire this long after creation.
    pub expire_after_secs: Option<i64>,
    /// Warn this long before a due rotation or expiry.
    pub notify_before_secs: Option<i64>,
    /// Versions kept with material, current included.
    pub retain_versions: u32,
    /// Previous version stays served this long after rotation.
    pub grace_secs: i64,
    /// Seconds between scheduling destruction and destroying.
    pub deletion_window_secs: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            period_secs: None,
            schedule: None,
            expire_after_secs: None,
            notify_before_secs: None,
            retain_versions: 3,
            grace_secs: DEFAULT_GRACE_SECS,
            deletion_window_secs: DEFAULT_WINDOW_DAYS as i64 * 86_400,
        }
    }
}

impl Policy {
    /// Validate a spec; the error names the field and the fix.
    pub fn from_spec(spec: &RotationPolicySpec) -> Result<Self, String> {
        let dur = |field: &str, v: &Option<String>| -> Result<Option<i64>, String> {
            v.as_deref()
                .map(|s| {
                    let secs = duration::parse(s).map_err(|e| format!("spec.{field}: {e}"))?;
                    if secs <= 0 {
                        return Err(format!("spec.{field}: must be longer than zero"));
                    }
                    Ok(secs)
                })
                .transpose()
        };
        let period_secs = dur("rotationPeriod", &spec.rotation_period)?;
        let schedule = spec
            .schedule
            .as_deref()
            .map(|s| {
                croner::Cron::new(s).parse().map_err(|e| {
                    format!("spec.schedule: invalid cron expression {s:?} ({e}); use 5 fields, e.g. \"0 3 * * 1\"")
                })
            })
            .transpose()?;
        if period_secs.is_none() && schedule.is_none() {
            return Err("spec: set rotationPeriod (e.g. \"90d\") or schedule (cron)".into());
        }
        if !(7..=30).contains(&spec.deletion_window_days) {
            return Err(format!(
                "spec.deletionWindowDays: must be 7 to 30, got {}",
                spec.deletion_window_days
            ));
        }
        if spec.retain_versions < 1 {
            return Err("spec.retainVersions: must be at least 1".into());
        }
        let grace_secs =
            duration::parse(&spec.grace_period).map_err(|e| format!("spec.gracePeriod: {e}"))?;
        Ok(Self {
            period_secs,
            schedule,
            expire_after_secs: dur("expireAfter", &spec.expire_after)?,
            notify_before_secs: dur("notifyBeforeExpiry", &spec.notify_before_expiry)?,
            retain_versions: spec.retain_versions,
            grace_secs,
            deletion_window_secs: spec.deletion_window_days as i64 * 86_400,
        })
    }

    /// When a version activated at `activated` is due for rotation.
    pub fn due_after(&self, activated: Timestamp) -> Option<Timestamp> {
        let by_period = self
            .period_secs
            .map(|p| activated + SignedDuration::from_secs(p));
        let by_cron = self.schedule.as_ref().and_then(|c| {
            let t = chrono::DateTime::<chrono::Utc>::from_timestamp(activated.as_second(), 0)?;
            let next = c.find_next_occurrence(&t, false).ok()?;
            Timestamp::from_second(next.timestamp()).ok()
        });
        match (by_period, by_cron) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the controller keeps in the storage Secret besides the envelopes: the single source of
/// truth for versions and handled requests. Status is a projection of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredState {
    /// Incremented by every save; the copy the controller last saved carries the highest, and
    /// `status.storageGeneration` records it where only the controller writes, so a stored
    /// copy older than that is a rollback.
    #[serde(default)]
    pub generation: u64,
    /// Every version ever created, oldest first.
    #[serde(default)]
    pub versions: Vec<KeyVersionStatus>,
    /// Last rotate-now request id acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// Set when a desiredState=Compromised request has been handled; cleared when the desired
    /// state changes back, so a later compromise is handled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromise_handled_at: Option<String>,
    /// Scheduled destruction of the whole key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deletion: Option<PendingDeletion>,
}

fn ts(s: &Option<String>) -> Option<Timestamp> {
    s.as_deref().and_then(|s| s.parse().ok())
}

impl StoredState {
    /// The Active version, if any.
    pub fn active(&self) -> Option<&KeyVersionStatus> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::Active)
    }

    /// The version a "current" request resolves to (Active, or Suspended while suspended).
    pub fn current(&self) -> Option<&KeyVersionStatus> {
        self.active().or_else(|| {
            self.versions
                .iter()
                .rev()
                .find(|v| v.state == KeyState::Suspended)
        })
    }

    /// Highest version number used so far.
    pub fn max_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version).max().unwrap_or(0)
    }

    /// The newest Deactivated version still within the grace period: what "previous" serves.
    pub fn previous_in_grace(&self, grace_secs: i64, now: Timestamp) -> Option<&KeyVersionStatus> {
        self.versions.iter().rev().find(|v| {
            v.state == KeyState::Deactivated
                && ts(&v.deactivated)
                    .is_some_and(|d| now < d + SignedDuration::from_secs(grace_secs))
        })
    }

    /// Apply a state transition with its record.
    pub fn transition(
        &mut self,
        version: u32,
        to: KeyState,
        at: Timestamp,
        reason: &str,
    ) -> Result<(), String> {
        let v = self
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| format!("version {version} does not exist"))?;
        let rec = crate::lifecycle::record_transition(v.state, to, at, reason)
            .map_err(|e| e.to_string())?;
        v.state = to;
        match to {
            KeyState::Active => v.activated = Some(rec.at.clone()),
            KeyState::Deactivated | KeyState::Compromised if v.deactivated.is_none() => {
                v.deactivated = Some(rec.at.clone())
            }
            KeyState::Destroyed => v.destroyed = Some(rec.at.clone()),
            _ => {}
        }
        v.transitions.push(rec);
        Ok(())
    }

    /// Record a new PreActivation version.
    pub fn add_version(
        &mut self,
        version: u32,
        at: Timestamp,
        fingerprint: String,
        kek: String,
        expires: Option<Timestamp>,
    ) {
        self.versions.push(KeyVersionStatus {
            version,
            state: KeyState::PreActivation,
            created: at.to_string(),
            activated: None,
            deactivated: None,
            expires: expires.map(|e| e.to_string()),
            destroyed: None,
            fingerprint,
            kek: Some(kek),
            public_key: None,
            transitions: vec![TransitionRecord {
                from: KeyState::PreActivation,
                to: KeyState::PreActivation,
                at: at.to_string(),
                reason: "generated".into(),
            }],
        });
    }
}

/// One step the controller must take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Generate, wrap and store version `version` (PreActivation).
    CreateVersion {
        /// New version number.
        version: u32,
    },
    /// Move a version to another state (legal per SP 800-57).
    Transition {
        /// Version.
        version: u32,
        /// Target state.
        to: KeyState,
        /// Why, for the record and the Event.
        reason: String,
    },
    /// Erase a version's material (after its transition to Destroyed).
    EraseMaterial {
        /// Version.
        version: u32,
    },
    /// Remember a rotate-now request id as handled.
    MarkRotateRequest(String),
    /// Remember (Some) or forget (None) that a compromise was handled.
    MarkCompromise(Option<Timestamp>),
    /// Schedule destruction of the whole key.
    ScheduleDeletion {
        /// Scheduled at.
        at: Timestamp,
        /// Destroy at.
        destroy_at: Timestamp,
    },
    /// Cancel a scheduled destruction.
    CancelDeletion,
    /// Every version is destroyed and the window is over: let the object go.
    Finalize,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Actions in order.
    pub actions: Vec<Action>,
    /// When the current version is due to rotate.
    pub next_rotation: Option<Timestamp>,
    /// When to look again even if nothing changes.
    pub requeue_at: Option<Timestamp>,
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The ManagedKey's spec.
    pub spec: &'a ManagedKeySpec,
    /// The policy, if the key references one that exists and is valid.
    pub policy: Option<&'a Policy>,
    /// Stored versions and handled requests.
    pub state: &'a StoredState,
    /// Value of the rotate-now annotation, if set.
    pub rotate_request: Option<&'a str>,
    /// The object's deletionTimestamp, if it is being deleted.
    pub deleting_since: Option<Timestamp>,
    /// Now.
    pub now: Timestamp,
}

/// Compute the plan. Pure: same input, same plan.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut p = Planner {
        input,
        state: input.state.clone(),
        plan: Plan::default(),
        next_version: input.state.max_version() + 1,
    };
    p.run();
    p.plan
}

struct Planner<'a, 'b> {
    input: &'b PlanInput<'a>,
    /// The state as it will be after the actions so far (so later rules see earlier ones).
    state: StoredState,
    plan: Plan,
    next_version: u32,
}

impl Planner<'_, '_> {
    fn policy(&self) -> Policy {
        self.input.policy.cloned().unwrap_or_default()
    }

    fn requeue(&mut self, t: Timestamp) {
        let t = t.max(self.input.now + SignedDuration::from_secs(1));
        self.plan.requeue_at = Some(self.plan.requeue_at.map_or(t, |r| r.min(t)));
    }

    fn push(&mut self, a: Action) {
        let now = self.input.now;
        match &a {
            Action::CreateVersion { version } => {
                self.state
                    .add_version(*version, now, String::new(), String::new(), None);
                self.next_version = version + 1;
            }
            Action::Transition {
                version,
                to,
                reason,
            } => {
                self.state
                    .transition(*version, *to, now, reason)
                    .expect("planner emits legal transitions only");
            }
            Action::ScheduleDeletion { at, destroy_at } => {
                self.state.pending_deletion = Some(PendingDeletion {
                    scheduled_at: at.to_string(),
                    destroy_at: destroy_at.to_string(),
                })
            }
            Action::CancelDeletion => self.state.pending_deletion = None,
            _ => {}
        }
        self.plan.actions.push(a);
    }

    fn transition(&mut self, version: u32, to: KeyState, reason: &str) {
        self.push(Action::Transition {
            version,
            to,
            reason: reason.into(),
        });
    }

    /// Bring a version to Destroyed by legal steps and erase its material.
    fn destroy(&mut self, version: u32, reason: &str) {
        let Some(state) = self
            .state
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.state)
        else {
            return;
        };
        match state {
            KeyState::Destroyed => return,
            KeyState::Active => self.transition(version, KeyState::Deactivated, reason),
            _ => {}
        }
        self.transition(version, KeyState::Destroyed, reason);
        self.push(Action::EraseMaterial { version });
    }

    fn create_active(&mut self, reason: &str) -> u32 {
        let v = self.next_version;
        self.push(Action::CreateVersion { version: v });
        self.transition(v, KeyState::Active, reason);
        v
    }

    fn run(&mut self) {
        let now = self.input.now;
        let policy = self.policy();

        // 1. Deletion: scheduled by spec.deletion or by deleting the object.
        let wants_deletion = self
            .input
            .spec
            .deletion
            .as_ref()
            .is_some_and(|d| d.scheduled)
            || self.input.deleting_since.is_some();
        match (&self.state.pending_deletion, wants_deletion) {
            (None, true) => {
                let at = self.input.deleting_since.unwrap_or(now);
                let destroy_at = at + SignedDuration::from_secs(policy.deletion_window_secs);
                self.push(Action::ScheduleDeletion { at, destroy_at });
            }
            (Some(_), false) => self.push(Action::CancelDeletion),
            _ => {}
        }
        if let Some(pd) = self.state.pending_deletion.clone() {
            let destroy_at: Timestamp = pd.destroy_at.parse().unwrap_or(now);
            if now >= destroy_at {
                let live: Vec<u32> = self
                    .state
                    .versions
                    .iter()
                    .filter(|v| v.state != KeyState::Destroyed)
                    .map(|v| v.version)
                    .collect();
                for v in live {
                    self.destroy(v, "deletion window ended");
                }
                self.push(Action::Finalize);
            } else {
                // Pending deletion: nothing is served or rotated; look again when the window ends.
                self.requeue(destroy_at);
            }
            return;
        }

        // 2. Desired state.
        let spec = self.input.spec;
        if spec.desired_state != DesiredState::Compromised
            && self.state.compromise_handled_at.is_some()
        {
            self.push(Action::MarkCompromise(None));
            self.state.compromise_handled_at = None;
        }
        match spec.desired_state {
            DesiredState::Compromised if self.state.compromise_handled_at.is_none() => {
                let suspect: Vec<u32> = self
                    .state
                    .versions
                    .iter()
                    .filter(|v| {
                        matches!(
                            v.state,
                            KeyState::Active
                                | KeyState::Suspended
                                | KeyState::Deactivated
                                | KeyState::PreActivation
                        )
                    })
                    .map(|v| v.version)
                    .collect();
                for v in suspect {
                    self.transition(v, KeyState::Compromised, "desiredState Compromised");
                }
                self.create_active("replaces compromised versions");
                self.push(Action::MarkCompromise(Some(now)));
                self.state.compromise_handled_at = Some(now.to_string());
            }
            DesiredState::Suspended => {
                if let Some(a) = self.state.active().map(|v| v.version) {
                    self.transition(a, KeyState::Suspended, "desiredState Suspended");
                }
            }
            DesiredState::Deactivated => {
                let live: Vec<u32> = self
                    .state
                    .versions
                    .iter()
                    .filter(|v| matches!(v.state, KeyState::Active | KeyState::Suspended))
                    .map(|v| v.version)
                    .collect();
                for v in live {
                    self.transition(v, KeyState::Deactivated, "desiredState Deactivated");
                }
            }
            DesiredState::Active | DesiredState::Compromised => {
                let suspended = self
                    .state
                    .versions
                    .iter()
                    .rev()
                    .find(|v| v.state == KeyState::Suspended)
                    .map(|v| v.version);
                if self.state.active().is_none() {
                    if let Some(s) = suspended {
                        self.transition(s, KeyState::Active, "resumed");
                    } else {
                        self.create_active(if self.state.versions.is_empty() {
                            "first version"
                        } else {
                            "no active version"
                        });
                    }
                }
                self.rotate_if_due(&policy);
            }
        }

        // 3. Retention: destroy old versions once outside retain, grace and deletion window.
        self.retire(&policy);
    }

    fn rotate_if_due(&mut self, policy: &Policy) {
        let now = self.input.now;
        let Some(cur) = self.state.active().cloned() else {
            return;
        };
        // The clock runs from the first activation: suspending does not extend a key's life.
        let activated = cur
            .transitions
            .iter()
            .find(|r| r.to == KeyState::Active)
            .and_then(|r| r.at.parse().ok())
            .unwrap_or(now);
        let mut due = policy.due_after(activated);
        if let (Some(exp), Some(e)) = (
            policy.expire_after_secs,
            cur.created.parse::<Timestamp>().ok(),
        ) {
            let exp_at = e + SignedDuration::from_secs(exp);
            due = Some(due.map_or(exp_at, |d| d.min(exp_at)));
        }
        let requested = self
            .input
            .rotate_request
            .filter(|r| !r.is_empty() && self.state.last_rotate_request.as_deref() != Some(*r));
        let reason = if let Some(r) = requested {
            self.push(Action::MarkRotateRequest(r.to_string()));
            Some("rotate-now requested")
        } else if due.is_some_and(|d| now >= d) {
            Some("rotation period elapsed")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.transition(cur.version, KeyState::Deactivated, reason);
            self.create_active(reason);
            due = policy.due_after(now);
            if let Some(exp) = policy.expire_after_secs {
                let e = now + SignedDuration::from_secs(exp);
                due = Some(due.map_or(e, |d| d.min(e)));
            }
        }
        self.plan.next_rotation = due;
        if let Some(d) = due {
            if let Some(n) = policy.notify_before_secs {
                let warn = d - SignedDuration::from_secs(n);
                if warn > now {
                    self.requeue(warn);
                }
            }
            self.requeue(d);
        }
    }

    fn retire(&mut self, policy: &Policy) {
        let now = self.input.now;
        let window = SignedDuration::from_secs(policy.deletion_window_secs);
        let grace = SignedDuration::from_secs(policy.grace_secs);
        // Newest first; count versions that still hold material.
        let mut kept = 0u32;
        let mut candidates = Vec::new();
        let mut later = Vec::new();
        for v in self.state.versions.iter().rev() {
            if v.state == KeyState::Destroyed {
                continue;
            }
            kept += 1;
            if kept <= policy.retain_versions
                || matches!(
                    v.state,
                    KeyState::Active | KeyState::Suspended | KeyState::PreActivation
                )
            {
                continue;
            }
            // Outside retainVersions: destroy once grace and the deletion window have passed.
            let since =
                ts(&v.deactivated).unwrap_or_else(|| v.created.parse::<Timestamp>().unwrap_or(now));
            let eligible = since + grace + window;
            if now >= eligible {
                candidates.push(v.version);
            } else {
                later.push(eligible);
            }
        }
        for t in later {
            self.requeue(t);
        }
        for v in candidates {
            self.destroy(
                v,
                "outside retainVersions after grace period and deletion window",
            );
        }
        // Grace ends: re-plan so "previous" stops being served at the right moment.
        for v in &self.state.versions {
            if v.state == KeyState::Deactivated
                && let Some(d) = ts(&v.deactivated)
                && d + grace > now
            {
                let t = d + grace;
                self.plan.requeue_at = Some(self.plan.requeue_at.map_or(t, |r| r.min(t)));
            }
        }
    }
}

/// Apply the planner's actions to stored state (everything except material, which the I/O
/// shell generates for `CreateVersion` and removes for `EraseMaterial`).
pub fn apply(
    state: &mut StoredState,
    actions: &[Action],
    now: Timestamp,
    fingerprints: &dyn Fn(u32) -> (String, String),
    expire_after_secs: Option<i64>,
) -> Result<(), String> {
    for a in actions {
        match a {
            Action::CreateVersion { version } => {
                let (fp, kek) = fingerprints(*version);
                state.add_version(
                    *version,
                    now,
                    fp,
                    kek,
                    expire_after_secs.map(|e| now + SignedDuration::from_secs(e)),
                );
            }
            Action::Transition {
                version,
                to,
                reason,
            } => state.transition(*version, *to, now, reason)?,
            Action::EraseMaterial { .. } | Action::Finalize => {}
            Action::MarkRotateRequest(r) => state.last_rotate_request = Some(r.clone()),
            Action::MarkCompromise(t) => state.compromise_handled_at = t.map(|t| t.to_string()),
            Action::ScheduleDeletion { at, destroy_at } => {
                state.pending_deletion = Some(PendingDeletion {
                    scheduled_at: at.to_string(),
                    destroy_at: destroy_at.to_string(),
                })
            }
            Action::CancelDeletion => state.pending_deletion = None,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
