use super::*;
use crate::crd::{DeletionRequest, ManagedKeySpec};
use proptest::prelude::*;

const DAY: i64 = 86_400;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn policy(period: &str) -> Policy {
    Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some(period.into()),
        retain_versions: 2,
        grace_period: "1d".into(),
        deletion_window_days: 7,
        ..Default::default()
    })
    .unwrap()
}

/// Run one reconcile: plan, then apply to the state. Returns the plan.
fn step(
    spec: &ManagedKeySpec,
    p: Option<&Policy>,
    st: &mut StoredState,
    rotate: Option<&str>,
    now: Timestamp,
) -> Plan {
    let input = PlanInput {
        spec,
        policy: p,
        state: st,
        rotate_request: rotate,
        deleting_since: None,
        now,
    };
    let plan = plan(&input).unwrap();
    apply(
        st,
        &plan.actions,
        now,
        &|v| (format!("fp{v}"), Some("local/k@1".into())),
        None,
    )
    .unwrap();
    plan
}

fn states(st: &StoredState) -> Vec<(u32, KeyState)> {
    st.versions.iter().map(|v| (v.version, v.state)).collect()
}

#[test]
fn first_reconcile_creates_and_activates_version_one() {
    let spec = ManagedKeySpec::default();
    let p = policy("30d");
    let mut st = StoredState::default();
    let plan = step(&spec, Some(&p), &mut st, None, t(0));
    assert_eq!(plan.actions[0], Action::CreateVersion { version: 1 });
    assert_eq!(states(&st), vec![(1, KeyState::Active)]);
    assert_eq!(plan.next_rotation, Some(t(30 * DAY)));
    assert_eq!(plan.requeue_at, Some(t(30 * DAY)));
    // Re-planning the same state does nothing: a repeat after a crash creates no second version.
    let again = step(&spec, Some(&p), &mut st, None, t(5));
    assert!(again.actions.is_empty(), "{:?}", again.actions);
}

#[test]
fn rotation_happens_when_the_period_elapses() {
    let spec = ManagedKeySpec::default();
    let p = policy("30d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    assert!(
        step(&spec, Some(&p), &mut st, None, t(30 * DAY - 1))
            .actions
            .is_empty()
    );
    let plan = step(&spec, Some(&p), &mut st, None, t(30 * DAY));
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Deactivated), (2, KeyState::Active)]
    );
    assert_eq!(plan.next_rotation, Some(t(60 * DAY)));
}

#[test]
fn rotation_keeps_previous_version_for_grace_period() {
    let spec = ManagedKeySpec::default();
    let p = policy("30d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    let plan = step(&spec, Some(&p), &mut st, None, t(30 * DAY));
    // The planner asks to look again when the grace period ends.
    assert_eq!(plan.requeue_at, Some(t(31 * DAY)));
    assert_eq!(
        st.previous_in_grace(p.grace, t(31 * DAY - 1))
            .map(|v| v.version),
        Some(1)
    );
    assert_eq!(st.previous_in_grace(p.grace, t(31 * DAY)), None);
    // Still holds material: retainVersions=2 keeps it.
    assert!(st.versions[0].state.has_material());
}

#[test]
fn old_versions_destroyed_only_after_retain_grace_and_window() {
    let spec = ManagedKeySpec::default();
    let p = policy("30d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, None, t(30 * DAY)); // v2
    step(&spec, Some(&p), &mut st, None, t(60 * DAY)); // v3; v1 outside retain=2
    // v1 deactivated at day 30: eligible at 30 + 1 (grace) + 7 (window) = day 38, already past.
    assert_eq!(
        states(&st),
        vec![
            (1, KeyState::Destroyed),
            (2, KeyState::Deactivated),
            (3, KeyState::Active)
        ]
    );
    let plan = step(&spec, Some(&p), &mut st, None, t(90 * DAY));
    assert!(plan.actions.contains(&Action::EraseMaterial { version: 2 }));
}

#[test]
fn destruction_waits_for_the_deletion_window() {
    let spec = ManagedKeySpec::default();
    let p = policy("1d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, None, t(DAY)); // v2
    let plan = step(&spec, Some(&p), &mut st, None, t(2 * DAY)); // v3; v1 deactivated at day 1
    assert_eq!(st.versions[0].state, KeyState::Deactivated);
    assert_eq!(plan.requeue_at, Some(t(3 * DAY)), "grace of v2 ends first");
    // eligible at day 1 + 1 + 7 = 9; rotations continue daily meanwhile
    for d in 3..9 {
        step(&spec, Some(&p), &mut st, None, t(d * DAY));
        assert_ne!(st.versions[0].state, KeyState::Destroyed, "day {d}");
    }
    step(&spec, Some(&p), &mut st, None, t(9 * DAY));
    assert_eq!(st.versions[0].state, KeyState::Destroyed);
}

#[test]
fn rotate_now_request_rotates_exactly_once() {
    let spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, Some("req-1"), t(10));
    assert_eq!(st.max_version(), 2);
    assert_eq!(st.last_rotate_request.as_deref(), Some("req-1"));
    assert!(
        step(&spec, Some(&p), &mut st, Some("req-1"), t(20))
            .actions
            .is_empty()
    );
    step(&spec, Some(&p), &mut st, Some("req-2"), t(30));
    assert_eq!(st.max_version(), 3);
}

#[test]
fn suspend_and_resume_keep_the_same_version() {
    let mut spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    spec.desired_state = DesiredState::Suspended;
    step(&spec, Some(&p), &mut st, None, t(10));
    assert_eq!(states(&st), vec![(1, KeyState::Suspended)]);
    assert_eq!(st.current().map(|v| v.version), Some(1));
    spec.desired_state = DesiredState::Active;
    step(&spec, Some(&p), &mut st, None, t(20));
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Active)],
        "resume keeps the same version"
    );
    spec.desired_state = DesiredState::Suspended;
    step(&spec, Some(&p), &mut st, None, t(30));
    // No rotation while suspended, even past the period.
    assert!(
        step(&spec, Some(&p), &mut st, None, t(100 * DAY))
            .actions
            .is_empty()
    );
    spec.desired_state = DesiredState::Active;
    step(&spec, Some(&p), &mut st, None, t(100 * DAY + 1));
    // Suspension did not extend its life, so the overdue version rotates at once on resume.
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Deactivated), (2, KeyState::Active)]
    );
}

