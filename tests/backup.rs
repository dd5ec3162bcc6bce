//! Disaster recovery on two test API servers: keys made and rotated in cluster A, Mounted,
//! backed up with `keyward backup`; the file is refused when edited, cut or opened with
//! another KEK; a restore that would overwrite another key is refused until asked; a dry run
//! writes nothing; `keyward restore` into cluster B then recreates everything, a second run
//! changes nothing, and a stack started on B serves the same bytes under the same object
//! versions, with the restore audited.

mod fixture;

use base64::Engine;
use fixture::CONTROLLER_NS;
use fixture::stack::{Stack, VERSION_KEY_SECRET};
use k8s_openapi::api::core::v1::Secret;
use keyward::backup::{self, BackupError, Location, RestoreOptions};
use keyward::controller::SystemClock;
use keyward::crd::{ManagedKey, ROTATE_NOW_ANNOTATION, RotationPolicy};
use keyward::kek::Keyring;
use keyward::kek::config::KekArgs;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube_test_apiserver::TestApiServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The driver stand-in's default pod.
const POD_UID: &str = "00000000-0000-0000-0000-000000000001";
const OBJECTS: &str = "- key: db\n  fileName: current\n- key: db\n  version: previous\n  fileName: previous\n- key: jwt\n  format: jwks\n  fileName: jwks\n";

fn loc() -> Location {
    Location {
        namespace: CONTROLLER_NS.into(),
        version_key_secret: VERSION_KEY_SECRET.into(),
    }
}

async fn keyring_from(file: &Path) -> Keyring {
    let args = KekArgs {
        local_kek_file: Some(file.into()),
        ..KekArgs::default()
    };
    keyward::kek::config::build_keyring(&args, None, CONTROLLER_NS)
        .await
        .unwrap()
}

