//! One KEK call per key version, not per Mount (#18): 1,000 Fetches of one version through
//! the key service with the AWS KMS backend against moto and with SoftHSM2 through PKCS#11,
//! counting the backend's unwrap calls with a wrapper around the real backend. And the cache
//! never decides who gets a key: a compromise or a revoked grant after the cache is warm is
//! refused at once, and a rewrapped envelope is unwrapped again.

mod common;
mod fixture;

use common::{
    FakeReviewer, FakeToken, KeyBuilder, MemorySource, PROVIDER_TOKEN, SharedReviewer, SharedSource,
};
use fixture::kek::*;
use keyward::crypto::{Envelope, KeyContext, SecretBytes};
use keyward::kek::awskms::AwsKmsKek;
use keyward::kek::pkcs11::Pkcs11Kek;
use keyward::kek::{KekBackend, KekError, Keyring};
use keyward::keyservice::{
    CachingReviewer, Identity, KeyService, ServeMetrics, Settings, VersionIdKey,
};
use keyward::lifecycle::KeyState;
use keyward::proto::keyservice::{FetchRequest, KeyRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

const NS: &str = "team-a";

/// The real backend, counting unwraps (the calls that reach AWS KMS or the HSM).
struct Counting {
    inner: Arc<dyn KekBackend>,
    unwraps: AtomicUsize,
}

#[async_trait::async_trait]
impl KekBackend for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn kek_id(&self) -> String {
        self.inner.kek_id()
    }
    fn kek_version(&self) -> u32 {
        self.inner.kek_version()
    }
    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        self.inner.wrap(ctx, dek).await
    }
    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(env, ctx).await
    }
    async fn health(&self) -> Result<(), KekError> {
        self.inner.health().await
    }
    async fn rotate(&self) -> Result<u32, KekError> {
        self.inner.rotate().await
    }
}

fn token(reviewer: &FakeReviewer, name: &str, id: Identity, audience: &str) {
    reviewer.tokens.lock().unwrap().insert(
        name.into(),
        FakeToken {
            id,
            audiences: vec![audience.into()],
            expires: SystemTime::now() + Duration::from_secs(3600),
        },
    );
}

struct Setup {
    svc: KeyService<SharedReviewer>,
    source: Arc<MemorySource>,
    counting: Arc<Counting>,
    ring: Keyring,
    metrics: ServeMetrics,
}

async fn setup(backend: Arc<dyn KekBackend>) -> Setup {
    let counting = Arc::new(Counting {
        inner: backend,
        unwraps: AtomicUsize::new(0),
    });
    let ring = Keyring::new(counting.clone());
    let reviewer = Arc::new(FakeReviewer::default());
    let source = Arc::new(MemorySource::default());
    token(
        &reviewer,
        PROVIDER_TOKEN,
        Identity {
            namespace: "keyward-system".into(),
            service_account: "keyward-csi-provider".into(),
            pod_name: None,
            pod_uid: None,
        },
        common::API_AUDIENCE,
    );
    token(
        &reviewer,
        "tok-p1",
        Identity {
            namespace: NS.into(),
            service_account: "web".into(),
            pod_name: Some("p1".into()),
            pod_uid: Some("uid-p1".into()),
        },
        "keyward",
    );
    let mut rec = KeyBuilder::default()
        .with(KeyState::Active, 10)
        .record(&ring, NS, "db", &[(NS, "web")])
        .await;
    rec.key.metadata.uid = Some("0b9d8c2e-8f7a-4c1e-9d3b-2a6f5e4d3c2b".into());
    source
        .keys
        .lock()
        .unwrap()
        .insert((NS.into(), "db".into()), rec);
    let metrics = ServeMetrics::default();
    let svc = KeyService::new(
        CachingReviewer::new(SharedReviewer(reviewer), Duration::from_secs(10), 64),
        Arc::new(SharedSource(source.clone())),
        ring.clone(),
        VersionIdKey::new(SecretBytes::from_slice(&[7; 32])),
        Settings {
            audience: "keyward".into(),
            provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
            provider_audience: None,
        },
    )
    .with_serve_metrics(metrics.clone());
    // Unwraps done while building the record (none: wrap only) are not counted against Mounts.
    counting.unwraps.store(0, Ordering::SeqCst);
    Setup {
        svc,
        source,
        counting,
        ring,
        metrics,
    }
}

fn request() -> FetchRequest {
    FetchRequest {
        pod_token: "tok-p1".into(),
        pod_namespace: NS.into(),
        pod_name: "p1".into(),
        pod_uid: "uid-p1".into(),
        service_account: "web".into(),
        keys: vec![KeyRequest {
            key: "db".into(),
            selector: None,
        }],
        pod_token_expiration: String::new(),
    }
}

