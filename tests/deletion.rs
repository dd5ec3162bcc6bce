//! Deletion that means what it says, end to end on the test API server with the real
//! controller, key service and provider, and Mounts through the driver stand-in: a deleted
//! key's material stays in the controller's namespace for the deletion window while the
//! object goes at once; a re-created key starts at version 1; a restore inside the window
//! serves the same bytes; after the window the sweeper destroys and audits, and a restore is
//! refused.

mod fixture;

use fixture::CONTROLLER_NS;
use fixture::stack::Stack;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use keyward::controller::ManualClock;
use keyward::crd::{ManagedKey, RESTORE_ANNOTATION};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::sync::Arc;
use std::time::Duration;

const OBJECTS: &str = "- key: payments\n  fileName: dek\n";
const POLICY: &str = r#"{"apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy",
  "metadata": {"name": "weekly"},
  "spec": {"rotationPeriod": "90d", "gracePeriod": "1d", "deletionWindowDays": 7}}"#;

struct T {
    stack: Stack,
    clock: Arc<ManualClock>,
    keys: Api<ManagedKey>,
    secrets: Api<Secret>,
}

impl T {
    async fn new() -> T {
        let clock = Arc::new(ManualClock::new(Timestamp::now()));
        let stack = Stack::start(clock.clone(), Duration::from_secs(2)).await;
        let client = stack.client.clone();
        // The driver stand-in's default pod (demo-pod and its UID).
        stack.add_pod_token(
            "pod-token",
            "default",
            "payments",
            "demo-pod",
            "00000000-0000-0000-0000-000000000001",
        );
        let t = T {
            stack,
            clock,
            keys: Api::namespaced(client.clone(), "default"),
            secrets: Api::namespaced(client, CONTROLLER_NS),
        };
        t.set_window(7).await;
        t
    }

    /// Change the policy's deletion window.
    async fn set_window(&self, days: u32) {
        let mut p: serde_json::Value = serde_json::from_str(POLICY).unwrap();
        p["spec"]["deletionWindowDays"] = days.into();
        Api::<keyward::crd::RotationPolicy>::namespaced(self.stack.client.clone(), "default")
            .patch(
                "weekly",
                &PatchParams::apply("test").force(),
                &Patch::Apply(p),
            )
            .await
            .unwrap();
    }

    /// Create `payments` (optionally restoring `restore_from`); returns its UID.
    async fn create(&self, restore_from: Option<&str>) -> String {
        let mut ann = serde_json::Map::new();
        if let Some(u) = restore_from {
            ann.insert(RESTORE_ANNOTATION.into(), u.into());
        }
        let k = self
            .keys
            .patch(
                "payments",
                &PatchParams::apply("test").force(),
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                    "metadata": {"name": "payments", "annotations": ann},
                    "spec": {"policyRef": {"name": "weekly"},
                             "access": {"serviceAccounts": [{"namespace": "default", "name": "payments"}]}}
                })),
            )
            .await
            .unwrap();
        k.uid().unwrap()
    }

    async fn wait(
        &self,
        what: &str,
        f: impl Fn(Option<&ManagedKey>) -> bool,
    ) -> Option<ManagedKey> {
        let mut last = None;
        for _ in 0..300 {
            last = self.keys.get_opt("payments").await.unwrap();
            if f(last.as_ref()) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; last {:?}",
            last.map(|k| (k.metadata, k.status))
        );
    }

    /// Delete `payments` and wait until the object is gone (the finalizer does not hold it).
    async fn delete(&self, dp: &DeleteParams) {
        self.keys.delete("payments", dp).await.unwrap();
        self.wait("the object to go", |k| k.is_none()).await;
    }

    /// The bytes a pod receives, or the refusal.
    fn mount(&self) -> Result<Vec<u8>, serde_json::Value> {
        use base64::Engine;
        let r = self
            .stack
            .mount("default", "payments", "pod-token", OBJECTS);
        if r["ok"] != true {
            return Err(r);
        }
        let f = &r["files"][0];
        assert_eq!(f["path"], "dek");
        Ok(base64::engine::general_purpose::STANDARD
            .decode(f["contents_b64"].as_str().unwrap())
            .unwrap())
    }

    async fn storage(&self, uid: &str) -> Option<Secret> {
        self.secrets
            .get_opt(&keyward::storage::secret_name(uid))
            .await
            .unwrap()
    }

    fn controller_audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stack.controller_audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
            .collect()
    }

    fn audited(&self, action: &str) -> usize {
        self.controller_audit()
            .iter()
            .filter(|r| r["action"] == action)
            .count()
    }
}

