//! Who is calling: service-account tokens verified by the API server (TokenReview), with a
//! short-lived cache so a burst of mounts does not become a burst of TokenReviews.

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A verified service-account identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Service account namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Pod the token is bound to, when it is a bound token.
    pub pod_name: Option<String>,
    /// UID of that pod.
    pub pod_uid: Option<String>,
}

impl Identity {
    /// `namespace/name` of the service account.
    pub fn sa(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// Why a token was not accepted. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The API server did not authenticate the token (forged, expired, wrong audience...).
    #[error("token rejected by the API server: {0}")]
    Rejected(String),
    /// Authenticated, but not as a service account.
    #[error("token belongs to {0:?}, which is not a service account")]
    NotServiceAccount(String),
    /// Authenticated for other audiences than required.
    #[error("token is not valid for audience {wanted:?} (valid for {got:?})")]
    WrongAudience {
        /// Required audience.
        wanted: String,
        /// Audiences the API server reported.
        got: Vec<String>,
    },
    /// The TokenReview call failed.
    #[error(
        "TokenReview failed: {0} (the key service needs RBAC `create tokenreviews.authentication.k8s.io`)"
    )]
    Api(#[from] kube::Error),
}

/// Verifies tokens. The Kubernetes implementation is [`KubeTokenReviewer`]; tests use fakes.
#[async_trait::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// Verify `token` for `audience` (None = the API server's default audience).
    async fn review(&self, token: &str, audience: Option<&str>) -> Result<Identity, AuthError>;
}

/// Parse `system:serviceaccount:<ns>:<name>`.
pub fn parse_sa_username(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (ns.to_string(), name.to_string()))
}

/// TokenReview against the API server.
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl KubeTokenReviewer {
    /// Uses `client`'s credentials (needs `create tokenreviews`).
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

#[async_trait::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str, audience: Option<&str>) -> Result<Identity, AuthError> {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: audience.map(|a| vec![a.to_string()]),
            },
            ..Default::default()
        };
        let out = self.api.create(&PostParams::default(), &tr).await?;
        let st = out.status.unwrap_or_default();
        if st.authenticated != Some(true) {
            return Err(AuthError::Rejected(
                st.error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if let Some(want) = audience {
            let got = st.audiences.unwrap_or_default();
            if !got.iter().any(|a| a == want) {
                return Err(AuthError::WrongAudience {
                    wanted: want.into(),
                    got,
                });
            }
        }
        let user = st.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) =
            parse_sa_username(&username).ok_or(AuthError::NotServiceAccount(username))?;
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        Ok(Identity {
            namespace,
            service_account,
            pod_name: one("authentication.kubernetes.io/pod-name"),
            pod_uid: one("authentication.kubernetes.io/pod-uid"),
        })
    }
}

/// Expiry (`exp` claim) of a JWT, read without verifying: only used to shorten the cache
/// lifetime of a token the API server has already verified (the signature covers `exp`).
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

type CacheKey = ([u8; 32], Option<String>);

/// Caches successful reviews by SHA-256 of the token (never the token itself) for at most
/// `ttl`, and never past the token's own expiry. Failures are not cached.
pub struct CachingReviewer<R> {
    inner: R,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<CacheKey, (Identity, Instant)>>,
    /// Callers that miss together for one token wait for the first one's review.
    gates: super::gates::Gates<CacheKey>,
    metrics: super::ServeMetrics,
}

impl<R: TokenReviewer> CachingReviewer<R> {
    /// `ttl` zero disables caching.
    pub fn new(inner: R, ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner,
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
            gates: Default::default(),
            metrics: super::ServeMetrics::default(),
        }
    }

    /// Count reviews and cache hits in `metrics` (the key service's).
    pub fn set_metrics(&mut self, metrics: super::ServeMetrics) {
        self.metrics = metrics;
    }

    /// One TokenReview, counted by outcome.
    async fn review_counted(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let r = self.inner.review(token, audience).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(AuthError::Api(_)) => "error",
            Err(_) => "rejected",
        };
        self.metrics
            .token_reviews
            .get_or_create(&super::served::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        r
    }

    /// A live cache entry for `key`, counted as a hit.
    fn cached(&self, key: &CacheKey) -> Option<Identity> {
        let m = self.entries.lock().expect("cache lock");
        let (id, until) = m.get(key)?;
        if *until <= Instant::now() {
            return None;
        }
        self.metrics.token_cache_hits.inc();
        Some(id.clone())
    }

    /// Verify, using the cache; `hint` (e.g. the driver's expirationTimestamp) can only
    /// shorten the cached lifetime.
    pub async fn review_with_hint(
        &self,
        token: &str,
        audience: Option<&str>,
        hint: Option<SystemTime>,
    ) -> Result<Identity, AuthError> {
        if self.ttl.is_zero() {
            return self.review_counted(token, audience).await;
        }
        let key: CacheKey = (
            crate::crypto::module::sha256(token.as_bytes()),
            audience.map(Into::into),
        );
        if let Some(id) = self.cached(&key) {
            return Ok(id);
        }
        // One review per token at a time: a Mount that missed while another was reviewing
        // the same token finds the cache filled once it gets its turn.
        let _turn = self.gates.enter(&key).await;
        if let Some(id) = self.cached(&key) {
            return Ok(id);
        }
        let now = Instant::now();
        let id = self.review_counted(token, audience).await?;
        let mut until = now + self.ttl;
        for exp in [jwt_expiry(token), hint].into_iter().flatten() {
            let left = exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            until = until.min(now + left);
        }
        if until > now {
            let mut m = self.entries.lock().expect("cache lock");
            if m.len() >= self.max_entries {
                m.retain(|_, (_, u)| *u > now);
                if m.len() >= self.max_entries {
                    m.clear();
                }
            }
            m.insert(key, (id.clone(), until));
        }
        Ok(id)
    }
}

