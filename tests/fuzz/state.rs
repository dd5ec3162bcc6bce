//! The stored-state loader (`storage::parse`: MAC, JSON, invariants) with arbitrary bytes and
//! arbitrary-but-structured JSON behind a valid MAC (what a buggy writer or a forged MAC key
//! could store). Accepted exactly when the JSON is a `StoredState` and its invariants hold;
//! the planner, run on any accepted state with any `now`, spec and policy, returns a plan or a
//! typed error, and a plan applied leaves a state that passes the same checks.

use jiff::Timestamp;
use keyward::crd::{DeletionRequest, DesiredState, KeyAlgorithm, ManagedKeySpec};
use keyward::crypto::SecretBytes;
use keyward::rotation::{self, PlanInput, Policy};
use keyward::state::StoredState;
use keyward::storage::{self, KeyIdentity, StateMacKey, StorageError, StorageLocation};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn loc() -> StorageLocation {
    StorageLocation {
        namespace: "keyward-system".into(),
        mac: StateMacKey::new(SecretBytes::from_slice(&[7; 32])),
    }
}

fn id() -> KeyIdentity {
    KeyIdentity {
        namespace: "team-a".into(),
        name: "db".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
    }
}

const MIN_SECOND: i64 = -377_705_116_800;
const MAX_SECOND: i64 = 253_402_207_200;

/// Load `json` with a valid MAC; check the loader's contract and, when it accepts, plan on it.
fn load_and_plan(
    json: Vec<u8>,
    envelopes: BTreeMap<u32, Vec<u8>>,
    min_generation: u64,
    input: &Knobs,
) -> Result<(), TestCaseError> {
    let secret = storage::sealed(&loc(), &id(), json.clone(), &envelopes);
    let typed = serde_json::from_slice::<StoredState>(&json);
    match storage::parse(&secret, &id(), &loc().mac, min_generation) {
        Ok(stored) => {
            let st = typed.expect("accepted JSON is a StoredState");
            prop_assert_eq!(&stored.state, &st);
            prop_assert!(st.generation >= min_generation);
            prop_assert_eq!(storage::check_invariants(&st, &envelopes), Ok(()));
            plan_on(&stored.state, &stored.envelopes, input)?;
        }
        Err(StorageError::Integrity { detail, .. }) => {
            if let Ok(st) = typed {
                // Refused for the generation or an invariant, never for nothing.
                prop_assert!(
                    st.generation < min_generation
                        || storage::check_invariants(&st, &envelopes).is_err(),
                    "refused a valid state: {detail}"
                );
            }
        }
        Err(other) => prop_assert!(false, "not an integrity error: {other}"),
    }
    Ok(())
}

/// What the planner gets besides the state.
#[derive(Debug, Clone)]
struct Knobs {
    now: i64,
    desired: u8,
    delete: bool,
    deleting_since: Option<i64>,
    rotate: Option<String>,
    algorithm: bool,
    period: Option<String>,
    grace: String,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        MIN_SECOND..=MAX_SECOND,
        0u8..4,
        any::<bool>(),
        prop::option::of(MIN_SECOND..=MAX_SECOND),
        prop::option::of("[a-z0-9]{0,8}"),
        any::<bool>(),
        prop::option::of(prop_oneof![
            "[1-9][0-9]{0,4}[dh]",
            Just("36500d".to_string())
        ]),
        prop_oneof!["[0-9]{1,4}[dh]", Just("36500d".to_string())],
    )
        .prop_map(
            |(now, desired, delete, deleting_since, rotate, algorithm, period, grace)| Knobs {
                now,
                desired,
                delete,
                deleting_since,
                rotate,
                algorithm,
                period,
                grace,
            },
        )
}

