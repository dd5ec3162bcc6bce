//! KMS v2 plugin: Encrypt and Decrypt latency (p50/p99) and single-caller throughput of
//! `keyward::kms::KmsPlugin` per KEK backend: the local key (AES-256-KWP and AES-256-GCM
//! wraps), passphrase (the derivation happens once, at start), PKCS#11 on a SoftHSM2 token and
//! AWS KMS on moto (both started here, from tests/setup.sh). Every Encrypt wraps one fresh DEK
//! through the backend and every Decrypt unwraps one, so the local figures are the plugin's own
//! cost and the others add one backend round trip each. Run: `cargo bench --bench kms`.

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use fixture::kek::{Moto, kek_env, pass, pkcs11_cfg};
use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::awskms::AwsKmsKek;
use keyward::kek::local::LocalKek;
use keyward::kek::passphrase::{Kdf, PassphraseKek};
use keyward::kek::pkcs11::Pkcs11Kek;
use keyward::kek::{KekBackend, Keyring};
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

/// `n` Encrypts, then `n` Decrypts of one ciphertext, through the plugin on `backend`.
async fn run(label: &str, backend: Arc<dyn KekBackend>, n: usize) {
    let plugin = KmsPlugin::new(
        Keyring::new(backend),
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
    report(&format!("{label} Encrypt"), enc);
    report(&format!("{label} Decrypt"), dec);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: a short smoke run then.
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, remote) = if bench { (20_000, 2_000) } else { (200, 20) };
    // The fips build seals no GCM envelopes under a local KEK (docs/fips.md): KWP and KW there.
    for &alg in Algorithm::sealable_with_raw_kek() {
        let kek = LocalKek::in_memory("bench", SecretBytes::random(32), alg).unwrap();
        run(&format!("local {}", alg.name()), Arc::new(kek), n).await;
    }
    let kdf = Kdf::default();
    let pp = PassphraseKek::new("bench", pass(), kdf, Algorithm::Aes256Kwp)
        .await
        .unwrap();
    run(
        &format!("passphrase ({}, default costs)", kdf.describe()),
        Arc::new(pp),
        n,
    )
    .await;
    kek_env();
    let hsm = Pkcs11Kek::connect(pkcs11_cfg("kms-bench")).await.unwrap();
    run("pkcs11 (SoftHSM2)", Arc::new(hsm), remote).await;
    let moto = Moto::start();
    let key = moto.create_key().await;
    let aws = AwsKmsKek::connect(moto.cfg(&key)).await.unwrap();
    run("awskms (moto on loopback)", Arc::new(aws), remote).await;
}