#[async_trait::async_trait]
impl<R: TokenReviewer> TokenReviewer for CachingReviewer<R> {
    async fn review(&self, token: &str, audience: Option<&str>) -> Result<Identity, AuthError> {
        self.review_with_hint(token, audience, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    #[async_trait::async_trait]
    impl TokenReviewer for Counting {
        async fn review(&self, token: &str, _: Option<&str>) -> Result<Identity, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if token.starts_with("bad") {
                return Err(AuthError::Rejected("forged".into()));
            }
            Ok(Identity {
                namespace: "ns".into(),
                service_account: "sa".into(),
                pod_name: None,
                pod_uid: None,
            })
        }
    }

    fn jwt(exp: u64) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    #[test]
    fn parses_service_account_usernames_only() {
        assert_eq!(
            parse_sa_username("system:serviceaccount:team-a:web"),
            Some(("team-a".into(), "web".into()))
        );
        assert_eq!(parse_sa_username("alice"), None);
        assert_eq!(parse_sa_username("system:serviceaccount:ns"), None);
        assert_eq!(parse_sa_username("system:serviceaccount::x"), None);
    }

    #[test]
    fn reads_jwt_expiry() {
        let t = jwt(2_000_000_000);
        assert_eq!(
            jwt_expiry(&t),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
    }

    /// Counts reviews and takes 20 ms each, so concurrent callers overlap.
    struct Slow(AtomicUsize);

    #[async_trait::async_trait]
    impl TokenReviewer for Slow {
        async fn review(&self, token: &str, a: Option<&str>) -> Result<Identity, AuthError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Counting(AtomicUsize::new(0)).review(token, a).await?;
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Identity {
                namespace: "ns".into(),
                service_account: token.into(),
                pod_name: None,
                pod_uid: None,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_missing_together_share_one_review_per_token() {
        let c = Arc::new(CachingReviewer::new(
            Slow(AtomicUsize::new(0)),
            Duration::from_secs(30),
            64,
        ));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let c = c.clone();
            let token = if i % 2 == 0 { "tok-a" } else { "tok-b" };
            tasks.push(tokio::spawn(async move {
                c.review(token, Some("keyward")).await.unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let id = t.await.unwrap();
            let want = if i % 2 == 0 { "tok-a" } else { "tok-b" };
            assert_eq!(id.service_account, want, "an answer for another token");
        }
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 2, "one review per token");
        assert!(c.gates.is_empty());
        // Refusals are never shared or cached: each caller's bad token is asked about.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.review("bad", None).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
    }

    #[tokio::test]
    async fn caches_success_not_failure_and_respects_expiry() {
        let c = CachingReviewer::new(Counting(AtomicUsize::new(0)), Duration::from_secs(30), 4);
        let far = jwt(4_000_000_000);
        c.review(&far, Some("keyward")).await.unwrap();
        c.review(&far, Some("keyward")).await.unwrap();
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 1);
        // Another audience is another entry.
        c.review(&far, Some("other")).await.unwrap();
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 2);
        // Failures are asked again every time.
        assert!(c.review("bad", None).await.is_err());
        assert!(c.review("bad", None).await.is_err());
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 4);
        // An already-expired JWT is never cached.
        let past = jwt(1_000);
        c.review(&past, None).await.unwrap();
        c.review(&past, None).await.unwrap();
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 6);
        // A hint in the past prevents caching too.
        let hint = Some(SystemTime::now() - Duration::from_secs(1));
        c.review_with_hint("opaque", None, hint).await.unwrap();
        c.review_with_hint("opaque", None, hint).await.unwrap();
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 8);
    }

    #[test]
    fn an_identity_names_its_service_account_as_namespace_slash_name() {
        let id = Identity {
            namespace: "team-a".into(),
            service_account: "web".into(),
            pod_name: None,
            pod_uid: None,
        };
        assert_eq!(id.sa(), "team-a/web");
    }

