//! What the crate's integration tests share: running the real `kubectl` against a server.
#![allow(dead_code)]

use kube_test_apiserver::TestApiServer;
use std::io::Write;
use std::process::{Command, Stdio};

/// `kubectl --kubeconfig <admin> ARGS` with optional stdin: (success, stdout, stderr).
pub fn kubectl_io(s: &TestApiServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl installed");
    let input = child.stdin.take();
    if let (Some(text), Some(mut pipe)) = (stdin, input) {
        pipe.write_all(text.as_bytes())
            .expect("write kubectl stdin");
    }
    let o = child.wait_with_output().expect("kubectl runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `kubectl --kubeconfig <admin> ARGS`: (success, stdout followed by stderr).
pub fn kubectl(s: &TestApiServer, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = kubectl_io(s, args, None);
    (ok, out + &err)
}