#[test]
fn compromise_rotates_at_once_and_never_reactivates_the_old_version() {
    let mut spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, Some("r"), t(5)); // v2 active, v1 deactivated
    spec.desired_state = DesiredState::Compromised;
    step(&spec, Some(&p), &mut st, Some("r"), t(10));
    assert_eq!(
        states(&st),
        vec![
            (1, KeyState::Compromised),
            (2, KeyState::Compromised),
            (3, KeyState::Active)
        ]
    );
    // Handled once: a second reconcile with the same spec changes nothing.
    assert!(
        step(&spec, Some(&p), &mut st, Some("r"), t(20))
            .actions
            .is_empty()
    );
    spec.desired_state = DesiredState::Active;
    let plan = step(&spec, Some(&p), &mut st, Some("r"), t(30));
    assert_eq!(plan.actions, vec![Action::MarkCompromise(None)]);
}

#[test]
fn deletion_can_be_cancelled_within_the_window() {
    let mut spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    spec.deletion = Some(DeletionRequest { scheduled: true });
    let plan = step(&spec, Some(&p), &mut st, None, t(10));
    assert_eq!(
        st.pending_deletion.as_ref().unwrap().destroy_at,
        t(10 + 7 * DAY)
    );
    assert_eq!(plan.requeue_at, Some(t(10 + 7 * DAY)));
    spec.deletion = None;
    step(&spec, Some(&p), &mut st, None, t(20));
    assert!(st.pending_deletion.is_none());
    assert_eq!(st.active().map(|v| v.version), Some(1));
}

#[test]
fn deleting_the_object_keeps_material_until_the_window_ends() {
    let spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    let del = t(100);
    let mut run = |now| {
        let input = PlanInput {
            spec: &spec,
            policy: Some(&p),
            state: &st,
            rotate_request: None,
            deleting_since: Some(del),
            now,
        };
        let plan = plan(&input).unwrap();
        apply(
            &mut st,
            &plan.actions,
            now,
            &|_| (String::new(), None),
            None,
        )
        .unwrap();
        plan
    };
    let p1 = run(t(200));
    assert!(!p1.actions.contains(&Action::Finalize));
    assert_eq!(p1.requeue_at, Some(t(100 + 7 * DAY)));
    let p2 = run(t(100 + 7 * DAY));
    assert!(p2.actions.contains(&Action::EraseMaterial { version: 1 }));
    assert_eq!(p2.actions.last(), Some(&Action::Finalize));
    assert_eq!(st.versions[0].state, KeyState::Destroyed);
    // Active -> Deactivated -> Destroyed: the lifecycle is respected on the way.
    let path: Vec<_> = st.versions[0].transitions.iter().map(|r| r.to).collect();
    assert!(
        path.ends_with(&[KeyState::Active, KeyState::Deactivated, KeyState::Destroyed]),
        "{path:?}"
    );
}