/// 1,000 Fetches of the current version; returns the KEK unwraps they cost.
async fn thousand_mounts(s: &Setup, backend: &str) -> usize {
    let start = std::time::Instant::now();
    let mut first = None;
    for _ in 0..1000 {
        let r = s
            .svc
            .fetch(Some(PROVIDER_TOKEN), &request(), None)
            .await
            .unwrap();
        let m = r.keys[0].versions[0].material.clone();
        assert_eq!(
            *first.get_or_insert_with(|| m.clone()),
            m,
            "the same bytes every time"
        );
    }
    let calls = s.counting.unwraps.load(Ordering::SeqCst);
    eprintln!(
        "MEASURE {backend}: {calls} KEK unwrap call(s) for 1000 Mounts of one version ({:?} in all; cache hits {}, misses {})",
        start.elapsed(),
        s.metrics.material_cache_hits.get(),
        s.metrics.material_cache_misses.get()
    );
    calls
}

/// What the cache must never change: a state change or a revoked grant is effective on the
/// next Mount, and a rewrapped envelope is unwrapped again.
async fn the_cache_decides_nothing(s: &Setup) {
    let before = s.counting.unwraps.load(Ordering::SeqCst);
    // Rewrap (a KEK migration writes a new envelope for the same material): one new call.
    {
        let mut keys = s.source.keys.lock().unwrap();
        let rec = keys.get_mut(&(NS.to_string(), "db".to_string())).unwrap();
        let env = Envelope::decode(&rec.stored.envelopes[&1]).unwrap();
        let ctx = KeyContext::new(NS, "db", 1);
        let ring = s.ring.clone();
        let material = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { ring.unwrap(&env, &ctx).await.unwrap() })
        })
        .join()
        .unwrap();
        let ring = s.ring.clone();
        let ctx = KeyContext::new(NS, "db", 1);
        let rewrapped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { ring.wrap(&ctx, &material).await.unwrap() })
        })
        .join()
        .unwrap();
        rec.stored.envelopes.insert(1, rewrapped.encode().unwrap());
    }
    let direct = s.counting.unwraps.load(Ordering::SeqCst) - before;
    s.svc
        .fetch(Some(PROVIDER_TOKEN), &request(), None)
        .await
        .unwrap();
    assert_eq!(
        s.counting.unwraps.load(Ordering::SeqCst) - before - direct,
        1,
        "a new envelope is unwrapped again"
    );
    // Compromise after the cache is warm: refused at once.
    {
        let mut keys = s.source.keys.lock().unwrap();
        let rec = keys.get_mut(&(NS.to_string(), "db".to_string())).unwrap();
        rec.stored
            .state
            .transition(1, KeyState::Compromised, jiff::Timestamp::now(), "leak")
            .unwrap();
    }
    let e = s
        .svc
        .fetch(Some(PROVIDER_TOKEN), &request(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "not_servable", "{e}");
    // A revoked grant (fresh key, warm cache): refused at once.
    {
        let mut keys = s.source.keys.lock().unwrap();
        let rec = keys.get_mut(&(NS.to_string(), "db".to_string())).unwrap();
        rec.key.spec.access.service_accounts.clear();
    }
    let e = s
        .svc
        .fetch(Some(PROVIDER_TOKEN), &request(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "access_denied", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_one_unwrap_per_version_not_per_mount() {
    kek_env();
    let moto = Moto::start();
    let arn = moto.create_key().await;
    let kms = Arc::new(AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap());
    let s = setup(kms).await;
    let calls = thousand_mounts(&s, "awskms (moto)").await;
    assert!(
        calls <= 2,
        "{calls} KEK calls for 1000 Mounts of one version"
    );
    assert_eq!(
        s.metrics.material_cache_hits.get() + s.metrics.material_cache_misses.get(),
        1000
    );
    the_cache_decides_nothing(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softhsm_one_unwrap_per_version_not_per_mount() {
    kek_env();
    let _turn = hsm_turn().await;
    let hsm = Arc::new(Pkcs11Kek::connect(pkcs11_cfg("cache")).await.unwrap());
    let s = setup(hsm).await;
    let calls = thousand_mounts(&s, "pkcs11 (SoftHSM2)").await;
    assert!(
        calls <= 2,
        "{calls} KEK calls for 1000 Mounts of one version"
    );
    the_cache_decides_nothing(&s).await;
}

/// With the cache off (`--material-cache-ttl-seconds 0`), every Mount is a KEK call: the
/// counting above measures the cache, not something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cache_every_mount_unwraps() {
    let local = Arc::new(
        keyward::kek::local::LocalKek::in_memory(
            "t",
            SecretBytes::from_slice(&[3; 32]),
            keyward::crypto::Algorithm::Aes256Kwp,
        )
        .unwrap(),
    );
    let mut s = setup(local).await;
    s.svc = s
        .svc
        .with_material_cache(keyward::keyservice::material_cache::Limits {
            ttl: Duration::ZERO,
            ..Default::default()
        });
    for _ in 0..50 {
        s.svc
            .fetch(Some(PROVIDER_TOKEN), &request(), None)
            .await
            .unwrap();
    }
    assert_eq!(s.counting.unwraps.load(Ordering::SeqCst), 50);
}
