//! Controller scenarios against the test API server with an injected clock: first version,
//! rotation as time passes, policy changes, crashes between writes, injected 409/500, two
//! replicas with leader election, and no key bytes in logs, Events or status.

mod fixture;

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use keyward::controller::cli::{LeaseConfig, run_leader_elected};
use keyward::controller::{Context, ManualClock, Metrics};
use keyward::crd::{ManagedKey, RotationPolicy};
use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::{Keyring, local::LocalKek};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_test_apiserver::{Fault, FaultKind, TestApiServer};
use serde_json::json;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Every log line any test in this binary writes.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,h2=info,rustls=info,tower=info")
            .with_writer(move || Capture(b.clone()))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct World {
    server: TestApiServer,
    /// Admin: what the test itself does.
    client: kube::Client,
    /// The controller's ServiceAccount under the chart's RBAC: what the controller uses.
    controller: kube::Client,
    clock: Arc<ManualClock>,
    keyring: Keyring,
    trigger: Vec<tokio::sync::mpsc::UnboundedSender<()>>,
    /// Shared by every replica a test starts, as the real ones share the Secret-held key.
    storage: keyward::storage::StorageLocation,
}

const T0: i64 = 1_800_000_000;

async fn world() -> World {
    logs();
    let (server, client) = fixture::cluster().await;
    let controller = fixture::rbac::controller_client(&server).await;
    let keyring = Keyring::new(Arc::new(
        LocalKek::in_memory("scenario", SecretBytes::random(32), Algorithm::Aes256Kwp).unwrap(),
    ));
    World {
        server,
        client,
        controller,
        clock: Arc::new(ManualClock::new(Timestamp::from_second(T0).unwrap())),
        keyring,
        trigger: vec![],
        storage: keyward::storage::StorageLocation {
            namespace: "keyward-system".into(),
            mac: keyward::storage::StateMacKey::new(SecretBytes::random(32)),
        },
    }
}

impl World {
    fn ctx(&self, instance: &str) -> (Arc<Context>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let mut ctx = Context::new(
            self.controller.clone(),
            self.keyring.clone(),
            metrics.clone(),
            self.clock.clone(),
            Some(instance.into()),
        );
        ctx.max_requeue = Duration::from_secs(2);
        ctx.sweep_interval = Duration::from_secs(1);
        ctx.storage = self.storage.clone();
        (Arc::new(ctx), metrics)
    }

    fn start(&mut self) -> Arc<Metrics> {
        let (ctx, metrics) = self.ctx("solo");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.trigger.push(tx);
        tokio::spawn(keyward::controller::run(
            ctx,
            std::future::pending(),
            Some(rx),
            Arc::new(AtomicBool::new(false)),
        ));
        metrics
    }

    fn advance(&self, d: SignedDuration) {
        self.clock.advance(d);
        for t in &self.trigger {
            let _ = t.send(());
        }
    }

    async fn apply(&self, yaml: &str) {
        fixture::apply(&self.client, serde_yaml_ng::from_str(yaml).unwrap()).await;
    }