#[test]
fn cron_schedule_rotates_at_each_firing() {
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: None,
        schedule: Some("0 3 * * *".into()),
        ..Default::default()
    })
    .unwrap();
    let spec = ManagedKeySpec::default();
    let mut st = StoredState::default();
    let start: Timestamp = "2027-01-10T12:00:00Z".parse().unwrap();
    let plan = step(&spec, Some(&p), &mut st, None, start);
    assert_eq!(
        plan.next_rotation,
        Some("2027-01-11T03:00:00Z".parse().unwrap())
    );
    step(
        &spec,
        Some(&p),
        &mut st,
        None,
        "2027-01-11T03:00:00Z".parse().unwrap(),
    );
    assert_eq!(st.max_version(), 2);
}

#[test]
fn policy_errors_name_the_field_and_the_fix() {
    let bad = |s: RotationPolicySpec| Policy::from_spec(&s).unwrap_err().to_string();
    let e = bad(RotationPolicySpec {
        rotation_period: Some("3 months".into()),
        ..Default::default()
    });
    assert!(
        e.starts_with("spec.rotationPeriod:") && e.contains("P90D"),
        "{e}"
    );
    let e = bad(RotationPolicySpec {
        schedule: Some("every day".into()),
        ..Default::default()
    });
    assert!(e.starts_with("spec.schedule:"), "{e}");
    let e = bad(RotationPolicySpec {
        deletion_window_days: 3,
        ..Default::default()
    });
    assert!(e.starts_with("spec.deletionWindowDays:"), "{e}");
    let e = bad(RotationPolicySpec {
        rotation_period: None,
        ..Default::default()
    });
    assert!(
        e.contains("rotationPeriod") && e.contains("schedule"),
        "{e}"
    );
}