fn version(k: Option<&ManagedKey>) -> u32 {
    k.and_then(|k| k.status.as_ref())
        .and_then(|s| s.current_version)
        .unwrap_or(0)
}

fn degraded(k: Option<&ManagedKey>) -> Option<(String, String)> {
    k?.status
        .as_ref()?
        .true_condition("Degraded")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_window_recreate_restore_and_sweep() {
    let t = T::new().await;

    // 1. A key and what a pod receives.
    let u1 = t.create(None).await;
    t.wait("v1", |k| version(k) == 1).await;
    let b1 = t.mount().expect("first mount");
    assert_eq!(b1.len(), 32);

    // 2. Deleting it: the object goes at once, the material stays (pending destruction in
    //    7 days, the policy's window), nothing is served.
    t.delete(&DeleteParams::default()).await;
    let s1 = t.storage(&u1).await.expect("material kept for the window");
    let stored = keyward::storage::parse(
        &s1,
        &keyward::storage::KeyIdentity::of_storage(&s1).unwrap(),
        &keyward::storage::StateMacKey::new(keyward::crypto::SecretBytes::random(32)),
        0,
    );
    assert!(
        stored.is_err(),
        "storage is authenticated under the shared MAC key only"
    );
    let refused = t.mount().expect_err("a deleted key is not served");
    assert_eq!(refused["grpc_code"], "NOT_FOUND", "{refused}");
    assert_eq!(t.audited("schedule-deletion"), 1);

    // 3. Re-created under the same name without asking for a restore: a new key, version 1,
    //    new bytes; the old material is untouched.
    let u2 = t.create(None).await;
    assert_ne!(u1, u2);
    t.wait("fresh v1", |k| version(k) == 1).await;
    let b2 = t.mount().expect("mount of the new key");
    assert_ne!(
        b1, b2,
        "a re-created key never adopts the deleted key's material"
    );
    assert!(t.storage(&u1).await.is_some());
    t.delete(&DeleteParams::default()).await;

    // 4. Restore inside the window: the same bytes through a Mount; the old copy is gone.
    let u3 = t.create(Some(&u1)).await;
    let k = t.wait("restored", |k| version(k) == 1).await.unwrap();
    assert_eq!(
        k.status.as_ref().unwrap().versions[0].state.as_str(),
        "Active"
    );
    assert_eq!(
        t.mount().expect("mount after restore"),
        b1,
        "same bytes as before deletion"
    );
    assert!(
        t.storage(&u1).await.is_none(),
        "restored copy moved to the new UID"
    );
    let s3 = t.storage(&u3).await.unwrap();
    assert_eq!(
        s3.annotations()
            .get(keyward::storage::RESTORED_FROM_ANNOTATION),
        Some(&u1)
    );
    assert_eq!(t.audited("restore"), 1);

    // 5. The policy's window grows to 30 days; u3 is deleted under it. Eight days later (the
    //    window of u2, deleted under 7 days, is over; the sweeper has not run yet): a restore
    //    of u2 is refused, nothing is served and no version is made.
    t.set_window(30).await;
    t.delete(&DeleteParams::default()).await;
    t.clock.advance(SignedDuration::from_hours(8 * 24));
    let u4 = t.create(Some(&u2)).await;
    let k = t.wait("restore refused", |k| degraded(k).is_some()).await;
    let (reason, message) = degraded(k.as_ref()).unwrap();
    assert_eq!(reason, "RestoreWindowEnded", "{message}");
    assert!(
        message.contains(RESTORE_ANNOTATION),
        "names the fix: {message}"
    );
    assert_eq!(version(k.as_ref()), 0);
    assert!(
        t.storage(&u4).await.is_none(),
        "nothing stored for a refused restore"
    );
    assert!(t.mount().is_err());

    // 6. The sweep: u2's window is over -> destroyed and audited; u3 (30-day window) is kept.
    let destroyed_before = t.audited("destroy");
    t.stack.trigger.send(()).unwrap();
    for _ in 0..200 {
        if t.storage(&u2).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(t.storage(&u2).await.is_none(), "destroyed after its window");
    assert!(t.storage(&u3).await.is_some(), "still inside its window");
    assert_eq!(
        t.audited("destroy") - destroyed_before,
        1,
        "one record per destroyed version"
    );
    let rec = t
        .controller_audit()
        .into_iter()
        .rfind(|r| r["action"] == "destroy")
        .unwrap();
    assert_eq!(
        (rec["key"].as_str(), rec["version"].as_u64()),
        (Some("default/payments"), Some(1))
    );

    // 7. Pointing the refused key at u3 (inside its window) restores it: the same bytes again.
    t.create(Some(&u3)).await;
    t.wait("restored from u3", |k| {
        version(k) == 1 && degraded(k).is_none()
    })
    .await;
    assert_eq!(t.mount().expect("mount after second restore"), b1);
    assert!(t.storage(&u3).await.is_none());
    assert!(t.storage(&u4).await.is_some());

    // 8. The UID of a key in another namespace (same name), or garbage, is refused like a
    //    missing one, and the other namespace's key is untouched.
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "team-b"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(t.stack.client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let theirs: Api<ManagedKey> = Api::namespaced(t.stack.client.clone(), "team-b");
    let k = theirs
        .patch(
            "payments",
            &PatchParams::apply("test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": "payments"}, "spec": {}
            })),
        )
        .await
        .unwrap();
    let their_uid = k.uid().unwrap();
    for _ in 0..200 {
        if t.storage(&their_uid).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let theirs_before = t.storage(&their_uid).await.expect("team-b key stored");
    for uid in [their_uid.as_str(), "../../secrets/x"] {
        t.delete(&DeleteParams::default()).await;
        t.create(Some(uid)).await;
        let k = t.wait("refusal", |k| degraded(k).is_some()).await;
        let (reason, message) = degraded(k.as_ref()).unwrap();
        assert_eq!(reason, "RestoreNotFound", "{uid}: {message}");
        assert!(
            !message.contains("team-b"),
            "nothing about other namespaces: {message}"
        );
    }
    let theirs_after = t.storage(&their_uid).await.unwrap();
    assert_eq!(theirs_before.data, theirs_after.data);
    assert!(t.mount().is_err(), "nothing served after a refused restore");
}

impl T {
    /// A key `name` in namespace `ns` (created with the namespace); returns its UID once its
    /// first version is stored.
    async fn key_in(&self, ns: &str, name: &str) -> String {
        let nso: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.stack.client.clone())
            .create(&Default::default(), &nso)
            .await;
        let k = Api::<ManagedKey>::namespaced(self.stack.client.clone(), ns)
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                    "metadata": {"name": name}, "spec": {}
                })),
            )
            .await
            .unwrap();
        let uid = k.uid().unwrap();
        for _ in 0..200 {
            if self.storage(&uid).await.is_some() {
                return uid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{ns}/{name} never stored");
    }
}