    async fn wait(&self, name: &str, what: &str, f: impl Fn(&ManagedKey) -> bool) -> ManagedKey {
        let api: Api<ManagedKey> = Api::namespaced(self.client.clone(), "default");
        let mut last = None;
        for _ in 0..200 {
            if let Ok(Some(k)) = api.get_opt(name).await {
                if f(&k) {
                    return k;
                }
                last = Some(k);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {name}: {what}; last status {:?}",
            last.and_then(|k| k.status)
        );
    }

    /// The key's storage as the key service reads it (authenticated, generation-checked).
    async fn stored(&self, name: &str) -> keyward::storage::Stored {
        let mk = Api::<ManagedKey>::namespaced(self.client.clone(), "default")
            .get(name)
            .await
            .unwrap();
        let min = mk
            .status
            .as_ref()
            .and_then(|s| s.storage_generation)
            .unwrap_or(0);
        keyward::storage::load(
            &self.storage,
            &self.client,
            &keyward::storage::KeyIdentity::of(&mk),
            min,
        )
        .await
        .unwrap()
    }

    /// The local KEK backend on its Secret in the release namespace, as in production (the
    /// controller's ServiceAccount creates it, reads it, updates it on a KEK rotation).
    async fn use_root_key_secret(&mut self) {
        let kek = LocalKek::from_secret(
            self.controller.clone(),
            "keyward-system",
            "keyward-root-key",
            Algorithm::Aes256Kwp,
        )
        .await
        .unwrap();
        self.keyring = Keyring::new(Arc::new(kek));
    }

    async fn versions_in_secret(&self, name: &str) -> Vec<u32> {
        self.stored(name).await.envelopes.keys().copied().collect()
    }
}

fn current(k: &ManagedKey) -> u32 {
    k.status
        .as_ref()
        .and_then(|s| s.current_version)
        .unwrap_or(0)
}

const POLICY: &str = "apiVersion: keyward.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: monthly, namespace: default}\nspec: {rotationPeriod: 30d, gracePeriod: 1d, retainVersions: 2, deletionWindowDays: 7}\n";
const KEY: &str = "apiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: k, namespace: default}\nspec: {policyRef: {name: monthly}}\n";

/// A first version costs about one reconcile per key: the watch events of the controller's own
/// writes (finalizer, storage Secret, status) start no other, and the policy comes from the
/// controller's watch cache, never a GET. Someone else's change to a key is still reconciled.
/// (Before, each own write's event reconciled the key again: ~3.5 reconciles per key, each
/// re-reading policy and storage; docs/controller.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_do_not_reconcile_again_and_policies_come_from_the_cache() {
    let w = world().await;
    w.apply(POLICY).await;
    let (mut ctx, metrics) = w.ctx("solo");
    // No periodic look during the test: every reconcile counted is caused by a watch event.
    Arc::get_mut(&mut ctx).unwrap().max_requeue = Duration::from_secs(600);
    tokio::spawn(keyward::controller::run(
        ctx,
        std::future::pending(),
        None,
        Arc::new(AtomicBool::new(false)),
    ));
    const N: u64 = 10;
    for i in 0..N {
        w.apply(&KEY.replace("{name: k,", &format!("{{name: k{i},")))
            .await;
    }
    for i in 0..N {
        w.wait(&format!("k{i}"), "first version", |k| current(k) == 1)
            .await;
    }
    // Let every watch event of those writes arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = metrics.reconciles.get();
    // One each, plus the odd event that overtakes the answer to the write it reports.
    assert!(
        (N..=2 * N).contains(&settled),
        "{settled} reconciles for {N} first versions"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics.reconciles.get(),
        settled,
        "nothing reconciles by itself"
    );
    let counts = w.server.request_counts();
    let gets = |res: &str| {
        counts
            .get(&("get".to_string(), res.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(gets("rotationpolicies"), 0, "policies come from the cache");
    assert!(
        gets("secrets") <= 2 * N,
        "storage read {} times",
        gets("secrets")
    );

    // A change by someone else (an annotation keyward does not use) is a watch event like any
    // other: reconciled.
    Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .patch(
            "k0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"team": "payments"}}})),
        )
        .await
        .unwrap();
    let mut waited = 0;
    while metrics.reconciles.get() == settled {
        assert!(waited < 100, "someone else's change was not reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }

    // The policy's key count follows the same watch: created keys, then a deleted one.
    let policies: Api<RotationPolicy> = Api::namespaced(w.client.clone(), "default");
    let count_is = |n: u32| {
        let policies = policies.clone();
        async move {
            for _ in 0..100 {
                let p = policies.get("monthly").await.unwrap();
                if p.status.as_ref().is_some_and(|s| s.keys == n) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the policy never counted {n} keys");
        }
    };
    count_is(N as u32).await;
    Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .delete("k1", &Default::default())
        .await
        .unwrap();
    count_is(N as u32 - 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_rotation_as_time_passes_then_policy_change_replans() {
    let mut w = world().await;
    w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    let k = w.wait("k", "first version", |k| current(k) == 1).await;
    let st = k.status.unwrap();
    assert_eq!(st.next_rotation.as_deref(), Some("2027-02-14T08:00:00Z"));
    assert_eq!(w.versions_in_secret("k").await, vec![1]);
    // Not yet due.
    w.advance(SignedDuration::from_hours(24 * 29));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(current(&w.wait("k", "still 1", |_| true).await), 1);
    // Due: rotates.
    w.advance(SignedDuration::from_hours(24));
    let k = w.wait("k", "rotated to 2", |k| current(k) == 2).await;
    let v1 = k.status.as_ref().unwrap().version(1).unwrap();
    assert_eq!(v1.state, keyward::lifecycle::KeyState::Deactivated);
    // Policy change re-plans without any trigger: 1d period, the current version is 0s old
    // but the clock moves 2 days first (without a trigger).
    w.clock.advance(SignedDuration::from_hours(48));
    w.apply(&POLICY.replace("30d", "1d")).await;
    w.wait("k", "policy change rotated to 3", |k| current(k) == 3)
        .await;
    assert_eq!(w.versions_in_secret("k").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_writes_and_injected_errors_converge_without_duplicates() {
    let mut w = world().await;
    // Status write fails twice (as if the controller died after the Secret write), the first
    // Secret create is dropped on the wire.
    w.server.inject_fault(Fault {
        verb: Some("create".into()),
        resource: Some("secrets".into()),
        name: None,
        times: 1,
        kind: FaultKind::Drop,
        delay_ms: 0,
    });
    w.server
        .inject_fault(Fault::status("patch", "managedkeys/status", 500, 2));
    w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "first version despite faults", |k| current(k) == 1)
        .await;
    assert_eq!(
        w.versions_in_secret("k").await,
        vec![1],
        "no duplicate first version"
    );
    // A rotate-now whose Secret update conflicts twice, then a 500 on the read.
    w.server
        .inject_fault(Fault::status("update", "secrets", 409, 2));
    w.server
        .inject_fault(Fault::status("get", "secrets", 500, 1));
    Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"keyward.io/rotate-now": "r1"}}})),
        )
        .await
        .unwrap();
    w.wait("k", "rotated once", |k| current(k) == 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.versions_in_secret("k").await,
        vec![1, 2],
        "exactly one new version"
    );
    let k = w.wait("k", "status", |_| true).await;
    assert_eq!(k.status.unwrap().last_rotate_request.as_deref(), Some("r1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_acts() {
    let w = world().await;
    let (a, ma) = w.ctx("replica-a");
    let (b, mb) = w.ctx("replica-b");
    let lease = |id: &str| LeaseConfig {
        name: "keyward-controller".into(),
        namespace: "keyward-system".into(),
        identity: id.into(),
        seconds: 5,
    };
    tokio::spawn(run_leader_elected(
        a,
        lease("replica-a"),
        std::future::pending(),
        Arc::new(AtomicBool::new(false)),
    ));
    tokio::spawn(run_leader_elected(
        b,
        lease("replica-b"),
        std::future::pending(),
        Arc::new(AtomicBool::new(false)),
    ));
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "first version", |k| current(k) == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ra, rb) = (ma.reconciles.get(), mb.reconciles.get());
    assert!(
        (ra > 0) != (rb > 0),
        "exactly one replica reconciles: a={ra} b={rb}"
    );
    // keyward_leader: 1 on the replica that reconciles, 0 on the standby (the "no leader"
    // alert sums it over replicas).
    assert_eq!(
        (ma.leader.get(), mb.leader.get()),
        if ra > 0 { (1, 0) } else { (0, 1) }
    );
    assert_eq!(w.versions_in_secret("k").await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_bytes_in_logs_events_or_status() {
    let mut w = world().await;
    w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "v1", |k| current(k) == 1).await;
    w.advance(SignedDuration::from_hours(24 * 31));
    w.wait("k", "v2", |k| current(k) == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = w.stored("k").await;
    let mut keys = Vec::new();
    for v in stored.envelopes.keys() {
        keys.push(
            keyward::storage::unwrap_version(&w.keyring, &stored, "default", "k", *v)
                .await
                .unwrap(),
        );
    }
    assert_eq!(keys.len(), 2);
    // Everything users and operators can see: logs, and every object except the storage
    // Secret's envelopes (wrapped, by design). Events and status are included.
    let mut seen = logs().lock().unwrap().clone();
    for o in w.server.snapshot() {
        if o["type"] == "keyward.io/wrapped-key" {
            let mut o = o.clone();
            o["data"] = json!({"state.json": o["data"]["state.json"]});
            seen.extend_from_slice(o.to_string().as_bytes());
        } else {
            seen.extend_from_slice(o.to_string().as_bytes());
        }
    }
    assert!(seen.len() > 1000, "captured too little to be meaningful");
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    let has_events = w
        .server
        .snapshot()
        .iter()
        .any(|o| o["kind"] == "Event" && o["reason"] == "KeyRotated");
    assert!(has_events, "rotation Event recorded");
    for k in &keys {
        let raw = k.expose();
        assert!(
            !seen.windows(raw.len()).any(|win| win == raw),
            "raw key bytes found"
        );
        assert!(!text.contains(&hex::encode(raw)), "hex key found");
        for eng in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let b = eng.encode(raw).to_lowercase();
            assert!(!text.contains(&b[..b.len() - 2]), "base64 key found");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_rewraps_every_version_in_the_background() {
    let mut w = world().await;
    w.use_root_key_secret().await;
    let metrics = w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "v1", |k| current(k) == 1).await;
    Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"keyward.io/rotate-now": "x"}}})),
        )
        .await
        .unwrap();
    w.wait("k", "v2", |k| current(k) == 2).await;
    let before = w.versions_in_secret("k").await;
    // Rotate the KEK (as `keyward kek rotate` does) and let the controller notice.
    let new_version = w.keyring.primary().rotate().await.unwrap();
    assert_eq!(new_version, 2);
    w.advance(SignedDuration::from_secs(1));
    let k = w
        .wait("k", "every version rewrapped under KEK v2", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.versions
                    .iter()
                    .all(|v| v.kek.as_deref().is_some_and(|x| x.ends_with("@2")))
            })
        })
        .await;
    assert_eq!(
        k.status.unwrap().versions.len(),
        2,
        "no version added by a rewrap"
    );
    assert_eq!(w.versions_in_secret("k").await, before);
    assert!(metrics.rewraps.get() >= 2);
    // Every version still unwraps (old KEK version kept until nothing references it).
    let stored = w.stored("k").await;
    for v in stored.envelopes.keys() {
        let env = keyward::crypto::Envelope::decode(&stored.envelopes[v]).unwrap();
        assert_eq!(env.kek_version, 2);
        keyward::storage::unwrap_version(&w.keyring, &stored, "default", "k", *v)
            .await
            .unwrap();
    }
}

