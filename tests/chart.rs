//! The Helm chart: rendered, strictly linted and validated (tests/py/chart_test.py with the
//! embedded Helm of helm-python-sdk and kubernetes-validate); every rendered command line is
//! accepted by the real binary; the rendered CRDs, RBAC and a sample apply to the test API
//! server with kubectl.

use keyward::apiserver::TestApiServer;
use std::process::Command;

fn kubectl(s: &TestApiServer, args: &[&str]) {
    let o = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl installed");
    assert!(
        o.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_renders_lints_validates_and_applies() {
    let repo = keyward::story::repo_root();
    let python = keyward::story::default_python(&repo);
    assert!(
        python.exists(),
        "{} missing: run tests/setup.sh",
        python.display()
    );
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(&python)
        .arg(repo.join("tests/py/chart_test.py"))
        .arg(out.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(
        o.status.success(),
        "chart checks failed:\n{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Every command line the chart renders is one the binary accepts.
    let sets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("args.json")).unwrap())
            .unwrap();
    for set in sets.as_array().unwrap() {
        for component in ["controller", "provider"] {
            let args: Vec<String> = set[component]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let o = Command::new(env!("CARGO_BIN_EXE_keyward"))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{} {component}: keyward refuses the chart's args {args:?}: {}",
                set["set"],
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    // The rendered CRDs, RBAC and a sample apply to the test API server.
    let s = TestApiServer::start().await.unwrap();
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            repo.join("charts/keyward/crds").to_str().unwrap(),
        ],
    );
    kubectl(&s, &["create", "namespace", "keyward-system"]);
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            out.path().join("rbac.yaml").to_str().unwrap(),
        ],
    );
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            repo.join("examples/rotation-policy.yaml").to_str().unwrap(),
        ],
    );
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            repo.join("examples/managed-key.yaml").to_str().unwrap(),
        ],
    );
    kubectl(&s, &["get", "clusterrole", "keyward-controller"]);
    kubectl(&s, &["get", "mk", "payments-dek"]);
}
