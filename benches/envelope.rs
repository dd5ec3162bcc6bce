//! The unwrap on the Mount path (#18.6): what a version's first Mount costs (decode the
//! envelope, derive the per-key KW subkey with HMAC-SHA256, AES-KWP unwrap) against the raw
//! AES-KWP unwrap alone, and what every later Mount costs instead (a material-cache hit:
//! SHA-256 of the envelope for the cache key, one map lookup). Single thread, 32-byte DEKs.
//! Run: `cargo bench --bench envelope`.

use keyward::crypto::{Algorithm, Envelope, KeyContext, SecretBytes, kw};
use keyward::keyservice::material_cache::{EntryKey, Limits, MaterialCache};
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroizing;

fn rate(label: &str, n: usize, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{label}: {:.2} M ops/s ({:.0} ns each, {n} calls)",
        n as f64 / s / 1e6,
        s / n as f64 * 1e9
    );
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: a short smoke run then.
    let n = if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        2_000
    };
    let kek = SecretBytes::random(32);
    let dek = SecretBytes::random(32);
    let ctx = KeyContext::new("team-a", "payments", 3);
    let env = Envelope::for_context(Algorithm::Aes256Kwp, "local", "root", 1, &ctx)
        .seal_with_raw_kek(&kek, &dek)
        .unwrap();
    let bytes = env.encode().unwrap();
    // The raw unwrap, under a key standing in for the derived subkey.
    let sub = SecretBytes::random(32);
    let raw = kw::wrap_pad(sub.expose(), &dek).unwrap();
    rate("raw AES-256-KWP unwrap", n, || {
        std::hint::black_box(kw::unwrap_pad(sub.expose(), &raw).unwrap());
    });
    rate(
        "envelope open (decode + HMAC subkey + KWP unwrap)",
        n,
        || {
            let e = Envelope::decode(std::hint::black_box(&bytes)).unwrap();
            let out = e.open_with_raw_kek(&kek, &ctx).unwrap();
            assert_eq!(out.len(), 32);
        },
    );
    let cache = MaterialCache::new(Limits::default());
    let key = || {
        EntryKey::new(
            "uid-1",
            3,
            "Active",
            "sha256:fp",
            &bytes,
            "local/root@1".into(),
        )
    };
    cache.insert(key(), Arc::new(Zeroizing::new(dek.expose().to_vec())));
    rate(
        "material-cache hit (SHA-256 of the envelope + lookup)",
        n,
        || {
            std::hint::black_box(cache.get(&key()).unwrap());
        },
    );
}