#[test]
fn retain_versions_is_bounded() {
    let e = Policy::from_spec(&RotationPolicySpec {
        retain_versions: 100,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(e, "spec.retainVersions: must be 1 to 32, got 100");
}

/// A stream of rotate-now requests (a tenant with edit rights on the ManagedKey can send
/// them) stops at the material limit: no version is destroyed early, the request waits, and
/// rotation resumes once retention frees a slot.
#[test]
fn rotate_now_requests_stop_at_the_material_limit() {
    let spec = ManagedKeySpec::default();
    let p = policy("30d");
    let limit = material_limit(spec.algorithm);
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    let mut now = t(0);
    for i in 1..limit {
        now = t(i64::from(i));
        step(&spec, Some(&p), &mut st, Some(&format!("r{i}")), now);
    }
    assert_eq!(st.with_material(), limit);
    assert_eq!(st.active().map(|v| v.version), Some(limit));
    // One more request: refused, nothing changes, the request stays unhandled.
    now += SignedDuration::from_secs(1);
    let before = st.clone();
    let plan = step(&spec, Some(&p), &mut st, Some("over"), now);
    assert_eq!(plan.actions, vec![]);
    assert_eq!(st, before);
    let b = plan.blocked.expect("blocked");
    assert_eq!(
        (b.cause, b.with_material, b.limit),
        (Cause::RotateNow, limit, limit)
    );
    // v1 left Active at t(1); it may go after grace (1d) and window (7d).
    let frees = t(1) + SignedDuration::from_hours(24 * 8);
    assert_eq!(b.frees_at, Some(frees));
    assert!(plan.requeue_at.is_some_and(|r| r <= frees));
    // Then: v1 is destroyed and the waiting request rotates.
    let plan = step(&spec, Some(&p), &mut st, Some("over"), frees);
    assert!(plan.blocked.is_none(), "{plan:?}");
    assert_eq!(st.version(1).map(|v| v.state), Some(KeyState::Destroyed));
    assert_eq!(st.active().map(|v| v.version), Some(limit + 1));
    assert_eq!(st.last_rotate_request.as_deref(), Some("over"));
}

/// 2,000 scheduled rotations: rotation keeps working and the stored state stays bounded
/// (printed with `--nocapture`).
#[test]
fn two_thousand_rotations_keep_the_state_bounded() {
    let spec = ManagedKeySpec::default();
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some("1h".into()),
        retain_versions: 3,
        grace_period: "1h".into(),
        deletion_window_days: 7,
        ..Default::default()
    })
    .unwrap();
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    let mut largest = 0;
    for i in 1..=2000i64 {
        let now = t(i * 3600);
        let plan = step(&spec, Some(&p), &mut st, None, now);
        assert!(plan.blocked.is_none(), "rotation {i} blocked: {plan:?}");
        assert_eq!(st.active().map(|v| v.version), Some(i as u32 + 1));
        largest = largest.max(serde_json::to_vec(&st).unwrap().len());
    }
    let size = serde_json::to_vec(&st).unwrap().len();
    // Versions waiting for their window: retain 3 + (1h grace + 7d) / 1h.
    assert!(
        st.with_material() <= 3 + 7 * 24 + 2,
        "{}",
        st.with_material()
    );
    assert_eq!(st.version_count(), 2001);
    assert!(largest < 256 * 1024, "state.json reached {largest} bytes");
    println!(
        "2000 rotations: state.json {size} bytes (largest {largest}), {} records, {} with material",
        st.versions.len(),
        st.with_material()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random time steps and rotate-now requests never break the invariants.
    #[test]
    fn planner_invariants_hold(
        period_h in 1i64..200,
        retain in 1u32..5,
        grace_h in 0i64..100,
        window_d in 7u32..31,
        steps in prop::collection::vec((1i64..400, any::<bool>()), 1..60),
        pre_permille in prop::option::of(1i64..1000),
    ) {
        // prePublish strictly below the period, in whole minutes.
        let pre_m = pre_permille.map(|x| (period_h * 60 * x / 1000).max(1));
        let p = Policy::from_spec(&RotationPolicySpec {
            rotation_period: Some(format!("{period_h}h")),
            pre_publish: pre_m.map(|m| format!("{m}m")),
            retain_versions: retain,
            grace_period: format!("{grace_h}h"),
            deletion_window_days: window_d,
            ..Default::default()
        }).unwrap();
        let spec = ManagedKeySpec::default();
        let mut st = StoredState::default();
        let mut now = t(0);
        for (i, (adv_h, rotate)) in steps.into_iter().enumerate() {
            now += SignedDuration::from_hours(adv_h);
            let req = if rotate { Some(format!("r{i}")) } else { None };
            let input = PlanInput { spec: &spec, policy: Some(&p), state: &st, rotate_request: req.as_deref(), deleting_since: None, now };
            let plan1 = plan(&input).unwrap();
            // Deterministic.
            prop_assert_eq!(&plan1, &plan(&input).unwrap());
            apply(&mut st, &plan1.actions, now, &|v| (format!("fp{v}"), None), None).unwrap();

            // Never two Active versions, and always one.
            prop_assert_eq!(st.versions.iter().filter(|v| v.state == KeyState::Active).count(), 1);
            // At most one staged version, only with prePublish, and always the newest; it
            // exists whenever the rotation is within prePublish (nothing blocks at this size).
            let staged: Vec<u32> = st.in_states(&[KeyState::PreActivation]);
            prop_assert!(staged.len() <= 1, "{:?}", staged);
            if let Some(s) = staged.first() {
                prop_assert!(pre_m.is_some());
                prop_assert_eq!(*s, st.max_version());
            }
            if let (Some(m), Some(due)) = (pre_m, plan1.next_rotation) {
                let publish_at = due - SignedDuration::from_mins(m);
                prop_assert_eq!(now >= publish_at, staged.len() == 1, "due {} now {}", due, now);
            }
            // The current version is never older than the period.
            let act: Timestamp = st.active().unwrap().activated.unwrap();
            prop_assert!(now.duration_since(act) < SignedDuration::from_hours(period_h));
            // Versions are numbered without repeats; the listed ones and the pruned records
            // of destroyed ones account for every number.
            let nums: Vec<u32> = st.versions.iter().map(|v| v.version).collect();
            prop_assert!(nums.windows(2).all(|w| w[0] < w[1]), "{:?}", nums);
            prop_assert_eq!(st.version_count(), st.max_version());
            prop_assert!(st.in_states(&[KeyState::Destroyed]).len() <= crate::state::DESTROYED_RECORDS_KEPT);
            for (idx, v) in st.versions.iter().enumerate() {
                let newer = (st.versions.len() - idx - 1) as u32;
                if v.state == KeyState::Destroyed {
                    // Within retainVersions nothing is destroyed...
                    prop_assert!(newer >= retain, "v{} destroyed with only {} newer", v.version, newer);
                    // ...and nothing before grace + deletion window after deactivation.
                    let d: Timestamp = v.deactivated.unwrap();
                    let gone: Timestamp = v.destroyed.unwrap();
                    prop_assert!(gone >= d + SignedDuration::from_hours(grace_h) + SignedDuration::from_hours(24 * window_d as i64));
                }
                // A version still in grace is available (has material).
                if let Some(d) = &v.deactivated {
                    let d: Timestamp = *d;
                    if now < d + SignedDuration::from_hours(grace_h) {
                        prop_assert!(v.state.has_material());
                    }
                }
            }
        }
    }
}

/// `rotationPeriod: "3000000d"` (and every other duration field past 100 years) is a typed
/// error naming the field: before #17 it overflowed timestamp arithmetic and panicked.
#[test]
fn hostile_policy_durations_are_refused_naming_the_field() {
    let huge = Some("3000000d".to_string());
    let cases: [(&str, RotationPolicySpec); 4] = [
        (
            "rotationPeriod",
            RotationPolicySpec {
                rotation_period: huge.clone(),
                ..Default::default()
            },
        ),
        (
            "expireAfter",
            RotationPolicySpec {
                expire_after: huge.clone(),
                ..Default::default()
            },
        ),
        (
            "notifyBeforeExpiry",
            RotationPolicySpec {
                notify_before_expiry: huge.clone(),
                ..Default::default()
            },
        ),
        (
            "gracePeriod",
            RotationPolicySpec {
                grace_period: "3000000d".into(),
                ..Default::default()
            },
        ),
    ];
    for (field, spec) in cases {
        match Policy::from_spec(&spec) {
            Err(PolicyError::Duration {
                field: f,
                source: DurationError::TooLong(v),
            }) => {
                assert_eq!((f, v.as_str()), (field, "3000000d"));
            }
            other => panic!("{field}: {other:?}"),
        }
        let e = Policy::from_spec(&spec).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("spec.{field}:")) && e.contains("36500d"),
            "{e}"
        );
    }
}

