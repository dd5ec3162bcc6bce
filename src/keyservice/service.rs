//! The key service's decision: authenticate caller and pod, authorise each key, select
//! versions, unwrap. Every refusal is logged on the `keyward::audit` target.

use super::auth::{AuthError, CachingReviewer, Identity, TokenReviewer};
use super::limits::{self, RequestError};
use super::select::{SelectError, Selector, select};
use super::source::{KeyRecord, KeySource, SourceError};
use super::version_id::VersionIdKey;
use crate::crypto::fingerprint;
use crate::kek::Keyring;
use crate::proto::keyservice::{
    FetchRequest, FetchResponse, KeyResult, ServedVersion, version_selector,
};
use crate::storage::{self, StorageError};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Audit target: refusals and deliveries, structured, never key bytes.
pub const AUDIT_TARGET: &str = "keyward::audit";

/// Why a Fetch failed. Each variant maps to one gRPC code; messages name the object and fix.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The provider's own credentials are missing or invalid.
    #[error("key service refused the provider's credentials: {0}")]
    CallerUnauthenticated(String),
    /// The caller is a valid service account but not the configured provider.
    #[error(
        "caller {0} is not the CSI provider service account this key service accepts (--provider-service-account)"
    )]
    CallerNotProvider(String),
    /// The pod token is missing or invalid.
    #[error("pod service-account token rejected: {0}")]
    PodUnauthenticated(String),
    /// Verified identity does not match the pod the mount is for.
    #[error("{0}")]
    IdentityMismatch(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A string field is out of bounds or there are too many keys: refused before the pod is
    /// authenticated and before anything of the request is recorded.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A requested key name is not one the pod may ask for.
    #[error(transparent)]
    KeyName(#[from] KeyNameError),
    /// The ManagedKey does not exist.
    #[error(
        "ManagedKey {0} not found; create it, or fix `key` in the objects parameter (`name` for the pod's namespace, `namespace/name` for another)"
    )]
    KeyNotFound(String),
    /// The pod's service account is not allowed.
    #[error(
        "service account {sa} may not mount ManagedKey {key}; add {{namespace: {ns}, name: {name}}} to its spec.access.serviceAccounts"
    )]
    Denied {
        /// `namespace/name` of the key.
        key: String,
        /// `namespace/name` of the service account.
        sa: String,
        /// SA namespace.
        ns: String,
        /// SA name.
        name: String,
    },
    /// No version may be served.
    #[error("ManagedKey {key} {source}")]
    NotServable {
        /// `namespace/name`.
        key: String,
        /// Why.
        source: SelectError,
    },
    /// A public-only grant on a symmetric key: the key has no public part, so nothing can be
    /// mounted until the ManagedKey's owner changes the grant or the algorithm.
    #[error(
        "{key} is a symmetric {algorithm} key: a public-only grant cannot mount it; grant full access or use an asymmetric algorithm"
    )]
    PublicOnlySymmetric {
        /// `namespace/name`.
        key: String,
        /// The key's algorithm.
        algorithm: &'static str,
    },
    /// Reading or unwrapping failed.
    #[error("{0}")]
    Internal(String),
    /// The API server was unreachable.
    #[error("{0}")]
    Unavailable(String),
}

