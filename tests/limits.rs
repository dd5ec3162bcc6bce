//! The apiserver's size and name limits against keys that live long or have long names, with
//! the real controller, key service and provider on the test API server: a ManagedKey named
//! with the 253 characters Kubernetes allows is created, served through a Mount and reported
//! in Events; 2,000 rotations under the injected clock keep rotating while the storage Secret
//! stays far below the 1 MiB a Secret may hold (its size is printed).

mod fixture;

use fixture::CONTROLLER_NS;
use fixture::stack::Stack;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use keyward::controller::ManualClock;
use keyward::crd::ManagedKey;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::sync::Arc;
use std::time::Duration;

async fn stack() -> (Stack, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let stack = Stack::start(clock.clone(), Duration::from_secs(2)).await;
    stack.add_pod_token(
        "pod-token",
        "default",
        "app",
        "demo-pod",
        "00000000-0000-0000-0000-000000000001",
    );
    (stack, clock)
}

fn key(name: &str, policy: Option<&str>) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "access": {"serviceAccounts": [{"namespace": "default", "name": "app"}]}
    });
    if let Some(p) = policy {
        spec["policyRef"] = serde_json::json!({"name": p});
    }
    serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": name}, "spec": spec})
}

fn current(k: &ManagedKey) -> u32 {
    k.status
        .as_ref()
        .and_then(|s| s.current_version)
        .unwrap_or(0)
}

/// Poll (10 ms apart, up to `secs`) until `f` holds for the key.
async fn wait(
    api: &Api<ManagedKey>,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&ManagedKey) -> bool,
) -> ManagedKey {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let k = api.get_opt(name).await.unwrap();
        if let Some(k) = k {
            if f(&k) {
                return k;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; status {:?}", k.status);
            }
        } else if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: no object");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_253_character_name_is_stored_served_and_reported() {
    let (stack, clock) = stack().await;
    let keys: Api<ManagedKey> = Api::namespaced(stack.client.clone(), "default");
    // 253 characters: the longest object name (a DNS subdomain) Kubernetes accepts.
    let name = format!("{}.{}.z", "a".repeat(200), "b".repeat(50));
    assert_eq!(name.len(), 253);
    fixture::apply(&stack.client, key(&name, None)).await;
    let k = wait(&keys, &name, 30, "version 1", |k| current(k) == 1).await;
    let uid = k.uid().unwrap();

    // Served: the pod receives the key as a file.
    let objects = format!("- key: {name}\n  fileName: dek\n");
    let r = stack.mount("default", "app", "pod-token", &objects);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["files"][0]["path"], "dek");

    // Stored under the UID in the controller's namespace; the name only in an annotation.
    let s = Api::<Secret>::namespaced(stack.client.clone(), CONTROLLER_NS)
        .get(&keyward::storage::secret_name(&uid))
        .await
        .unwrap();
    assert_eq!(
        s.annotations().get(keyward::storage::NAME_ANNOTATION),
        Some(&name)
    );
    assert!(
        s.labels().values().all(|v| v.len() <= 63),
        "{:?}",
        s.labels()
    );

    // Reported: a rotation Event about this key, named within the 253 allowed.
    fixture::apply(&stack.client, {
        let mut k = key(&name, None);
        k["metadata"]["annotations"] =
            serde_json::json!({keyward::crd::ROTATE_NOW_ANNOTATION: "r1"});
        k
    })
    .await;
    clock.advance(SignedDuration::from_secs(1));
    wait(&keys, &name, 30, "version 2", |k| current(k) == 2).await;
    let events = Api::<Event>::namespaced(stack.client.clone(), "default");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ours = loop {
        let ours: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name))
            .collect();
        if ours.iter().any(|e| e.action.as_deref() == Some("Rotate"))
            || std::time::Instant::now() > deadline
        {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ours.iter().any(|e| e.action.as_deref() == Some("Rotate")),
        "no rotation Event: {:?}",
        ours.iter()
            .map(|e| (&e.reason, &e.action))
            .collect::<Vec<_>>()
    );
    for e in &ours {
        let n = e.name_any();
        assert!(n.len() <= 253 && n.starts_with("aaaa"), "{n}");
    }
}

/// Enough rotations to pass the steady state (versions waiting for their window plateau at
/// ~170 after a week of hourly rotations); 2,000 run in the planner's unit test.
const ROTATIONS: u32 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_rotations_keep_rotating_and_storage_small() {
    let (stack, clock) = stack().await;
    let keys: Api<ManagedKey> = Api::namespaced(stack.client.clone(), "default");
    fixture::apply(
        &stack.client,
        serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy",
            "metadata": {"name": "hourly"},
            "spec": {"rotationPeriod": "1h", "gracePeriod": "1h", "retainVersions": 3,
                     "deletionWindowDays": 7}}),
    )
    .await;
    fixture::apply(&stack.client, key("busy", Some("hourly"))).await;
    let k = wait(&keys, "busy", 30, "version 1", |k| current(k) == 1).await;
    let uid = k.uid().unwrap();
    let secrets = Api::<Secret>::namespaced(stack.client.clone(), CONTROLLER_NS);
    let size = |s: &Secret| serde_json::to_vec(s).unwrap().len();
    let mut largest = 0;
    let started = std::time::Instant::now();
    for i in 1..=ROTATIONS {
        clock.advance(SignedDuration::from_hours(1));
        let _ = stack.trigger.send(());
        wait(&keys, "busy", 60, "the next rotation", |k| {
            current(k) == i + 1
        })
        .await;
        if i % 100 == 0 {
            let s = secrets
                .get(&keyward::storage::secret_name(&uid))
                .await
                .unwrap();
            largest = largest.max(size(&s));
        }
    }
    let k = keys.get("busy").await.unwrap();
    let st = k.status.as_ref().unwrap();
    assert_eq!(st.version_count, ROTATIONS + 1);
    let s = secrets
        .get(&keyward::storage::secret_name(&uid))
        .await
        .unwrap();
    let data = s.data.as_ref().unwrap();
    let envelopes = data.keys().filter(|k| k.starts_with('v')).count();
    // Retention: 3 kept plus those inside grace (1h) and the window (7d), one an hour.
    assert!((168..=173).contains(&envelopes), "{envelopes} envelopes");
    let object = serde_json::to_vec(&k).unwrap().len();
    assert!(
        largest < 512 * 1024,
        "storage Secret reached {largest} bytes"
    );
    assert!(object < 512 * 1024, "ManagedKey reached {object} bytes");
    println!(
        "{ROTATIONS} rotations in {:.1} s: storage Secret {} bytes (largest {largest}), {envelopes} \
         envelopes, ManagedKey object {object} bytes",
        started.elapsed().as_secs_f64(),
        size(&s)
    );
}
