//! The rotation planner: a pure function of (spec, policy, stored versions, now) -> actions.
//!
//! The controller reads the ManagedKey and its storage Secret, asks the planner what to do,
//! applies the actions to the stored state in one Secret write, and projects status from it.
//! Keeping the planner pure makes every rule testable without a cluster and makes a crash
//! harmless: re-planning from the stored state after a crash yields no duplicate work.

use crate::crd::{DesiredState, KeyAlgorithm, ManagedKeySpec, RotationPolicySpec};
use crate::duration::{Duration, DurationError, after, before};
use crate::lifecycle::KeyState;
pub use crate::state::{PendingDeletion, StateError, StoredState};
use jiff::{SignedDuration, Timestamp};

/// Default grace period when no policy applies.
pub const DEFAULT_GRACE: Duration = Duration::from_days(7);
/// Default deletion window when no policy applies (AWS KMS's default too).
pub const DEFAULT_WINDOW: Duration = Duration::from_days(30);

/// A RotationPolicy the planner cannot use; the message names the field and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A duration field does not parse.
    #[error("spec.{field}: {source}")]
    Duration {
        /// The field, as users write it.
        field: &'static str,
        /// The parse failure.
        #[source]
        source: DurationError,
    },
    /// A duration that must be positive is zero.
    #[error("spec.{0}: must be longer than zero")]
    Zero(&'static str),
    /// The cron expression does not parse.
    #[error(
        "spec.schedule: invalid cron expression {value:?} ({reason}); use 5 fields, e.g. \"0 3 * * 1\""
    )]
    Schedule {
        /// The expression (truncated).
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Neither a period nor a schedule.
    #[error("spec: set rotationPeriod (e.g. \"90d\") or schedule (cron)")]
    NoSchedule,
    /// deletionWindowDays outside 7..=30.
    #[error("spec.deletionWindowDays: must be 7 to 30, got {0}")]
    DeletionWindow(u32),
    /// retainVersions outside 1..=MAX_RETAIN_VERSIONS.
    #[error("spec.retainVersions: must be 1 to {MAX_RETAIN_VERSIONS}, got {0}")]
    RetainVersions(u32),
    /// prePublish not shorter than the period or expiry it stages for: the next version
    /// would exist before the current one is even due, or expire before it is used.
    #[error(
        "spec.prePublish: {pre_publish} must be shorter than spec.{field} ({limit}); shorten prePublish or remove it"
    )]
    PrePublishTooLong {
        /// The value given.
        pre_publish: Duration,
        /// The field it must stay below.
        field: &'static str,
        /// That field's value.
        limit: Duration,
    },
}

/// Highest `retainVersions`: well below the smallest [`material_limit`], so retention alone
/// never blocks a rotation.
pub const MAX_RETAIN_VERSIONS: u32 = 32;

/// How many versions of one key may hold material at once. Deactivated versions keep theirs
/// for the grace period and the deletion window (at least 7 days), so a short rotation period
/// or a stream of rotate-now requests would otherwise grow the storage Secret past the
/// apiserver's 1 MiB limit, after which no save succeeds. At the limit the planner creates no
/// new version until the oldest is destroyed ([`Plan::blocked`]); material is never destroyed
/// early. The figures keep a key's storage under about 400 KiB (RSA-4096 envelopes are ~3 KiB,
/// symmetric ones ~100 bytes; `tests/limits.rs` prints measured sizes).
pub fn material_limit(algorithm: KeyAlgorithm) -> u32 {
    match algorithm {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => 64,
        _ => MAX_MATERIAL_LIMIT,
    }
}

/// The largest [`material_limit`] of any algorithm: a stored state with more versions holding
/// material was not written by the planner and is refused on load.
pub const MAX_MATERIAL_LIMIT: u32 = 256;

/// Longest rotate-now request id (the annotation's value) acted on and stored; a longer one
/// is refused with a condition naming the annotation, so a tenant cannot grow the stored
/// state (or status) with it.
pub const MAX_ROTATE_REQUEST: usize = 253;

/// A version the planner wanted to create but could not: the key is at its
/// [`material_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionLimit {
    /// Why a version was wanted.
    pub cause: Cause,
    /// Versions holding material now.
    pub with_material: u32,
    /// The limit for the key's algorithm.
    pub limit: u32,
    /// When the oldest of them may be destroyed (and a rotation can proceed), if known.
    pub frees_at: Option<Timestamp>,
}

