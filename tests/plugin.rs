//! `kubectl keyward ...` as users run it: kubectl finds the binary as `kubectl-keyward` on PATH
//! and runs it with the kubeconfig of the test API server, while the real controller, key
//! service and provider run (fixture::stack). Each command's effect is checked through the API
//! and, where it makes a claim about serving (`can-mount`, `jwks`, `suspend`), against a real
//! Mount through the driver stand-in, so the plugin cannot disagree with the key service.

mod fixture;

use fixture::stack::Stack;
use keyward::controller::SystemClock;
use keyward::crd::ManagedKey;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kubectl keyward ARGS` with the plugin on PATH and the server's kubeconfig.
async fn kubectl_keyward(stack: &Stack, bin_dir: &Path, args: &[&str]) -> Out {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubeconfig = stack.server.kubeconfig_path().to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new("kubectl")
            .arg("keyward")
            .args(&args)
            .env("PATH", path)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

async fn wait(
    keys: &Api<ManagedKey>,
    name: &str,
    what: &str,
    f: impl Fn(&ManagedKey) -> bool,
) -> ManagedKey {
    for _ in 0..400 {
        if let Some(k) = keys.get_opt(name).await.unwrap()
            && f(&k)
        {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn current(k: &ManagedKey) -> u32 {
    k.status
        .as_ref()
        .and_then(|s| s.current_version)
        .unwrap_or(0)
}

async fn apply_key(client: &kube::Client, name: &str, algorithm: &str) {
    Api::<ManagedKey>::namespaced(client.clone(), "default")
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": name},
                "spec": {"algorithm": algorithm,
                         "access": {"serviceAccounts": [{"namespace": "default", "name": "payments"}]}}
            })),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_keyward_commands_against_the_running_stack() {
    let stack = Stack::start(Arc::new(SystemClock), Duration::from_secs(2)).await;
    stack.add_pod_token(
        "pod-token",
        "default",
        "payments",
        "demo-pod",
        "00000000-0000-0000-0000-000000000001",
    );
    let bin_dir = stack.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_keyward"),
        bin_dir.join("kubectl-keyward"),
    )
    .unwrap();
    let keys: Api<ManagedKey> = Api::namespaced(stack.client.clone(), "default");
    apply_key(&stack.client, "payments", "aes-256").await;
    wait(&keys, "payments", "v1", |k| current(k) == 1).await;

    // kubectl get: Ready and the next rotation to the second; -o wide adds the details.
    let kubeconfig = stack.server.kubeconfig_path().to_path_buf();
    let get = |wide: bool| {
        let mut c = std::process::Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "mk", "payments"]);
        if wide {
            c.args(["-o", "wide"]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap().to_string();
        let line = lines.next().unwrap().to_string();
        // Cells by the header's column offsets (an empty cell prints as blanks).
        let starts: Vec<usize> = (0..header.len())
            .filter(|&i| {
                header.as_bytes()[i] != b' ' && (i == 0 || header.as_bytes()[i - 1] == b' ')
            })
            .collect();
        let row: Vec<String> = (0..starts.len())
            .map(|k| {
                let from = starts[k].min(line.len());
                let to = starts
                    .get(k + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line[from..to].trim().to_string()
            })
            .collect();
        let head: Vec<String> = header.split_whitespace().map(String::from).collect();
        (head, row)
    };
    let (head, row) = get(false);
    assert_eq!(
        head,
        [
            "NAME",
            "READY",
            "STATE",
            "CURRENT",
            "NEXT-ROTATION",
            "LAST-ROTATION",
            "AGE"
        ]
    );
    assert_eq!(&row[..4], ["payments", "True", "Active", "1"], "{row:?}");
    // No policy: no next rotation; the last rotation (first activation) is an age.
    assert_eq!(row[4], "", "{row:?}");
    assert!(row[5].ends_with('s') && row[5] != "<invalid>", "{row:?}");
    let (head, row) = get(true);
    assert_eq!(
        &head[7..],
        ["ALGORITHM", "NEXT", "VERSIONS", "POLICY", "KEK"],
        "{head:?}"
    );
    assert_eq!(&row[7..11], ["aes-256", "", "1", ""], "{row:?}");
    assert!(row[11].starts_with("local/"), "{row:?}");

    // status
    let s = kubectl_keyward(&stack, &bin_dir, &["status", "payments"]).await;
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(
        s.stdout.contains("ManagedKey default/payments (aes-256"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains("Active (current version 1)"),
        "{}",
        s.stdout
    );
    assert!(s.stdout.contains("  default/payments\n"), "{}", s.stdout);
    let missing = kubectl_keyward(&stack, &bin_dir, &["status", "nope"]).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("ManagedKey default/nope not found"),
        "{}",
        missing.stderr
    );

    // rotate --wait: the controller handles the request and version 2 is current.
    let r = kubectl_keyward(&stack, &bin_dir, &["rotate", "payments", "--wait"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("current version 2"), "{}", r.stdout);
    let k = keys.get("payments").await.unwrap();
    assert_eq!(current(&k), 2);
    assert_eq!(
        k.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.as_deref())
            .filter(|m| *m == "kubectl-keyward")
            .count(),
        1,
        "the plugin's writes carry its field manager"
    );

    // can-mount agrees with a real Mount, both ways.
    let objects = "- key: payments\n  fileName: dek\n";
    let yes = kubectl_keyward(
        &stack,
        &bin_dir,
        &["can-mount", "payments", "--as", "default/payments"],
    )
    .await;
    assert_eq!(yes.code, 0, "{} {}", yes.stdout, yes.stderr);
    assert!(
        yes.stdout.starts_with("yes: ") && yes.stdout.contains("current version 2"),
        "{}",
        yes.stdout
    );
    assert_eq!(
        stack.mount("default", "payments", "pod-token", objects)["ok"],
        true
    );
    stack.add_pod_token(
        "web-token",
        "default",
        "web",
        "demo-pod",
        "00000000-0000-0000-0000-000000000001",
    );
    let no = kubectl_keyward(
        &stack,
        &bin_dir,
        &["can-mount", "payments", "--as", "default/web"],
    )
    .await;
    assert_eq!(no.code, 1);
    assert!(
        no.stdout.contains("add {namespace: default, name: web}"),
        "{}",
        no.stdout
    );
    let refused = stack.mount("default", "web", "web-token", objects);
    assert_eq!(refused["ok"], false);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("add {namespace: default, name: web}"),
        "{refused}"
    );

    // suspend: can-mount says no and the Mount is refused; resume restores both.
    let s = kubectl_keyward(&stack, &bin_dir, &["suspend", "payments"]).await;
    assert_eq!(s.code, 0, "{}", s.stderr);
    wait(&keys, "payments", "suspended", |k| {
        k.status.as_ref().and_then(|s| s.current_version).is_none()
            || k.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Suspended")
    })
    .await;
    let no = kubectl_keyward(
        &stack,
        &bin_dir,
        &["can-mount", "payments", "--as", "default/payments"],
    )
    .await;
    assert_eq!(no.code, 1, "{}", no.stdout);
    assert_eq!(
        stack.mount("default", "payments", "pod-token", objects)["ok"],
        false
    );
    assert_eq!(
        kubectl_keyward(&stack, &bin_dir, &["resume", "payments"])
            .await
            .code,
        0
    );
    wait(&keys, "payments", "resumed", |k| {
        k.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Active")
    })
    .await;
    assert_eq!(
        stack.mount("default", "payments", "pod-token", objects)["ok"],
        true
    );

    // compromise needs --yes; with it the key rotates and the old version is Compromised.
    let c = kubectl_keyward(&stack, &bin_dir, &["compromise", "payments"]).await;
    assert_eq!(c.code, 2);
    assert!(
        c.stderr.contains("irreversible") && c.stderr.contains("--yes"),
        "{}",
        c.stderr
    );
    assert_eq!(
        keys.get("payments").await.unwrap().spec.desired_state,
        keyward::crd::DesiredState::Active
    );
    // jwks of a symmetric key is refused with the reason.
    let j = kubectl_keyward(&stack, &bin_dir, &["jwks", "payments"]).await;
    assert_eq!(j.code, 2);
    assert!(j.stderr.contains("symmetric"), "{}", j.stderr);

    // jwks of an ECDSA key equals what a pod mounts as `format: jwks`.
    apply_key(&stack.client, "signer", "ecdsa-p256").await;
    wait(&keys, "signer", "v1", |k| current(k) == 1).await;
    let j = kubectl_keyward(&stack, &bin_dir, &["jwks", "signer"]).await;
    assert_eq!(j.code, 0, "{}", j.stderr);
    let from_plugin: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let mounted = stack.mount(
        "default",
        "payments",
        "pod-token",
        "- key: signer\n  format: jwks\n  fileName: jwks.json\n",
    );
    assert_eq!(mounted["ok"], true, "{mounted}");
    use base64::Engine;
    let file = mounted["files"][0]["contents_b64"].as_str().unwrap();
    let from_pod: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(file)
            .unwrap(),
    )
    .unwrap();
    let public = |v: &serde_json::Value| -> Vec<(String, String, String)> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["kid"].to_string(), k["x"].to_string(), k["y"].to_string()))
            .collect()
    };
    assert_eq!(
        public(&from_plugin),
        public(&from_pod),
        "plugin {from_plugin} vs mounted {from_pod}"
    );

    let c = kubectl_keyward(&stack, &bin_dir, &["compromise", "payments", "--yes"]).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    let k = wait(&keys, "payments", "rotation after compromise", |k| {
        current(k) == 3
    })
    .await;
    let v2 = k.status.as_ref().unwrap().version(2).unwrap();
    assert_eq!(v2.state, keyward::lifecycle::KeyState::Compromised);
    let r = kubectl_keyward(&stack, &bin_dir, &["resume", "payments"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot be undone"), "{}", r.stderr);

    // restore: delete the ECDSA key, bring it back by UID: the same versions and fingerprints.
    let before = keys.get("signer").await.unwrap();
    let uid = before.uid().unwrap();
    let fingerprints = |k: &ManagedKey| -> Vec<String> {
        k.status
            .as_ref()
            .unwrap()
            .versions
            .iter()
            .map(|v| v.fingerprint.clone())
            .collect()
    };
    keys.delete("signer", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..200 {
        if keys.get_opt("signer").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let manifest = stack.dir.path().join("signer.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: signer}\nspec:\n  algorithm: ecdsa-p256\n  access: {serviceAccounts: [{namespace: default, name: payments}]}\n",
    )
    .unwrap();
    let bad = kubectl_keyward(
        &stack,
        &bin_dir,
        &[
            "restore",
            "signer",
            "--uid",
            "not-a-uid",
            "-f",
            manifest.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("is not a UID"), "{}", bad.stderr);
    let r = kubectl_keyward(
        &stack,
        &bin_dir,
        &[
            "restore",
            "signer",
            "--uid",
            &uid,
            "-f",
            manifest.to_str().unwrap(),
            "--wait",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let after = keys.get("signer").await.unwrap();
    assert_ne!(after.uid().unwrap(), uid);
    assert_eq!(fingerprints(&after), fingerprints(&before));
    let again = kubectl_keyward(
        &stack,
        &bin_dir,
        &[
            "restore",
            "signer",
            "--uid",
            &uid,
            "-f",
            manifest.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("exists"), "{}", again.stderr);
}