impl FetchError {
    /// Short machine-readable reason for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CallerUnauthenticated(_) => "caller_unauthenticated",
            Self::CallerNotProvider(_) => "caller_not_provider",
            Self::PodUnauthenticated(_) => "pod_unauthenticated",
            Self::IdentityMismatch(_) => "identity_mismatch",
            Self::InvalidArgument(_) | Self::KeyName(_) => "invalid_argument",
            Self::Request(_) => "invalid_request",
            Self::KeyNotFound(_) => "key_not_found",
            Self::Denied { .. } => "access_denied",
            Self::NotServable { .. } => "not_servable",
            Self::PublicOnlySymmetric { .. } => "public_only_symmetric",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl FetchError {
    /// The gRPC code the provider receives for this refusal.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            FetchError::CallerUnauthenticated(_) | FetchError::PodUnauthenticated(_) => {
                Code::Unauthenticated
            }
            FetchError::CallerNotProvider(_)
            | FetchError::IdentityMismatch(_)
            | FetchError::Denied { .. } => Code::PermissionDenied,
            FetchError::InvalidArgument(_) | FetchError::KeyName(_) | FetchError::Request(_) => {
                Code::InvalidArgument
            }
            FetchError::KeyNotFound(_)
            | FetchError::NotServable {
                source: SelectError::NoSuchVersion(_),
                ..
            } => Code::NotFound,
            FetchError::NotServable { .. } | FetchError::PublicOnlySymmetric { .. } => {
                Code::FailedPrecondition
            }
            FetchError::Internal(_) => Code::Internal,
            FetchError::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<FetchError> for tonic::Status {
    fn from(e: FetchError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Settings the key service enforces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Audience pod tokens must carry.
    pub audience: String,
    /// The provider's service account (`namespace`, `name`).
    pub provider_sa: (String, String),
    /// Audience the provider's own token is checked for (None = API server default).
    pub provider_audience: Option<String>,
}

/// The key service's logic, independent of transport.
pub struct KeyService<R: TokenReviewer> {
    reviewer: CachingReviewer<R>,
    source: Arc<dyn KeySource>,
    keyring: Keyring,
    version_key: VersionIdKey,
    settings: Settings,
    audit: Arc<crate::audit::Audit>,
    served: Arc<super::ServedMemory>,
    metrics: super::ServeMetrics,
    /// Unwrapped material by version: one KEK call per version, not per Mount.
    materials: super::material_cache::MaterialCache,
    /// ManagedKey lookups in flight across all requests (API-server load stays bounded however
    /// many Mounts arrive at once).
    lookups: Arc<tokio::sync::Semaphore>,
}

/// Why a `key` in a Mount request is not a ManagedKey name this pod may ask for; each message
/// names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyNameError {
    /// `namespace/name` whose namespace part is not a DNS label.
    #[error(
        "key {0:?}: the part before '/' must be a namespace (a DNS label); write `name` for a key of the pod's namespace or `namespace/name` for a key shared from another"
    )]
    Namespace(String),
    /// Not a DNS subdomain.
    #[error("key {0:?} is not a valid ManagedKey name (lowercase letters, digits, '-' and '.')")]
    Invalid(String),
}

/// The namespace and name a requested `key` refers to: `name` is in the pod's namespace,
/// `namespace/name` in another one (served only when that key's own `spec.access` names the
/// pod's namespace and service account).
pub fn key_ref<'a>(pod_namespace: &'a str, key: &'a str) -> (&'a str, &'a str) {
    key.split_once('/').unwrap_or((pod_namespace, key))
}

/// Validate a requested key: a ManagedKey name (a DNS subdomain), optionally after a namespace
/// and '/'; the error names the fix.
pub fn check_key_name(key: &str) -> Result<(), KeyNameError> {
    let name = match key.split_once('/') {
        Some((ns, name)) => {
            if limits::check_namespace(ns).is_err() {
                return Err(KeyNameError::Namespace(key.into()));
            }
            name
        }
        None => key,
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(KeyNameError::Invalid(key.into()))
    }
}

fn selector(s: &Option<crate::proto::keyservice::VersionSelector>) -> Selector {
    match s.as_ref().and_then(|s| s.select) {
        None | Some(version_selector::Select::Current(_)) => Selector::Current,
        Some(version_selector::Select::Previous(_)) => Selector::Previous,
        Some(version_selector::Select::All(_)) => Selector::All,
        Some(version_selector::Select::Number(n)) => Selector::Number(n),
    }
}

/// Who asked, for the audit log.
struct AuditCtx<'a> {
    req: &'a FetchRequest,
    verified: Option<&'a Identity>,
    sink: &'a crate::audit::Audit,
    served: &'a super::ServedMemory,
}

