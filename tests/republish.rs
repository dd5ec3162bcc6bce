//! Republish at a cluster's rhythm: 200 pods x 30 rounds through the driver stand-in
//! (tests/py/republish.py on tests/py/csi_driver.py), the real controller, key service and
//! provider, all talking to the test API server with real TokenReviews. Each round measures
//! API requests (counted by the test API server), audit records written and files rewritten.
//! A rotation happens after round 10. What must hold: audit grows with changes, not with
//! mounts (a pod's first receipt of a version is recorded once; re-mounts are only counted),
//! and files are rewritten only when a key changed. The printed table is in docs/provider.md.

mod fixture;

use keyward::controller::{Context, Metrics, SystemClock};
use keyward::crd::{ManagedKey, RotationPolicy};
use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::{Keyring, local::LocalKek};
use keyward::keyservice::{
    ApiKeySource, CachingReviewer, KeyService, KubeTokenReviewer, ServeMetrics, Settings,
    VersionIdKey,
};
use keyward::proto::keyservice::{FetchRequest, FetchResponse};
use keyward::provider::{Fetcher, Provider};
use kube::api::{Api, Patch, PatchParams};
use kube_test_apiserver::{TestApiServer, TokenIdentity};
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const PODS: usize = 200;
const ROUNDS: usize = 30;
const ROTATE_AFTER: usize = 10;
const PROVIDER_TOKEN: &str = "provider-token";

/// The provider's key-service client, in process (the gRPC hop is covered elsewhere): it
/// authenticates as the provider's service account exactly as the real client does.
struct InProcess(Arc<KeyService<KubeTokenReviewer>>);

#[tonic::async_trait]
impl Fetcher for InProcess {
    async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, tonic::Status> {
        let expiry = keyward::keyservice::pod_token_expiry(&req);
        Ok(self.0.fetch(Some(PROVIDER_TOKEN), &req, expiry).await?)
    }
}