/// The longest durations keyward accepts, planned at the last instants jiff represents, with
/// every kind of state: nothing overflows, due times saturate at the end of time.
#[test]
fn the_longest_policy_at_the_end_of_time_plans_without_panicking() {
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some("36500d".into()),
        expire_after: Some("36500d".into()),
        notify_before_expiry: Some("36500d".into()),
        grace_period: "36500d".into(),
        ..Default::default()
    })
    .unwrap();
    for now in [
        Timestamp::MAX,
        Timestamp::MAX - SignedDuration::from_hours(1),
        Timestamp::MIN,
        t(0),
    ] {
        let mut st = StoredState::default();
        let spec = ManagedKeySpec::default();
        step(&spec, Some(&p), &mut st, None, now);
        step(&spec, Some(&p), &mut st, Some("r1"), now);
        let deleting = ManagedKeySpec {
            deletion: Some(DeletionRequest { scheduled: true }),
            ..Default::default()
        };
        let plan = step(&deleting, Some(&p), &mut st, None, now);
        assert!(plan.requeue_at.is_some() || plan.actions.contains(&Action::Finalize));
        assert!(!st.versions.is_empty());
    }
}

/// A state whose version numbers are used up (only a forged or corrupted copy) is a typed
/// error, not an overflow.
#[test]
fn used_up_version_numbers_are_a_typed_error() {
    let st = StoredState {
        pruned: Some(crate::state::Pruned {
            versions: 1,
            through_version: u32::MAX,
        }),
        ..Default::default()
    };
    let spec = ManagedKeySpec::default();
    let input = PlanInput {
        spec: &spec,
        policy: None,
        state: &st,
        rotate_request: None,
        deleting_since: None,
        now: t(0),
    };
    assert_eq!(plan(&input), Err(StateError::VersionNumbersExhausted));
}

/// A rotate-now id longer than [`MAX_ROTATE_REQUEST`] is not acted on nor stored (the
/// controller reports it as a condition).
#[test]
fn an_over_long_rotate_now_id_is_ignored() {
    let spec = ManagedKeySpec::default();
    let mut st = StoredState::default();
    step(&spec, None, &mut st, None, t(0));
    let long = "x".repeat(MAX_ROTATE_REQUEST + 1);
    let plan = step(&spec, None, &mut st, Some(&long), t(10));
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(st.last_rotate_request, None);
    let ok = "x".repeat(MAX_ROTATE_REQUEST);
    step(&spec, None, &mut st, Some(&ok), t(20));
    assert_eq!(st.max_version(), 2);
}