impl AuditCtx<'_> {
    /// `namespace/name` of the pod the mount is for.
    fn pod(&self) -> String {
        format!("{}/{}", self.req.pod_namespace, self.req.pod_name)
    }

    /// One entry in the tamper-evident audit log (refusals and deliveries alike).
    fn append(
        &self,
        actor: String,
        key: &str,
        version: Option<u32>,
        outcome: &str,
        reason: String,
    ) -> Result<(), crate::audit::AuditError> {
        self.sink.append_only(crate::audit::AuditEvent {
            actor,
            action: "mount".into(),
            key: {
                let (ns, name) = key_ref(&self.req.pod_namespace, key);
                format!("{ns}/{name}")
            },
            version,
            outcome: outcome.into(),
            reason,
            pod: Some(self.pod()),
            node: None,
        })
    }

    fn refuse(&self, key: &str, version: &str, e: &FetchError) {
        let sa = self.verified.map_or_else(
            || {
                format!(
                    "{}/{} (unverified)",
                    self.req.pod_namespace, self.req.service_account
                )
            },
            Identity::sa,
        );
        // Request strings are Debug-formatted (quoted, control characters escaped): a newline
        // in a pod name cannot start a forged line on stdout.
        tracing::warn!(
            target: AUDIT_TARGET,
            time = %jiff::Timestamp::now(),
            pod = ?self.pod(),
            pod_uid = ?self.req.pod_uid,
            sa = ?sa,
            key = ?key,
            version = ?version,
            outcome = "denied",
            reason = e.reason(),
            detail = ?e.to_string(),
            "key request refused"
        );
        // A refusal serves nothing: with the log unwritable it is counted, never blocking.
        let _ = self.append(sa, key, version.parse().ok(), "denied", e.to_string());
    }

    /// Record versions about to be served. `Err` (the response must not be sent) when
    /// `--audit-failure=closed` and the log cannot be written.
    fn served(&self, key: &str, versions: &[u32]) -> Result<(), crate::audit::AuditError> {
        // Checked before the served memory marks anything, so a refused response is retried
        // (and audited) in full.
        self.sink.ensure_writable()?;
        // Only what changed is recorded: a version this pod already received from this replica
        // is a re-mount (counted in keyward_key_service_repeat_serves).
        let pod_id = if self.req.pod_uid.is_empty() {
            self.pod()
        } else {
            self.req.pod_uid.clone()
        };
        let versions: Vec<u32> = versions
            .iter()
            .copied()
            .filter(|v| {
                self.served
                    .first_time(&pod_id, &self.req.pod_namespace, key, *v)
            })
            .collect();
        if versions.is_empty() {
            return Ok(());
        }
        let sa = self.verified.map(Identity::sa).unwrap_or_default();
        tracing::info!(
            target: AUDIT_TARGET,
            time = %jiff::Timestamp::now(),
            pod = ?self.pod(),
            pod_uid = ?self.req.pod_uid,
            sa = ?sa,
            key = ?key,
            version = ?versions,
            outcome = "served",
            "key served"
        );
        for v in &versions {
            self.append(sa.clone(), key, Some(*v), "ok", "served".into())?;
        }
        Ok(())
    }
}

impl<R: TokenReviewer> KeyService<R> {
    /// Wire the pieces together; `reviewer` should be a caching reviewer in production.
    pub fn new(
        reviewer: CachingReviewer<R>,
        source: Arc<dyn KeySource>,
        keyring: Keyring,
        version_key: VersionIdKey,
        settings: Settings,
    ) -> Self {
        Self {
            reviewer,
            source,
            keyring,
            version_key,
            settings,
            audit: Arc::new(crate::audit::Audit::stdout_only()),
            served: Arc::new(super::ServedMemory::new(
                super::served::DEFAULT_CAPACITY,
                super::ServeMetrics::default(),
            )),
            metrics: super::ServeMetrics::default(),
            materials: super::material_cache::MaterialCache::new(Default::default()),
            lookups: Arc::new(tokio::sync::Semaphore::new(limits::MAX_LOOKUPS_IN_FLIGHT)),
        }
    }

