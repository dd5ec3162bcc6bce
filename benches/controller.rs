//! Controller scale benchmark: N ManagedKeys created on the test API server, then the real
//! `keyward controller` process started; measures wall time until every key has its first
//! version, the controller's peak RSS (VmHWM), and the per-key cost.
//!
//! `cargo bench --bench controller` runs 1,000 and 10,000 keys (override with
//! KEYWARD_BENCH_KEYS=comma,separated). Under `cargo test` it runs a 50-key smoke check.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyward::crd::{ManagedKey, ManagedKeySpec, PolicyRef, RotationPolicy};
use kube::Resource;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube_test_apiserver::{ServerOptions, TestApiServer};
use std::time::{Duration, Instant};

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU seconds of a process, from its `/proc/<pid>/stat` (fields 14 and 15).
fn cpu_seconds(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |t| {
        t.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

async fn run(n: usize) -> (f64, f64) {
    let server = TestApiServer::start_with(ServerOptions {
        history: 4 * n + 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in keyward::crd::definitions() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let policy: RotationPolicy = serde_json::from_value(serde_json::json!({"apiVersion": "keyward.io/v1alpha1", "kind": "RotationPolicy", "metadata": {"name": "p", "namespace": "default"}, "spec": {"rotationPeriod": "90d"}})).unwrap();
    Api::<RotationPolicy>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let keys: Api<ManagedKey> = Api::namespaced(client.clone(), "default");
    futures::stream::iter(0..n)
        .map(|i| {
            let keys = keys.clone();
            async move {
                let mut mk = ManagedKey::new(
                    &format!("key-{i:05}"),
                    ManagedKeySpec {
                        policy_ref: Some(PolicyRef { name: "p".into() }),
                        ..Default::default()
                    },
                );
                mk.meta_mut().namespace = Some("default".into());
                keys.create(&PostParams::default(), &mk).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, hex::encode([7u8; 32])).unwrap();
    // keyward refuses key files others can read.
    std::fs::set_permissions(
        &kek,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let bench_cpu_before = cpu_seconds("/proc/self/stat");
    let started = Instant::now();
    // KEYWARD_BENCH_WRAPPER runs the controller under a profiler (e.g. `heaptrack`); the
    // RSS figure is then the wrapper's, not the controller's.
    let mut command = match std::env::var("KEYWARD_BENCH_WRAPPER") {
        Ok(w) => {
            let mut c = std::process::Command::new(w);
            c.arg(env!("CARGO_BIN_EXE_keyward"));
            c
        }
        Err(_) => std::process::Command::new(env!("CARGO_BIN_EXE_keyward")),
    };
    let mut child = command
        .args([
            "controller",
            "--leader-election=false",
            "--namespace",
            "default",
            "--metrics-addr",
            "127.0.0.1:0",
            "--disable-key-service",
            "--max-requeue-seconds",
            "300",
        ])
        .arg("--local-kek-file")
        .arg(&kek)
        .env("KUBECONFIG", server.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak: f64 = 0.0;
    // Completion from a watch (one event per change), not a LIST of every key each second:
    // at 10,000 keys that LIST serialized tens of MB a second on the cores being measured.
    let mut done = std::collections::HashSet::new();
    let mut events = kube::runtime::watcher(keys.clone(), Default::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while done.len() < n {
        tokio::select! {
            e = events.next() => {
                let k = e.expect("watch ended").expect("watch");
                if k.status.as_ref().and_then(|s| s.current_version) == Some(1) {
                    done.insert(k.metadata.name.unwrap_or_default());
                }
            }
            _ = tick.tick() => {
                peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "only {}/{n} keys done after 10 minutes",
                    done.len()
                );
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
    // API requests per key (the creation and the ManagedKey lists and watches, the bench's own
    // among them, excluded).
    let counts = server.request_counts();
    let mut per: Vec<String> = counts
        .iter()
        .filter(|((verb, res), _)| {
            !(res == "managedkeys" && (verb == "create" || verb == "list" || verb == "watch"))
        })
        .map(|((verb, res), c)| format!("{verb} {res} {:.2}", *c as f64 / n as f64))
        .collect();
    per.sort();
    println!("requests per key: {}", per.join(", "));
    println!(
        "CPU while the controller ran: controller {:.1} s, test API server and bench {:.1} s",
        cpu_seconds(&format!("/proc/{pid}/stat")),
        cpu_seconds("/proc/self/stat") - bench_cpu_before
    );
    let _ = child.kill();
    let _ = child.wait();
    (secs, peak)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("KEYWARD_BENCH_KEYS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) if bench => vec![1_000, 10_000],
        Err(_) => vec![50],
    };
    let mut per_key = Vec::new();
    for n in sizes {
        let (secs, rss) = run(n).await;
        let ms = secs * 1000.0 / n as f64;
        println!(
            "controller: {n} keys first-rotated in {secs:.1} s ({ms:.2} ms/key), controller peak RSS {rss:.0} MiB"
        );
        per_key.push((n, ms));
    }
    if let [(n1, a), .., (n2, b)] = per_key.as_slice() {
        println!("per-key cost at {n2} keys is {:.2}x that at {n1}", b / a);
    }
}