/// Documented status promises: `publicKey` for asymmetric versions, the `RotationDue` notice
/// (`notifyBeforeExpiry`) with one Warning Event per notice, and one audit record per destroyed
/// version, written after the destruction is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_rotation_notice_and_one_destroy_record() {
    use k8s_openapi::api::events::v1::Event;
    let mut w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let (ctx, _) = w.ctx("solo");
    let mut ctx = Arc::into_inner(ctx).unwrap();
    ctx.audit = Arc::new(keyward::audit::Audit::open(&audit_path, None, 0).unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    w.trigger.push(tx);
    tokio::spawn(keyward::controller::run(
        Arc::new(ctx),
        std::future::pending(),
        Some(rx),
        Arc::new(AtomicBool::new(false)),
    ));
    w.apply("apiVersion: keyward.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: notice, namespace: default}\nspec: {rotationPeriod: 10d, notifyBeforeExpiry: 2d, gracePeriod: 1d, retainVersions: 1, deletionWindowDays: 7}\n").await;
    w.apply("apiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: signer, namespace: default}\nspec: {algorithm: ed25519, policyRef: {name: notice}}\n").await;
    w.apply(KEY).await;
    let k = w.wait("signer", "first version", |k| current(k) == 1).await;
    let pem = k
        .status
        .as_ref()
        .unwrap()
        .version(1)
        .unwrap()
        .public_key
        .clone();
    let pem = pem.expect("status.versions[].publicKey is set for an ed25519 key");
    let der = spki_der(&pem);
    assert_eq!(der.len(), 44, "Ed25519 SubjectPublicKeyInfo is 44 bytes");
    let aes = w.wait("k", "first version", |k| current(k) == 1).await;
    assert_eq!(aes.status.unwrap().version(1).unwrap().public_key, None);

    let due = |k: &ManagedKey| {
        k.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "RotationDue"))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(due(&k), Some(("False".into(), "NotDue".into())));
    let notices = || async {
        Api::<Event>::namespaced(w.client.clone(), "default")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("RotationDue")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("signer")
            })
            .count()
    };
    assert_eq!(notices().await, 0);
    // Inside the notice period (2d before the 10d rotation): condition and one Warning Event.
    w.advance(SignedDuration::from_hours(24 * 8 + 1));
    w.wait("signer", "RotationDue DueSoon", |k| {
        due(k) == Some(("True".into(), "DueSoon".into()))
    })
    .await;
    w.advance(SignedDuration::from_hours(1));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(notices().await, 1, "one notice per notice period");
    // Rotation clears it.
    w.advance(SignedDuration::from_hours(24 * 2));
    let k = w
        .wait("signer", "rotated, notice cleared", |k| {
            current(k) == 2 && due(k) == Some(("False".into(), "NotDue".into()))
        })
        .await;
    assert!(k.status.unwrap().version(2).unwrap().public_key.is_some());
    // Version 1 is outside retainVersions 1: destroyed after grace (1d) + window (7d).
    w.advance(SignedDuration::from_hours(24 * 8 + 1));
    w.wait("signer", "v1 destroyed", |k| {
        k.status.as_ref().unwrap().version(1).unwrap().state
            == keyward::lifecycle::KeyState::Destroyed
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&audit_path).unwrap();
    let destroys = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["event"].clone())
        .filter(|e| e["action"] == "destroy" && e["version"] == 1 && e["key"] == "default/signer")
        .count();
    assert_eq!(destroys, 1, "one destroy record for version 1:\n{log}");
    assert!(
        !log.contains("transition-to-Destroyed"),
        "a destruction is one record (destroy), not two:\n{log}"
    );
}

