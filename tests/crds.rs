//! The committed CRDs match the Rust types, and the examples parse against them.

use keyward::crd::{ManagedKey, RotationPolicy, crds_yaml};
use std::path::Path;

#[test]
fn crds_directory_matches_generated_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keyward/files/crds");
    let mut expected = Vec::new();
    for (file, yaml) in crds_yaml() {
        let on_disk = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|_| panic!("crds/{file} missing: run `cargo run -- crdgen`"));
        assert_eq!(
            on_disk, yaml,
            "crds/{file} is stale: run `cargo run -- crdgen` and commit"
        );
        // A stale chart CRD prunes new status fields (and so breaks rollback detection).
        let in_chart = std::fs::read_to_string(chart.join(&file)).unwrap_or_default();
        assert_eq!(
            in_chart, yaml,
            "charts/keyward/files/crds/{file} is stale: run `make crds`"
        );
        expected.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "crds/ holds files the types do not generate"
    );
}

fn example<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn examples_parse_as_the_crd_types() {
    let rp: RotationPolicy = example("rotation-policy.yaml");
    let period = rp.spec.rotation_period.as_deref().unwrap();
    assert_eq!(keyward::duration::parse(period), Ok(90 * 86_400));
    assert!((7..=30).contains(&rp.spec.deletion_window_days));
    let mk: ManagedKey = example("managed-key.yaml");
    assert_eq!(mk.spec.policy_ref.unwrap().name, rp.metadata.name.unwrap());
    assert_eq!(mk.spec.access.service_accounts.len(), 1);
}

/// kubectl applies the committed CRDs to an apiserver without a warning: a real one warns
/// about every `format` it does not recognise (schemars' `uint32`, for one), on every apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crds_without_warnings() {
    let server = kube_test_apiserver::TestApiServer::start().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["apply", "--server-side", "-f"])
            .arg(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply failed: {stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("serverside-applied").count(), 2, "{stdout}");
}
