//! Mount latency and throughput over the real unix socket and a TLS key service (in-memory
//! TokenReview and key store, token cache on). Run: `cargo bench --bench mount`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use keyward::lifecycle::KeyState;
use keyward::proto::csi::MountRequest;
use keyward::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use std::time::{Duration, Instant};

fn request(objects: &str) -> MountRequest {
    driver_request(&attrs(NS, SA, "web-0", Some("tok"), objects))
}

async fn latency(e: &Env, label: &str, objects: &str, n: usize) {
    let mut c = CsiDriverProviderClient::new(uds_channel(&e.socket).await);
    let req = request(objects);
    for _ in 0..100 {
        c.mount(req.clone()).await.unwrap();
    }
    let mut d = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.mount(req.clone()).await.unwrap();
        d.push(t.elapsed());
        assert!(!r.into_inner().files.is_empty());
    }
    d.sort();
    println!(
        "{label}: p50 {:.3} ms, p99 {:.3} ms ({n} sequential mounts)",
        percentile(&d, 0.50).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Env::start(Duration::from_secs(10)).await;
        e.add_token("tok", NS, SA, "web-0", &["keyward"], 3600);
        let mut ten = String::new();
        for i in 0..10 {
            e.put_key(
                NS,
                &format!("k{i}"),
                &[(NS, SA)],
                KeyBuilder::default().with(KeyState::Active, 10),
            )
            .await;
            ten.push_str(&format!("- key: k{i}\n"));
        }
        latency(&e, "1 key", "- key: k0", 2000).await;
        latency(&e, "10 keys", &ten, 1000).await;
        mount_throughput(&e.socket, request("- key: k0"), 64, 5).await;
    });
}