fn plan_on(
    st: &StoredState,
    envelopes: &BTreeMap<u32, Vec<u8>>,
    k: &Knobs,
) -> Result<(), TestCaseError> {
    let spec = ManagedKeySpec {
        algorithm: if k.algorithm {
            KeyAlgorithm::Rsa2048
        } else {
            KeyAlgorithm::Aes256
        },
        desired_state: match k.desired {
            0 => DesiredState::Active,
            1 => DesiredState::Suspended,
            2 => DesiredState::Deactivated,
            _ => DesiredState::Compromised,
        },
        deletion: k.delete.then_some(DeletionRequest { scheduled: true }),
        ..Default::default()
    };
    let policy = Policy::from_spec(&keyward::crd::RotationPolicySpec {
        rotation_period: k.period.clone().or(Some("1d".into())),
        grace_period: k.grace.clone(),
        ..Default::default()
    })
    .ok();
    let now = Timestamp::from_second(k.now).unwrap();
    let input = PlanInput {
        spec: &spec,
        policy: policy.as_ref(),
        state: st,
        rotate_request: k.rotate.as_deref(),
        deleting_since: k.deleting_since.map(|s| Timestamp::from_second(s).unwrap()),
        now,
    };
    let Ok(plan) = rotation::plan(&input) else {
        // A typed error on this key (version numbers used up): nothing to apply.
        return Ok(());
    };
    prop_assert!(
        plan.actions.len() <= 4 * (st.versions.len() + 4),
        "{:?}",
        plan.actions
    );
    let mut after = st.clone();
    let mut env = envelopes.clone();
    for a in &plan.actions {
        match a {
            rotation::Action::CreateVersion { version } => {
                env.insert(*version, vec![0; 8]);
            }
            rotation::Action::EraseMaterial { version } => {
                env.remove(version);
            }
            _ => {}
        }
    }
    rotation::apply(
        &mut after,
        &plan.actions,
        now,
        &|v| (format!("fp{v}"), None),
        None,
    )
    .map_err(|e| TestCaseError::fail(format!("planned actions do not apply: {e}")))?;
    let checked = storage::check_invariants(&after, &env);
    prop_assert!(
        checked.is_ok(),
        "planned state fails the load checks: {checked:?}\nbefore {st:?}\nactions {:?}",
        plan.actions
    );
    Ok(())
}

fn timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (MIN_SECOND..=MAX_SECOND).prop_map(|s| json!(Timestamp::from_second(s).unwrap().to_string())),
        1 => Just(json!("soon")),
        1 => Just(json!(12)),
        1 => Just(json!("10000-01-01T00:00:00Z")),
    ]
}

fn key_state() -> impl Strategy<Value = Value> {
    prop_oneof![
        9 => prop::sample::select(vec![
            "PreActivation", "Active", "Suspended", "Deactivated", "Compromised", "Destroyed",
        ]).prop_map(|s| json!(s)),
        1 => Just(json!("Exploded")),
    ]
}

fn version_number() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..12, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn transition() -> impl Strategy<Value = Value> {
    (key_state(), key_state(), timestamp(), "[a-z ]{0,12}").prop_map(
        |(from, to, at, reason)| json!({"from": from, "to": to, "at": at, "reason": reason}),
    )
}

fn version() -> impl Strategy<Value = Value> {
    (
        version_number(),
        key_state(),
        timestamp(),
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
        prop::collection::vec(transition(), 0..12),
        "[a-f0-9]{0,16}",
    )
        .prop_map(
            |(n, state, created, activated, deactivated, expires, transitions, fp)| {
                let mut v = json!({
                    "version": n, "state": state, "created": created,
                    "fingerprint": format!("sha256:{fp}"), "transitions": transitions,
                });
                for (k, t) in [
                    ("activated", activated),
                    ("deactivated", deactivated),
                    ("expires", expires),
                ] {
                    if let Some(t) = t {
                        v[k] = t;
                    }
                }
                v
            },
        )
}