fn desired(i: u8) -> DesiredState {
    match i % 4 {
        0 => DesiredState::Active,
        1 => DesiredState::Suspended,
        2 => DesiredState::Deactivated,
        _ => DesiredState::Compromised,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever an owner does (desired states, rotate-now, scheduling and cancelling deletion,
    /// time passing), every state the planner leaves passes the load-time invariants: the
    /// checks refuse forged or corrupted copies only, never one keyward wrote.
    #[test]
    fn every_planned_state_passes_the_load_checks(
        steps in prop::collection::vec((0u8..4, any::<bool>(), any::<bool>(), 0i64..2000), 1..50),
    ) {
        let p = policy("3d");
        let mut st = StoredState::default();
        let mut now = t(0);
        for (i, (d, rotate, delete, adv_h)) in steps.into_iter().enumerate() {
            now += SignedDuration::from_hours(adv_h);
            let spec = ManagedKeySpec {
                desired_state: desired(d),
                deletion: delete.then_some(DeletionRequest { scheduled: true }),
                ..Default::default()
            };
            let req = rotate.then(|| format!("r{i}"));
            step(&spec, Some(&p), &mut st, req.as_deref(), now);
            let envelopes = st
                .versions
                .iter()
                .filter(|v| v.state.has_material())
                .map(|v| (v.version, vec![0u8; 8]))
                .collect();
            let checked = crate::storage::check_invariants(&st, &envelopes);
            prop_assert!(checked.is_ok(), "{:?} after step {}: {:?}", checked, i, st);
        }
    }
}

/// A schedule that parses but never fires (31 February) gives no due time, in bounded time
/// (croner stops searching at year 5000), even from the last representable instant.
#[test]
fn a_schedule_that_never_fires_has_no_due_time() {
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: None,
        schedule: Some("0 0 31 2 *".into()),
        ..Default::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    for at in [t(0), Timestamp::MAX, Timestamp::MIN] {
        assert_eq!(p.due_after(at), None, "{at}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn staged_policy(period: &str, pre: &str) -> Policy {
    Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some(period.into()),
        pre_publish: Some(pre.into()),
        retain_versions: 2,
        grace_period: "1d".into(),
        deletion_window_days: 7,
        ..Default::default()
    })
    .unwrap()
}

/// prePublish creates the next version that long before the rotation, in PreActivation, and
/// the rotation activates that same version (no new material at the rotation).
#[test]
fn staged_rotation_publishes_the_next_version_ahead() {
    let spec = ManagedKeySpec::default();
    let p = staged_policy("30d", "2d");
    let mut st = StoredState::default();
    let first = step(&spec, Some(&p), &mut st, None, t(0));
    assert_eq!(states(&st), vec![(1, KeyState::Active)]);
    // The next look is when the pre-publication starts.
    assert_eq!(first.requeue_at, Some(t(28 * DAY)));
    assert!(
        step(&spec, Some(&p), &mut st, None, t(28 * DAY - 1))
            .actions
            .is_empty()
    );
    let publish = step(&spec, Some(&p), &mut st, None, t(28 * DAY));
    assert_eq!(publish.actions, vec![Action::CreateVersion { version: 2 }]);
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Active), (2, KeyState::PreActivation)]
    );
    assert_eq!(publish.next_rotation, Some(t(30 * DAY)));
    assert_eq!(publish.requeue_at, Some(t(30 * DAY)));
    // Idempotent: re-planning during pre-publication creates nothing more.
    assert!(
        step(&spec, Some(&p), &mut st, None, t(29 * DAY))
            .actions
            .is_empty()
    );
    let rotate = step(&spec, Some(&p), &mut st, None, t(30 * DAY));
    assert_eq!(
        rotate.actions,
        vec![
            Action::Transition {
                version: 1,
                to: KeyState::Deactivated,
                cause: Cause::PeriodElapsed
            },
            Action::Transition {
                version: 2,
                to: KeyState::Active,
                cause: Cause::PeriodElapsed
            },
        ]
    );
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Deactivated), (2, KeyState::Active)]
    );
    // The period runs from activation, not from the pre-published creation.
    assert_eq!(rotate.next_rotation, Some(t(60 * DAY)));
    assert_eq!(
        rotate.requeue_at,
        Some(t(31 * DAY)),
        "grace end comes first"
    );
}

/// rotate-now with a pre-published version activates it; a compromise compromises it too and
/// replaces everything with fresh material.
#[test]
fn staged_version_under_rotate_now_and_compromise() {
    let mut spec = ManagedKeySpec::default();
    let p = staged_policy("30d", "2d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, None, t(28 * DAY));
    let plan = step(&spec, Some(&p), &mut st, Some("r1"), t(28 * DAY + 5));
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateVersion { .. })),
        "{:?}",
        plan.actions
    );
    assert_eq!(
        states(&st),
        vec![(1, KeyState::Deactivated), (2, KeyState::Active)]
    );
    // The next pre-publication, then a compromise.
    step(&spec, Some(&p), &mut st, None, t(56 * DAY + 5));
    assert_eq!(st.versions.last().unwrap().state, KeyState::PreActivation);
    spec.desired_state = DesiredState::Compromised;
    step(&spec, Some(&p), &mut st, None, t(57 * DAY));
    let s = states(&st);
    assert_eq!(s[s.len() - 1], (4, KeyState::Active), "{s:?}");
    assert_eq!(s[s.len() - 2], (3, KeyState::Compromised), "{s:?}");
}

