//! `keyward kms-plugin` end to end: the real binary on a unix socket, the AWS KMS backend
//! against moto, and an independent client (Python grpcio, stubs generated from
//! proto/kms_v2.proto) calling it as kube-apiserver does: Status, Encrypt, Decrypt, tampering,
//! a KEK rotation by `keyward kek rotate` from another process, and the backend going away.

mod fixture;

use fixture::kek::*;
use fixture::python;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Plugin {
    child: Child,
    socket: PathBuf,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_flags(moto: &Moto, arn: &str) -> Vec<String> {
    [
        "--kek-backend",
        "awskms",
        "--aws-kms-key-id",
        arn,
        "--aws-endpoint-url",
        &moto.url,
        "--aws-region",
        "us-east-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_plugin(dir: &Path, flags: &[String]) -> Plugin {
    let socket = dir.join("kms.sock");
    let log = std::fs::File::create(dir.join("plugin.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("kms-plugin")
        .arg("--socket")
        .arg(&socket)
        .args(["--health-ok-seconds", "0", "--health-error-seconds", "0"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut p = Plugin { child, socket };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.socket.exists() {
        if let Some(st) = p.child.try_wait().unwrap() {
            panic!(
                "kms-plugin exited ({st}): {}",
                std::fs::read_to_string(dir.join("plugin.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "kms-plugin did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// One call through the Python client; `Err` carries the gRPC code name and details.
fn call(p: &Plugin, args: &[&str], stdin: Option<&Value>) -> Result<Value, (String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(python());
    cmd.arg(format!("{root}/tests/py/kms_client.py"))
        .arg("--socket")
        .arg(&p.socket)
        .arg("--proto-dir")
        .arg(format!("{root}/proto"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut w = child.stdin.take().unwrap();
        if let Some(v) = stdin {
            w.write_all(v.to_string().as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {text:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match out.status.code() {
        Some(0) => Ok(v),
        Some(3) => Err((
            v["error"].as_str().unwrap_or_default().to_string(),
            v["details"].as_str().unwrap_or_default().to_string(),
        )),
        c => panic!(
            "client exit {c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_view_status_round_trip_tamper_rotation_and_outage() {
    let mut moto = Moto::start();
    let arn = moto.create_key().await;
    let dir = tempfile::Builder::new()
        .prefix("keyward-kms-test")
        .tempdir()
        .unwrap();
    let flags = aws_flags(&moto, &arn);
    let p = start_plugin(dir.path(), &flags);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the apiserver's user may dial the socket");
    }

    let st = call(&p, &["status"], None).unwrap();
    assert_eq!(st["version"], "v2");
    assert_eq!(st["healthz"], "ok");
    let key_id_1 = format!("keyward:awskms/{arn}@1");
    assert_eq!(st["key_id"], json!(key_id_1));

    // The apiserver's seed: 32 bytes.
    let seed = "5eed".repeat(16);
    let e = call(&p, &["encrypt", "--plaintext-hex", &seed], None).unwrap();
    assert_eq!(e["key_id"], json!(key_id_1), "Encrypt and Status agree");
    let ct = unb64(&e["ciphertext"]);
    assert!(
        ct.len() <= 1024,
        "the apiserver stores at most 1 kB: {}",
        ct.len()
    );
    assert_eq!(
        e["annotations"],
        json!({"version.kms.keyward.io": b64(b"1")})
    );
    let d = call(&p, &["decrypt"], Some(&e)).unwrap();
    assert_eq!(d["plaintext_hex"], json!(seed));

    // Tampering: a ciphertext byte, the key id, an annotation.
    let mut bad = e.clone();
    let mut c2 = ct.clone();
    let last = c2.len() - 1;
    c2[last] ^= 1;
    bad["ciphertext"] = json!(b64(&c2));
    let (code, details) = call(&p, &["decrypt"], Some(&bad)).unwrap_err();
    assert_eq!(code, "INVALID_ARGUMENT", "{details}");
    assert!(details.contains("does not authenticate"), "{details}");
    let mut bad = e.clone();
    bad["key_id"] = json!(format!("keyward:awskms/{arn}@2"));
    assert_eq!(
        call(&p, &["decrypt"], Some(&bad)).unwrap_err().0,
        "INVALID_ARGUMENT"
    );
    let mut bad = e.clone();
    bad["annotations"]["version.kms.keyward.io"] = json!(b64(b"2"));
    assert_eq!(
        call(&p, &["decrypt"], Some(&bad)).unwrap_err().0,
        "INVALID_ARGUMENT"
    );
    let mut bad = e.clone();
    bad["annotations"]["Not A Domain"] = json!(b64(b"x"));
    let (code, details) = call(&p, &["decrypt"], Some(&bad)).unwrap_err();
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(details.starts_with("annotations:"), "{details}");

    // A KEK rotation by another process: Status shows the new key id, new ciphertexts use it,
    // the old one still decrypts.
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["kek", "rotate"])
        .args(&flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_id_2 = format!("keyward:awskms/{arn}@2");
    assert_eq!(
        call(&p, &["status"], None).unwrap()["key_id"],
        json!(key_id_2)
    );
    let e2 = call(&p, &["encrypt", "--plaintext-hex", &seed], None).unwrap();
    assert_eq!(e2["key_id"], json!(key_id_2));
    assert_eq!(
        call(&p, &["decrypt"], Some(&e2)).unwrap()["plaintext_hex"],
        json!(seed)
    );
    assert_eq!(
        call(&p, &["decrypt"], Some(&e)).unwrap()["plaintext_hex"],
        json!(seed)
    );

    // The backend goes away: Status is unhealthy and names it, Encrypt fails cleanly.
    moto.stop();
    let st = call(&p, &["status"], None).unwrap();
    let h = st["healthz"].as_str().unwrap();
    assert!(h.starts_with("keyward KEK backend unhealthy: "), "{h}");
    assert!(h.contains("awskms"), "{h}");
    let (code, _) = call(&p, &["encrypt", "--plaintext-hex", &seed], None).unwrap_err();
    assert_eq!(code, "UNAVAILABLE");
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(!log.contains(&seed), "the seed must never be logged");
}

#[test]
fn the_in_cluster_secret_backend_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["kms-plugin", "--kek-backend", "local", "--socket"])
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--local-kek-file"), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "nothing served");
}