fn root_key_file(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let key: [u8; 32] = rand::random();
    std::fs::write(&p, hex::encode(key)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Run the `keyward` binary against `server` (its admin kubeconfig); (success, stdout, stderr).
fn keyward(server: &TestApiServer, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .env("KUBECONFIG", server.kubeconfig_path())
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn wait_key(keys: &Api<ManagedKey>, name: &str, what: &str, f: impl Fn(&ManagedKey) -> bool) {
    let mut last = None;
    for _ in 0..400 {
        last = keys.get_opt(name).await.unwrap();
        if last.as_ref().is_some_and(&f) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{name}: {what} not reached; last status {:?}",
        last.map(|k| k.status)
    );
}

fn versions(k: &ManagedKey) -> Vec<(u32, String)> {
    k.status
        .as_ref()
        .map(|s| {
            s.versions
                .iter()
                .map(|v| (v.version, format!("{:?}/{}", v.state, v.fingerprint)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a pod receives: files by path, and the object versions the driver records.
fn mount(stack: &Stack) -> (BTreeMap<String, Vec<u8>>, serde_json::Value) {
    let r = stack.mount("default", "app", "app-token", OBJECTS);
    assert_eq!(r["ok"], true, "Mount refused: {r}");
    let files = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                base64::engine::general_purpose::STANDARD
                    .decode(f["contents_b64"].as_str().unwrap())
                    .unwrap(),
            )
        })
        .collect();
    (files, r["object_version"].clone())
}

/// Every object of the kinds a restore writes, by kind/namespace/name with its
/// resourceVersion: equal snapshots mean nothing was written.
fn snapshot(server: &TestApiServer) -> Vec<String> {
    let mut v: Vec<String> = server
        .snapshot()
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("ManagedKey" | "RotationPolicy" | "Secret" | "Namespace")
            )
        })
        .map(|o| {
            format!(
                "{}/{}/{}@{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or(""),
                o["metadata"]["resourceVersion"].as_str().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_another_cluster_with_the_same_bytes_and_object_versions() {
    let dir = tempfile::tempdir().unwrap();
    let kek_file = root_key_file(dir.path(), "root.key");
    let kek_flag = kek_file.to_str().unwrap();
    let keyring = keyring_from(&kek_file).await;

    // Cluster A: a policy, an AES key rotated once, a signing key, and a deleted key whose
    // material is inside its deletion window.
    let (server_a, client_a) = fixture::cluster().await;
    let a = Stack::start_on(
        server_a,
        client_a.clone(),
        keyring.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(2),
    )
    .await;
    a.add_pod_token("app-token", "default", "app", "demo-pod", POD_UID);
    let pp = PatchParams::apply("test").force();
    Api::<RotationPolicy>::namespaced(client_a.clone(), "default")
        .patch(
            "weekly",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy",
                "metadata": {"name": "weekly"},
                "spec": {"rotationPeriod": "7d", "gracePeriod": "1d", "deletionWindowDays": 7}
            })),
        )
        .await
        .unwrap();
    let keys_a: Api<ManagedKey> = Api::namespaced(client_a.clone(), "default");
    for (name, algorithm) in [("db", "aes-256"), ("jwt", "ecdsa-p256"), ("old", "aes-256")] {
        keys_a
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                    "metadata": {"name": name},
                    "spec": {"algorithm": algorithm, "policyRef": {"name": "weekly"},
                             "access": {"serviceAccounts": [{"namespace": "default", "name": "app"}]}}
                })),
            )
            .await
            .unwrap();
        wait_key(&keys_a, name, "version 1", |k| {
            k.status.as_ref().and_then(|s| s.current_version) == Some(1)
        })
        .await;
    }
    keys_a
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {ROTATE_NOW_ANNOTATION: "dr-1"}}}),
            ),
        )
        .await
        .unwrap();
    wait_key(&keys_a, "db", "version 2", |k| {
        k.status.as_ref().and_then(|s| s.current_version) == Some(2)
    })
    .await;
    let old_uid = keys_a.get("old").await.unwrap().uid().unwrap();
    keys_a.delete("old", &Default::default()).await.unwrap();
    for _ in 0..200 {
        if keys_a.get_opt("old").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        keys_a.get_opt("old").await.unwrap().is_none(),
        "old not deleted"
    );
    let (files_a, versions_a) = mount(&a);
    assert_eq!(
        files_a.keys().map(String::as_str).collect::<Vec<_>>(),
        ["current", "jwks", "previous"]
    );
    assert_ne!(files_a["current"], files_a["previous"], "db was rotated");
    let status_a: Vec<_> = [
        keys_a.get("db").await.unwrap(),
        keys_a.get("jwt").await.unwrap(),
    ]
    .iter()
    .map(versions)
    .collect();

    // Backup with the CLI: an owner-only file.
    let file = dir.path().join("cluster-a.backup");
    let (ok, _, err) = keyward(
        &a.server,
        &[
            "backup",
            "-o",
            file.to_str().unwrap(),
            "--local-kek-file",
            kek_flag,
        ],
    );
    assert!(ok, "keyward backup failed: {err}");
    print!("{err}");
    assert!(
        err.contains("backup of 2 ManagedKeys, 1 RotationPolicies and 3 storage objects"),
        "{err}"
    );
    assert!(
        err.contains("local/file@1"),
        "says which KEK it needs: {err}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let bytes = std::fs::read(&file).unwrap();
    // No key material in the clear: the bytes a pod received do not appear, in any encoding.
    let text = String::from_utf8_lossy(&bytes);
    for b in [&files_a["current"], &files_a["previous"]] {
        assert!(!text.contains(&hex::encode(b)));
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(b)));
    }

    // Cluster B, with no controller yet. A ManagedKey `db` that is another key is there.
    let (server_b, client_b) = fixture::cluster().await;
    let keys_b: Api<ManagedKey> = Api::namespaced(client_b.clone(), "default");
    keys_b
        .patch(
            "db",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": "db"}, "spec": {"algorithm": "hmac-sha256"}
            })),
        )
        .await
        .unwrap();
    let opts = RestoreOptions {
        delete_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let refused = |r: Result<backup::RestoreReport, BackupError>| match r {
        Ok(rep) => panic!("restore accepted: {rep:?}"),
        Err(e) => e,
    };
    // An object-version key of B's own (a controller started there first): refused, since
    // every object version would change; then removed, as the runbook says.
    let secrets_b: Api<Secret> = Api::namespaced(client_b.clone(), CONTROLLER_NS);
    keyward::keyservice::VersionIdKey::load_or_create(
        &secrets_b,
        CONTROLLER_NS,
        VERSION_KEY_SECRET,
        &keyring,
    )
    .await
    .unwrap();
    let e = refused(backup::restore(&client_b, &keyring, &loc(), &bytes, &opts, &|_| {}).await);
    assert!(
        e.to_string().contains("another object-version key")
            && e.to_string().contains("--keep-object-version-key"),
        "{e}"
    );
    secrets_b
        .delete(VERSION_KEY_SECRET, &Default::default())
        .await
        .unwrap();
    let before = snapshot(&server_b);
    // Another key of the same name: refused, naming it and the flag.
    let e = refused(backup::restore(&client_b, &keyring, &loc(), &bytes, &opts, &|_| {}).await);
    let msg = e.to_string();
    assert!(matches!(e, BackupError::Conflict(_)), "{msg}");
    assert!(
        msg.contains("ManagedKey default/db") && msg.contains("--overwrite"),
        "{msg}"
    );
    assert!(msg.contains("nothing was written"), "{msg}");
    // Edited, cut, or opened under another KEK: refused.
    let mut edited = bytes.clone();
    let at = text.find("aes-256").unwrap();
    edited[at + 4] = b'1'; // aes-156: still valid JSON, different body
    let e = refused(backup::restore(&client_b, &keyring, &loc(), &edited, &opts, &|_| {}).await);
    assert!(e.to_string().contains("MAC does not match"), "{e}");
    let cut = &bytes[..bytes.len() * 2 / 3];
    let e = refused(backup::restore(&client_b, &keyring, &loc(), cut, &opts, &|_| {}).await);
    assert!(matches!(e, BackupError::File(_)), "{e}");
    let other = keyring_from(&root_key_file(dir.path(), "other.key")).await;
    let e = refused(backup::restore(&client_b, &other, &loc(), &bytes, &opts, &|_| {}).await);
    assert!(matches!(e, BackupError::Kek { .. }), "{e}");
    assert!(e.to_string().contains("local/file@1"), "{e}");
    // A dry run of the overwrite (CLI): says what it would do, writes nothing.
    let (ok, out, err) = keyward(
        &server_b,
        &[
            "restore",
            file.to_str().unwrap(),
            "--dry-run",
            "--overwrite",
            "--local-kek-file",
            kek_flag,
        ],
    );
    assert!(ok, "dry run failed: {err}");
    assert!(out.contains("dry run, nothing written"), "{out}");
    assert!(out.contains("ManagedKeys: 2 created"), "{out}");
    assert!(
        out.contains("default/db"),
        "names the key it would replace: {out}"
    );
    assert_eq!(
        snapshot(&server_b),
        before,
        "a refused or dry-run restore wrote"
    );

    // The restore (CLI), replacing the other `db`, then once more: nothing new.
    let restore_args = [
        "restore",
        file.to_str().unwrap(),
        "--overwrite",
        "--local-kek-file",
        kek_flag,
    ];
    let (ok, out, err) = keyward(&server_b, &restore_args);
    assert!(ok, "restore failed: {err}");
    assert!(
        out.contains("ManagedKeys: 2 created, 0 already there"),
        "{out}"
    );
    assert!(out.contains("storage: 3 written"), "{out}");
    // Without the KEK flags the local backend would read its root-key Secret, which a new
    // cluster lacks: refused, and none is created.
    let written = snapshot(&server_b);
    let (ok, _, err) = keyward(&server_b, &restore_args[..2]);
    assert!(!ok);
    assert!(
        err.contains("keyward-system/keyward-root-key") && err.contains("Nothing was written"),
        "{err}"
    );
    assert_eq!(snapshot(&server_b), written);
    let (ok, out, err) = keyward(
        &server_b,
        &[
            "restore",
            file.to_str().unwrap(),
            "--local-kek-file",
            kek_flag,
        ],
    );
    assert!(ok, "second restore failed: {err}");
    assert!(
        out.contains("ManagedKeys: 0 created, 2 already there"),
        "{out}"
    );
    assert!(out.contains("storage: 0 written, 3 already there"), "{out}");
    assert!(out.contains("1 unchanged"), "{out}");

    // The controller and key service on B take over: same versions, states, fingerprints,
    // bytes and object versions.
    let b = Stack::start_on(
        server_b,
        client_b.clone(),
        keyring.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(2),
    )
    .await;
    b.add_pod_token("app-token", "default", "app", "demo-pod", POD_UID);
    for (name, want) in ["db", "jwt"].iter().zip(&status_a) {
        wait_key(&keys_b, name, "the restored versions", |k| {
            &versions(k) == want
        })
        .await;
    }
    let (files_b, versions_b) = mount(&b);
    println!("restored: {status_a:?}; object versions {versions_b}");
    assert_eq!(files_b, files_a, "restored keys serve other bytes");
    assert_eq!(versions_b, versions_a, "object versions changed");
    // The deleted key's material is still held for its window in B, restorable there.
    assert!(
        secrets_b
            .get_opt(&keyward::storage::secret_name(&old_uid))
            .await
            .unwrap()
            .is_some()
    );
    // Audited by the controller that took the versions over.
    let audit = std::fs::read_to_string(&b.controller_audit).unwrap();
    assert_eq!(
        audit.matches("\"restore\"").count(),
        2,
        "one restore record per key: {audit}"
    );
    let listed = secrets_b
        .list(&ListParams::default().labels(&keyward::storage::label_selector()))
        .await
        .unwrap();
    assert_eq!(
        listed.items.len(),
        3,
        "the copies under the old UIDs are gone"
    );
}
