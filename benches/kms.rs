//! KMS v2 plugin: Encrypt and Decrypt latency (p50/p99) and single-caller throughput of
//! `keyward::kms::KmsPlugin` with the in-memory local KEK (AES-256-KWP and AES-256-GCM wraps).
//! This is the plugin's own cost; with PKCS#11 or AWS KMS each call adds one backend round trip
//! (Encrypt: wrap, Decrypt: unwrap). Run: `cargo bench --bench kms`.

use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::Keyring;
use keyward::kek::local::LocalKek;
use keyward::kms::KmsPlugin;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut d: Vec<Duration>) {
    let total: Duration = d.iter().sum();
    d.sort();
    println!(
        "{label}: p50 {:.1} µs, p99 {:.1} µs, {:.0} ops/s ({} sequential calls)",
        pct(&d, 0.50).as_secs_f64() * 1e6,
        pct(&d, 0.99).as_secs_f64() * 1e6,
        d.len() as f64 / total.as_secs_f64(),
        d.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: a short smoke run then.
    let n = if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        200
    };
    for alg in [Algorithm::Aes256Kwp, Algorithm::Aes256Gcm] {
        let kek = LocalKek::in_memory("bench", SecretBytes::random(32), alg).unwrap();
        let plugin = KmsPlugin::new(
            Keyring::new(Arc::new(kek)),
            Duration::from_secs(20),
            Duration::from_secs(3),
        );
        let seed = [9u8; 32];
        let warm = plugin.encrypt(&seed).await.unwrap();
        let mut enc = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let s = plugin.encrypt(&seed).await.unwrap();
            enc.push(t.elapsed());
            std::hint::black_box(s);
        }
        let mut dec = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let p = plugin
                .decrypt(&warm.ciphertext, &warm.key_id, &warm.annotations)
                .await
                .unwrap();
            dec.push(t.elapsed());
            assert_eq!(p.expose(), &seed);
        }
        report(&format!("local {} Encrypt", alg.name()), enc);
        report(&format!("local {} Decrypt", alg.name()), dec);
    }
}
