//! Mount latency and throughput over the real unix socket and a TLS key service (in-memory
//! TokenReview and key store, token cache on). Run: `cargo bench --bench mount`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use keyward::lifecycle::KeyState;
use keyward::proto::csi::MountRequest;
use std::time::Duration;

fn request(objects: &str) -> MountRequest {
    driver_request(&attrs(NS, SA, "web-0", Some("tok"), objects))
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
        mount_latency(&e.socket, "1 key", request("- key: k0"), 100, 2000).await;
        mount_latency(&e.socket, "10 keys", request(&ten), 100, 1000).await;
        mount_throughput(&e.socket, request("- key: k0"), 64, 5).await;
    });
}