fn spki_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// Storage lives in the controller's namespace, authenticated: a rolled-back or edited copy
/// (what a tenant could do when storage sat in their namespace) is refused by the controller
/// (Degraded/StorageIntegrity, one Warning Event, nothing planned, no panic) and by the key
/// service (nothing served); the tenant's namespace holds no storage at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_or_rolled_back_storage_is_refused_and_reported() {
    use k8s_openapi::api::events::v1::Event;
    use keyward::keyservice::{ApiKeySource, KeySource, WatchKeySource};
    let mut w = world().await;
    w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "v1", |k| current(k) == 1).await;
    let secrets = Api::<Secret>::namespaced(w.client.clone(), "keyward-system");
    let mk = Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .get("k")
        .await
        .unwrap();
    let name = keyward::storage::secret_name(&mk.uid().unwrap());
    let old = secrets.get(&name).await.unwrap();
    assert!(
        Api::<Secret>::namespaced(w.client.clone(), "default")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no storage in the tenant namespace"
    );
    w.advance(SignedDuration::from_hours(24 * 31));
    w.wait("k", "v2", |k| current(k) == 2).await;
    let source = ApiKeySource::new(w.controller.clone(), w.storage.clone());
    assert!(source.get("default", "k").await.unwrap().is_some());
    // The default key source: watches of keys, policies and storage Secrets.
    let watched = WatchKeySource::start(w.controller.clone(), w.storage.clone());
    assert!(watched.wait_synced(Duration::from_secs(10)).await);
    assert!(watched.get("default", "k").await.unwrap().is_some());
    let latest = secrets.get(&name).await.unwrap();

    // Roll back to the copy holding only version 1.
    let mut rolled = old.clone();
    rolled.metadata.resource_version = secrets.get(&name).await.unwrap().metadata.resource_version;
    secrets
        .replace(&name, &PostParams::default(), &rolled)
        .await
        .unwrap();
    let degraded = |k: &ManagedKey| {
        k.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "StorageIntegrity"
                })
                .map(|c| c.message.clone())
        })
    };
    let k = w
        .wait("k", "rollback reported", |k| degraded(k).is_some())
        .await;
    assert!(
        degraded(&k).unwrap().contains("rolled-back"),
        "{:?}",
        degraded(&k)
    );
    let e = source
        .get("default", "k")
        .await
        .err()
        .expect("the key service refuses to serve it");
    assert!(e.to_string().contains("integrity"), "{e}");
    // The watch-backed source refuses it as well: the cached rolled-back copy is older than
    // the recorded generation, and the direct read it then makes finds the same copy.
    let e = watched
        .get("default", "k")
        .await
        .err()
        .expect("the watch-backed key service refuses to serve it");
    assert!(e.to_string().contains("rolled-back"), "{e}");
    assert!(watched.fallback_reads() >= 1);
    // Nothing was planned on it: no version 3 appeared, the controller did not crash.
    w.advance(SignedDuration::from_hours(24 * 31));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let k = w
        .wait("k", "still degraded", |k| degraded(k).is_some())
        .await;
    assert_eq!(current(&k), 2, "status keeps the last good projection");

    // An edit that keeps the generation: a Deactivated version flipped back to Active.
    let mut edited = secrets.get(&name).await.unwrap();
    let data = edited.data.as_mut().unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&data["state.json"].0).unwrap();
    st["generation"] = 1000.into();
    data.insert(
        "state.json".into(),
        k8s_openapi::ByteString(serde_json::to_vec(&st).unwrap()),
    );
    secrets
        .replace(&name, &PostParams::default(), &edited)
        .await
        .unwrap();
    let k = w
        .wait("k", "edit reported", |k| {
            degraded(k).is_some_and(|m| m.contains("MAC does not match"))
        })
        .await;
    // The cached copy is authenticated on every lookup, as a direct read is.
    let mut refused = String::new();
    for _ in 0..100 {
        match watched.get("default", "k").await {
            Err(e) if e.to_string().contains("MAC does not match") => {
                refused = e.to_string();
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        !refused.is_empty(),
        "the edited copy was not refused from the cache"
    );
    assert!(
        !k.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let warnings = Api::<Event>::namespaced(w.client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("StorageIntegrity") && e.type_.as_deref() == Some("Warning")
        })
        .count();
    // The Recorder folds repeats of one reason into one Event series.
    assert!(
        warnings >= 1,
        "a Warning Event reports the integrity failure"
    );

    // Putting the authentic latest copy back heals it: the key is served again.
    let mut good = latest.clone();
    good.metadata.resource_version = secrets.get(&name).await.unwrap().metadata.resource_version;
    secrets
        .replace(&name, &PostParams::default(), &good)
        .await
        .unwrap();
    w.advance(SignedDuration::from_secs(1));
    w.wait("k", "healed", |k| degraded(k).is_none()).await;
    assert!(source.get("default", "k").await.unwrap().is_some());
}

/// A ManagedKey name of the full 253 characters works end to end (storage is named by UID and
/// the name rides in an annotation, never a 63-character label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_253_character_name_gets_versions() {
    let mut w = world().await;
    w.start();
    w.apply(POLICY).await;
    let name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(name.len(), 253);
    w.apply(&KEY.replace("{name: k,", &format!("{{name: {name},")))
        .await;
    w.wait(&name, "first version", |k| current(k) == 1).await;
    assert_eq!(w.versions_in_secret(&name).await, vec![1]);
}