/// A validated RotationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rotate when the current version is this old.
    pub period: Option<Duration>,
    /// Cron schedule (UTC).
    pub schedule: Option<croner::Cron>,
    /// Versions expire this long after creation.
    pub expire_after: Option<Duration>,
    /// Warn this long before a due rotation or expiry.
    pub notify_before: Option<Duration>,
    /// Create the next version this long before it becomes Active (staged rotation).
    pub pre_publish: Option<Duration>,
    /// Versions kept with material, current included.
    pub retain_versions: u32,
    /// Previous version stays served this long after rotation.
    pub grace: Duration,
    /// Time between scheduling destruction and destroying.
    pub deletion_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            period: None,
            schedule: None,
            expire_after: None,
            notify_before: None,
            pre_publish: None,
            retain_versions: 3,
            grace: DEFAULT_GRACE,
            deletion_window: DEFAULT_WINDOW,
        }
    }
}

impl Policy {
    /// Validate a spec; the error names the field and the fix.
    pub fn from_spec(spec: &RotationPolicySpec) -> Result<Self, PolicyError> {
        let dur =
            |field: &'static str, v: &Option<String>| -> Result<Option<Duration>, PolicyError> {
                v.as_deref()
                    .map(|s| {
                        let d: Duration = s
                            .parse()
                            .map_err(|source| PolicyError::Duration { field, source })?;
                        if d == Duration::ZERO {
                            return Err(PolicyError::Zero(field));
                        }
                        Ok(d)
                    })
                    .transpose()
            };
        let period = dur("rotationPeriod", &spec.rotation_period)?;
        let schedule = spec
            .schedule
            .as_deref()
            .map(|s| {
                croner::Cron::new(s)
                    .parse()
                    .map_err(|e| PolicyError::Schedule {
                        value: s.chars().take(100).collect(),
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        if period.is_none() && schedule.is_none() {
            return Err(PolicyError::NoSchedule);
        }
        if !(7..=30).contains(&spec.deletion_window_days) {
            return Err(PolicyError::DeletionWindow(spec.deletion_window_days));
        }
        if !(1..=MAX_RETAIN_VERSIONS).contains(&spec.retain_versions) {
            return Err(PolicyError::RetainVersions(spec.retain_versions));
        }
        let grace = spec
            .grace_period
            .parse()
            .map_err(|source| PolicyError::Duration {
                field: "gracePeriod",
                source,
            })?;
        let expire_after = dur("expireAfter", &spec.expire_after)?;
        let pre_publish = dur("prePublish", &spec.pre_publish)?;
        if let Some(pre) = pre_publish {
            for (field, limit) in [("rotationPeriod", period), ("expireAfter", expire_after)] {
                if let Some(limit) = limit
                    && pre >= limit
                {
                    return Err(PolicyError::PrePublishTooLong {
                        pre_publish: pre,
                        field,
                        limit,
                    });
                }
            }
        }
        Ok(Self {
            period,
            schedule,
            expire_after,
            notify_before: dur("notifyBeforeExpiry", &spec.notify_before_expiry)?,
            pre_publish,
            retain_versions: spec.retain_versions,
            grace,
            deletion_window: Duration::from_days(spec.deletion_window_days as i64),
        })
    }

    /// When the Active version (activated at `activated`, expiring at `expires`) rotates:
    /// whichever of period, schedule and its own expiry comes first.
    pub fn due(&self, activated: Timestamp, expires: Option<Timestamp>) -> Option<Timestamp> {
        match (self.due_after(activated), expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a version expires: as stored at its creation, or sooner under the policy's
    /// expireAfter as it reads now (a policy that gains or shortens expireAfter applies to
    /// existing versions too).
    pub fn expiry_of(&self, v: &crate::state::StoredVersion) -> Option<Timestamp> {
        let by_policy = self.expire_after.map(|e| after(v.created, e));
        match (v.expires, by_policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a version activated at `activated` is due for rotation.
    pub fn due_after(&self, activated: Timestamp) -> Option<Timestamp> {
        let by_period = self.period.map(|p| after(activated, p));
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

/// Why the planner moves a version: typed, so Events, audit and metrics decide on the cause
/// and never on the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The key's first version.
    FirstVersion,
    /// Versions exist but none is Active (e.g. after Deactivated was undone).
    NoActiveVersion,
    /// desiredState went back from Suspended to Active.
    Resumed,
    /// The rotate-now annotation carried a new request id.
    RotateNow,
    /// The policy's period, schedule or expiry came due.
    PeriodElapsed,
    /// desiredState Suspended.
    DesiredSuspended,
    /// desiredState Deactivated.
    DesiredDeactivated,
    /// desiredState Compromised.
    DesiredCompromised,
    /// A fresh version replacing compromised ones.
    ReplacesCompromised,
    /// The key's deletion window ended.
    DeletionWindowEnded,
    /// Outside retainVersions after grace and deletion window.
    Retention,
    /// Created ahead of its activation (RotationPolicy prePublish).
    PrePublish,
    /// A pre-published version whose expiry came before its activation (e.g. the key was
    /// suspended meanwhile): never activated, its material destroyed.
    ExpiredBeforeActivation,
}

impl Cause {
    /// The words recorded in the transition history and shown in Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::FirstVersion => "first version",
            Cause::NoActiveVersion => "no active version",
            Cause::Resumed => "resumed",
            Cause::RotateNow => "rotate-now requested",
            Cause::PeriodElapsed => "rotation period elapsed",
            Cause::DesiredSuspended => "desiredState Suspended",
            Cause::DesiredDeactivated => "desiredState Deactivated",
            Cause::DesiredCompromised => "desiredState Compromised",
            Cause::ReplacesCompromised => "replaces compromised versions",
            Cause::DeletionWindowEnded => "deletion window ended",
            Cause::Retention => "outside retainVersions after grace period and deletion window",
            Cause::PrePublish => "pre-published ahead of its rotation (prePublish)",
            Cause::ExpiredBeforeActivation => "expired before it was activated",
        }
    }

    /// Whether a version activated for this cause is a rotation (counted in the rotations
    /// metric): a key's first version and a resumed one are not.
    pub fn is_rotation(self) -> bool {
        matches!(
            self,
            Cause::RotateNow
                | Cause::PeriodElapsed
                | Cause::ReplacesCompromised
                | Cause::NoActiveVersion
        )
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
        /// Why, for the record, the Event and the metrics.
        cause: Cause,
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
    /// Set when a wanted version was not created because the key is at its material limit.
    pub blocked: Option<VersionLimit>,
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

/// Compute the plan. Pure: same input, same plan. An error means the stored state cannot be
/// moved on (a state the load-time invariants should have refused, or version numbers used
/// up): the controller reports it on that key and changes nothing.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, StateError> {
    let mut p = Planner {
        input,
        state: input.state.clone(),
        plan: Plan::default(),
        next_version: next_number(input.state.max_version())?,
    };
    p.run()?;
    Ok(p.plan)
}

/// The number after `v`, or the typed error when numbers are used up.
fn next_number(v: u32) -> Result<u32, StateError> {
    v.checked_add(1).ok_or(StateError::VersionNumbersExhausted)
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
        let soonest = self
            .input
            .now
            .checked_add(SignedDuration::from_secs(1))
            .unwrap_or(Timestamp::MAX);
        let t = t.max(soonest);
        self.plan.requeue_at = Some(self.plan.requeue_at.map_or(t, |r| r.min(t)));
    }

    fn push(&mut self, a: Action) -> Result<(), StateError> {
        // Later rules see earlier actions: the same `apply` the controller uses, on the copy.
        // Material fields are left empty here; the planner never reads them.
        apply(
            &mut self.state,
            std::slice::from_ref(&a),
            self.input.now,
            &|_| (String::new(), None),
            None,
        )?;
        if let Action::CreateVersion { version } = a {
            self.next_version = next_number(version)?;
        }
        self.plan.actions.push(a);
        Ok(())
    }

    fn transition(&mut self, version: u32, to: KeyState, cause: Cause) -> Result<(), StateError> {
        self.push(Action::Transition { version, to, cause })
    }

    /// Bring a version to Destroyed by legal steps and erase its material.
    fn destroy(&mut self, version: u32, cause: Cause) -> Result<(), StateError> {
        let Some(state) = self.state.version(version).map(|v| v.state) else {
            return Ok(());
        };
        match state {
            KeyState::Destroyed => return Ok(()),
            KeyState::Active => self.transition(version, KeyState::Deactivated, cause)?,
            _ => {}
        }
        self.transition(version, KeyState::Destroyed, cause)?;
        self.push(Action::EraseMaterial { version })
    }

    /// Whether one more version may hold material, destroying versions retention lets go
    /// of first; records the refusal when still full.
    fn room(&mut self, cause: Cause) -> Result<bool, StateError> {
        let limit = material_limit(self.input.spec.algorithm);
        if self.state.with_material() < limit {
            return Ok(true);
        }
        let policy = self.policy();
        self.retire(&policy)?;
        let with_material = self.state.with_material();
        if with_material < limit {
            return Ok(true);
        }
        self.plan.blocked.get_or_insert(VersionLimit {
            cause,
            with_material,
            limit,
            frees_at: None,
        });
        Ok(false)
    }

    fn create_active(&mut self, cause: Cause) -> Result<(), StateError> {
        if !self.room(cause)? {
            return Ok(());
        }
        let v = self.next_version;
        self.push(Action::CreateVersion { version: v })?;
        self.transition(v, KeyState::Active, cause)
    }

    fn run(&mut self) -> Result<(), StateError> {
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
                let destroy_at = after(at, policy.deletion_window);
                self.push(Action::ScheduleDeletion { at, destroy_at })?;
            }
            (Some(_), false) => self.push(Action::CancelDeletion)?,
            _ => {}
        }
        if let Some(pd) = self.state.pending_deletion {
            if now >= pd.destroy_at {
                for v in self.state.in_states(&LIVE) {
                    self.destroy(v, Cause::DeletionWindowEnded)?;
                }
                self.push(Action::Finalize)?;
            } else {
                // Pending deletion: nothing is served or rotated; look again when the window ends.
                self.requeue(pd.destroy_at);
            }
            return Ok(());
        }

        // 2. Desired state.
        let spec = self.input.spec;
        if spec.desired_state != DesiredState::Compromised
            && self.state.compromise_handled_at.is_some()
        {
            self.push(Action::MarkCompromise(None))?;
        }
        match spec.desired_state {
            DesiredState::Compromised if self.state.compromise_handled_at.is_none() => {
                let suspect = self.state.in_states(&[
                    KeyState::Active,
                    KeyState::Suspended,
                    KeyState::Deactivated,
                    KeyState::PreActivation,
                ]);
                for v in suspect {
                    self.transition(v, KeyState::Compromised, Cause::DesiredCompromised)?;
                }
                self.create_active(Cause::ReplacesCompromised)?;
                self.push(Action::MarkCompromise(Some(now)))?;
            }
            DesiredState::Suspended => {
                if let Some(a) = self.state.active().map(|v| v.version) {
                    self.transition(a, KeyState::Suspended, Cause::DesiredSuspended)?;
                }
            }
            DesiredState::Deactivated => {
                for v in self
                    .state
                    .in_states(&[KeyState::Active, KeyState::Suspended])
                {
                    self.transition(v, KeyState::Deactivated, Cause::DesiredDeactivated)?;
                }
            }
            DesiredState::Active | DesiredState::Compromised => {
                if self.state.active().is_none() {
                    if let Some(s) = self.state.suspended().map(|v| v.version) {
                        self.transition(s, KeyState::Active, Cause::Resumed)?;
                    } else if self.state.versions.is_empty() {
                        self.create_active(Cause::FirstVersion)?;
                    } else if let Some(next) = self.staged() {
                        // Pre-published while the key was Deactivated: readers already hold it.
                        self.transition(next, KeyState::Active, Cause::NoActiveVersion)?;
                    } else {
                        self.create_active(Cause::NoActiveVersion)?;
                    }
                }
                self.rotate_if_due(&policy)?;
            }
        }

        // 3. Retention: destroy old versions once outside retain, grace and deletion window.
        self.retire(&policy)
    }

    fn rotate_if_due(&mut self, policy: &Policy) -> Result<(), StateError> {
        let now = self.input.now;
        let Some(cur) = self.state.active().cloned() else {
            return Ok(());
        };
        // The clock runs from the first activation: suspending does not extend a key's life.
        let activated = cur.first_activated().unwrap_or(now);
        let mut due = policy.due(activated, policy.expiry_of(&cur));
        let requested = self.input.rotate_request.filter(|r| {
            !r.is_empty()
                && r.len() <= MAX_ROTATE_REQUEST
                && self.state.last_rotate_request.as_deref() != Some(*r)
        });
        let cause = if requested.is_some() {
            Some(Cause::RotateNow)
        } else if due.is_some_and(|d| now >= d) {
            Some(Cause::PeriodElapsed)
        } else {
            None
        };
        // A pre-published version that expired while waiting is never activated (it would be
        // an Active version nobody may be served): destroyed, and a fresh one takes its place.
        if let Some(s) = self.staged()
            && let Some(v) = self.state.version(s)
            && policy.expiry_of(v).is_some_and(|e| e <= now)
        {
            self.destroy(s, Cause::ExpiredBeforeActivation)?;
        }
        // A pre-published version becomes Active (it already holds material); otherwise a new
        // one is made, and at the material limit the current version stays (and a rotate-now
        // request stays unhandled) until retention destroys the oldest.
        let staged = self.staged();
        let cause = match cause {
            Some(c) if staged.is_some() || self.room(c)? => Some(c),
            _ => None,
        };
        if let Some(cause) = cause {
            if let Some(r) = requested {
                self.push(Action::MarkRotateRequest(r.to_string()))?;
            }
            self.transition(cur.version, KeyState::Deactivated, cause)?;
            match staged {
                Some(next) => self.transition(next, KeyState::Active, cause)?,
                None => self.create_active(cause)?,
            }
            let expires = self.state.active().and_then(|v| policy.expiry_of(v));
            due = policy.due(now, expires);
        }
        self.plan.next_rotation = due;
        if let Some(d) = due {
            if let Some(n) = policy.notify_before {
                let warn = before(d, n);
                if warn > now {
                    self.requeue(warn);
                }
            }
            if let Some(p) = policy.pre_publish
                && self.staged().is_none()
                && self.state.active().is_some()
            {
                let publish_at = before(d, p);
                if now >= publish_at {
                    if self.room(Cause::PrePublish)? {
                        let v = self.next_version;
                        self.push(Action::CreateVersion { version: v })?;
                    }
                } else {
                    self.requeue(publish_at);
                }
            }
            self.requeue(d);
        }
        Ok(())
    }

    /// The pre-published next version, if one waits in PreActivation.
    fn staged(&self) -> Option<u32> {
        self.state
            .versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::PreActivation)
            .map(|v| v.version)
    }

    fn retire(&mut self, policy: &Policy) -> Result<(), StateError> {
        let now = self.input.now;
        let window = policy.deletion_window;
        let grace = policy.grace;
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
            let since = v.deactivated.unwrap_or(v.created);
            let eligible = after(after(since, grace), window);
            if now >= eligible {
                candidates.push(v.version);
            } else {
                later.push(eligible);
            }
        }
        if let Some(b) = &mut self.plan.blocked {
            b.frees_at = later.iter().min().copied();
        }
        for t in later {
            self.requeue(t);
        }
        for v in candidates {
            self.destroy(v, Cause::Retention)?;
        }
        // Grace ends: re-plan so "previous" stops being served at the right moment.
        for v in &self.state.versions {
            if v.state == KeyState::Deactivated
                && let Some(d) = v.deactivated
                && after(d, grace) > now
            {
                let t = after(d, grace);
                self.plan.requeue_at = Some(self.plan.requeue_at.map_or(t, |r| r.min(t)));
            }
        }
        Ok(())
    }
}

/// Versions that still hold material.
const LIVE: [KeyState; 5] = [
    KeyState::PreActivation,
    KeyState::Active,
    KeyState::Suspended,
    KeyState::Deactivated,
    KeyState::Compromised,
];

/// Apply the planner's actions to stored state (everything except material, which the I/O
/// shell generates for `CreateVersion` and removes for `EraseMaterial`). `made` gives a new
/// version's (fingerprint, KEK).
pub fn apply(
    state: &mut StoredState,
    actions: &[Action],
    now: Timestamp,
    made: &dyn Fn(u32) -> (String, Option<String>),
    expire_after: Option<Duration>,
) -> Result<(), StateError> {
    for a in actions {
        match a {
            Action::CreateVersion { version } => {
                let (fp, kek) = made(*version);
                state.add_version(*version, now, fp, kek, expire_after.map(|e| after(now, e)));
            }
            Action::Transition { version, to, cause } => {
                state.transition(*version, *to, now, cause.as_str())?
            }
            Action::EraseMaterial { .. } | Action::Finalize => {}
            Action::MarkRotateRequest(r) => state.last_rotate_request = Some(r.clone()),
            Action::MarkCompromise(t) => state.compromise_handled_at = *t,
            Action::ScheduleDeletion { at, destroy_at } => {
                state.pending_deletion = Some(PendingDeletion {
                    scheduled_at: *at,
                    destroy_at: *destroy_at,
                })
            }
            Action::CancelDeletion => state.pending_deletion = None,
        }
    }
    state.compact();
    Ok(())
}

#[cfg(test)]
mod tests;