/// A state-shaped JSON document: mostly well-typed, sometimes not, in any combination.
fn state_json() -> impl Strategy<Value = Value> {
    (
        0u64..10,
        prop::collection::vec(version(), 0..8),
        prop::option::of("[a-z0-9]{0,6}"),
        prop::option::of((
            timestamp(),
            prop_oneof![Just(None), (0i64..40).prop_map(Some)],
        )),
        prop::option::of((0u32..50, prop_oneof![0u32..50, Just(u32::MAX)])),
    )
        .prop_map(|(generation, versions, rotate, pending, pruned)| {
            let mut v = json!({"generation": generation, "versions": versions});
            if let Some(r) = rotate {
                v["lastRotateRequest"] = json!(r);
            }
            if let Some((at, days)) = pending {
                // Either a window keyward writes (days after scheduledAt) or an arbitrary time.
                let destroy = match (days, at.as_str().and_then(|s| s.parse::<Timestamp>().ok())) {
                    (Some(d), Some(t)) => t
                        .checked_add(jiff::SignedDuration::from_hours(24 * d))
                        .map(|t| json!(t.to_string()))
                        .unwrap_or(json!("soon")),
                    _ => json!("soon"),
                };
                v["pendingDeletion"] = json!({"scheduledAt": at, "destroyAt": destroy});
            }
            if let Some((versions, through)) = pruned {
                v["pruned"] = json!({"versions": versions, "throughVersion": through});
            }
            v
        })
}

/// Envelopes for the versions a document lists (material exactly where the state says, most
/// of the time), plus sometimes a stray one.
fn envelopes_for(doc: &Value, exact: bool, stray: Option<u32>) -> BTreeMap<u32, Vec<u8>> {
    let mut env = BTreeMap::new();
    for v in doc["versions"].as_array().into_iter().flatten() {
        let (Some(n), Some(s)) = (v["version"].as_u64(), v["state"].as_str()) else {
            continue;
        };
        if !exact || s != "Destroyed" {
            env.insert(n as u32, vec![1; 8]);
        }
    }
    if let Some(n) = stray {
        env.insert(n, vec![2; 8]);
    }
    env
}

proptest! {
    #![proptest_config(crate::config("state"))]

    #[test]
    fn arbitrary_bytes(json in prop::collection::vec(any::<u8>(), 0..512), k in knobs()) {
        load_and_plan(json, BTreeMap::new(), 0, &k)?;
    }

    #[test]
    fn structured_json(
        doc in state_json(),
        exact in prop::bool::weighted(0.9),
        stray in prop::option::weighted(0.1, 0u32..12),
        min_generation in 0u64..10,
        k in knobs(),
    ) {
        let env = envelopes_for(&doc, exact, stray);
        load_and_plan(serde_json::to_vec(&doc).unwrap(), env, min_generation, &k)?;
    }

    /// States keyward itself wrote (planned from empty through random steps) always load.
    #[test]
    fn planned_states_load(steps in prop::collection::vec(knobs(), 1..12)) {
        let mut st = StoredState::default();
        let mut env = BTreeMap::new();
        let mut now = Timestamp::from_second(1_800_000_000).unwrap();
        for k in steps {
            now = now
                .checked_add(jiff::SignedDuration::from_hours(k.now.rem_euclid(2000)))
                .unwrap();
            let k = Knobs { now: now.as_second(), deleting_since: None, ..k };
            plan_on(&st, &env, &k)?;
            // Carry the step out as the controller does.
            let spec = ManagedKeySpec {
                desired_state: match k.desired { 0 => DesiredState::Active, 1 => DesiredState::Suspended, 2 => DesiredState::Deactivated, _ => DesiredState::Compromised },
                ..Default::default()
            };
            let input = PlanInput { spec: &spec, policy: None, state: &st, rotate_request: k.rotate.as_deref(), deleting_since: None, now };
            let plan = rotation::plan(&input).unwrap();
            for a in &plan.actions {
                match a {
                    rotation::Action::CreateVersion { version } => { env.insert(*version, vec![0; 8]); }
                    rotation::Action::EraseMaterial { version } => { env.remove(version); }
                    _ => {}
                }
            }
            rotation::apply(&mut st, &plan.actions, now, &|v| (format!("fp{v}"), None), None).unwrap();
            st.generation += 1;
            let json = serde_json::to_vec(&st).unwrap();
            let secret = storage::sealed(&loc(), &id(), json, &env);
            let loaded = storage::parse(&secret, &id(), &loc().mac, st.generation);
            prop_assert!(loaded.is_ok(), "{:?}", loaded.err());
        }
    }
}