/// Deleting a key's whole namespace: the namespace finishes terminating (keyward's finalizer
/// lets the key go at once), the material stays in the controller's namespace for the
/// window, and the sweeper destroys and audits it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_finishes_and_the_material_outlives_it_for_the_window() {
    use k8s_openapi::api::core::v1::Namespace;
    let t = T::new().await;
    let uid = t.key_in("team-c", "orders").await;
    let namespaces = Api::<Namespace>::all(t.stack.client.clone());
    namespaces
        .delete("team-c", &DeleteParams::default())
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..200 {
        if namespaces.get_opt("team-c").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the namespace finished terminating");
    assert!(
        t.storage(&uid).await.is_some(),
        "material kept for the window"
    );
    let scheduled: Vec<_> = t
        .controller_audit()
        .into_iter()
        .filter(|r| r["action"] == "schedule-deletion" && r["key"] == "team-c/orders")
        .collect();
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    // No policy (and none left): the default 30-day window.
    t.clock.advance(SignedDuration::from_hours(29 * 24));
    t.stack.trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.storage(&uid).await.is_some(), "still inside the window");
    t.clock.advance(SignedDuration::from_hours(2 * 24));
    t.stack.trigger.send(()).unwrap();
    for _ in 0..200 {
        if t.storage(&uid).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.storage(&uid).await.is_none(),
        "destroyed after the window"
    );
    let destroyed = t
        .controller_audit()
        .into_iter()
        .filter(|r| r["action"] == "destroy" && r["key"] == "team-c/orders")
        .count();
    assert_eq!(destroyed, 1, "one record for the one version");
}

/// `kubectl delete --cascade=foreground`: the object carries `foregroundDeletion` beside
/// keyward's finalizer; both go, the storage is written once (no delete/re-create loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_converges() {
    let t = T::new().await;
    let uid = t.create(None).await;
    t.wait("v1", |k| version(k) == 1).await;
    t.delete(&DeleteParams::foreground()).await;
    let s = t.storage(&uid).await.expect("material kept");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let again = t.storage(&uid).await.expect("still there");
    assert_eq!(
        s.metadata.resource_version, again.metadata.resource_version,
        "storage is not rewritten in a loop"
    );
    assert_eq!(t.audited("schedule-deletion"), 1);
}
