//! The Helm chart: rendered, strictly linted and validated (tests/py/chart_test.py with the
//! embedded Helm of helm-python-sdk and kubernetes-validate); every rendered command line is
//! accepted by the real binary (`keyward controller|provider ARGS --help`); the chart's CRDs,
//! its default rendering and the examples apply to the test API server with kubectl.

use kube_test_apiserver::TestApiServer;
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
    let repo = keyward_demo::story::repo_root();
    let python = keyward_demo::story::default_python(&repo);
    assert!(
        python.exists(),
        "{} missing: run tests/setup.sh (or `make setup`) to create the venv with helm-python-sdk and kubernetes-validate, or point KEYWARD_PYTHON at a Python that has them",
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
        for component in ["controller", "provider", "provider_probe", "provider_ready"] {
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

    // The chart's CRDs, the whole default rendering (ServiceAccounts, RBAC, TLS Secret,
    // Deployment, Services, DaemonSet; not the PodDisruptionBudget, which the test API server
    // does not serve) and the examples apply to the test API server with kubectl.
    let s = TestApiServer::start().await.unwrap();
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            repo.join("charts/keyward/files/crds").to_str().unwrap(),
        ],
    );
    kubectl(&s, &["create", "namespace", "keyward-system"]);
    kubectl(
        &s,
        &[
            "apply",
            "-f",
            out.path().join("apply.yaml").to_str().unwrap(),
        ],
    );
    for example in ["rotation-policy.yaml", "managed-key.yaml", "pod.yaml"] {
        kubectl(
            &s,
            &[
                "apply",
                "-f",
                repo.join("examples").join(example).to_str().unwrap(),
            ],
        );
    }
    for (kind, name) in [
        ("clusterrole", "keyward-controller"),
        ("clusterrolebinding", "keyward-controller"),
        ("role", "keyward-controller"),
        ("rolebinding", "keyward-controller"),
        ("serviceaccount", "keyward-csi-provider"),
        ("secret", "keyward-key-service-tls"),
        ("deployment", "keyward-controller"),
        ("daemonset", "keyward-csi-provider"),
        ("service", "keyward-key-service"),
    ] {
        kubectl(&s, &["-n", "keyward-system", "get", kind, name]);
    }
    kubectl(&s, &["get", "mk", "payments-dek"]);
    kubectl(&s, &["get", "rotationpolicy", "quarterly"]);
    kubectl(&s, &["get", "pod", "payments"]);
}

/// The chart's `logFormat` reaches the binaries as KEYWARD_LOG_FORMAT: `json` gives one JSON
/// object per line (what log pipelines parse), `text` has no colour codes off a terminal, and
/// an unknown format is refused at start naming the variable.
#[test]
fn log_format_json_text_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        let socket = dir.path().join(format!("{format}.sock"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args([
                "provider",
                "--insecure-key-service",
                "--key-service-url=http://127.0.0.1:1",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg("--token-file=/dev/null")
            .env("KEYWARD_LOG_FORMAT", format)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stderr).unwrap()
    };
    let json = run("json");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "CSI provider listening"),
        "{json}"
    );
    let text = run("text");
    assert!(text.contains("CSI provider listening"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes off a terminal: {text:?}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["provider-probe", "--socket=/nonexistent"])
        .env("KEYWARD_LOG_FORMAT", "xml")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("KEYWARD_LOG_FORMAT=\"xml\" is not a log format: use text or json"),
        "{err}"
    );
}
