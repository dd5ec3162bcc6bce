//! The committed CRDs match the Rust types, and the examples parse against them.

use keyward::crd::{ManagedKey, RotationPolicy, crds_yaml};
use std::path::Path;

#[test]
fn crds_directory_matches_generated_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keyward/crds");
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
            "charts/keyward/crds/{file} is stale: copy crds/{file} there"
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