async fn current_version(keys: &Api<ManagedKey>) -> u32 {
    keys.get("payments-dek")
        .await
        .ok()
        .and_then(|k| k.status)
        .and_then(|s| s.current_version)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_rounds_audit_changes_not_mounts() {
    let (root, python) = (fixture::root(), fixture::python());
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = fixture::cluster().await;
    let pp = PatchParams::apply("test").force();
    Api::<RotationPolicy>::namespaced(client.clone(), "default")
        .patch(
            "quarterly",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy",
                "metadata": {"name": "quarterly"},
                "spec": {"rotationPeriod": "90d", "gracePeriod": "7d"}
            })),
        )
        .await
        .unwrap();
    let keys: Api<ManagedKey> = Api::namespaced(client.clone(), "default");
    keys.patch(
        "payments-dek",
        &pp,
        &Patch::Apply(serde_json::json!({
            "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "payments-dek"},
            "spec": {"algorithm": "aes-256", "policyRef": {"name": "quarterly"},
                     "access": {"serviceAccounts": [{"namespace": "default", "name": "payments"}]}}
        })),
    )
    .await
    .unwrap();

    // The real controller (system clock) creates version 1.
    let keyring = Keyring::new(Arc::new(
        LocalKek::in_memory("republish", SecretBytes::random(32), Algorithm::Aes256Kwp).unwrap(),
    ));
    let ctx = Context::new(
        client.clone(),
        keyring.clone(),
        Arc::new(Metrics::default()),
        Arc::new(SystemClock),
        Some("solo".into()),
    );
    let storage = ctx.storage.clone();
    tokio::spawn(keyward::controller::run(
        Arc::new(ctx),
        std::future::pending(),
        None,
        Arc::new(AtomicBool::new(false)),
    ));
    for _ in 0..200 {
        if current_version(&keys).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(current_version(&keys).await, 1, "no first version");

    // Key service with real TokenReviews and API reads, auditing to a file; the provider.
    let audit_path = dir.path().join("audit.log");
    let serve_metrics = ServeMetrics::default();
    let svc = KeyService::new(
        CachingReviewer::new(
            KubeTokenReviewer::new(client.clone()),
            Duration::from_secs(10),
            65_536,
        ),
        Arc::new(ApiKeySource::new(client.clone(), storage)),
        keyring,
        VersionIdKey::new(SecretBytes::random(32)),
        Settings {
            audience: "keyward".into(),
            provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
            provider_audience: None,
        },
    )
    .with_audit(Arc::new(
        keyward::audit::Audit::open(&audit_path, None, 0).unwrap(),
    ))
    .with_serve_metrics(serve_metrics.clone());
    let in_an_hour = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    server.add_token(
        PROVIDER_TOKEN,
        TokenIdentity {
            namespace: "keyward-system".into(),
            service_account: "keyward-csi-provider".into(),
            pod_name: None,
            pod_uid: None,
            audiences: vec![],
            expires_at: Some(in_an_hour),
        },
    );
    let socket = dir.path().join("providers/keyward.sock");
    let provider = Provider::new(Arc::new(InProcess(Arc::new(svc))), "keyward");
    let sock = socket.clone();
    tokio::spawn(async move {
        keyward::provider::serve(&sock, provider, std::future::pending())
            .await
            .unwrap()
    });
    let mut pods = Vec::new();
    for i in 0..PODS {
        let (name, uid, token) = (
            format!("web-{i}"),
            format!("uid-{i:04}"),
            format!("pod-token-{i}"),
        );
        server.add_token(
            &token,
            TokenIdentity {
                namespace: "default".into(),
                service_account: "payments".into(),
                pod_name: Some(name.clone()),
                pod_uid: Some(uid.clone()),
                audiences: vec!["keyward".into()],
                expires_at: Some(in_an_hour),
            },
        );
        pods.push(serde_json::json!({"name": name, "uid": uid, "token": token}));
    }
    let pods_path = dir.path().join("pods.json");
    std::fs::write(&pods_path, serde_json::Value::Array(pods).to_string()).unwrap();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut child = std::process::Command::new(&python)
        .arg(root.join("tests/py/republish.py"))
        .arg("--socket")
        .arg(&socket)
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--stub-dir")
        .arg(dir.path().join("stubs"))
        .arg("--pods")
        .arg(&pods_path)
        .args(["--rounds", &ROUNDS.to_string(), "--targets"])
        .arg(dir.path().join("volumes"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let audit_lines = || {
        std::fs::read_to_string(&audit_path)
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };

    println!(
        "round  mounts  ok  API requests  TokenReviews  audit records  files rewritten  seconds"
    );
    let (mut api_before, mut audit_before) = (server.request_total(), audit_lines());
    let mut tr_before = tokenreviews(&server);
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        let line = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("round timed out")
            .expect("republish.py ended early");
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let (api, audit, tr) = (server.request_total(), audit_lines(), tokenreviews(&server));
        let row = (
            round,
            r["ok"].as_u64().unwrap(),
            api - api_before,
            tr - tr_before,
            audit - audit_before,
            r["files_written"].as_u64().unwrap(),
        );
        println!(
            "{:>5}  {:>6}  {:>3}  {:>12}  {:>12}  {:>13}  {:>15}  {:>7}",
            round, r["mounts"], row.1, row.2, row.3, row.4, row.5, r["seconds"]
        );
        assert_eq!(
            row.1, PODS as u64,
            "round {round}: failures {}",
            r["failures"]
        );
        rows.push(row);
        if round == ROTATE_AFTER {
            keys.patch(
                "payments-dek",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"keyward.io/rotate-now": "republish-test"}}})),
            )
            .await
            .unwrap();
            for _ in 0..200 {
                if current_version(&keys).await == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(current_version(&keys).await, 2, "rotation did not happen");
        }
        (api_before, audit_before, tr_before) =
            (server.request_total(), audit_lines(), tokenreviews(&server));
        if round < ROUNDS {
            stdin.write_all(b"go\n").unwrap();
            stdin.flush().unwrap();
        }
    }
    let _ = child.wait();

    // Changes: every pod receives version 1 in round 1 and version 2 in the round after the
    // rotation; each is one audit record and one rewritten file per pod. Nothing else is.
    for &(round, _, api, _, audit, files) in &rows {
        let change = round == 1 || round == ROTATE_AFTER + 1;
        let want = if change { PODS as u64 } else { 0 };
        assert_eq!(audit, want, "round {round}: audit records");
        assert_eq!(files, want, "round {round}: files rewritten");
        assert!(api > 0, "round {round}: no API reads counted");
    }
    let mounts = (PODS * ROUNDS) as u64;
    assert_eq!(
        serve_metrics.first_serves.get() + serve_metrics.repeat_serves.get(),
        mounts,
        "every served version is either a first serve or a counted repeat"
    );
    assert_eq!(serve_metrics.first_serves.get(), 2 * PODS as u64);
    let api_total: u64 = rows.iter().map(|r| r.2).sum();
    println!(
        "republish: {mounts} mounts, {} audit records, {:.2} API requests per mount, {} repeat serves counted",
        rows.iter().map(|r| r.4).sum::<u64>(),
        api_total as f64 / mounts as f64,
        serve_metrics.repeat_serves.get()
    );
}

fn tokenreviews(s: &TestApiServer) -> u64 {
    s.request_counts()
        .iter()
        .filter(|((verb, res), _)| verb == "create" && res == "tokenreviews")
        .map(|(_, n)| n)
        .sum()
}