/// With expireAfter, the staged version's expiry runs from its creation, and prePublish must
/// be shorter than both the period and the expiry.
#[test]
fn pre_publish_is_validated_against_period_and_expiry() {
    let base = RotationPolicySpec {
        rotation_period: Some("30d".into()),
        ..Default::default()
    };
    for (spec, field) in [
        (
            RotationPolicySpec {
                pre_publish: Some("30d".into()),
                ..base.clone()
            },
            "rotationPeriod",
        ),
        (
            RotationPolicySpec {
                pre_publish: Some("5d".into()),
                expire_after: Some("5d".into()),
                ..base.clone()
            },
            "expireAfter",
        ),
    ] {
        let e = Policy::from_spec(&spec).unwrap_err();
        assert!(
            matches!(e, PolicyError::PrePublishTooLong { field: f, .. } if f == field),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("spec.prePublish:"), "{e}");
    }
    let e = Policy::from_spec(&RotationPolicySpec {
        pre_publish: Some("0s".into()),
        ..base.clone()
    })
    .unwrap_err();
    assert_eq!(e, PolicyError::Zero("prePublish"));
    // Accepted and planned: the staged version expires 10d after it was made (t 28d).
    let p = Policy::from_spec(&RotationPolicySpec {
        pre_publish: Some("2d".into()),
        expire_after: Some("10d".into()),
        ..base
    })
    .unwrap();
    let spec = ManagedKeySpec::default();
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    // Expiry (10d) comes before the period: pre-publish at 8d, rotate at 10d.
    step(&spec, Some(&p), &mut st, None, t(8 * DAY));
    assert_eq!(st.versions.len(), 2);
    let r = step(&spec, Some(&p), &mut st, None, t(10 * DAY));
    assert_eq!(st.active().unwrap().version, 2);
    assert_eq!(r.next_rotation, Some(t(18 * DAY)), "expires 10d after 8d");
}

/// A staged version that expires while the key is suspended is destroyed, never activated; on
/// resume and rotation a fresh version takes its place.
#[test]
fn a_staged_version_that_expired_is_destroyed_not_activated() {
    let mut spec = ManagedKeySpec::default();
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some("30d".into()),
        pre_publish: Some("2d".into()),
        expire_after: Some("40d".into()),
        retain_versions: 2,
        grace_period: "1d".into(),
        deletion_window_days: 7,
        ..Default::default()
    })
    .unwrap();
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    step(&spec, Some(&p), &mut st, None, t(28 * DAY));
    assert_eq!(st.version(2).unwrap().state, KeyState::PreActivation);
    spec.desired_state = DesiredState::Suspended;
    step(&spec, Some(&p), &mut st, None, t(29 * DAY));
    // Resumed after version 2 expired (created at 28d, expireAfter 40d).
    spec.desired_state = DesiredState::Active;
    let plan = step(&spec, Some(&p), &mut st, None, t(70 * DAY));
    assert!(
        plan.actions.contains(&Action::Transition {
            version: 2,
            to: KeyState::Destroyed,
            cause: Cause::ExpiredBeforeActivation
        }),
        "{:?}",
        plan.actions
    );
    assert_eq!(st.version(2).unwrap().state, KeyState::Destroyed);
    let last = st.version(2).unwrap().transitions.last().unwrap();
    assert_eq!(
        last.reason, "expired before it was activated",
        "the history says why the version never became Active"
    );
    let active = st.active().unwrap();
    assert!(active.version > 2, "{:?}", states(&st));
    assert!(
        p.expiry_of(active).is_none_or(|e| e > t(70 * DAY)),
        "the active version is not expired"
    );
}

/// Every cause has its own words: the transition history and Events are read by people, and
/// two causes printing alike (or nothing) would hide why a version changed.
#[test]
fn cause_texts_are_distinct_and_readable() {
    let all = [
        Cause::FirstVersion,
        Cause::NoActiveVersion,
        Cause::Resumed,
        Cause::RotateNow,
        Cause::PeriodElapsed,
        Cause::DesiredSuspended,
        Cause::DesiredDeactivated,
        Cause::DesiredCompromised,
        Cause::ReplacesCompromised,
        Cause::DeletionWindowEnded,
        Cause::Retention,
        Cause::PrePublish,
        Cause::ExpiredBeforeActivation,
    ];
    let texts: std::collections::BTreeSet<&str> = all.iter().map(|c| c.as_str()).collect();
    assert_eq!(texts.len(), all.len(), "{texts:?}");
    for c in all {
        assert!(c.as_str().len() >= 6, "{c:?}: {:?}", c.as_str());
        assert_eq!(c.to_string(), c.as_str());
    }
}

