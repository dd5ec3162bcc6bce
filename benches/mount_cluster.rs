//! Mount on a cluster-like set-up (#18.4): the real controller, the watch-backed key source,
//! real TokenReviews (10 s cache) and the provider on its unix socket, all against the test API
//! server with latency injected into every request from the first Mount on: 5 ms for each
//! read (get, list) and 20 ms for each TokenReview. Reports p50/p99 for 1 and 10 keys,
//! throughput with 64 clients, API requests per Mount, and the process's peak RSS; then the
//! same with the AWS KMS backend (moto on loopback). Run: `cargo bench --bench mount_cluster`.
//!
//! Differences from a cluster: the provider calls the key service in process (the gRPC/TLS hop
//! between them is measured by `--bench mount`), and one process holds the API server, the
//! controller, the key service and the provider, so the RSS printed bounds all of them
//! together.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fixture/mod.rs"]
mod fixture;

use common::{attrs, driver_request, mount_latency, mount_throughput, percentile, uds_channel};
use fixture::kek::{Moto, kek_env};
use fixture::stack::Stack;
use keyward::controller::SystemClock;
use keyward::crd::ManagedKey;
use keyward::kek::Keyring;
use keyward::kek::awskms::AwsKmsKek;
use keyward::proto::csi::MountRequest;
use keyward::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use kube::api::{Api, Patch, PatchParams};
use kube_test_apiserver::{Fault, FaultKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "default";
const SA: &str = "app";
const POD: &str = "web-0";

fn request(objects: &str) -> MountRequest {
    driver_request(&attrs(NS, SA, POD, Some("tok"), objects))
}

/// The first Mount of `n` new pods (each token reviewed once, 20 ms), one after another.
async fn new_pods(stack: &Stack, n: usize) {
    let mut c = CsiDriverProviderClient::new(uds_channel(&stack.socket).await);
    let mut d = Vec::with_capacity(n);
    for i in 0..n {
        let (pod, tok) = (format!("new-{i}"), format!("new-tok-{i}"));
        stack.add_pod_token(&tok, NS, SA, &pod, &format!("uid-{pod}"));
        let req = driver_request(&attrs(NS, SA, &pod, Some(&tok), "- key: k0"));
        let t = Instant::now();
        c.mount(req).await.unwrap();
        d.push(t.elapsed());
    }
    d.sort();
    println!(
        "  first Mount of a new pod (one TokenReview): p50 {:.3} ms, p99 {:.3} ms ({n} pods)",
        percentile(&d, 0.50).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3
    );
}

/// Requests a Mount can cause: reads of what it serves, and TokenReviews.
fn mount_path_requests(stack: &Stack) -> (u64, u64) {
    let counts = stack.server.request_counts();
    let reads = counts
        .iter()
        .filter(|((verb, res), _)| {
            verb == "get" && matches!(res.as_str(), "managedkeys" | "rotationpolicies" | "secrets")
        })
        .map(|(_, n)| n)
        .sum();
    let reviews = counts
        .get(&("create".to_string(), "tokenreviews".to_string()))
        .copied()
        .unwrap_or(0);
    (reads, reviews)
}

/// Peak and current resident set of this process, from /proc (KiB).
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    format!(
        "peak RSS {:.1} MiB, now {:.1} MiB (API server, controller, key service and provider together)",
        field("VmHWM:") as f64 / 1024.0,
        field("VmRSS:") as f64 / 1024.0
    )
}

async fn scenario(label: &str, keyring: Option<Keyring>, bench: bool) {
    println!("{label}");
    let stack = match keyring {
        None => Stack::start(Arc::new(SystemClock), Duration::from_secs(30)).await,
        Some(k) => {
            let (server, client) = fixture::cluster().await;
            Stack::start_on(
                server,
                client,
                k,
                Arc::new(SystemClock),
                Duration::from_secs(30),
            )
            .await
        }
    };
    stack.add_pod_token("tok", NS, SA, POD, &format!("uid-{POD}"));
    let keys: Api<ManagedKey> = Api::namespaced(stack.client.clone(), NS);
    let mut ten = String::new();
    for i in 0..10 {
        keys.patch(
            &format!("k{i}"),
            &PatchParams::apply("bench").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": format!("k{i}")},
                "spec": {"algorithm": "aes-256",
                         "access": {"serviceAccounts": [{"namespace": NS, "name": SA}]}}
            })),
        )
        .await
        .unwrap();
        ten.push_str(&format!("- key: k{i}\n"));
    }
    // Every key served once: the controller has made version 1 of each.
    let mut c = CsiDriverProviderClient::new(uds_channel(&stack.socket).await);
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Err(e) = c.mount(request(&ten)).await {
        assert!(
            Instant::now() < deadline,
            "keys not served within 90 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From here on every read and TokenReview is slow, as in a busy cluster.
    for (verb, resource, ms) in [
        ("get", None, 5),
        ("list", None, 5),
        ("create", Some("tokenreviews"), 20),
    ] {
        stack.server.inject_fault(Fault {
            verb: Some(verb.into()),
            resource: resource.map(String::from),
            name: None,
            times: usize::MAX,
            kind: FaultKind::Delay,
            delay_ms: ms,
        });
    }
    let before = mount_path_requests(&stack);
    let kek_before = kek_calls(&stack);
    let warm_kek = kek_before;
    let (n1, n10, secs, pods) = if bench {
        (2000, 1000, 12, 200)
    } else {
        (50, 20, 1, 5)
    };
    mount_latency(&stack.socket, "1 key", request("- key: k0"), 0, n1).await;
    mount_latency(&stack.socket, "10 keys", request(&ten), 0, n10).await;
    // Longer than the 10 s token cache: the provider's and the pod's tokens are reviewed again.
    let n = mount_throughput(&stack.socket, request("- key: k0"), 64, secs).await;
    new_pods(&stack, pods).await;
    let after = mount_path_requests(&stack);
    let mounts = (n1 + n10 + pods) as u64 + n;
    println!(
        "  API requests per Mount: {:.5} reads of keys/policies/storage, {:.5} TokenReviews ({} and {} in {mounts} Mounts)",
        (after.0 - before.0) as f64 / mounts as f64,
        (after.1 - before.1) as f64 / mounts as f64,
        after.0 - before.0,
        after.1 - before.1,
    );
    println!(
        "  KEK unwraps: {warm_kek} for the first Mounts of 10 new versions, {} in the {mounts} Mounts after (material cache)",
        kek_calls(&stack) - kek_before
    );
    println!("  {}", rss());
}

/// KEK unwrap calls the key service made (its `kek_unwraps_total`, every outcome).
fn kek_calls(stack: &Stack) -> u64 {
    let mut registry = prometheus_client::registry::Registry::with_prefix("keyward");
    stack.serve_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with("keyward_key_service_kek_unwraps_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: a short smoke run then.
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        scenario("local KEK; reads 5 ms, TokenReviews 20 ms:", None, bench).await;
        kek_env();
        let moto = Moto::start();
        let key = moto.create_key().await;
        let aws = AwsKmsKek::connect(moto.cfg(&key)).await.unwrap();
        scenario(
            "AWS KMS KEK (moto on loopback); reads 5 ms, TokenReviews 20 ms:",
            Some(Keyring::new(Arc::new(aws))),
            bench,
        )
        .await;
    });
}
