//! The user's story end to end, with real processes: the embedded test API server, `kubectl`,
//! the real `keyward controller` and `keyward provider` binaries, and a Python gRPC client
//! standing in for the Secrets Store CSI Driver. `keyward demo` narrates it; `tests/story.rs`
//! runs it in CI with every check enforced.

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine;
use kube_test_apiserver::{ServerOptions, TestApiServer};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to run the story.
#[derive(Debug, Clone)]
pub struct StoryOptions {
    /// The `keyward` binary to start as controller and provider.
    pub bin: PathBuf,
    /// Python with grpcio (the project's `.venv`).
    pub python: PathBuf,
    /// Repository root (for `crds/`, `examples/`, `proto/`, `tests/py/`).
    pub repo: PathBuf,
    /// Print each step for a watching newcomer.
    pub narrate: bool,
}

/// A child process whose output is kept (last lines) for failure reports.
struct Proc {
    name: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut t = tail.lock().expect("tail lock");
                    if t.len() >= 40 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        Ok(Self {
            name: name.into(),
            child,
            tail,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn report(&self) -> String {
        let t = self.tail.lock().expect("tail lock");
        format!(
            "--- last lines of {} ---\n{}\n",
            self.name,
            t.iter().cloned().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything the story holds while it runs.
struct World {
    opts: StoryOptions,
    server: TestApiServer,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    socket: PathBuf,
    controller_args: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl World {
    fn say(&self, s: &str) {
        if self.opts.narrate {
            println!("\n==> {s}");
        } else {
            eprintln!("story: {s}");
        }
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig_path())
            .args(args)
            .output()
            .context("running kubectl (is it installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    fn show(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args)?;
        if self.opts.narrate {
            println!("$ kubectl {}\n{}", args.join(" "), out.trim_end());
        }
        Ok(out)
    }

    fn key(&self, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.kubectl(&[
            "get", "mk", name, "-n", "default", "-o", "json",
        ])?)?)
    }

    /// Poll until `f` holds for the ManagedKey, or fail with what was seen.
    fn wait_key(
        &self,
        name: &str,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let k = self.key(name).ok();
            if let Some(k) = &k
                && f(k)
            {
                return Ok(k.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {name}: {what}; last status: {}",
                    k.map(|k| k["status"].to_string()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A kubeconfig for the controller's ServiceAccount (a TokenRequest token, as the pod's
    /// projected token), so the controller runs with exactly the chart's RBAC.
    fn controller_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("controller.kubeconfig");
        if path.exists() {
            return Ok(path);
        }
        let token = self.kubectl(&[
            "create",
            "token",
            "keyward-controller",
            "-n",
            "keyward-system",
            "--duration",
            "24h",
        ])?;
        let ca = self.dir.path().join("apiserver-ca.pem");
        std::fs::write(&ca, self.server.ca_pem())?;
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "controller",
            "clusters": [{"name": "test", "cluster": {
                "server": self.server.url(), "certificate-authority": ca}}],
            "users": [{"name": "keyward-controller", "user": {"token": token.trim()}}],
            "contexts": [{"name": "controller", "context": {
                "cluster": "test", "user": "keyward-controller", "namespace": "keyward-system"}}],
        });
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        Ok(path)
    }

    fn start_controller(&mut self) -> anyhow::Result<()> {
        let kubeconfig = self.controller_kubeconfig()?;
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("controller")
            .args(&self.controller_args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        self.procs.push(Proc::spawn("controller", cmd)?);
        Ok(())
    }

    fn token(&self, sa: &str) -> anyhow::Result<String> {
        Ok(self
            .kubectl(&[
                "create",
                "token",
                sa,
                "-n",
                "default",
                "--audience",
                "keyward",
            ])?
            .trim()
            .to_string())
    }

    /// One pod's first mount through the driver stand-in (tests/py/csi_driver.py, which builds
    /// the request and writes the files as Secrets Store CSI Driver v1.6.0 does). A fresh
    /// target directory per call: each call is a new pod volume.
    fn mount(&self, sa: &str, token: &str, objects: &str) -> anyhow::Result<Value> {
        static MOUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let target = self.dir.path().join("volumes").join(format!("{n}-{sa}"));
        let out = Command::new(&self.opts.python)
            .arg(self.opts.repo.join("tests/py/csi_driver.py"))
            .arg("mount")
            .arg("--target")
            .arg(target.join("mount"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--proto-dir")
            .arg(self.opts.repo.join("proto"))
            .arg("--stub-dir")
            .arg(self.dir.path().join("stubs"))
            .args([
                "--service-account",
                sa,
                "--token",
                token,
                "--objects",
                objects,
            ])
            .output()
            .with_context(|| {
                format!(
                    "running {} (run tests/setup.sh to create the venv)",
                    self.opts.python.display()
                )
            })?;
        ensure!(
            out.status.success(),
            "driver stand-in failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn python(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.opts.python)
            .current_dir(&self.opts.repo)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "python {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn report(&self) -> String {
        self.procs.iter().map(Proc::report).collect()
    }
}

fn file_bytes(mount: &Value, path: &str) -> anyhow::Result<Vec<u8>> {
    let f = mount["files"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["path"] == path))
        .ok_or_else(|| anyhow!("no file {path} in {mount}"))?;
    Ok(base64::engine::general_purpose::STANDARD
        .decode(f["contents_b64"].as_str().unwrap_or_default())?)
}

/// keyward's published fingerprint, recomputed here from the mounted bytes as a user would
/// (docs/crypto.md): SHA-256 over the domain tag `keyward-fingerprint-v1\0` and the material,
/// first 16 bytes in hex. An independent re-implementation, so a drift in either fails the story.
fn fp(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"keyward-fingerprint-v1\0");
    h.update(bytes);
    format!("sha256:{}", hex::encode(&h.finalize()[..16]))
}

fn version_fp(k: &Value, v: u64) -> String {
    k["status"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["version"] == v))
        .map(|x| x["fingerprint"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn current(k: &Value) -> u64 {
    k["status"]["currentVersion"].as_u64().unwrap_or(0)
}

/// Run the story; on failure the error carries every process's last lines.
pub async fn run(opts: StoryOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestApiServer::start_with(ServerOptions {
        kubeconfig: Some(dir.path().join("kubeconfig")),
        ..Default::default()
    })
    .await?;
    let mut w = World {
        socket: dir.path().join("keyward.sock"),
        opts,
        server,
        dir,
        procs: Vec::new(),
        controller_args: Vec::new(),
    };
    let r = steps(&mut w).await;
    if let Err(e) = r {
        let report = w.report();
        return Err(e.context(report));
    }
    Ok(())
}

async fn steps(w: &mut World) -> anyhow::Result<()> {
    let repo = w.opts.repo.clone();
    w.say(&format!(
        "test API server on {} (kubeconfig {})",
        w.server.url(),
        w.server.kubeconfig_path().display()
    ));
    w.say("install keyward's CRDs and a namespace for the controller");
    w.show(&["apply", "-f", &repo.join("crds").to_string_lossy()])?;
    w.show(&["create", "namespace", "keyward-system"])?;
    w.say("install the chart's ServiceAccounts and RBAC (what `helm install` creates)");
    let rbac = w.python(&["tests/py/render_rbac.py", "keyward-system"])?;
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List",
        "items": serde_json::from_str::<Value>(&rbac)?});
    let rbac_file = w.dir.path().join("rbac.json");
    std::fs::write(&rbac_file, serde_json::to_vec(&list)?)?;
    w.show(&["apply", "-f", &rbac_file.to_string_lossy()])?;
    w.show(&["create", "serviceaccount", "payments", "-n", "default"])?;
    w.show(&["create", "serviceaccount", "intruder", "-n", "default"])?;

    // TLS for the key service: a throwaway CA and a server certificate for localhost.
    let tls = write_tls(w.dir.path())?;
    let ks_port = free_port();
    let metrics_port = free_port();
    let provider_metrics_port = free_port();
    w.controller_args = vec![
        "--namespace".into(),
        "keyward-system".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
        "--lease-seconds".into(),
        "3".into(),
        "--max-requeue-seconds".into(),
        "2".into(),
        "--key-service-listen".into(),
        format!("127.0.0.1:{ks_port}"),
        "--key-service-tls-cert-file".into(),
        tls.cert.to_string_lossy().into_owned(),
        "--key-service-tls-key-file".into(),
        tls.key.to_string_lossy().into_owned(),
        "--key-service-namespace".into(),
        "keyward-system".into(),
        "--audit-log".into(),
        w.dir
            .path()
            .join("audit.log")
            .to_string_lossy()
            .into_owned(),
    ];
    w.say(
        "start the real controller as its ServiceAccount (embeds the key service, TLS on loopback)",
    );
    w.start_controller()?;

    let provider_token = w.kubectl(&[
        "create",
        "token",
        "keyward-csi-provider",
        "-n",
        "keyward-system",
    ])?;
    let token_file = w.dir.path().join("provider-token");
    std::fs::write(&token_file, provider_token.trim())?;
    w.say("start the real CSI provider on a unix socket (it holds no KEK)");
    let mut cmd = Command::new(&w.opts.bin);
    cmd.arg("provider")
        .arg("--socket")
        .arg(&w.socket)
        .arg("--key-service-url")
        .arg(format!("https://localhost:{ks_port}"))
        .arg("--key-service-ca-file")
        .arg(&tls.ca)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{provider_metrics_port}"))
        .env("RUST_LOG", "info");
    w.procs.push(Proc::spawn("provider", cmd)?);

    w.say("apply the examples: a RotationPolicy and a ManagedKey that allows service account `payments`");
    w.show(&[
        "apply",
        "-f",
        &repo.join("examples/rotation-policy.yaml").to_string_lossy(),
    ])?;
    w.show(&[
        "apply",
        "-f",
        &repo.join("examples/managed-key.yaml").to_string_lossy(),
    ])?;
    let k = w.wait_key("payments-dek", "version 1 active", |k| current(k) == 1)?;
    w.show(&["get", "mk", "-n", "default"])?;
    w.show(&["get", "rp", "-n", "default"])?;

    let objects = "- key: payments-dek\n  fileName: dek\n- key: payments-dek\n  version: previous\n  fileName: dek.previous\n";
    let token = w.token("payments")?;
    w.say("the driver stand-in mounts the key for a pod running as `payments`");
    let m1 = w.mount("payments", &token, "- key: payments-dek\n  fileName: dek\n")?;
    ensure!(m1["ok"] == true, "mount refused: {m1}");
    let fp1 = fp(&file_bytes(&m1, "dek")?);
    println!(
        "mounted file `dek`: fingerprint {fp1} ; status says version 1 = {}",
        version_fp(&k, 1)
    );
    ensure!(
        fp1 == version_fp(&k, 1),
        "mounted key does not match status fingerprint"
    );
    let ov1 = m1["object_version"].clone();

    w.say("rotate now: annotate the ManagedKey");
    w.show(&[
        "annotate",
        "mk",
        "payments-dek",
        "-n",
        "default",
        "keyward.io/rotate-now=demo-1",
        "--overwrite",
    ])?;
    let k = w.wait_key("payments-dek", "version 2 active", |k| current(k) == 2)?;
    w.show(&["get", "mk", "payments-dek", "-n", "default"])?;
    let m2 = w.mount("payments", &token, objects)?;
    ensure!(m2["ok"] == true, "mount after rotation refused: {m2}");
    let fp2 = fp(&file_bytes(&m2, "dek")?);
    let fp_prev = fp(&file_bytes(&m2, "dek.previous")?);
    println!(
        "after rotation: `dek` {fp2} (version 2 = {}), `dek.previous` {fp_prev} (version 1)",
        version_fp(&k, 2)
    );
    ensure!(
        fp2 == version_fp(&k, 2) && fp2 != fp1,
        "current file did not move to version 2"
    );
    ensure!(
        fp_prev == fp1,
        "previous version not served within the grace period"
    );
    ensure!(
        m2["object_version"][0] != ov1[0],
        "object_version did not change with the rotation"
    );

    w.say("a pod running as another service account asks for the key");
    let other = w.token("intruder")?;
    let denied = w.mount("intruder", &other, "- key: payments-dek\n")?;
    println!(
        "refused: {} ({}) {}",
        denied["code"], denied["grpc_code"], denied["message"]
    );
    ensure!(
        denied["ok"] == false && denied["grpc_code"] == "PERMISSION_DENIED",
        "intruder was not refused: {denied}"
    );
    ensure!(
        denied["message"]
            .as_str()
            .unwrap_or("")
            .contains("payments-dek"),
        "refusal does not name the key"
    );

    w.say("scheduled rotation: a policy with a 4-second period rotates without anyone asking");
    let fast = "apiVersion: keyward.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: fast, namespace: default}\nspec: {rotationPeriod: 4s, gracePeriod: 1h, retainVersions: 3, deletionWindowDays: 7}\n---\napiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: session-key, namespace: default}\nspec:\n  policyRef: {name: fast}\n  access: {serviceAccounts: [{namespace: default, name: payments}]}\n";
    let f = w.dir.path().join("fast.yaml");
    std::fs::write(&f, fast)?;
    w.show(&["apply", "-f", &f.to_string_lossy()])?;
    w.wait_key("session-key", "version 1", |k| current(k) == 1)?;
    let k = w.wait_key("session-key", "rotated by schedule to version 2", |k| {
        current(k) >= 2
    })?;
    println!(
        "session-key rotated on schedule: current version {} at {}",
        current(&k),
        k["status"]["lastRotation"]
    );

    w.say("JWT signing key: sign with the previous version, verify against the mounted JWKS during and after the grace period");
    let jwt_yaml = "apiVersion: keyward.io/v1alpha1\nkind: RotationPolicy\nmetadata: {name: jwt, namespace: default}\nspec: {rotationPeriod: 90d, gracePeriod: 8s, retainVersions: 3, deletionWindowDays: 7}\n---\napiVersion: keyward.io/v1alpha1\nkind: ManagedKey\nmetadata: {name: jwt-signer, namespace: default}\nspec:\n  algorithm: ecdsa-p256\n  policyRef: {name: jwt}\n  access:\n    serviceAccounts:\n    - {namespace: default, name: payments}\n    - {namespace: default, name: intruder, publicOnly: true}\n";
    let f = w.dir.path().join("jwt.yaml");
    std::fs::write(&f, jwt_yaml)?;
    w.show(&["apply", "-f", &f.to_string_lossy()])?;
    w.wait_key("jwt-signer", "version 1", |k| current(k) == 1)?;
    let m = w.mount(
        "payments",
        &token,
        "- key: jwt-signer\n  format: jwk\n  fileName: signer.jwk\n",
    )?;
    ensure!(m["ok"] == true, "private JWK mount refused: {m}");
    let jwk_path = w.dir.path().join("signer.jwk");
    std::fs::write(&jwk_path, file_bytes(&m, "signer.jwk")?)?;
    let jwt = w.python(&["tests/py/jwt_check.py", "sign", &jwk_path.to_string_lossy()])?;
    println!("signed a JWT with version 1 (ES256)");
    w.show(&[
        "annotate",
        "mk",
        "jwt-signer",
        "-n",
        "default",
        "keyward.io/rotate-now=jwt-1",
        "--overwrite",
    ])?;
    w.wait_key("jwt-signer", "version 2", |k| current(k) == 2)?;
    // The verifier has a public-only grant: private formats are refused, JWKS is served.
    let verifier_token = w.token("intruder")?;
    let private = w.mount(
        "intruder",
        &verifier_token,
        "- key: jwt-signer\n  format: pem\n",
    )?;
    ensure!(
        private["ok"] == false,
        "a public-only grant got a private key: {private}"
    );
    println!(
        "public-only grant asking for a private PEM: refused ({})",
        private["message"]
    );
    let jwks_mount = |w: &World| -> anyhow::Result<(std::path::PathBuf, usize)> {
        let m = w.mount(
            "intruder",
            &verifier_token,
            "- key: jwt-signer\n  format: jwks\n  fileName: jwks.json\n",
        )?;
        ensure!(m["ok"] == true, "JWKS mount refused: {m}");
        let bytes = file_bytes(&m, "jwks.json")?;
        let v: Value = serde_json::from_slice(&bytes)?;
        ensure!(
            v.to_string().find("\"d\"").is_none(),
            "JWKS carries private members"
        );
        let p = w.dir.path().join("jwks.json");
        std::fs::write(&p, &bytes)?;
        Ok((p, v["keys"].as_array().map(Vec::len).unwrap_or(0)))
    };
    let (p, n) = jwks_mount(w)?;
    ensure!(
        n == 2,
        "JWKS during grace should hold current and previous, holds {n}"
    );
    let out = w.python(&[
        "tests/py/jwt_check.py",
        "verify",
        &p.to_string_lossy(),
        jwt.trim(),
    ])?;
    println!("during grace: {}", out.trim());
    std::thread::sleep(Duration::from_secs(9));
    let (p, n) = jwks_mount(w)?;
    ensure!(
        n == 1,
        "JWKS after grace should hold only the current key, holds {n}"
    );
    let after = Command::new(&w.opts.python)
        .current_dir(&w.opts.repo)
        .args([
            "tests/py/jwt_check.py",
            "verify",
            &p.to_string_lossy(),
            jwt.trim(),
        ])
        .output()?;
    ensure!(
        after.status.code() == Some(3),
        "a token of the previous version still verifies after the grace period"
    );
    println!(
        "after grace: {}",
        String::from_utf8_lossy(&after.stdout).trim()
    );

    w.say("kill the controller in the middle of a rotation, restart it");
    let before = current(&w.key("payments-dek")?);
    w.show(&[
        "annotate",
        "mk",
        "payments-dek",
        "-n",
        "default",
        "keyward.io/rotate-now=demo-crash",
        "--overwrite",
    ])?;
    if let Some(p) = w.procs.iter_mut().find(|p| p.name == "controller") {
        p.kill();
    }
    w.procs.retain(|p| p.name != "controller");
    w.start_controller()?;
    let k = w.wait_key(
        "payments-dek",
        "exactly one new version after the crash",
        |k| current(k) == before + 1,
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let k2 = w.key("payments-dek")?;
    ensure!(
        current(&k2) == before + 1 && k2["status"]["versionCount"] == k["status"]["versionCount"],
        "a second version appeared after the restart: {}",
        k2["status"]
    );
    let n = current(&k2);
    for v in 1..=n {
        let m = w.mount(
            "payments",
            &token,
            &format!("- key: payments-dek\n  version: \"{v}\"\n  fileName: v{v}\n"),
        )?;
        ensure!(
            m["ok"] == true,
            "version {v} does not unwrap after the crash: {m}"
        );
        ensure!(
            fp(&file_bytes(&m, &format!("v{v}"))?) == version_fp(&k2, v),
            "version {v} material does not match its fingerprint"
        );
    }
    println!(
        "versions 1..={n} all unwrap and match their fingerprints; exactly one version was added"
    );

    w.say("delete the ManagedKey: the object goes at once, the material is kept (in the controller's namespace) until the deletion window ends");
    let before = w.key("payments-dek")?;
    let uid = before["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let current_v = current(&before);
    let served = w.mount("payments", &token, "- key: payments-dek\n  fileName: dek\n")?;
    ensure!(
        served["ok"] == true,
        "mount before deletion refused: {served}"
    );
    let fp_before = fp(&file_bytes(&served, "dek")?);
    w.show(&["delete", "mk", "payments-dek", "-n", "default"])?;
    ensure!(
        w.key("payments-dek").is_err(),
        "the ManagedKey is still there after kubectl delete returned"
    );
    // Storage lives in the controller's namespace, named by the key's UID; the tenant's
    // namespace holds none of it.
    let secret = w.kubectl(&[
        "get",
        "secret",
        &format!("keyward-mk-{uid}"),
        "-n",
        "keyward-system",
        "-o",
        "json",
    ])?;
    let secret: Value = serde_json::from_str(&secret)?;
    ensure!(
        secret["data"][format!("v{current_v}")].is_string()
            && secret["data"]["state.mac"].is_string(),
        "material was not kept (authenticated) during the deletion window"
    );
    let state: Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["state.json"].as_str().unwrap_or_default())?;
        serde_json::from_slice(&raw)?
    };
    ensure!(
        state["pendingDeletion"]["destroyAt"].is_string(),
        "no pending destruction recorded in storage: {}",
        state["pendingDeletion"]
    );
    println!("stored pendingDeletion: {}", state["pendingDeletion"]);
    let tenant = w.kubectl(&["get", "secrets", "-n", "default", "-o", "json"])?;
    ensure!(
        !tenant.contains("keyward.io/"),
        "keyward storage found in the tenant namespace: {tenant}"
    );
    let refused = w.mount("payments", &token, "- key: payments-dek\n")?;
    ensure!(
        refused["ok"] == false,
        "a deleted key was served: {refused}"
    );
    println!("material kept, nothing served: {}", refused["message"]);

    w.say("restore it inside the window: re-create it with annotation keyward.io/restore-from-uid");
    // The annotation must be in the manifest that creates the key: a key that already has
    // storage ignores it.
    let manifest = std::fs::read_to_string(repo.join("examples/managed-key.yaml"))?.replacen(
        "  namespace: default\n",
        &format!(
            "  namespace: default\n  annotations:\n    keyward.io/restore-from-uid: \"{uid}\"\n"
        ),
        1,
    );
    let restore_yaml = w.dir.path().join("restore.yaml");
    std::fs::write(&restore_yaml, &manifest)?;
    w.show(&["apply", "-f", &restore_yaml.to_string_lossy()])?;
    let k = w.wait_key("payments-dek", "restored", |k| {
        current(k) == current_v && k["status"]["versionCount"].as_u64() >= Some(current_v)
    })?;
    let again = w.mount("payments", &token, "- key: payments-dek\n  fileName: dek\n")?;
    ensure!(again["ok"] == true, "mount after restore refused: {again}");
    ensure!(
        fp(&file_bytes(&again, "dek")?) == fp_before,
        "restored key serves other bytes than before deletion"
    );
    println!(
        "restored: version {} serves the same bytes as before deletion (fingerprint {fp_before})",
        current(&k)
    );

    w.say("audit log: verify the chain the controller wrote");
    let audit_path = w.dir.path().join("audit.log");
    let audit = std::fs::read_to_string(&audit_path)?;
    let verified = Command::new(&w.opts.bin)
        .args(["audit", "verify"])
        .arg(&audit_path)
        .output()?;
    let said = String::from_utf8_lossy(&verified.stdout).into_owned();
    ensure!(
        verified.status.success(),
        "keyward audit verify refused the log: {said}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let records: u64 = said
        .strip_prefix("ok: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("unexpected answer from keyward audit verify: {said}"))?;
    println!("keyward audit verify: {}", said.trim());
    ensure!(records >= 4, "too few audit records ({records})");
    ensure!(
        audit.contains("\"action\":\"mount\"") && audit.contains("\"outcome\":\"denied\""),
        "mounts served and refused are not in the audit log"
    );
    w.say("metrics: the chart's alerts and dashboard name only metrics the controller exports");
    let exposition = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")?;
    // Sample names, and the names a declared family exports once it has samples (a counter
    // family without labels seen yet, such as reconcile errors, shows only its `# TYPE`).
    let mut exported: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for l in exposition.lines() {
        let mut f = l.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (f.next(), f.next(), f.next(), f.next())
        {
            match kind {
                "counter" => exported.insert(format!("{name}_total")),
                "histogram" => exported.insert(format!("{name}_bucket")),
                _ => exported.insert(name.to_owned()),
            };
        }
    }
    let root = repo_root();
    let mut named = std::collections::BTreeSet::new();
    for f in [
        "charts/keyward/files/prometheus-rules.yaml",
        "charts/keyward/files/grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(f))?;
        for (i, _) in text.match_indices("keyward_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named.insert(name);
        }
    }
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    ensure!(
        named.len() >= 8 && missing.is_empty(),
        "the alerts or the dashboard name metrics /metrics does not export: {missing:?} (exported: {exported:?})"
    );
    ensure!(
        exposition.lines().any(|l| l == "keyward_leader 1"),
        "the leading controller does not report keyward_leader 1"
    );
    println!(
        "{} metric names in the alerts and the dashboard, all exported; keyward_leader 1",
        named.len()
    );
    // Serving metrics on both sides: the key service's Fetches by outcome and code, and the
    // provider's Mounts by the code the driver received (the story had both kinds).
    let sum = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let provider = http_get(&format!("127.0.0.1:{provider_metrics_port}"), "/metrics")?;
    let (mounted, refused) = (
        sum(&provider, "keyward_provider_mounts_total{code=\"Ok\"}"),
        sum(&provider, "keyward_provider_mounts_total{")
            - sum(&provider, "keyward_provider_mounts_total{code=\"Ok\"}"),
    );
    let fetched_ok = sum(
        &exposition,
        "keyward_key_service_fetches_total{outcome=\"ok\",code=\"Ok\"}",
    );
    ensure!(
        mounted >= 5.0 && refused >= 1.0 && fetched_ok >= 1.0,
        "serving metrics missing: provider Ok {mounted}, refused {refused}, key service ok {fetched_ok}"
    );
    println!(
        "provider /metrics: {mounted} Mounts answered OK, {refused} refused; key service: {fetched_ok} Fetches ok on this replica"
    );
    w.say("done: every step of the story worked");
    Ok(())
}

/// A plain HTTP/1.0 GET (the controller's metrics endpoint; no client library needed).
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}{path}"))?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {addr}{path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// Path of the repository root when run from the source tree (this crate lives in
/// `crates/keyward-demo`).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Default Python: `$KEYWARD_PYTHON`, else the project's venv.
pub fn default_python(repo: &Path) -> PathBuf {
    std::env::var_os("KEYWARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"))
}

struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A throwaway CA and a `localhost` server certificate for the key service.
fn write_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    // keyward refuses private-key files other users can read.
    std::fs::set_permissions(
        &files.key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )?;
    Ok(files)
}