/// The chart's RBAC grants the controller exactly what it uses: every (verb, resource) of the
/// rendered ClusterRole and Role is exercised here by the controller, its key service and its
/// local KEK backend running as the chart's ServiceAccount under enforced RBAC, none is
/// refused, and nothing is used that the chart does not grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_grants_the_controller_exactly_what_it_uses() {
    use keyward::keyservice::{
        ApiKeySource, KeySource, KubeTokenReviewer, TokenReviewer, WatchKeySource,
    };
    let mut w = world().await;
    w.use_root_key_secret().await;
    // One replica, leader-elected through the chart's Lease.
    let (ctx, _) = w.ctx("replica-a");
    tokio::spawn(run_leader_elected(
        ctx,
        LeaseConfig {
            name: "keyward-controller".into(),
            namespace: "keyward-system".into(),
            identity: "replica-a".into(),
            seconds: 5,
        },
        std::future::pending(),
        Arc::new(AtomicBool::new(false)),
    ));
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "v1", |k| current(k) == 1).await;
    // Two rotations: the second rotation Event is a series update (patch).
    for (i, r) in ["r1", "r2"].into_iter().enumerate() {
        Api::<ManagedKey>::namespaced(w.client.clone(), "default")
            .patch(
                "k",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"keyward.io/rotate-now": r}}})),
            )
            .await
            .unwrap();
        w.wait("k", "rotated", |k| current(k) == i as u32 + 2).await;
    }
    // The key service: reads a key and its storage, reviews a pod's token.
    let source = ApiKeySource::new(w.controller.clone(), w.storage.clone());
    assert!(source.get("default", "k").await.unwrap().is_some());
    // The default key source: watches of keys, policies and storage Secrets.
    let watched = WatchKeySource::start(w.controller.clone(), w.storage.clone());
    assert!(watched.wait_synced(Duration::from_secs(10)).await);
    assert!(watched.get("default", "k").await.unwrap().is_some());
    w.server.add_token(
        "pod-token",
        kube_test_apiserver::TokenIdentity {
            namespace: "default".into(),
            service_account: "app".into(),
            pod_name: None,
            pod_uid: None,
            audiences: vec!["keyward".into()],
            expires_at: None,
        },
    );
    let id = KubeTokenReviewer::new(w.controller.clone())
        .review("pod-token", Some("keyward"))
        .await
        .unwrap();
    assert_eq!(id.service_account, "app");
    // A KEK rotation (update of the root-key Secret).
    w.keyring.primary().rotate().await.unwrap();
    // The audit anchor: the ConfigMap created once, then this replica's entry applied (twice:
    // an unchanged apply is a no-op), read back as `keyward audit verify` reads it.
    {
        let dir = tempfile::tempdir().unwrap();
        let audit = keyward::audit::Audit::open(&dir.path().join("audit.log"), None, 2).unwrap();
        audit.record(Default::default()).unwrap();
        let anchor = audit.anchors().borrow().clone().unwrap();
        for _ in 0..2 {
            keyward::audit::anchor::ensure_configmap(&w.controller, "keyward-system")
                .await
                .unwrap();
            keyward::audit::anchor::publish(&w.controller, "keyward-system", "replica-a", &anchor)
                .await
                .unwrap();
        }
        let read = keyward::audit::anchor::fetch(&w.client, "keyward-system", "replica-a")
            .await
            .unwrap();
        assert_eq!(read, anchor);
    }
    // A scheduled deletion runs out: the controller deletes the object, its clean-up the
    // storage.
    w.apply(
        "apiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: gone, namespace: default}\nspec: {policyRef: {name: monthly}, deletion: {scheduled: true}}\n",
    )
    .await;
    w.wait("gone", "pending deletion", |k| {
        k.status
            .as_ref()
            .is_some_and(|s| s.pending_deletion.is_some() && s.storage_generation.is_some())
    })
    .await;
    let gone_uid = Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .get("gone")
        .await
        .unwrap()
        .uid()
        .unwrap();
    w.clock.advance(SignedDuration::from_hours(24 * 8));
    let secrets = Api::<Secret>::namespaced(w.client.clone(), "keyward-system");
    let storage = keyward::storage::secret_name(&gone_uid);
    for i in 0.. {
        let obj = Api::<ManagedKey>::namespaced(w.client.clone(), "default")
            .get_opt("gone")
            .await
            .unwrap();
        if obj.is_none() && secrets.get_opt(&storage).await.unwrap().is_none() {
            break;
        }
        assert!(i < 300, "scheduled deletion did not finish: {obj:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let user = format!(
        "system:serviceaccount:keyward-system:{}",
        fixture::rbac::CONTROLLER_SA
    );
    let denied = w.server.rbac_denials().remove(&user).unwrap_or_default();
    assert!(denied.is_empty(), "the chart's RBAC refused: {denied:?}");
    let used: std::collections::BTreeSet<(String, String, String)> = w
        .server
        .rbac_usage()
        .remove(&user)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.verb, a.group, a.resource))
        .collect();
    let granted = fixture::rbac::granted_to_controller();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "used without a grant: {ungranted:?}");
}

