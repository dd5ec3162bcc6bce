//! The examples a user copies must work as written. The CSI driver writes mounted files as
//! root:root with the mode keyward returns, and kubelet does not apply `fsGroup` to read-only
//! CSI volumes (secrets-store-csi-driver#858; kubelet `csi_mounter.go` `supportsFSGroup`), so a
//! mode without the "other" read bit is unreadable to a non-root container. This test reads
//! every example Pod, finds the SecretProviderClass each CSI volume names, parses its `objects`
//! with the provider's own parser, and checks each container's user can read every file.

use keyward::provider::params::{DEFAULT_MODE, parse_objects};
use serde_yaml_ng::Value;
use std::path::PathBuf;

fn docs() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(d).unwrap();
            if !v.is_null() {
                out.push((path.display().to_string(), v));
            }
        }
    }
    out
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// Can a process with this uid and these groups read a root:root file of this mode?
fn readable(mode: u32, uid: u64, groups: &[u64]) -> bool {
    uid == 0 || mode & 0o004 != 0 || (mode & 0o040 != 0 && groups.contains(&0))
}

#[test]
fn example_pods_can_read_what_their_secret_provider_class_mounts() {
    let all = docs();
    let spc = |ns: &str, name: &str| {
        all.iter().find(|(_, d)| {
            s(d, &["kind"]).and_then(Value::as_str) == Some("SecretProviderClass")
                && s(d, &["metadata", "name"]).and_then(Value::as_str) == Some(name)
                && s(d, &["metadata", "namespace"]).and_then(Value::as_str) == Some(ns)
        })
    };
    let mut checked = 0;
    for (file, pod) in all
        .iter()
        .filter(|(_, d)| s(d, &["kind"]).and_then(Value::as_str) == Some("Pod"))
    {
        let ns = s(pod, &["metadata", "namespace"])
            .and_then(Value::as_str)
            .unwrap_or("default");
        let pod_sc = s(pod, &["spec", "securityContext"]);
        let volumes = s(pod, &["spec", "volumes"])
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for vol in &volumes {
            let Some(class) =
                s(vol, &["csi", "volumeAttributes", "secretProviderClass"]).and_then(Value::as_str)
            else {
                continue;
            };
            let (spc_file, spc_doc) = spc(ns, class).unwrap_or_else(|| {
                panic!("{file}: SecretProviderClass {ns}/{class} is not among the examples")
            });
            let objects = s(spc_doc, &["spec", "parameters", "objects"])
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{spc_file}: {class} has no objects parameter"));
            let objects = parse_objects(objects, DEFAULT_MODE)
                .unwrap_or_else(|e| panic!("{spc_file}: the provider refuses {class}: {e}"));
            let vol_name = s(vol, &["name"]).and_then(Value::as_str).unwrap_or("");
            for c in s(pod, &["spec", "containers"])
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let mounts_it = s(c, &["volumeMounts"])
                    .and_then(Value::as_sequence)
                    .is_some_and(|ms| {
                        ms.iter()
                            .any(|m| s(m, &["name"]).and_then(Value::as_str) == Some(vol_name))
                    });
                if !mounts_it {
                    continue;
                }
                let field = |k: &str| {
                    s(c, &["securityContext", k])
                        .or_else(|| pod_sc.and_then(|p| p.get(k)))
                        .and_then(Value::as_u64)
                };
                // No runAsUser: the image decides; assume non-root when runAsNonRoot says so.
                let non_root = s(c, &["securityContext", "runAsNonRoot"])
                    .or_else(|| pod_sc.and_then(|p| p.get("runAsNonRoot")))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let uid = field("runAsUser").unwrap_or(if non_root { 65534 } else { 0 });
                let mut groups: Vec<u64> = field("runAsGroup").into_iter().collect();
                groups.extend(
                    pod_sc
                        .and_then(|p| p.get("supplementalGroups"))
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64),
                );
                // fsGroup is deliberately ignored: kubelet does not apply it to these volumes.
                for o in &objects {
                    assert!(
                        readable(o.mode, uid, &groups),
                        "{spc_file}: object {:?} mode {:04o} is unreadable to container {:?} of {file} (uid {uid}, groups {groups:?}); the driver writes files as root:root and fsGroup does not apply: use 0644 or 0444",
                        o.key,
                        o.mode,
                        s(c, &["name"]).and_then(Value::as_str).unwrap_or("?"),
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "no example pod mounts a keyward volume");
    println!("examples: {checked} (container, file) pairs readable");
}

#[test]
fn the_readability_rule_matches_unix_permissions() {
    assert!(readable(0o644, 1000, &[1000]));
    assert!(readable(0o444, 1000, &[]));
    assert!(!readable(0o400, 1000, &[1000]));
    assert!(!readable(0o440, 1000, &[1000]));
    assert!(readable(0o440, 1000, &[0]));
    assert!(readable(0o400, 0, &[]));
}
