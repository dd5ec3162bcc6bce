//! Shared harness: a key service over TLS (throwaway CA from rcgen) and a provider on a temp
//! unix socket, with an in-memory TokenReview and key store standing in for the API server.
#![allow(dead_code)]

use hyper_util::rt::TokioIo;
use keyward::crd::{AccessPolicy, ManagedKey, ManagedKeySpec, ServiceAccountRef};
use keyward::crypto::{Algorithm, KeyContext, SecretBytes, fingerprint};
use keyward::kek::{Keyring, local::LocalKek};
use keyward::keyservice::{
    AuthError, CachingReviewer, Identity, KeyRecord, KeyService, KeySource, Settings, SourceError,
    TokenReviewer, VersionIdKey,
};
use keyward::lifecycle::KeyState;
use keyward::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use keyward::proto::csi::{MountRequest, MountResponse};
use keyward::provider::Provider;
use keyward::provider::{CallerToken, ClientConfig, KeyServiceClient};
use keyward::rotation::StoredState;
use keyward::storage::Stored;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::transport::{Channel, Endpoint, ServerTlsConfig};

pub const NS: &str = "team-a";
pub const SA: &str = "web";
pub const PROVIDER_TOKEN: &str = "provider-token";
/// Audience of the API server's default tokens in the fake.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

#[derive(Clone)]
pub struct FakeToken {
    pub id: Identity,
    pub audiences: Vec<String>,
    pub expires: SystemTime,
}

/// TokenReview as the API server answers it: unknown -> not authenticated, expired -> not
/// authenticated, audience not among the token's -> not authenticated.
#[derive(Default)]
pub struct FakeReviewer {
    pub tokens: Mutex<HashMap<String, FakeToken>>,
    pub calls: AtomicUsize,
}

pub struct SharedReviewer(pub Arc<FakeReviewer>);

#[async_trait::async_trait]
impl TokenReviewer for SharedReviewer {
    async fn review(&self, token: &str, audience: Option<&str>) -> Result<Identity, AuthError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let t = self.0.tokens.lock().unwrap().get(token).cloned();
        let t = t.ok_or_else(|| AuthError::Rejected("invalid bearer token".into()))?;
        if t.expires <= SystemTime::now() {
            return Err(AuthError::Rejected("token has expired".into()));
        }
        let want = audience.unwrap_or(API_AUDIENCE);
        if !t.audiences.iter().any(|a| a == want) {
            return Err(AuthError::Rejected(
                "token audiences are invalid for the target audiences".into(),
            ));
        }
        Ok(t.id)
    }
}

/// ManagedKeys and their storage in memory; counts reads.
#[derive(Default)]
pub struct MemorySource {
    pub keys: Mutex<HashMap<(String, String), KeyRecord>>,
    pub gets: AtomicUsize,
}

pub struct SharedSource(pub Arc<MemorySource>);

#[async_trait::async_trait]
impl KeySource for SharedSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<KeyRecord>, SourceError> {
        self.0.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .0
            .keys
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
}

pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throwaway CA and a server certificate for `localhost`.
pub fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Certs {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub reviewer: Arc<FakeReviewer>,
    pub source: Arc<MemorySource>,
    pub keyring: Keyring,
    pub key_service_url: String,
    pub certs: Certs,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub fn keyring() -> Keyring {
    Keyring::new(Arc::new(
        LocalKek::in_memory(
            "test",
            SecretBytes::from_slice(&[42; 32]),
            Algorithm::Aes256Kwp,
        )
        .unwrap(),
    ))
}

impl Env {
    /// Key service on TLS with `cache` TTL, provider on a temp socket.
    pub async fn start(cache: Duration) -> Env {
        let reviewer = Arc::new(FakeReviewer::default());
        let source = Arc::new(MemorySource::default());
        let keyring = keyring();
        let certs = certs();
        let provider_sa = Identity {
            namespace: "keyward-system".into(),
            service_account: "keyward-csi-provider".into(),
            pod_name: None,
            pod_uid: None,
        };
        reviewer.tokens.lock().unwrap().insert(
            PROVIDER_TOKEN.into(),
            FakeToken {
                id: provider_sa,
                audiences: vec![API_AUDIENCE.into()],
                expires: SystemTime::now() + Duration::from_secs(3600),
            },
        );
        let svc = KeyService::new(
            CachingReviewer::new(SharedReviewer(reviewer.clone()), cache, 1024),
            Arc::new(SharedSource(source.clone())),
            keyring.clone(),
            VersionIdKey::new(SecretBytes::from_slice(&[7; 32])),
            Settings {
                audience: "keyward".into(),
                provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
                provider_audience: None,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &certs.cert_pem,
            &certs.key_pem,
        ));
        let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(keyward::keyservice::serve_on(
            listener,
            Arc::new(svc),
            Some(tls),
            async {
                let _ = rx1.await;
            },
        ));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("providers/keyward.sock");
        let mut env = Env {
            dir,
            socket,
            reviewer,
            source,
            keyring,
            key_service_url: format!("https://localhost:{port}"),
            certs,
            stop: vec![tx1],
        };
        let client = env.client(PROVIDER_TOKEN);
        let p = env.socket.clone();
        env.stop.push(env.start_provider(client, &p));
        wait_for_socket(&env.socket).await;
        env
    }

    pub fn client(&self, token: &str) -> KeyServiceClient {
        KeyServiceClient::new(
            &ClientConfig {
                url: self.key_service_url.clone(),
                ca_pem: Some(self.certs.ca_pem.clone().into_bytes()),
                server_name: None,
                client_identity: None,
                insecure: false,
                timeout: Duration::from_secs(10),
            },
            CallerToken::Static(token.into()),
        )
        .unwrap()
    }

    /// Start another provider (e.g. with other credentials) on `socket`.
    pub fn start_provider(
        &self,
        client: KeyServiceClient,
        socket: &std::path::Path,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let socket = socket.to_path_buf();
        tokio::spawn(async move {
            keyward::provider::serve(&socket, Provider::new(Arc::new(client), "keyward"), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        tx
    }

    /// Register a pod token with the fake TokenReview.
    pub fn add_token(
        &self,
        token: &str,
        ns: &str,
        sa: &str,
        pod: &str,
        audiences: &[&str],
        ttl: i64,
    ) {
        let expires = if ttl >= 0 {
            SystemTime::now() + Duration::from_secs(ttl as u64)
        } else {
            SystemTime::now() - Duration::from_secs((-ttl) as u64)
        };
        self.reviewer.tokens.lock().unwrap().insert(
            token.into(),
            FakeToken {
                id: Identity {
                    namespace: ns.into(),
                    service_account: sa.into(),
                    pod_name: Some(pod.into()),
                    pod_uid: Some(format!("uid-{pod}")),
                },
                audiences: audiences.iter().map(|s| s.to_string()).collect(),
                expires,
            },
        );
    }

    /// Store a key `ns/name` allowing `allowed`, with `versions` built by `KeyBuilder`.
    pub async fn put_key(&self, ns: &str, name: &str, allowed: &[(&str, &str)], kb: KeyBuilder) {
        let rec = kb.record(&self.keyring, ns, name, allowed).await;
        self.source
            .keys
            .lock()
            .unwrap()
            .insert((ns.into(), name.into()), rec);
    }

    /// Change a stored key in place.
    pub fn edit(&self, ns: &str, name: &str, f: impl FnOnce(&mut KeyRecord)) {
        let mut m = self.source.keys.lock().unwrap();
        f(m.get_mut(&(ns.to_string(), name.to_string())).unwrap());
    }

    pub async fn mount(&self, attrs: &serde_json::Value) -> Result<MountResponse, tonic::Status> {
        mount_on(&self.socket, attrs).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
    }
}

pub async fn wait_for_socket(p: &std::path::Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(p).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("socket {} never came up", p.display());
}

/// A gRPC channel to a unix socket, as the driver dials it.
pub async fn uds_channel(p: &std::path::Path) -> Channel {
    let p = p.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .unwrap()
}

pub async fn mount_on(
    socket: &std::path::Path,
    attrs: &serde_json::Value,
) -> Result<MountResponse, tonic::Status> {
    let mut c = CsiDriverProviderClient::new(uds_channel(socket).await);
    c.mount(driver_request(attrs)).await.map(|r| r.into_inner())
}

/// A Mount request as the Secrets Store CSI Driver v1.6.0 builds it
/// (`pkg/secrets-store/nodeserver.go` `NodePublishVolume` + `provider_client.go`
/// `MountContent`): `secrets` is `json.Marshal` of a nil map, the text `null`, when the pod
/// has no nodePublishSecretRef; `permission` is `json.Marshal(os.FileMode(0644))` = `420`;
/// `current_object_version` is never filled; `target_path` is kubelet's. The Python stand-in
/// (tests/py/csi_driver.py) builds the same request.
pub fn driver_request(attrs: &serde_json::Value) -> MountRequest {
    let uid = attrs["csi.storage.k8s.io/pod.uid"]
        .as_str()
        .unwrap_or("uid");
    MountRequest {
        attributes: attrs.to_string(),
        secrets: "null".into(),
        target_path: format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/secrets-store-inline/mount"
        ),
        permission: "420".into(),
        current_object_version: vec![],
    }
}

/// Driver-style attributes (kubelet pod-info keys, token map as a JSON string) for pod `pod` of `ns`/`sa` with `objects`, token for `keyward`.
pub fn attrs(
    ns: &str,
    sa: &str,
    pod: &str,
    token: Option<&str>,
    objects: &str,
) -> serde_json::Value {
    let mut a = serde_json::json!({
        "secretProviderClass": "keys",
        "csi.storage.k8s.io/pod.name": pod,
        "csi.storage.k8s.io/pod.namespace": ns,
        "csi.storage.k8s.io/pod.uid": format!("uid-{pod}"),
        "csi.storage.k8s.io/serviceAccount.name": sa,
        // Inline (Ephemeral) volumes, the only mode the driver's CSIDriver declares.
        "csi.storage.k8s.io/ephemeral": "true",
        "objects": objects,
    });
    if let Some(t) = token {
        let exp = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        a["csi.storage.k8s.io/serviceAccount.tokens"] =
            serde_json::json!({"keyward": {"token": t, "expirationTimestamp": exp.to_string()}})
                .to_string()
                .into();
    }
    a
}

/// Versions to store: (state, seconds ago of the last transition).
#[derive(Default, Clone)]
pub struct KeyBuilder {
    pub versions: Vec<(KeyState, i64)>,
    pub grace_secs: Option<i64>,
}

impl KeyBuilder {
    pub fn with(mut self, state: KeyState, ago: i64) -> Self {
        self.versions.push((state, ago));
        self
    }

    pub fn grace(mut self, secs: i64) -> Self {
        self.grace_secs = Some(secs);
        self
    }

    pub async fn record(
        &self,
        keyring: &Keyring,
        ns: &str,
        name: &str,
        allowed: &[(&str, &str)],
    ) -> KeyRecord {
        let mut stored = Stored::default();
        for (i, (state, ago)) in self.versions.iter().enumerate() {
            let v = i as u32 + 1;
            add_version(keyring, &mut stored, ns, name, v, *state, *ago).await;
        }
        let mut key = ManagedKey::new(
            name,
            ManagedKeySpec {
                access: AccessPolicy {
                    service_accounts: allowed
                        .iter()
                        .map(|(n, s)| ServiceAccountRef {
                            namespace: n.to_string(),
                            name: s.to_string(),
                            public_only: false,
                        })
                        .collect(),
                },
                ..Default::default()
            },
        );
        key.metadata.namespace = Some(ns.into());
        KeyRecord {
            key,
            stored,
            grace: self
                .grace_secs
                .map(keyward::duration::Duration::from_secs)
                .unwrap_or(keyward::rotation::DEFAULT_GRACE),
        }
    }
}

/// Known material for version `v` of `ns/name`, so tests can check file contents.
pub fn material(ns: &str, name: &str, v: u32) -> Vec<u8> {
    keyward::crypto::hmac_sha256(
        b"test-material",
        &[ns.as_bytes(), name.as_bytes(), &v.to_be_bytes()],
    )
    .to_vec()
}

/// Wrap and record version `v` in `state`, its last transition `ago` seconds back.
pub async fn add_version(
    keyring: &Keyring,
    stored: &mut Stored,
    ns: &str,
    name: &str,
    v: u32,
    state: KeyState,
    ago: i64,
) {
    let now = jiff::Timestamp::now();
    let at = now - jiff::SignedDuration::from_secs(ago);
    let created = at - jiff::SignedDuration::from_secs(60);
    let m = SecretBytes::new(material(ns, name, v));
    let env = keyring
        .wrap(&KeyContext::new(ns, name, v), &m)
        .await
        .unwrap();
    stored.envelopes.insert(v, env.encode().unwrap());
    let st: &mut StoredState = &mut stored.state;
    st.add_version(v, created, fingerprint(&m), Some(keyring.describe()), None);
    let path: &[KeyState] = match state {
        KeyState::PreActivation => &[],
        KeyState::Active => &[KeyState::Active],
        KeyState::Suspended => &[KeyState::Active, KeyState::Suspended],
        KeyState::Deactivated => &[KeyState::Active, KeyState::Deactivated],
        KeyState::Compromised => &[KeyState::Active, KeyState::Compromised],
        KeyState::Destroyed => &[KeyState::Active, KeyState::Deactivated, KeyState::Destroyed],
    };
    for s in path {
        st.transition(v, *s, at, "test").unwrap();
    }
    if state == KeyState::Destroyed {
        stored.envelopes.remove(&v);
    }
}

/// The `p` quantile of sorted durations (benchmarks).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Mounts of `req` from `clients` concurrent driver connections to the provider at `socket`
/// for `secs` seconds; prints the rate and returns how many were made (benchmarks).
pub async fn mount_throughput(
    socket: &std::path::Path,
    req: MountRequest,
    clients: usize,
    secs: u64,
) -> u64 {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let ch = uds_channel(socket).await;
        let (done, req) = (done.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = CsiDriverProviderClient::new(ch);
            while std::time::Instant::now() < until {
                c.mount(req.clone()).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = std::time::Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "  throughput: {:.0} mounts/s with {clients} concurrent clients ({n} mounts in {:.1}s)",
        n as f64 / t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    n
}

/// `n` sequential Mounts of `req` on one connection to the provider at `socket`, after
/// `warm_up` unmeasured ones; prints p50, p99 and the slowest (benchmarks).
pub async fn mount_latency(
    socket: &std::path::Path,
    label: &str,
    req: MountRequest,
    warm_up: usize,
    n: usize,
) {
    let mut c = CsiDriverProviderClient::new(uds_channel(socket).await);
    for _ in 0..warm_up {
        c.mount(req.clone()).await.unwrap();
    }
    let mut d = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let r = c.mount(req.clone()).await.unwrap();
        d.push(t.elapsed());
        assert!(!r.into_inner().files.is_empty());
    }
    d.sort();
    println!(
        "  {label}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({n} sequential mounts)",
        percentile(&d, 0.50).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3,
        d[d.len() - 1].as_secs_f64() * 1e3
    );
}