/// A tenant with the built-in `edit` role in a key's namespace (keyward's kinds reach it by
/// the chart's aggregated ClusterRole) manages the key but can neither read nor change its
/// storage, the root key or its status: every attempt is the real 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_edit_cannot_read_or_change_key_storage() {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let mut w = world().await;
    w.start();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant-edit", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "default"}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(w.client.clone(), "default")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let tenant = w.server.service_account_client("default", "tenant").await;
    // The tenant declares the policy and the key and asks for a rotation: that is its job.
    let pp = PatchParams::apply("tenant");
    let policy: serde_json::Value = serde_yaml_ng::from_str(POLICY).unwrap();
    Api::<RotationPolicy>::namespaced(tenant.clone(), "default")
        .patch("monthly", &pp, &Patch::Apply(policy))
        .await
        .unwrap();
    let key: serde_json::Value = serde_yaml_ng::from_str(KEY).unwrap();
    let keys = Api::<ManagedKey>::namespaced(tenant.clone(), "default");
    keys.patch("k", &pp, &Patch::Apply(key)).await.unwrap();
    w.wait("k", "v1", |k| current(k) == 1).await;
    keys.patch(
        "k",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"keyward.io/rotate-now": "t1"}}})),
    )
    .await
    .unwrap();
    let k = w.wait("k", "v2", |k| current(k) == 2).await;
    let storage = keyward::storage::secret_name(&k.uid().unwrap());

    let forbidden = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        Err(e) => panic!("{what}: expected 403, got {e}"),
        Ok(_) => panic!("{what}: allowed"),
    };
    let user = "User \"system:serviceaccount:default:tenant\"";
    let secrets = Api::<Secret>::namespaced(tenant.clone(), "keyward-system");
    let m = forbidden(secrets.get(&storage).await.map(|_| ()), "get storage");
    assert_eq!(
        m,
        format!(
            "secrets \"{storage}\" is forbidden: {user} cannot get resource \"secrets\" in API group \"\" in the namespace \"keyward-system\""
        )
    );
    forbidden(
        secrets.list(&Default::default()).await.map(|_| ()),
        "list storage",
    );
    forbidden(
        secrets.get("keyward-state-mac-key").await.map(|_| ()),
        "get the state MAC key",
    );
    let copy = Api::<Secret>::namespaced(w.client.clone(), "keyward-system")
        .get(&storage)
        .await
        .unwrap();
    forbidden(
        secrets
            .replace(&storage, &PostParams::default(), &copy)
            .await
            .map(|_| ()),
        "replace storage",
    );
    forbidden(
        secrets
            .delete(&storage, &Default::default())
            .await
            .map(|_| ()),
        "delete storage",
    );
    forbidden(
        Api::<Secret>::all(tenant.clone())
            .list(&Default::default())
            .await
            .map(|_| ()),
        "list Secrets cluster-wide",
    );
    // Status (where the controller records the storage generation) is the controller's.
    forbidden(
        keys.patch_status(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"storageGeneration": 0}})),
        )
        .await
        .map(|_| ()),
        "patch status",
    );
    // Its own namespace's Secrets (edit allows them) hold nothing of keyward's.
    let own = Api::<Secret>::namespaced(tenant, "default")
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        own.items
            .iter()
            .all(|s| s.type_.as_deref() != Some(keyward::storage::SECRET_TYPE)),
        "no key storage in the tenant's namespace"
    );
    // And the key still serves version 2, untouched.
    assert_eq!(current(&w.wait("k", "still v2", |_| true).await), 2);
    assert_eq!(w.versions_in_secret("k").await, vec![1, 2]);
}