/// The rotations metric counts a new Active version that replaced another, never a key's first
/// version, a resumed one, or a state change.
#[test]
fn only_replacing_an_active_version_counts_as_a_rotation() {
    use Cause::*;
    let all = [
        FirstVersion,
        NoActiveVersion,
        Resumed,
        RotateNow,
        PeriodElapsed,
        DesiredSuspended,
        DesiredDeactivated,
        DesiredCompromised,
        ReplacesCompromised,
        DeletionWindowEnded,
        Retention,
        PrePublish,
        ExpiredBeforeActivation,
    ];
    let rotations: Vec<Cause> = all.into_iter().filter(|c| c.is_rotation()).collect();
    assert_eq!(
        rotations,
        [
            NoActiveVersion,
            RotateNow,
            PeriodElapsed,
            ReplacesCompromised
        ]
    );
}

/// RSA versions are ~3 KiB stored, the others ~100 bytes: RSA keys may hold material in 64
/// versions at once, the others in 256, so a key's storage stays far below 1 MiB.
#[test]
fn rsa_keys_hold_material_in_fewer_versions() {
    use crate::crd::KeyAlgorithm;
    for a in [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ] {
        assert_eq!(material_limit(a), 64, "{a:?}");
    }
    for a in [
        KeyAlgorithm::Aes256,
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
    ] {
        assert_eq!(material_limit(a), MAX_MATERIAL_LIMIT, "{a:?}");
    }
    assert_eq!(MAX_MATERIAL_LIMIT, 256);
}

/// Destroying is by legal steps (Active -> Deactivated -> Destroyed, material erased), and
/// destroying a version already destroyed, or one that does not exist, adds nothing.
#[test]
fn destroying_twice_adds_nothing() {
    let spec = ManagedKeySpec::default();
    let p = policy("90d");
    let mut st = StoredState::default();
    step(&spec, Some(&p), &mut st, None, t(0));
    let input = PlanInput {
        spec: &spec,
        policy: Some(&p),
        state: &st,
        rotate_request: None,
        deleting_since: None,
        now: t(10),
    };
    let mut planner = Planner {
        input: &input,
        state: st.clone(),
        plan: Plan::default(),
        next_version: 2,
    };
    planner.destroy(1, Cause::Retention).unwrap();
    assert_eq!(
        planner.plan.actions,
        [
            Action::Transition {
                version: 1,
                to: KeyState::Deactivated,
                cause: Cause::Retention
            },
            Action::Transition {
                version: 1,
                to: KeyState::Destroyed,
                cause: Cause::Retention
            },
            Action::EraseMaterial { version: 1 },
        ]
    );
    planner.destroy(1, Cause::Retention).unwrap();
    planner.destroy(99, Cause::Retention).unwrap();
    assert_eq!(planner.plan.actions.len(), 3);
}

/// With notifyBeforeExpiry the planner looks again when the notice is due (before the
/// rotation), and not once that moment has passed.
#[test]
fn the_planner_wakes_for_the_rotation_notice() {
    let p = Policy::from_spec(&RotationPolicySpec {
        rotation_period: Some("30d".into()),
        notify_before_expiry: Some("7d".into()),
        retain_versions: 2,
        grace_period: "1d".into(),
        deletion_window_days: 7,
        ..Default::default()
    })
    .unwrap();
    let spec = ManagedKeySpec::default();
    let mut st = StoredState::default();
    let first = step(&spec, Some(&p), &mut st, None, t(0));
    assert_eq!(first.next_rotation, Some(t(30 * DAY)));
    assert_eq!(
        first.requeue_at,
        Some(t(23 * DAY)),
        "the notice, 7 days before"
    );
    let at_notice = step(&spec, Some(&p), &mut st, None, t(23 * DAY));
    assert_eq!(
        at_notice.requeue_at,
        Some(t(30 * DAY)),
        "the notice is now: not again"
    );
    let within = step(&spec, Some(&p), &mut st, None, t(24 * DAY));
    assert_eq!(
        within.requeue_at,
        Some(t(30 * DAY)),
        "then the rotation itself"
    );
}