    /// Export serve counters through `metrics` (first serves vs re-mounts).
    pub fn with_serve_metrics(mut self, metrics: super::ServeMetrics) -> Self {
        self.served = Arc::new(super::ServedMemory::new(
            super::served::DEFAULT_CAPACITY,
            metrics.clone(),
        ));
        self.reviewer.set_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// The material of `version`: from the cache when this exact envelope of this version in
    /// this state was unwrapped under the current primary KEK within the TTL, else unwrapped
    /// (one KEK call), checked against the recorded fingerprint and cached.
    async fn material(
        &self,
        rec: &KeyRecord,
        meta: &crate::state::StoredVersion,
        ns: &str,
        name: &str,
        version: u32,
    ) -> Result<Arc<Zeroizing<Vec<u8>>>, FetchError> {
        let envelope = rec.stored.envelopes.get(&version).map(Vec::as_slice);
        let entry = envelope.map(|env| {
            super::material_cache::EntryKey::new(
                &rec.key.metadata.uid.clone().unwrap_or_default(),
                version,
                meta.state.as_str(),
                &meta.fingerprint,
                env,
                self.keyring.describe(),
            )
        });
        if let Some(m) = entry.as_ref().and_then(|k| self.materials.get(k)) {
            self.metrics.material_cache_hits.inc();
            return Ok(m);
        }
        self.metrics.material_cache_misses.inc();
        let unwrapped =
            storage::unwrap_version(&self.keyring, &rec.stored, ns, name, version).await;
        let outcome = if unwrapped.is_ok() { "ok" } else { "error" };
        self.metrics
            .kek_unwraps
            .get_or_create(&super::served::KekCallLabels {
                backend: self.keyring.primary().kind().into(),
                outcome: outcome.into(),
            })
            .inc();
        let m = unwrapped.map_err(|e: StorageError| {
            FetchError::Internal(format!("{e} (check the key service's KEK configuration)"))
        })?;
        if !meta.fingerprint.is_empty() && fingerprint(&m) != meta.fingerprint {
            return Err(FetchError::Internal(format!(
                "version {version} of {ns}/{name}: material does not match the recorded fingerprint"
            )));
        }
        let m = Arc::new(Zeroizing::new(m.expose().to_vec()));
        if let Some(k) = entry {
            self.materials.insert(k, m.clone());
            let st = self.materials.stats();
            self.metrics.material_cache_entries.set(st.entries as i64);
            self.metrics.material_cache_bytes.set(st.bytes as i64);
        }
        Ok(m)
    }

    /// Bound (or, with a zero TTL, turn off) the unwrapped-material cache.
    pub fn with_material_cache(mut self, limits: super::material_cache::Limits) -> Self {
        self.materials = super::material_cache::MaterialCache::new(limits);
        self
    }

    /// Also write mounts served and refused to this tamper-evident audit log.
    pub fn with_audit(mut self, audit: Arc<crate::audit::Audit>) -> Self {
        self.audit = audit;
        self
    }

    /// Authenticate the provider (`caller_token`), bound the request, authenticate the pod,
    /// then answer. Nothing of the request reaches the audit file before the caller is the
    /// provider and every field is within [`limits`]; refusals before that are counted and
    /// logged with bounded, escaped fields only.
    pub async fn fetch(
        &self,
        caller_token: Option<&str>,
        req: &FetchRequest,
        pod_token_expiry: Option<SystemTime>,
    ) -> Result<FetchResponse, FetchError> {
        let started = std::time::Instant::now();
        let r = self
            .fetch_uncounted(caller_token, req, pod_token_expiry)
            .await;
        self.metrics
            .fetch_duration
            .0
            .observe(started.elapsed().as_secs_f64());
        let (outcome, code) = match &r {
            Ok(_) => ("ok", tonic::Code::Ok),
            Err(e) => (e.reason(), e.code()),
        };
        self.metrics
            .fetches
            .get_or_create(&super::served::FetchLabels {
                outcome: outcome.into(),
                code: format!("{code:?}"),
            })
            .inc();
        r
    }

    async fn fetch_uncounted(
        &self,
        caller_token: Option<&str>,
        req: &FetchRequest,
        pod_token_expiry: Option<SystemTime>,
    ) -> Result<FetchResponse, FetchError> {
        if let Err(e) = self.authenticate_caller(caller_token).await {
            self.metrics.unauthenticated_refusals.inc();
            tracing::warn!(
                target: AUDIT_TARGET,
                time = %jiff::Timestamp::now(),
                claimed_pod = %limits::preview(&req.pod_name, 64),
                claimed_namespace = %limits::preview(&req.pod_namespace, 64),
                outcome = "denied",
                reason = e.reason(),
                detail = %limits::preview(&e.to_string(), 512),
                "key request refused: caller not authenticated (not recorded in the audit file)"
            );
            return Err(e);
        }
        if let Err(e) = limits::check_request(req) {
            self.metrics.invalid_requests.inc();
            tracing::warn!(
                target: AUDIT_TARGET,
                time = %jiff::Timestamp::now(),
                field = e.field(),
                outcome = "denied",
                reason = "invalid_request",
                detail = %e,
                "key request refused: a field is out of bounds (not recorded in the audit file)"
            );
            return Err(e.into());
        }
        let audit = AuditCtx {
            req,
            verified: None,
            sink: &self.audit,
            served: &self.served,
        };
        let r = self.authenticate_pod(req, pod_token_expiry).await;
        let pod = match r {
            Ok(id) => id,
            Err(e) => {
                audit.refuse("*", "*", &e);
                return Err(e);
            }
        };
        let audit = AuditCtx {
            req,
            verified: Some(&pod),
            sink: &self.audit,
            served: &self.served,
        };
        self.answer(&pod, req, &audit).await
    }

    /// The caller must be the configured provider service account.
    async fn authenticate_caller(&self, caller_token: Option<&str>) -> Result<(), FetchError> {
        let caller_token = caller_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            FetchError::CallerUnauthenticated(
                "no bearer token in the `authorization` metadata (check the provider's --token-file)"
                    .into(),
            )
        })?;
        let caller = self
            .reviewer
            .review_with_hint(
                caller_token,
                self.settings.provider_audience.as_deref(),
                None,
            )
            .await
            .map_err(|e| match e {
                AuthError::Api(_) => FetchError::Unavailable(e.to_string()),
                e => FetchError::CallerUnauthenticated(e.to_string()),
            })?;
        let (pns, pname) = &self.settings.provider_sa;
        if &caller.namespace != pns || &caller.service_account != pname {
            return Err(FetchError::CallerNotProvider(caller.sa()));
        }
        Ok(())
    }

    /// The pod token must be valid for our audience and match the pod the mount is for.
    async fn authenticate_pod(
        &self,
        req: &FetchRequest,
        pod_token_expiry: Option<SystemTime>,
    ) -> Result<Identity, FetchError> {
        if req.pod_token.is_empty() {
            return Err(FetchError::PodUnauthenticated(format!(
                "the mount request carries no token for audience {:?}; set `tokenRequests: [{{audience: {}}}]` on the CSIDriver secrets-store.csi.k8s.io",
                self.settings.audience, self.settings.audience
            )));
        }
        let pod = self
            .reviewer
            .review_with_hint(
                &req.pod_token,
                Some(&self.settings.audience),
                pod_token_expiry,
            )
            .await
            .map_err(|e| match e {
                AuthError::Api(_) => FetchError::Unavailable(e.to_string()),
                e => FetchError::PodUnauthenticated(e.to_string()),
            })?;
        if pod.namespace != req.pod_namespace || pod.service_account != req.service_account {
            return Err(FetchError::IdentityMismatch(format!(
                "the pod token belongs to service account {} but the mount is for {}/{}",
                pod.sa(),
                req.pod_namespace,
                req.service_account
            )));
        }
        let bound_mismatch = |bound: &Option<String>, claimed: &str| {
            bound
                .as_deref()
                .is_some_and(|b| !claimed.is_empty() && b != claimed)
        };
        if bound_mismatch(&pod.pod_name, &req.pod_name)
            || bound_mismatch(&pod.pod_uid, &req.pod_uid)
        {
            return Err(FetchError::IdentityMismatch(format!(
                "the pod token is bound to another pod than {}/{}",
                req.pod_namespace, req.pod_name
            )));
        }
        Ok(pod)
    }

    /// One ManagedKey read, holding a permit of the service-wide lookup bound.
    async fn lookup(&self, ns: &str, name: &str) -> Result<Option<KeyRecord>, SourceError> {
        let _permit = self.lookups.acquire().await;
        self.source.get(ns, name).await
    }

    async fn answer(
        &self,
        pod: &Identity,
        req: &FetchRequest,
        audit: &AuditCtx<'_>,
    ) -> Result<FetchResponse, FetchError> {
        let fail = |key: &str, version: &str, e: FetchError| {
            audit.refuse(key, version, &e);
            e
        };
        if req.keys.is_empty() {
            return Err(fail(
                "*",
                "*",
                FetchError::InvalidArgument("no keys requested".into()),
            ));
        }
        for k in &req.keys {
            check_key_name(&k.key).map_err(|e| fail(&k.key, "*", e.into()))?;
        }
        // Each ManagedKey is read once per request, at most MAX_CONCURRENT_LOOKUPS at a time
        // and MAX_LOOKUPS_IN_FLIGHT across requests: a Mount never fans out to the API server
        // without bound.
        let mut names: Vec<&str> = req.keys.iter().map(|k| k.key.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let pod_ns = pod.namespace.as_str();
        // Futures are lazy: `buffered` starts at most N of them at once.
        let lookups: Vec<_> = names
            .iter()
            .map(|n| {
                let (ns, name) = key_ref(pod_ns, n);
                self.lookup(ns, name)
            })
            .collect();
        let loaded: Vec<Result<Option<KeyRecord>, SourceError>> = futures::stream::iter(lookups)
            .buffered(limits::MAX_CONCURRENT_LOOKUPS)
            .collect()
            .await;
        let mut records: HashMap<&str, KeyRecord> = HashMap::new();
        for (name, r) in names.iter().zip(loaded) {
            match r {
                Ok(Some(rec)) => {
                    records.insert(name, rec);
                }
                Ok(None) => {
                    let (kns, kname) = key_ref(pod_ns, name);
                    // Another namespace's missing key is answered like one not granted: a pod
                    // must not learn which keys exist in namespaces it has no grant from.
                    let e = if kns == pod_ns {
                        FetchError::KeyNotFound(format!("{kns}/{kname}"))
                    } else {
                        FetchError::Denied {
                            key: format!("{kns}/{kname}"),
                            sa: pod.sa(),
                            ns: pod.namespace.clone(),
                            name: pod.service_account.clone(),
                        }
                    };
                    return Err(fail(name, "*", e));
                }
                Err(e @ (SourceError::Kube { .. } | SourceError::Unavailable(_))) => {
                    return Err(fail(name, "*", FetchError::Unavailable(e.to_string())));
                }
                Err(e) => return Err(fail(name, "*", FetchError::Internal(e.to_string()))),
            }
        }
        let now = jiff::Timestamp::now();
        // Unwrapped material, shared between objects naming the same version.
        let mut unwrapped: HashMap<(&str, &str, u32), bytes::Bytes> = HashMap::new();
        let mut out = Vec::with_capacity(req.keys.len());
        for k in &req.keys {
            let requested = k.key.as_str();
            // The key's own namespace and name: the pod's namespace, or the one `ns/name` names.
            let (ns, name) = key_ref(pod_ns, requested);
            let sel = selector(&k.selector);
            let rec = &records[requested];
            let grants: Vec<bool> = rec
                .key
                .spec
                .access
                .service_accounts
                .iter()
                .filter(|s| s.namespace == pod.namespace && s.name == pod.service_account)
                .map(|s| s.public_only)
                .collect();
            let allowed = !grants.is_empty();
            // A full grant wins over a public-only one for the same service account.
            let public_only = allowed && grants.iter().all(|p| *p);
            let algorithm = rec.key.spec.algorithm;
            if public_only && algorithm.is_symmetric() {
                return Err(fail(
                    requested,
                    &sel.to_string(),
                    FetchError::PublicOnlySymmetric {
                        key: format!("{ns}/{name}"),
                        algorithm: algorithm.as_str(),
                    },
                ));
            }
            if !allowed {
                return Err(fail(
                    requested,
                    &sel.to_string(),
                    FetchError::Denied {
                        key: format!("{ns}/{name}"),
                        sa: pod.sa(),
                        ns: pod.namespace.clone(),
                        name: pod.service_account.clone(),
                    },
                ));
            }
            if rec.key.metadata.deletion_timestamp.is_some() {
                return Err(fail(
                    requested,
                    &sel.to_string(),
                    FetchError::NotServable {
                        key: format!("{ns}/{name}"),
                        source: SelectError::Deleted,
                    },
                ));
            }
            let selection = select(&rec.stored.state, rec.grace, sel, now).map_err(|source| {
                fail(
                    requested,
                    &sel.to_string(),
                    FetchError::NotServable {
                        key: format!("{ns}/{name}"),
                        source,
                    },
                )
            })?;
            let mut versions = Vec::with_capacity(selection.versions.len());
            for v in &selection.versions {
                let Some(meta) = rec.stored.state.versions.iter().find(|x| x.version == *v) else {
                    return Err(fail(
                        requested,
                        &v.to_string(),
                        FetchError::Internal(format!(
                            "version {v} of {ns}/{name} was selected but is not stored"
                        )),
                    ));
                };
                let material = match unwrapped.get(&(ns, name, *v)) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self
                            .material(rec, meta, ns, name, *v)
                            .await
                            .map_err(|e| fail(requested, &v.to_string(), e))?;
                        let b = if public_only {
                            let der = crate::keys::public_spki_der(
                                algorithm,
                                &crate::crypto::SecretBytes::from_slice(&m),
                            )
                            .map_err(|e| {
                                fail(
                                    requested,
                                    &v.to_string(),
                                    FetchError::Internal(e.to_string()),
                                )
                            })?
                            .unwrap_or_default();
                            bytes::Bytes::from(der)
                        } else {
                            bytes::Bytes::from_owner(Zeroizing::new(m.to_vec()))
                        };
                        unwrapped.insert((ns, name, *v), b.clone());
                        b
                    }
                };
                versions.push(ServedVersion {
                    version: *v,
                    state: meta.state.as_str().into(),
                    material,
                    fingerprint: meta.fingerprint.clone(),
                    version_id: self.version_key.id(ns, name, *v),
                });
            }
            audit
                .served(requested, &selection.versions)
                .map_err(|e| FetchError::Unavailable(e.to_string()))?;
            out.push(KeyResult {
                // As requested (`name` or `namespace/name`): the provider matches on it.
                key: requested.into(),
                algorithm: rec.key.spec.algorithm.as_str().into(),
                versions,
                current: selection.current.unwrap_or(0),
                next: selection.next.unwrap_or(0),
                public_only,
            });
        }
        Ok(FetchResponse { keys: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn key_names_are_checked_naming_the_fix() {
        assert_eq!(check_key_name("db.v2-key"), Ok(()));
        // Another namespace's key: served only if that key's access names the pod.
        assert_eq!(check_key_name("team-b/db"), Ok(()));
        assert_eq!(key_ref("team-a", "team-b/db"), ("team-b", "db"));
        assert_eq!(key_ref("team-a", "db"), ("team-a", "db"));
        for bad_ns in [
            "Team-B/db",
            "/db",
            "team_b/db",
            &format!("{}/db", "n".repeat(64)),
        ] {
            assert_eq!(
                check_key_name(bad_ns),
                Err(KeyNameError::Namespace(bad_ns.into())),
                "{bad_ns}"
            );
        }
        for bad in [
            "",
            "Db",
            "-db",
            "db-",
            "d_b",
            &"a".repeat(254),
            "a/b/c",
            "team-b/",
        ] {
            assert_eq!(
                check_key_name(bad),
                Err(KeyNameError::Invalid(bad.into())),
                "{bad}"
            );
        }
        let e = FetchError::from(check_key_name("Team/db").unwrap_err());
        assert_eq!(e.reason(), "invalid_argument");
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("`namespace/name`"), "{}", s.message());
    }

    /// A public-only grant on a symmetric key is the key owner's to fix, not a server fault.
    #[test]
    fn public_only_grant_on_a_symmetric_key_is_failed_precondition_naming_the_fix() {
        let e = FetchError::PublicOnlySymmetric {
            key: "team-a/db".into(),
            algorithm: crate::crd::KeyAlgorithm::Aes256.as_str(),
        };
        assert_eq!(e.reason(), "public_only_symmetric");
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().contains("team-a/db is a symmetric aes-256 key")
                && s.message()
                    .contains("grant full access or use an asymmetric algorithm"),
            "{}",
            s.message()
        );
    }
}
