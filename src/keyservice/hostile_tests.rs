//! The key service under hostile requests: nothing is recorded before the caller is the
//! provider and the request is within bounds, and lookups never fan out without bound.

use super::*;
use crate::crypto::{Algorithm, SecretBytes};
use crate::kek::local::LocalKek;
use crate::proto::keyservice::KeyRequest;
use limits::RequestError;
use std::sync::atomic::{AtomicUsize, Ordering};

const PROVIDER: &str = "provider-token";
const POD: &str = "pod-token";

/// TokenReview: the provider's token and one pod token of team-a/web.
struct Fake;

#[async_trait::async_trait]
impl TokenReviewer for Fake {
    async fn review(&self, token: &str, _: Option<&str>) -> Result<Identity, AuthError> {
        let (namespace, service_account) = match token {
            PROVIDER => ("keyward-system", "keyward-csi-provider"),
            POD => ("team-a", "web"),
            _ => return Err(AuthError::Rejected("invalid bearer token".into())),
        };
        Ok(Identity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: None,
            pod_uid: None,
        })
    }
}

/// A key store that finds nothing, slowly, and remembers how many reads ran at once.
#[derive(Default)]
struct Slow {
    now: AtomicUsize,
    max: AtomicUsize,
    gets: AtomicUsize,
}

#[async_trait::async_trait]
impl KeySource for Arc<Slow> {
    async fn get(&self, _: &str, _: &str) -> Result<Option<KeyRecord>, SourceError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(None)
    }
}

struct World {
    svc: KeyService<Fake>,
    source: Arc<Slow>,
    metrics: ServeMetrics,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let audit = Arc::new(crate::audit::Audit::open(&audit_path, None, 0).unwrap());
    let source = Arc::new(Slow::default());
    let keyring = Keyring::new(Arc::new(
        LocalKek::in_memory("t", SecretBytes::from_slice(&[1; 32]), Algorithm::Aes256Kwp).unwrap(),
    ));
    let metrics = ServeMetrics::default();
    let svc = KeyService::new(
        CachingReviewer::new(Fake, std::time::Duration::ZERO, 16),
        Arc::new(source.clone()),
        keyring,
        VersionIdKey::new(SecretBytes::from_slice(&[2; 32])),
        Settings {
            audience: "keyward".into(),
            provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
            provider_audience: None,
        },
    )
    .with_audit(audit)
    .with_serve_metrics(metrics.clone());
    World {
        svc,
        source,
        metrics,
        audit_path,
        _dir: dir,
    }
}

impl World {
    fn audit_bytes(&self) -> usize {
        std::fs::read(&self.audit_path).map_or(0, |b| b.len())
    }
}

fn request(keys: usize) -> FetchRequest {
    FetchRequest {
        pod_token: POD.into(),
        pod_namespace: "team-a".into(),
        pod_name: "web-0".into(),
        pod_uid: String::new(),
        service_account: "web".into(),
        keys: (0..keys)
            .map(|i| KeyRequest {
                key: format!("k{i}"),
                selector: None,
            })
            .collect(),
        pod_token_expiration: String::new(),
    }
}

#[tokio::test]
async fn an_unauthenticated_request_with_a_1_mib_pod_name_writes_nothing_to_the_audit_file() {
    let w = world();
    let mut r = request(1);
    r.pod_name = "x".repeat(1 << 20);
    r.pod_namespace = "n\n{\"forged\":1}".into();
    for caller in [None, Some(""), Some("forged-token")] {
        let e = w.svc.fetch(caller, &r, None).await.unwrap_err();
        assert!(
            matches!(e, FetchError::CallerUnauthenticated(_)),
            "{caller:?}: {e}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unauthenticated);
    }
    // The caller is a valid service account, but not the provider.
    let e = w.svc.fetch(Some(POD), &r, None).await.unwrap_err();
    assert!(matches!(e, FetchError::CallerNotProvider(_)), "{e}");
    assert_eq!(
        w.audit_bytes(),
        0,
        "an unauthenticated caller wrote to the audit file"
    );
    assert_eq!(w.metrics.unauthenticated_refusals.get(), 4);
    assert_eq!(w.source.gets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_newline_in_a_pod_name_is_refused_before_anything_is_recorded() {
    let w = world();
    let mut r = request(1);
    r.pod_name = "web-0\n{\"seq\":1,\"forged\":true}".into();
    let e = w.svc.fetch(Some(PROVIDER), &r, None).await.unwrap_err();
    assert_eq!(e.reason(), "invalid_request");
    let s = tonic::Status::from(e);
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message()
            .contains("pod_name contains the control character U+000A"),
        "{}",
        s.message()
    );
    assert!(!s.message().contains("forged"), "{}", s.message());
    assert_eq!(w.audit_bytes(), 0);
    assert_eq!(w.metrics.invalid_requests.get(), 1);
    assert_eq!(w.metrics.unauthenticated_refusals.get(), 0);
}

#[tokio::test]
async fn more_keys_than_the_cap_are_refused_without_a_lookup() {
    let w = world();
    let r = request(limits::MAX_KEYS_PER_MOUNT + 1);
    let e = w.svc.fetch(Some(PROVIDER), &r, None).await.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::Request(RequestError::TooManyKeys { count: 65 })
        ),
        "{e}"
    );
    assert_eq!(w.source.gets.load(Ordering::SeqCst), 0);
    assert_eq!(w.audit_bytes(), 0);
}

#[tokio::test]
async fn lookups_of_one_mount_run_at_most_max_concurrent_lookups_at_once() {
    let w = world();
    let r = request(limits::MAX_KEYS_PER_MOUNT);
    let e = w.svc.fetch(Some(PROVIDER), &r, None).await.unwrap_err();
    assert!(matches!(e, FetchError::KeyNotFound(_)), "{e}");
    assert_eq!(w.source.gets.load(Ordering::SeqCst), 64);
    let max = w.source.max.load(Ordering::SeqCst);
    assert!(
        (2..=limits::MAX_CONCURRENT_LOOKUPS).contains(&max),
        "{max} lookups ran at once"
    );
    // A valid, authenticated request is audited (the refusal names the missing key).
    assert!(w.audit_bytes() > 0);
}

#[tokio::test]
async fn lookups_across_mounts_stay_within_the_service_wide_bound() {
    let w = Arc::new(world());
    let r = Arc::new(request(limits::MAX_KEYS_PER_MOUNT));
    let mounts: Vec<_> = (0..20)
        .map(|_| {
            let (w, r) = (w.clone(), r.clone());
            tokio::spawn(async move { w.svc.fetch(Some(PROVIDER), &r, None).await })
        })
        .collect();
    for m in mounts {
        assert!(m.await.unwrap().is_err());
    }
    let max = w.source.max.load(Ordering::SeqCst);
    assert!(
        max <= limits::MAX_LOOKUPS_IN_FLIGHT,
        "{max} lookups at once"
    );
    assert_eq!(w.source.gets.load(Ordering::SeqCst), 20 * 64);
}