/// Hostile input against a real controller process (#17): the CRD refuses
/// `rotationPeriod: "3000000d"` at admission (CEL rule, enforced by the test API server as by
/// kube-apiserver); on a cluster whose CRD predates the rule, the same policy reaches the
/// controller and is a Degraded/PolicyInvalid condition naming the field, not a panic. A
/// reconcile that panics anyway (a test hook) is caught: Degraded/InternalError and a Warning
/// Event on that key. Throughout, the process keeps running and another key keeps rotating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policy_and_a_panicking_reconcile_leave_other_keys_rotating() {
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    const HOSTILE: &str = "apiVersion: keyward.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: hostile, namespace: default}\nspec: {rotationPeriod: 3000000d, expireAfter: 3000000d, notifyBeforeExpiry: 3000000d, gracePeriod: 3000000d}\n";
    let mut w = world().await;
    let policies: Api<RotationPolicy> = Api::namespaced(w.client.clone(), "default");
    let refused = fixture::refusal(
        policies
            .create(
                &PostParams::default(),
                &serde_yaml_ng::from_str(HOSTILE).unwrap(),
            )
            .await,
    );
    assert!(
        refused.contains("rotationPeriod") && refused.contains("36500d"),
        "{refused}"
    );
    // "1d" is fine: the rule sums components, it does not refuse every value.
    fixture::apply(
        &w.client,
        serde_yaml_ng::from_str(&HOSTILE.replace("3000000d", "36500d")).unwrap(),
    )
    .await;

    // A cluster still running the CRD from before the rule.
    let crds: Api<CustomResourceDefinition> = Api::all(w.client.clone());
    let name = "rotationpolicies.keyward.io";
    let mut old = serde_json::to_value(
        keyward::crd::definitions()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap(),
    )
    .unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("type").and_then(|t| t.as_str()) == Some("string") {
                    m.remove("x-kubernetes-validations");
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut old);
    let mut old: CustomResourceDefinition = serde_json::from_value(old).unwrap();
    old.metadata.resource_version = crds.get(name).await.unwrap().metadata.resource_version;
    crds.replace(name, &PostParams::default(), &old)
        .await
        .unwrap();
    w.apply(HOSTILE).await;

    // The controller, with a hook that panics for key "boom" only.
    let (ctx, _metrics) = w.ctx("solo");
    let mut ctx = Arc::try_unwrap(ctx).ok().unwrap();
    ctx.reconcile_hook = Some(Arc::new(|mk: &ManagedKey| {
        if mk.name_any() == "boom" {
            panic!(
                "deliberate test panic in the reconcile of {}",
                mk.name_any()
            );
        }
    }));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    w.trigger.push(tx);
    let running = tokio::spawn(keyward::controller::run(
        Arc::new(ctx),
        std::future::pending(),
        Some(rx),
        Arc::new(AtomicBool::new(false)),
    ));
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.apply(
        &KEY.replace("name: k,", "name: victim,")
            .replace("monthly", "hostile"),
    )
    .await;
    w.apply(&KEY.replace("name: k,", "name: boom,")).await;

    let degraded = |k: &ManagedKey, reason: &str| {
        k.status
            .as_ref()
            .and_then(|s| s.true_condition("Degraded"))
            .filter(|c| c.reason == reason)
            .map(|c| c.message.clone())
    };
    let victim = w
        .wait("victim", "PolicyInvalid", |k| {
            degraded(k, "PolicyInvalid").is_some()
        })
        .await;
    let m = degraded(&victim, "PolicyInvalid").unwrap();
    assert!(
        m.contains("spec.rotationPeriod") && m.contains("36500d") && m.contains("shorter"),
        "{m}"
    );
    let boom = w
        .wait("boom", "InternalError", |k| {
            degraded(k, "InternalError").is_some()
        })
        .await;
    let m = degraded(&boom, "InternalError").unwrap();
    assert!(
        m.contains("deliberate test panic") && m.contains("other keys"),
        "{m}"
    );
    assert_eq!(
        current(&boom),
        0,
        "nothing was created for the panicking key"
    );
    let warned = Api::<Event>::namespaced(w.client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("InternalError")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("boom")
        });
    assert!(
        warned,
        "a Warning Event reports the caught panic on its key"
    );

    // The same process keeps serving and rotating the healthy key.
    w.wait("k", "first version", |k| current(k) == 1).await;
    w.advance(SignedDuration::from_hours(31 * 24));
    w.wait("k", "rotated", |k| current(k) == 2).await;
    w.advance(SignedDuration::from_hours(31 * 24));
    w.wait("k", "rotated again", |k| current(k) == 3).await;
    assert!(!running.is_finished(), "the controller is still running");
    let victim = w
        .wait("victim", "still reported", |k| {
            degraded(k, "PolicyInvalid").is_some()
        })
        .await;
    assert_eq!(
        current(&victim),
        1,
        "the default policy applies to a key whose policy is invalid"
    );
    running.abort();
}

