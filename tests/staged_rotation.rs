//! Staged rotation and expiry notices end to end on the test API server with the real
//! controller, key service and provider, Mounts through the driver stand-in, and PyJWT as the
//! independent verifier: with `prePublish`, a JWKS mounted before the rotation already holds
//! the key that signs after it, so verifiers that have not re-mounted yet accept the first
//! token of the new version. Also: RotationPolicy status (Valid, key count), the ExpiringSoon
//! condition with one Warning Event per version, and the timestamp metrics.

mod fixture;

use fixture::stack::Stack;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use keyward::controller::ManualClock;
use keyward::crd::{ManagedKey, RotationPolicy};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DAY: i64 = 86_400;
const POD_UID: &str = "00000000-0000-0000-0000-000000000001";

fn policy(pre_publish: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy",
        "metadata": {"name": "jwt"},
        "spec": {"rotationPeriod": "30d", "prePublish": pre_publish, "expireAfter": "60d",
                 "notifyBeforeExpiry": "3d", "gracePeriod": "1d", "retainVersions": 3,
                 "deletionWindowDays": 7}
    })
}

struct T {
    stack: Stack,
    clock: Arc<ManualClock>,
    keys: Api<ManagedKey>,
    policies: Api<RotationPolicy>,
}

impl T {
    fn advance_to(&self, start: Timestamp, secs: i64) {
        let target = start + SignedDuration::from_secs(secs);
        let d = target.duration_since(self.clock_now());
        self.clock.advance(d);
        self.stack.trigger.send(()).unwrap();
    }

    fn clock_now(&self) -> Timestamp {
        use keyward::controller::Clock;
        self.clock.now()
    }

    async fn wait_key(&self, what: &str, f: impl Fn(&ManagedKey) -> bool) -> ManagedKey {
        for _ in 0..400 {
            if let Some(k) = self.keys.get_opt("jwt-signer").await.unwrap()
                && f(&k)
            {
                return k;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}: {:?}",
            self.keys.get("jwt-signer").await.unwrap().status
        );
    }

    async fn wait_policy(&self, what: &str, f: impl Fn(&RotationPolicy) -> bool) -> RotationPolicy {
        for _ in 0..400 {
            let p = self.policies.get("jwt").await.unwrap();
            if f(&p) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}: {:?}",
            self.policies.get("jwt").await.unwrap().status
        );
    }

    /// Mount `objects` as `sa`; the named file's bytes.
    fn mount_file(&self, sa: &str, objects: &str, file: &str) -> Vec<u8> {
        let m = self
            .stack
            .mount("default", sa, &format!("{sa}-token"), objects);
        assert_eq!(m["ok"], true, "mount as {sa} refused: {m}");
        let f = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == file)
            .unwrap_or_else(|| panic!("no {file} in {m}"));
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(f["contents_b64"].as_str().unwrap())
            .unwrap()
    }

    async fn events(&self, reason: &str) -> Vec<String> {
        Api::<Event>::namespaced(self.stack.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }
}

