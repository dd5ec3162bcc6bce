//! Conformance with an independent client: Python grpcio, code generated from our .proto at
//! test time, calling over the real unix socket exactly as the Secrets Store CSI Driver does.

mod common;
mod fixture;

use common::*;
use keyward::lifecycle::KeyState::*;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_mounts_like_the_driver() {
    let py = fixture::python();
    let e = Env::start(Duration::from_secs(10)).await;
    e.add_token("tok", NS, SA, "web-0", &["keyward"], 3600);
    e.put_key(
        NS,
        "db",
        &[(NS, SA)],
        KeyBuilder::default().with(Deactivated, 30).with(Active, 30),
    )
    .await;
    e.put_key(
        NS,
        "jwt",
        &[(NS, SA)],
        KeyBuilder::default().with(Active, 30),
    )
    .await;
    let objects = "- key: db\n  version: all\n  fileName: db.key\n- key: jwt\n  format: hex\n  mode: \"0400\"\n";
    let m = |k, v| material(NS, k, v);
    let case = serde_json::json!({
        "attributes": attrs(NS, SA, "web-0", Some("tok"), objects),
        "expect_files": [
            {"path": "db.key.v1", "mode": 0o644, "contents_hex": hex::encode(m("db", 1))},
            {"path": "db.key.v2", "mode": 0o644, "contents_hex": hex::encode(m("db", 2))},
            {"path": "db.key", "mode": 0o644, "contents_hex": hex::encode(m("db", 2))},
            {"path": "jwt", "mode": 0o400, "contents_hex": hex::encode(hex::encode(m("jwt", 1)))},
        ],
        "bad_attributes": attrs(NS, SA, "web-0", Some("tok"), "- key: nope"),
        "bad_code": "NOT_FOUND",
        "bad_message": "ManagedKey team-a/nope not found",
    });
    let case_path = e.dir.path().join("case.json");
    std::fs::write(&case_path, case.to_string()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(py)
        .arg(root.join("tests/py/conformance.py"))
        .arg(&e.socket)
        .arg(root.join("proto"))
        .arg(&case_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python conformance failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("conformance: all checks passed"),
        "{stdout}"
    );
    let checks = stdout.matches("\nok: ").count();
    assert!(checks >= 30, "only {checks} checks ran\n{stdout}");
    println!("driver stand-in conformance: {checks} checks passed");
}
