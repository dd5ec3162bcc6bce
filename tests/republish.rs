//! Republish at a cluster's rhythm: 200 pods x 30 rounds through the driver stand-in
//! (tests/py/republish.py on tests/py/csi_driver.py), the real controller, key service and
//! provider, all talking to the test API server with real TokenReviews. Each round measures
//! API requests (counted by the test API server), audit records written and files rewritten.
//! A rotation happens after round 10. What must hold: audit grows with changes, not with
//! mounts (a pod's first receipt of a version is recorded once; re-mounts are only counted),
//! and files are rewritten only when a key changed. The printed table is in docs/provider.md.

mod fixture;

use fixture::stack::Stack;
use keyward::controller::SystemClock;
use keyward::crd::{ManagedKey, RotationPolicy};
use kube::api::{Api, Patch, PatchParams};
use kube_test_apiserver::TestApiServer;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

const PODS: usize = 200;
const ROUNDS: usize = 30;
const ROTATE_AFTER: usize = 10;

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
    // The real controller (system clock, default requeue) and the whole serving path.
    let stack = Stack::start(Arc::new(SystemClock), Duration::from_secs(300)).await;
    let (server, client, dir) = (&stack.server, stack.client.clone(), stack.dir.path());
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

    for _ in 0..200 {
        if current_version(&keys).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(current_version(&keys).await, 1, "no first version");

    let (audit_path, socket, serve_metrics) =
        (&stack.audit_path, &stack.socket, &stack.serve_metrics);
    let mut pods = Vec::new();
    for i in 0..PODS {
        let (name, uid, token) = (
            format!("web-{i}"),
            format!("uid-{i:04}"),
            format!("pod-token-{i}"),
        );
        stack.add_pod_token(&token, "default", "payments", &name, &uid);
        pods.push(serde_json::json!({"name": name, "uid": uid, "token": token}));
    }
    let pods_path = dir.join("pods.json");
    std::fs::write(&pods_path, serde_json::Value::Array(pods).to_string()).unwrap();
    let mut child = std::process::Command::new(&python)
        .arg(root.join("tests/py/republish.py"))
        .arg("--socket")
        .arg(socket)
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--stub-dir")
        .arg(dir.join("stubs"))
        .arg("--pods")
        .arg(&pods_path)
        .args(["--rounds", &ROUNDS.to_string(), "--targets"])
        .arg(dir.join("volumes"))
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
        std::fs::read_to_string(audit_path)
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };

    println!(
        "round  mounts  ok  API requests  TokenReviews  audit records  files rewritten  seconds"
    );
    let (mut api_before, mut audit_before) = (server.request_total(), audit_lines());
    let mut tr_before = tokenreviews(server);
    let mut reads_before = key_reads(server);
    let mut quiet_reads = Vec::new();
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        let line = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("round timed out")
            .expect("republish.py ended early");
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let (api, audit, tr) = (server.request_total(), audit_lines(), tokenreviews(server));
        quiet_reads.push(key_reads(server) - reads_before);
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
        reads_before = key_reads(server);
        (api_before, audit_before, tr_before) =
            (server.request_total(), audit_lines(), tokenreviews(server));
        if round < ROUNDS {
            stdin.write_all(b"go\n").unwrap();
            stdin.flush().unwrap();
        }
    }
    let _ = child.wait();

    // Changes: every pod receives version 1 in round 1 and version 2 in the round after the
    // rotation; each is one audit record and one rewritten file per pod. Nothing else is.
    for &(round, _, api, tr, audit, files) in &rows {
        let change = round == 1 || round == ROTATE_AFTER + 1;
        let want = if change { PODS as u64 } else { 0 };
        assert_eq!(audit, want, "round {round}: audit records");
        assert_eq!(files, want, "round {round}: files rewritten");
        // The key service answers from its watch caches: a round of 200 Mounts reads no
        // ManagedKey, policy or storage Secret. (The controller, in the same cluster, may
        // write now and then, e.g. a policy's status: those are not reads of the Mount path.)
        // Rounds 2 and the one after the rotation's may still see the controller re-reading
        // after its own writes of that change.
        if !change && round > 2 && round != ROTATE_AFTER + 2 {
            assert_eq!(
                quiet_reads[round - 1],
                0,
                "round {round}: GETs of keys, policies or storage ({api} requests, {tr} TokenReviews)"
            );
        }
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

/// GETs of ManagedKeys, RotationPolicies and Secrets so far (what a Mount read before the
/// watch-backed key source).
fn key_reads(s: &TestApiServer) -> u64 {
    s.request_counts()
        .iter()
        .filter(|((verb, res), _)| {
            verb == "get" && matches!(res.as_str(), "managedkeys" | "rotationpolicies" | "secrets")
        })
        .map(|(_, n)| n)
        .sum()
}

fn tokenreviews(s: &TestApiServer) -> u64 {
    s.request_counts()
        .iter()
        .filter(|((verb, res), _)| verb == "create" && res == "tokenreviews")
        .map(|(_, n)| n)
        .sum()
}