/// `python tests/py/jwt_check.py ARGS`: (exit code, stdout).
fn jwt_check(args: &[&str]) -> (i32, String) {
    let o = std::process::Command::new(fixture::python())
        .arg(fixture::root().join("tests/py/jwt_check.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "jwt_check failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn kids(jwks: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(jwks).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn status_kid(k: &ManagedKey, version: u32) -> String {
    k.status
        .as_ref()
        .unwrap()
        .versions
        .iter()
        .find(|v| v.version == version)
        .and_then(|v| v.kid.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_published_key_verifies_the_first_token_of_the_new_version() {
    let start = Timestamp::now();
    let clock = Arc::new(ManualClock::new(start));
    let stack = Stack::start(clock.clone(), Duration::from_secs(2)).await;
    for sa in ["signer", "verifier"] {
        stack.add_pod_token(&format!("{sa}-token"), "default", sa, "demo-pod", POD_UID);
    }
    let t = T {
        keys: Api::namespaced(stack.client.clone(), "default"),
        policies: Api::namespaced(stack.client.clone(), "default"),
        stack,
        clock,
    };
    let pp = PatchParams::apply("test").force();
    t.policies
        .patch("jwt", &pp, &Patch::Apply(policy("2d")))
        .await
        .unwrap();
    t.keys
        .patch(
            "jwt-signer",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": "jwt-signer"},
                "spec": {"algorithm": "ecdsa-p256", "policyRef": {"name": "jwt"},
                         "access": {"serviceAccounts": [
                             {"namespace": "default", "name": "signer"},
                             {"namespace": "default", "name": "verifier", "publicOnly": true}]}}
            })),
        )
        .await
        .unwrap();
    let k = t
        .wait_key("version 1", |k| {
            k.status.as_ref().and_then(|s| s.current_version) == Some(1)
        })
        .await;
    assert_eq!(k.status.as_ref().unwrap().next_version, None);

    // RotationPolicy status: valid, used by one key, at its generation.
    let rp = t
        .wait_policy("policy status", |p| {
            p.status.as_ref().is_some_and(|s| s.keys == 1)
        })
        .await;
    let st = rp.status.unwrap();
    assert_eq!(st.observed_generation, rp.metadata.generation);
    assert_eq!(
        (
            st.conditions[0].type_.as_str(),
            st.conditions[0].status.as_str()
        ),
        ("Valid", "True")
    );

    let dir = tempfile::tempdir().unwrap();
    let jwks_objects = "- key: jwt-signer\n  format: jwks\n  fileName: jwks.json\n";
    // A verifier that mounted before the pre-publication: only version 1.
    let early = t.mount_file("verifier", jwks_objects, "jwks.json");
    assert_eq!(kids(&early), vec![status_kid(&k, 1)]);

    // Two days before the rotation: version 2 exists in PreActivation, announced.
    t.advance_to(start, 28 * DAY + 1);
    let k = t
        .wait_key("pre-published version 2", |k| {
            k.status.as_ref().and_then(|s| s.next_version) == Some(2)
        })
        .await;
    let s = k.status.as_ref().unwrap();
    assert_eq!(s.current_version, Some(1), "pre-publishing does not rotate");
    let v2 = s.versions.iter().find(|v| v.version == 2).unwrap();
    assert_eq!(v2.state.as_str(), "PreActivation");
    assert!(
        t.events("KeyPrePublished")
            .await
            .iter()
            .any(|n| n.starts_with("version 2 created in PreActivation")),
        "{:?}",
        t.events("KeyPrePublished").await
    );
    // Readers get it now: the JWKS holds current then next; `current` is still version 1.
    let staged = t.mount_file("verifier", jwks_objects, "jwks.json");
    assert_eq!(kids(&staged), vec![status_kid(&k, 1), status_kid(&k, 2)]);
    let all = t.mount_file(
        "verifier",
        "- key: jwt-signer\n  version: all\n  format: public-pem\n  fileName: pub\n",
        "pub.next",
    );
    assert!(String::from_utf8(all).unwrap().contains("BEGIN PUBLIC KEY"));
    let signer_jwk = "- key: jwt-signer\n  format: jwk\n  fileName: signer.jwk\n";
    let jwk: serde_json::Value =
        serde_json::from_slice(&t.mount_file("signer", signer_jwk, "signer.jwk")).unwrap();
    assert_eq!(jwk["kid"], status_kid(&k, 1), "current is still version 1");

    // The rotation: version 2 becomes Active, no new material is made.
    t.advance_to(start, 30 * DAY + 1);
    let k = t
        .wait_key("version 2 active", |k| {
            k.status.as_ref().and_then(|s| s.current_version) == Some(2)
        })
        .await;
    assert_eq!(k.status.as_ref().unwrap().version_count, 2);
    let new_jwk = t.mount_file("signer", signer_jwk, "signer.jwk");
    let jwk_path = write(dir.path(), "signer.jwk", &new_jwk);
    let (_, token) = jwt_check(&["sign", &jwk_path]);
    // The JWKS mounted during pre-publication verifies the first token of version 2...
    let staged_path = write(dir.path(), "staged.json", &staged);
    let (code, out) = jwt_check(&["verify", &staged_path, &token]);
    assert_eq!(code, 0, "{out}");
    // ...and one mounted before it does not: staging is what makes the difference.
    let early_path = write(dir.path(), "early.json", &early);
    let (code, out) = jwt_check(&["verify", &early_path, &token]);
    assert_eq!(code, 3, "{out}");

    // Expiry notices: version 1 (created at start) expires at 60d; notifyBeforeExpiry 3d.
    t.advance_to(start, 57 * DAY + 60);
    let k = t
        .wait_key("ExpiringSoon", |k| {
            k.status
                .as_ref()
                .and_then(|s| s.true_condition("ExpiringSoon"))
                .is_some()
        })
        .await;
    let s = k.status.as_ref().unwrap();
    let c = s.true_condition("ExpiringSoon").unwrap();
    assert!(c.message.contains("version 1 at "), "{}", c.message);
    assert_eq!(s.expiry_notified, vec![1]);
    // Looked at again (and by a restarted controller, which reads status): no second Event.
    t.stack.trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let warned = t.events("KeyExpiringSoon").await;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].starts_with("version 1 expires at "), "{warned:?}");
    let exposition = t.stack.metrics.encode();
    let line = |name: &str| {
        exposition
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "{name}{{namespace=\"default\",name=\"jwt-signer\"}}"
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("{name} missing:\n{exposition}"))
    };
    assert_eq!(line("keyward_key_expiring_soon"), 1.0);
    let expiry = line("keyward_key_expiry_timestamp_seconds");
    let want = (start + SignedDuration::from_secs(60 * DAY)).as_millisecond() as f64 / 1000.0;
    assert!((expiry - want).abs() < 1.0, "{expiry} vs {want}");
    let next = line("keyward_key_next_rotation_timestamp_seconds");
    assert!(next > want, "version 2 rotates at 60d from its activation");

    // An invalid policy says so on itself, naming the field.
    t.policies
        .patch("jwt", &pp, &Patch::Apply(policy("40d")))
        .await
        .unwrap();
    let rp = t
        .wait_policy("Valid False", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.status == "False"))
        })
        .await;
    let c = &rp.status.unwrap().conditions[0];
    assert!(c.message.starts_with("spec.prePublish:"), "{}", c.message);
}