/// A stored `destroyAt` that does not parse (behind a valid MAC: a buggy writer or a forged
/// MAC key) is never read as "now" (#17): the key is Degraded/StorageIntegrity with a Warning
/// Event, nothing is destroyed, and after the window would have ended every version's material
/// is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_destroy_at_destroys_nothing() {
    use k8s_openapi::api::events::v1::Event;
    let mut w = world().await;
    w.start();
    w.apply(POLICY).await;
    w.apply(KEY).await;
    w.wait("k", "v1", |k| current(k) == 1).await;
    w.advance(SignedDuration::from_hours(24 * 31));
    w.wait("k", "v2", |k| current(k) == 2).await;
    let secrets = Api::<Secret>::namespaced(w.client.clone(), "keyward-system");
    let mk = Api::<ManagedKey>::namespaced(w.client.clone(), "default")
        .get("k")
        .await
        .unwrap();
    let id = keyward::storage::KeyIdentity::of(&mk);
    let name = keyward::storage::secret_name(&id.uid);
    let before = w.versions_in_secret("k").await;
    assert_eq!(before, [1, 2]);

    // Re-seal the state with a pending deletion whose destroyAt does not parse.
    let current_secret = secrets.get(&name).await.unwrap();
    let data = current_secret.data.clone().unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&data["state.json"].0).unwrap();
    st["pendingDeletion"] = json!({"scheduledAt": "2027-01-01T00:00:00Z", "destroyAt": "soon"});
    let envelopes = data
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix('v')?.parse().ok()?, v.0.clone())))
        .collect();
    let mut forged = keyward::storage::sealed(
        &w.storage,
        &id,
        serde_json::to_vec(&st).unwrap(),
        &envelopes,
    );
    forged.metadata.resource_version = current_secret.metadata.resource_version.clone();
    secrets
        .replace(&name, &PostParams::default(), &forged)
        .await
        .unwrap();
    let degraded = |k: &ManagedKey| {
        k.status
            .as_ref()
            .and_then(|s| s.true_condition("Degraded"))
            .filter(|c| c.reason == "StorageIntegrity")
            .map(|c| c.message.clone())
    };
    let k = w
        .wait("k", "destroyAt refused", |k| degraded(k).is_some())
        .await;
    let m = degraded(&k).unwrap();
    assert!(m.contains("state.json") && m.contains("destroyAt"), "{m}");
    let warned = Api::<Event>::namespaced(w.client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("StorageIntegrity") && e.type_.as_deref() == Some("Warning")
        });
    assert!(warned, "a Warning Event reports it");
    // Well past any deletion window: nothing destroyed, nothing planned.
    w.advance(SignedDuration::from_hours(24 * 60));
    tokio::time::sleep(Duration::from_millis(800)).await;
    w.wait("k", "still refused", |k| degraded(k).is_some())
        .await;
    let after = secrets.get(&name).await.unwrap();
    let kept: Vec<String> = after
        .data
        .unwrap()
        .keys()
        .filter(|k| k.starts_with('v'))
        .cloned()
        .collect();
    assert_eq!(kept, ["v1", "v2"], "every version keeps its material");
}

/// Events: a repeat counts in the first Event's series (one object, count and last time);
/// another reason is another Event; a repeat of an Event the API server no longer has (its TTL)
/// starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_count_repeats_in_a_series() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use keyward::controller::events::EventRecorder;
    use kube::runtime::events::{Event, EventType, Reporter};
    let w = world().await;
    let recorder = EventRecorder::new(
        w.controller.clone(),
        Reporter {
            controller: "keyward-controller".into(),
            instance: Some("test".into()),
        },
    );
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("keyward.io/v1alpha1".into()),
        kind: Some("ManagedKey".into()),
        namespace: Some("default".into()),
        name: Some("k".into()),
        uid: Some("uid-k".into()),
        ..Default::default()
    };
    let ev = |reason: &str, note: &str| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Verify".into(),
        secondary: None,
    };
    let events: Api<K8sEvent> = Api::namespaced(w.client.clone(), "default");
    let list = || async { events.list(&Default::default()).await.unwrap().items };
    for note in ["first", "second", "third"] {
        recorder
            .publish(&ev("StorageIntegrity", note), &regarding)
            .await
            .unwrap();
    }
    let all = list().await;
    assert_eq!(all.len(), 1, "repeats are one Event");
    let series = all[0].series.as_ref().expect("a series");
    assert_eq!(series.count, 3);
    assert_eq!(all[0].note.as_deref(), Some("first"));
    assert_eq!(all[0].reporting_instance.as_deref(), Some("test"));
    recorder
        .publish(&ev("PolicyNotFound", "x"), &regarding)
        .await
        .unwrap();
    assert_eq!(list().await.len(), 2, "another reason, another Event");
    events
        .delete(
            all[0].metadata.name.as_deref().unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
    recorder
        .publish(&ev("StorageIntegrity", "fourth"), &regarding)
        .await
        .unwrap();
    let again: Vec<_> = list()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("StorageIntegrity"))
        .collect();
    assert_eq!(again.len(), 1);
    assert!(again[0].series.is_none(), "a new Event, not a series");
    assert_eq!(again[0].note.as_deref(), Some("fourth"));
}