    /// One TokenReview through `KubeTokenReviewer` against a mock API server answering
    /// `status`; the result and the request body the reviewer sent.
    async fn kube_review(
        token: &str,
        audience: Option<&str>,
        status: serde_json::Value,
    ) -> (Result<Identity, AuthError>, serde_json::Value) {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reviewer = KubeTokenReviewer::new(kube::Client::new(svc, "default"));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one request");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(
                req.uri().path(),
                "/apis/authentication.k8s.io/v1/tokenreviews"
            );
            let sent: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            let mut reply = sent.clone();
            reply["status"] = status;
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
            sent
        });
        let r = reviewer.review(token, audience).await;
        (r, server.await.unwrap())
    }

    #[tokio::test]
    async fn token_reviews_are_read_as_the_api_server_means_them() {
        let sa = "system:serviceaccount:team-a:web";
        // Accepted: the identity, with the pod a bound token names.
        let (r, sent) = kube_review(
            "tok-1",
            Some("keyward"),
            serde_json::json!({"authenticated": true, "audiences": ["keyward"],
                "user": {"username": sa, "extra": {
                    "authentication.kubernetes.io/pod-name": ["web-0"],
                    "authentication.kubernetes.io/pod-uid": ["uid-0"]}}}),
        )
        .await;
        assert_eq!(
            sent["spec"]["token"], "tok-1",
            "the token is what is reviewed"
        );
        assert_eq!(sent["spec"]["audiences"], serde_json::json!(["keyward"]));
        let id = r.unwrap();
        assert_eq!(id.sa(), "team-a/web");
        assert_eq!(id.pod_name.as_deref(), Some("web-0"));
        assert_eq!(id.pod_uid.as_deref(), Some("uid-0"));
        // Not authenticated: refused with the server's reason, or a generic one when empty.
        let (r, _) = kube_review(
            "t",
            None,
            serde_json::json!({"authenticated": false, "error": "token expired"}),
        )
        .await;
        assert!(
            matches!(&r, Err(AuthError::Rejected(m)) if m == "token expired"),
            "{r:?}"
        );
        let (r, _) = kube_review(
            "t",
            None,
            serde_json::json!({"authenticated": false, "error": ""}),
        )
        .await;
        assert!(
            matches!(&r, Err(AuthError::Rejected(m)) if m == "not authenticated"),
            "{r:?}"
        );
        let (r, _) = kube_review("t", None, serde_json::json!({})).await;
        assert!(matches!(r, Err(AuthError::Rejected(_))), "no status is no");
        // Authenticated for another audience: refused; without an asked audience: accepted.
        let other = serde_json::json!({"authenticated": true, "audiences": ["other"],
            "user": {"username": sa}});
        let (r, _) = kube_review("t", Some("keyward"), other.clone()).await;
        assert!(matches!(r, Err(AuthError::WrongAudience { .. })), "{r:?}");
        let (r, sent) = kube_review("t", None, other).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(sent["spec"].get("audiences").is_none_or(|a| a.is_null()));
        // Authenticated, but not a service account.
        let (r, _) = kube_review(
            "t",
            None,
            serde_json::json!({"authenticated": true, "user": {"username": "alice"}}),
        )
        .await;
        assert!(matches!(r, Err(AuthError::NotServiceAccount(_))), "{r:?}");
    }

    #[tokio::test]
    async fn reviews_are_counted_in_the_metrics_it_is_given() {
        let mut c = CachingReviewer::new(Counting(AtomicUsize::new(0)), Duration::from_secs(30), 4);
        let metrics = super::super::ServeMetrics::default();
        c.set_metrics(metrics.clone());
        let t = jwt(4_000_000_000);
        c.review(&t, None).await.unwrap();
        c.review(&t, None).await.unwrap();
        let ok = metrics
            .token_reviews
            .get_or_create(&super::super::served::OutcomeLabels {
                outcome: "ok".into(),
            })
            .get();
        assert_eq!(ok, 1);
        assert_eq!(metrics.token_cache_hits.get(), 1);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded_and_drops_expired_entries_first() {
        let c = CachingReviewer::new(Counting(AtomicUsize::new(0)), Duration::from_secs(30), 2);
        let far = |s: &str| format!("{}{s}", jwt(4_000_000_000));
        // An expired token is never stored.
        c.review(&jwt(1_000), None).await.unwrap();
        assert_eq!(c.entries.lock().unwrap().len(), 0);
        // Up to the bound, every entry stays: no second review.
        c.review(&far("a"), None).await.unwrap();
        c.review(&far("b"), None).await.unwrap();
        c.review(&far("a"), None).await.unwrap();
        c.review(&far("b"), None).await.unwrap();
        assert_eq!(c.inner.0.load(Ordering::SeqCst), 3);
        // Full of live entries: a new one clears the map (bounded), then is stored.
        c.review(&far("c"), None).await.unwrap();
        assert_eq!(c.entries.lock().unwrap().len(), 1);
        // An entry past its hint goes first, and the live one stays.
        let soon = Some(SystemTime::now() + Duration::from_millis(30));
        c.review_with_hint(&far("d"), None, soon).await.unwrap();
        assert_eq!(c.entries.lock().unwrap().len(), 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let before = c.inner.0.load(Ordering::SeqCst);
        c.review(&far("e"), None).await.unwrap();
        let m = c.entries.lock().unwrap().len();
        assert_eq!(m, 2, "the expired entry was dropped, the live one kept");
        c.review(&far("c"), None).await.unwrap();
        assert_eq!(
            c.inner.0.load(Ordering::SeqCst),
            before + 1,
            "the live entry was still cached"
        );
    }
}
