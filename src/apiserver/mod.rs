//! A Kubernetes API test server that the unmodified kube-rs client and runtime, keyward's
//! binaries, and `kubectl` talk to. Test support only: it is not part of what users deploy.
//!
//! Start it with [`TestApiServer::start`]; it listens on 127.0.0.1 over TLS (a throwaway CA
//! made at start, written into the kubeconfig), writes a kubeconfig with an admin bearer
//! token, and keeps everything in memory. TLS is not optional: kubectl does not send bearer
//! tokens to plain-HTTP servers.
//!
//! # Known differences from a real kube-apiserver
//!
//! * TLS with a per-run self-signed CA; bearer tokens only (admin token, plus service-account
//!   tokens issued by TokenRequest or registered by tests). Authorization is allow-all for
//!   any authenticated caller: RBAC objects are stored but not enforced.
//! * No admission plugins, no quotas, no defaulting of built-in types (pods are stored as
//!   sent), no pod scheduling or kubelet: objects only exist as API state.
//! * Custom resources: one stored version, served as every version without conversion
//!   (`strategy: None`). Validation covers type, required, enum, minimum/maximum (and
//!   exclusive), minLength/maxLength, pattern, minItems/maxItems, nullable,
//!   x-kubernetes-int-or-string, x-kubernetes-preserve-unknown-fields and pruning; defaults
//!   and `x-kubernetes-validations` CEL rules are evaluated by the `kube-cel` crate. `format`,
//!   `oneOf/anyOf/allOf/not`, list-type/map-type uniqueness are not checked.
//! * Patches: JSON merge patch and JSON patch (with `test`) as specified; strategic merge
//!   patch is a JSON merge patch except that lists of objects with a `name` field
//!   (containers, env, volumes, ports...) merge by name; server-side apply is a merge
//!   patch of the applied configuration with create-if-missing (field managers, ownership
//!   and conflicts are not tracked; `force` is accepted and ignored). `managedFields` are
//!   not maintained.
//! * Deletion: finalizers and `deletionTimestamp` as in Kubernetes; garbage collection is
//!   background-only and immediate (no foreground/orphan propagation; `propagationPolicy` is
//!   accepted and ignored). No grace periods.
//! * Watch: ADDED/MODIFIED/DELETED/BOOKMARK/ERROR; a bounded event history (default 100,000
//!   changes, see [`ServerOptions::history`]) decides which resourceVersions can resume;
//!   older ones get `410 Expired`. Bookmarks are sent every 2 seconds when asked for.
//!   `sendInitialEvents=true` is supported. List pagination (`limit`/`continue`) is
//!   ignored: lists are always complete.
//! * Tables (`kubectl get`): NAME + the CRD's additionalPrinterColumns (simple JSONPath:
//!   dotted fields and `[n]` indexes), or NAME + AGE for built-ins.
//! * OpenAPI: `/openapi/v3` lists nothing and `/openapi/v2` is an empty document, so kubectl
//!   skips client-side schema validation (no `--validate=false` needed) and the server's own
//!   schema validation answers with 422 as the real one does.
//! * Discovery: legacy (`/api`, `/apis`, `/apis/G/V`); aggregated discovery is not served
//!   and clients fall back to legacy discovery.
//! * TokenReview: answered from a table of tokens -> service account, pod and audiences;
//!   unknown or expired tokens and audience mismatches are `authenticated: false`.

mod protobuf;
mod schema;
mod store;
mod table;
mod types;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::State;
pub use store::{Change, StoreError};
use types::ResType;

/// Identity behind a service-account token, for TokenReview.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenIdentity {
    /// Service account namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Pod the token is bound to.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// UID of that pod.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Audiences the token is valid for (empty = the API server's).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Expiry.
    #[serde(default)]
    pub expires_at: Option<jiff::Timestamp>,
}

/// What an injected fault does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Answer with this HTTP status (409, 429, 500...) and a Status body.
    Status(u16),
    /// Drop the connection without an answer.
    Drop,
    /// Only delay (see `delay_ms`), then serve normally.
    Delay,
}

/// Fail (or delay) the next `times` requests matching verb / resource / name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (None = any).
    #[serde(default)]
    pub verb: Option<String>,
    /// Plural resource, optionally with subresource (`managedkeys/status`) (None = any).
    #[serde(default)]
    pub resource: Option<String>,
    /// Object name (None = any).
    #[serde(default)]
    pub name: Option<String>,
    /// How many requests to affect.
    pub times: usize,
    /// What to do.
    pub kind: FaultKind,
    /// Delay before answering, milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

impl Fault {
    /// Fail the next `times` matching requests with HTTP `code`.
    pub fn status(verb: &str, resource: &str, code: u16, times: usize) -> Self {
        Self {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            name: None,
            times,
            kind: FaultKind::Status(code),
            delay_ms: 0,
        }
    }
}

/// Options for [`TestApiServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Port (None = a free one).
    pub port: Option<u16>,
    /// Where to write the kubeconfig (None = a temp dir owned by the server).
    pub kubeconfig: Option<PathBuf>,
    /// Watch history length in changes (0 = default 100,000).
    pub history: usize,
}

struct Inner {
    ca_pem: String,
    ca_der: Vec<u8>,
    state: Mutex<State>,
    changes: tokio::sync::broadcast::Sender<Arc<Change>>,
    admin_token: String,
    tokens: Mutex<HashMap<String, TokenIdentity>>,
    faults: Mutex<Vec<Fault>>,
    close_watches: tokio::sync::watch::Sender<u64>,
}

/// The running server. Dropping it shuts it down.
pub struct TestApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApiServer {
    /// Start on a free port with a fresh temp dir.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Start with options.
    pub async fn start_with(opts: ServerOptions) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port.unwrap_or(0))).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = tokio::sync::broadcast::channel(65_536);
        let tls = Tls::generate()?;
        let inner = Arc::new(Inner {
            ca_pem: tls.ca_pem.clone(),
            ca_der: tls.ca_der.clone(),
            state: Mutex::new(State::new(if opts.history == 0 {
                100_000
            } else {
                opts.history
            })),
            changes,
            admin_token: format!("admin-{}", uuid::Uuid::new_v4().simple()),
            tokens: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            close_watches: tokio::sync::watch::channel(0).0,
        });
        let (dir, kubeconfig) = match opts.kubeconfig {
            Some(p) => (None, p),
            None => {
                let d = tempfile::tempdir()?;
                let p = d.path().join("kubeconfig");
                (Some(d), p)
            }
        };
        write_kubeconfig(
            &kubeconfig,
            &format!("https://{addr}"),
            &inner.admin_token,
            &inner.ca_pem,
        )?;
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config()?));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Ok(Self {
            inner,
            addr,
            kubeconfig,
            _dir: dir,
            stop: Some(tx),
        })
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    /// The kubeconfig (admin token) for `kubectl --kubeconfig` and kube-rs.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// An admin kube-rs client.
    pub async fn client(&self) -> kube::Client {
        let mut cfg = kube::Config::new(self.url().parse().expect("url"));
        cfg.root_cert = Some(vec![self.inner.ca_der.clone()]);
        cfg.auth_info.token = Some(self.inner.admin_token.clone().into());
        cfg.default_namespace = "default".into();
        kube::Client::try_from(cfg).expect("client")
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> String {
        self.inner.admin_token.clone()
    }

    /// Register a service-account token for TokenReview.
    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .insert(token.into(), identity);
    }

    /// Inject a fault.
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.faults.lock().expect("lock").push(fault);
    }

    /// End every open watch stream (clients must resume).
    pub fn close_watches(&self) {
        self.inner.close_watches.send_modify(|g| *g += 1);
    }

    /// Every stored object.
    pub fn snapshot(&self) -> Vec<Value> {
        let st = self.inner.state.lock().expect("lock");
        st.objects
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Shut down.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.close_watches();
    }
}

fn write_kubeconfig(path: &Path, server: &str, token: &str, ca_pem: &str) -> anyhow::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keyward-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: keyward-test\n  context:\n    cluster: keyward-test\n    user: admin\n    namespace: default\ncurrent-context: keyward-test\nusers:\n- name: admin\n  user:\n    token: {token}\n"
    );
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, cfg)?;
    Ok(())
}

struct Tls {
    ca_pem: String,
    ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Tls {
    /// A throwaway CA and a certificate for 127.0.0.1 / localhost.
    fn generate() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.cert_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    if let Some(d) = details {
        body["details"] = d;
    }
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn store_error(e: StoreError, t: Option<&ResType>, name: &str) -> Response {
    let details = |t: Option<&ResType>| json!({"name": name, "group": t.map(|t| t.group.clone()).unwrap_or_default(), "kind": t.map(|t| t.plural.clone()).unwrap_or_default()});
    match e {
        StoreError::NotFound(m) => status(404, "NotFound", m, Some(details(t))),
        StoreError::AlreadyExists(m) => status(409, "AlreadyExists", m, Some(details(t))),
        StoreError::Conflict(m) => status(409, "Conflict", m, Some(details(t))),
        StoreError::BadRequest(m) => status(400, "BadRequest", m, None),
        StoreError::MethodNotAllowed(m) => status(405, "MethodNotAllowed", m, None),
        StoreError::Invalid(m, causes) => {
            let mut d = details(t);
            d["kind"] = t.map(|t| t.kind.clone()).unwrap_or_default().into();
            d["causes"] = causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect::<Vec<_>>()
                .into();
            status(422, "Invalid", m, Some(d))
        }
    }
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed resource path.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(st: &State, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let t = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        group: group.into(),
        version: version.into(),
        namespace: ns.map(String::from),
        plural: plural.into(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    };
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && st.find_type(group, rest[2]).is_some_and(|x| x.namespaced)
    {
        return Some(t(Some(rest[1]), rest[2], rest.get(3), rest.get(4)));
    }
    match rest {
        [plural] => Some(t(None, plural, None, None)),
        [plural, name] => Some(t(None, plural, Some(name), None)),
        [plural, name, sub] => Some(t(None, plural, Some(name), Some(sub))),
        _ => None,
    }
}

fn verb_of(method: &Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let q = query(&uri);
    if segs.first() == Some(&"_test") {
        return admin(&inner, &method, &segs[1..], &body);
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let authed = match token {
        Some(t) if t == inner.admin_token => true,
        Some(t) => inner
            .tokens
            .lock()
            .expect("lock")
            .get(t)
            .is_some_and(|id| id.expires_at.is_none_or(|e| e > jiff::Timestamp::now())),
        None => false,
    };
    if !authed {
        return status(401, "Unauthorized", "Unauthorized".into(), None);
    }
    match segs.as_slice() {
        ["version"] => {
            return ok_json(
                StatusCode::OK,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-keyward-test", "gitCommit": "keyward", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => return (StatusCode::OK, "ok").into_response(),
        ["openapi", "v2"] => {
            return (
                StatusCode::OK,
                [(
                    "content-type",
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )],
                Vec::<u8>::new(),
            )
                .into_response();
        }
        ["openapi", "v3"] => return ok_json(StatusCode::OK, &json!({"paths": {}})),
        ["openapi", ..] => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
        }
        ["api"] => {
            return ok_json(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        ["apis"] => return ok_json(StatusCode::OK, &discovery_groups(&inner)),
        ["api", "v1"] => return ok_json(StatusCode::OK, &discovery_resources(&inner, "", "v1")),
        ["apis", g] => {
            let groups = discovery_groups(&inner);
            return match groups["groups"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == *g))
            {
                Some(grp) => {
                    let mut grp = grp.clone();
                    grp["kind"] = "APIGroup".into();
                    grp["apiVersion"] = "v1".into();
                    ok_json(StatusCode::OK, &grp)
                }
                None => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                    None,
                ),
            };
        }
        ["apis", g, v] => {
            let r = discovery_resources(&inner, g, v);
            return if r["resources"].as_array().is_some_and(|a| a.is_empty()) {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                    None,
                )
            } else {
                ok_json(StatusCode::OK, &r)
            };
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
        }
    };
    let target = {
        let st = inner.state.lock().expect("lock");
        parse_target(&st, group, version, rest)
    };
    let Some(target) = target else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    let verb = verb_of(&method, &target, &q);
    if let Some(r) = apply_fault(&inner, verb, &target).await {
        return r;
    }
    resource(&inner, &method, verb, target, &q, &headers, &body).await
}

async fn apply_fault(inner: &Inner, verb: &str, t: &Target) -> Option<Response> {
    let resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.plural),
        None => t.plural.clone(),
    };
    let hit = {
        let mut faults = inner.faults.lock().expect("lock");
        let i = faults.iter().position(|f| {
            f.times > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource
                    .as_deref()
                    .is_none_or(|r| r == resource || r == t.plural)
                && f.name
                    .as_deref()
                    .is_none_or(|n| Some(n) == t.name.as_deref())
        })?;
        faults[i].times -= 1;
        let f = faults[i].clone();
        if faults[i].times == 0 {
            faults.remove(i);
        }
        f
    };
    if hit.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hit.delay_ms)).await;
    }
    match hit.kind {
        FaultKind::Delay => None,
        FaultKind::Status(code) => {
            let reason = match code {
                409 => "Conflict",
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => "Unknown",
            };
            let mut r = status(
                code,
                reason,
                format!("injected fault: {code} for {verb} {resource}"),
                None,
            );
            if code == 429 {
                r.headers_mut()
                    .insert("retry-after", "1".parse().expect("header"));
            }
            Some(r)
        }
        // An empty body with a broken length makes hyper drop the connection mid-response.
        FaultKind::Drop => Some(
            Response::builder()
                .status(200)
                .header("content-length", "1000")
                .body(Body::from_stream(futures::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::other("injected drop"))
                })))
                .expect("response"),
        ),
    }
}

fn discovery_groups(inner: &Inner) -> Value {
    let st = inner.state.lock().expect("lock");
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in st.types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                for v in &t.versions {
                    if !vs.contains(v) {
                        vs.push(v.clone());
                    }
                }
            }
            None => groups.push((t.group.clone(), t.versions.clone())),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.iter().map(|(g, vs)| json!({
        "name": g,
        "versions": vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]},
    })).collect::<Vec<_>>()})
}

fn discovery_resources(inner: &Inner, group: &str, version: &str) -> Value {
    let st = inner.state.lock().expect("lock");
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = st
        .types
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .flat_map(|t| t.discovery())
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") {
        if let Some(v) = protobuf::decode(body) {
            return Ok(v);
        }
        return Err(status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
            ),
            None,
        ));
    }
    if ct.contains("yaml") {
        serde_yaml_ng::from_slice(body)
            .map_err(|e| status(400, "BadRequest", format!("invalid YAML body: {e}"), None))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| status(400, "BadRequest", format!("invalid JSON body: {e}"), None))
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn publish(inner: &Inner, changes: Vec<Arc<Change>>) {
    for c in changes {
        let _ = inner.changes.send(c);
    }
}

async fn resource(
    inner: &Arc<Inner>,
    method: &Method,
    verb: &str,
    t: Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let rt = {
        let st = inner.state.lock().expect("lock");
        st.find_type(&t.group, &t.plural).cloned()
    };
    let Some(rt) = rt else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    if !rt.versions.contains(&t.version) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    }
    let ns = if rt.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let name = t.name.clone().unwrap_or_default();

    // Virtual create-only resources.
    if rt.plural == "tokenreviews" && verb == "create" {
        return match parse_body(headers, body) {
            Ok(b) => ok_json(StatusCode::CREATED, &token_review(inner, b)),
            Err(r) => r,
        };
    }
    if rt.plural == "subjectaccessreviews" && verb == "create" {
        return match parse_body(headers, body) {
            Ok(mut b) => {
                b["status"] = json!({"allowed": true, "reason": "test API server allows every authenticated request"});
                ok_json(StatusCode::CREATED, &b)
            }
            Err(r) => r,
        };
    }
    if rt.plural == "serviceaccounts" && t.sub.as_deref() == Some("token") && verb == "create" {
        return match parse_body(headers, body) {
            Ok(b) => token_request(inner, &rt, &ns, &name, b),
            Err(r) => r,
        };
    }
    if rt.create_only {
        return status(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on {}", rt.plural),
            None,
        );
    }
    let status_only = match t.sub.as_deref() {
        None => false,
        Some("status") if rt.status => true,
        Some(s) => {
            return status(
                404,
                "NotFound",
                format!("subresource {s} of {} not found", rt.plural),
                None,
            );
        }
    };
    let in_ns = if rt.namespaced {
        t.namespace.as_deref()
    } else {
        None
    };

    match verb {
        "list" => {
            let st = inner.state.lock().expect("lock");
            let mut items = st.list(&rt, in_ns);
            if let Err(e) = filter(&mut items, q) {
                return status(400, "BadRequest", e, None);
            }
            let rv = st.rv.to_string();
            drop(st);
            for it in &mut items {
                it["apiVersion"] = rt.api_version(&t.version).into();
            }
            if wants_table(headers) {
                return ok_json(StatusCode::OK, &table::table(&rt, &t.version, &items, &rv));
            }
            ok_json(
                StatusCode::OK,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&t.version), "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        "watch" => watch(
            inner.clone(),
            rt,
            t.version.clone(),
            in_ns.map(String::from),
            q.clone(),
        ),
        "get" => {
            let obj = inner
                .state
                .lock()
                .expect("lock")
                .get(&rt, &ns, &name)
                .cloned();
            match obj {
                Some(mut o) => {
                    o["apiVersion"] = rt.api_version(&t.version).into();
                    if wants_table(headers) {
                        let rv = o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        return ok_json(StatusCode::OK, &table::table(&rt, &t.version, &[o], &rv));
                    }
                    ok_json(StatusCode::OK, &o)
                }
                None => store_error(
                    StoreError::NotFound(format!("{} {name:?} not found", qualified(&rt))),
                    Some(&rt),
                    &name,
                ),
            }
        }
        "create" => {
            let b = match parse_body(headers, body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let r = inner
                .state
                .lock()
                .expect("lock")
                .create(&rt, &t.version, &ns, b);
            answer(inner, r, StatusCode::CREATED, &rt, &name)
        }
        "update" => {
            let b = match parse_body(headers, body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let r = inner.state.lock().expect("lock").update(
                &rt,
                &t.version,
                &ns,
                &name,
                b,
                status_only,
            );
            answer(inner, r, StatusCode::OK, &rt, &name)
        }
        "patch" => patch(
            inner,
            &rt,
            &t.version,
            &ns,
            &name,
            status_only,
            headers,
            body,
        ),
        "delete" => {
            let r = inner.state.lock().expect("lock").delete(&rt, &ns, &name);
            answer(inner, r, StatusCode::OK, &rt, &name)
        }
        "deletecollection" => {
            let mut st = inner.state.lock().expect("lock");
            let mut items = st.list(&rt, in_ns);
            if let Err(e) = filter(&mut items, q) {
                return status(400, "BadRequest", e, None);
            }
            let mut all = Vec::new();
            for it in &items {
                let n = it["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ons = it["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Ok((_, ch)) = st.delete(&rt, &ons, &n) {
                    all.extend(ch);
                }
            }
            drop(st);
            publish(inner, all);
            ok_json(
                StatusCode::OK,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&t.version), "metadata": {}, "items": items}),
            )
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} not allowed"),
            None,
        ),
    }
}

/// Publish a write's changes and answer with the object, or map the store error.
fn answer(
    inner: &Inner,
    r: Result<(Value, Vec<Arc<Change>>), StoreError>,
    code: StatusCode,
    rt: &ResType,
    name: &str,
) -> Response {
    match r {
        Ok((o, ch)) => {
            publish(inner, ch);
            ok_json(code, &o)
        }
        Err(e) => store_error(e, Some(rt), name),
    }
}

fn qualified(t: &ResType) -> String {
    if t.group.is_empty() {
        t.plural.clone()
    } else {
        format!("{}.{}", t.plural, t.group)
    }
}

fn filter(items: &mut Vec<Value>, q: &HashMap<String, String>) -> Result<(), String> {
    if let Some(ls) = q.get("labelSelector").filter(|s| !s.is_empty()) {
        let mut keep = Vec::new();
        for it in items.drain(..) {
            if store::labels_match(ls, &it)? {
                keep.push(it);
            }
        }
        *items = keep;
    }
    if let Some(fs) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
        let mut keep = Vec::new();
        for it in items.drain(..) {
            if store::fields_match(fs, &it)? {
                keep.push(it);
            }
        }
        *items = keep;
    }
    Ok(())
}

fn matches(c: &Change, ns: Option<&str>, q: &HashMap<String, String>) -> bool {
    if ns.is_some_and(|n| n != c.namespace) {
        return false;
    }
    let mut one = vec![c.object.clone()];
    filter(&mut one, q).is_ok() && !one.is_empty()
}

fn watch(
    inner: Arc<Inner>,
    rt: ResType,
    version: String,
    ns: Option<String>,
    q: HashMap<String, String>,
) -> Response {
    let key = (rt.group.clone(), rt.plural.clone());
    let mut live = inner.changes.subscribe();
    let mut closed = inner.close_watches.subscribe();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let api_version = rt.api_version(&version);
    let requested: Option<u64> = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0 && !initial_events);

    // Initial part, computed under the lock together with the position in the stream.
    let (mut initial, mut last_rv, expired) = {
        let st = inner.state.lock().expect("lock");
        match requested {
            Some(rv) if rv < st.oldest_resumable() => {
                (Vec::new(), st.rv, Some((rv, st.oldest_resumable())))
            }
            Some(rv) => {
                let ev: Vec<Value> = st
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.key == key && matches(c, ns.as_deref(), &q))
                    .map(|c| json!({"type": c.etype, "object": c.object}))
                    .collect();
                (ev, st.rv, None)
            }
            None => {
                let mut items = st.list(&rt, ns.as_deref());
                let _ = filter(&mut items, &q);
                (
                    items
                        .into_iter()
                        .map(|o| json!({"type": "ADDED", "object": o}))
                        .collect(),
                    st.rv,
                    None,
                )
            }
        }
    };
    for e in &mut initial {
        e["object"]["apiVersion"] = api_version.clone().into();
    }
    if initial_events {
        initial.push(json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
    }
    let stream = async_stream_lines(move |tx| async move {
        if let Some((rv, oldest)) = expired {
            let e = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {rv} ({oldest})"), "reason": "Expired", "code": 410}});
            let _ = tx.send(e).await;
            return;
        }
        for e in initial {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = closed.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(b).await.is_err() { return; }
                }
                c = live.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last_rv { continue; }
                        last_rv = c.rv;
                        if c.key != key || !matches(&c, ns.as_deref(), &q) { continue; }
                        let mut o = c.object.clone();
                        o["apiVersion"] = api_version.clone().into();
                        if tx.send(json!({"type": c.etype, "object": o})).await.is_err() { return; }
                    }
                    // Too slow to keep up: end the watch; the client resumes from its last RV.
                    Err(_) => return,
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// A body stream fed by a task through a channel of JSON events (one per line).
fn async_stream_lines<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(256);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = v.to_string();
        line.push('\n');
        Some((Ok(Bytes::from(line)), rx))
    })
}

#[allow(clippy::too_many_arguments)]
fn patch(
    inner: &Inner,
    rt: &ResType,
    version: &str,
    ns: &str,
    name: &str,
    status_only: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut st = inner.state.lock().expect("lock");
    let cur = st.get(rt, ns, name).cloned();
    let result = (|| -> Result<(Value, Vec<Arc<Change>>, bool), StoreError> {
        if ct.starts_with("application/apply-patch") {
            let applied: Value = serde_yaml_ng::from_slice(body)
                .map_err(|e| StoreError::BadRequest(format!("invalid apply body: {e}")))?;
            return match cur {
                None if !status_only => {
                    let (o, c) = st.create(rt, version, ns, applied)?;
                    Ok((o, c, true))
                }
                None => Err(StoreError::NotFound(format!(
                    "{} {name:?} not found",
                    qualified(rt)
                ))),
                Some(cur) => {
                    let mut merged = cur.clone();
                    let mut p = applied;
                    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    json_patch::merge(&mut merged, &p);
                    let (o, c) = st.update(rt, version, ns, name, merged, status_only)?;
                    Ok((o, c, false))
                }
            };
        }
        let cur = cur
            .ok_or_else(|| StoreError::NotFound(format!("{} {name:?} not found", qualified(rt))))?;
        let mut next = cur.clone();
        if ct.starts_with("application/json-patch+json") {
            let mut ops: Vec<Value> = serde_json::from_slice(body)
                .map_err(|e| StoreError::BadRequest(format!("invalid JSON patch: {e}")))?;
            // Like the real server, `test` of a missing path against null passes (kube-runtime's
            // finalizer helper sends it for objects without finalizers).
            ops.retain(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && op["path"]
                        .as_str()
                        .is_some_and(|p| next.pointer(p).is_none()))
            });
            let p: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| StoreError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut next, &p).map_err(|e| {
                StoreError::Invalid(
                    format!("the server rejected our request due to an error in our request: {e}"),
                    vec![],
                )
            })?;
        } else if ct.starts_with("application/merge-patch+json") {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| StoreError::BadRequest(format!("invalid merge patch: {e}")))?;
            json_patch::merge(&mut next, &p);
        } else if ct.starts_with("application/strategic-merge-patch+json") {
            if rt.from_crd {
                return Err(StoreError::BadRequest("strategic merge patch is not supported for custom resources; use a JSON merge patch".into()));
            }
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                StoreError::BadRequest(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(&mut next, &p);
        } else {
            return Err(StoreError::BadRequest(format!(
                "unsupported patch content type {ct:?}"
            )));
        }
        // A patch that carries a resourceVersion is optimistic; one without is not.
        let patched_rv = next["metadata"].get("resourceVersion").cloned();
        if patched_rv != cur["metadata"].get("resourceVersion").cloned()
            && patched_rv.as_ref().is_some_and(|v| !v.is_null())
        {
            // keep it: update() compares it with the stored one and answers 409
        } else if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let (o, c) = st.update(rt, version, ns, name, next, status_only)?;
        Ok((o, c, false))
    })();
    drop(st);
    match result {
        Ok((o, ch, created)) => {
            publish(inner, ch);
            ok_json(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &o,
            )
        }
        Err(e) => store_error(e, Some(rt), name),
    }
}

/// Strategic merge: a merge patch, except lists of objects keyed by `name` merge by name,
/// and `$patch: delete` entries remove them.
fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if k.starts_with("$setElementOrder") || k == "$retainKeys" {
                    continue;
                }
                if pv.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), pv) {
                    (Some(Value::Array(ta)), Value::Array(pa))
                        if pa.iter().all(|x| x.get("name").is_some())
                            && ta.iter().all(|x| x.get("name").is_some()) =>
                    {
                        for pe in pa {
                            let n = pe["name"].clone();
                            let del = pe.get("$patch").and_then(Value::as_str) == Some("delete");
                            match ta.iter().position(|x| x["name"] == n) {
                                Some(i) if del => {
                                    ta.remove(i);
                                }
                                Some(i) => strategic_merge(&mut ta[i], pe),
                                None if !del => ta.push(pe.clone()),
                                None => {}
                            }
                        }
                    }
                    (Some(tv), _) if tv.is_object() && pv.is_object() => strategic_merge(tv, pv),
                    _ => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The strings of the JSON array at `pointer` (empty when absent).
fn strings_at(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn token_review(inner: &Inner, mut review: Value) -> Value {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let wanted = strings_at(&review, "/spec/audiences");
    let id = inner.tokens.lock().expect("lock").get(&token).cloned();
    let status = match id {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(id) if id.expires_at.is_some_and(|e| e <= jiff::Timestamp::now()) => {
            json!({"authenticated": false, "error": "token has expired"})
        }
        Some(id) => {
            let token_aud = if id.audiences.is_empty() {
                vec!["https://kubernetes.default.svc".to_string()]
            } else {
                id.audiences.clone()
            };
            let granted: Vec<String> = if wanted.is_empty() {
                token_aud.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| token_aud.contains(a))
                    .cloned()
                    .collect()
            };
            if granted.is_empty() {
                json!({"authenticated": false, "error": "token audiences do not match the requested audiences"})
            } else {
                let mut extra = serde_json::Map::new();
                if let Some(p) = &id.pod_name {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([p]));
                }
                if let Some(u) = &id.pod_uid {
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([u]));
                }
                json!({"authenticated": true, "audiences": granted, "user": {
                    "username": format!("system:serviceaccount:{}:{}", id.namespace, id.service_account),
                    "uid": format!("sa-uid-{}-{}", id.namespace, id.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", id.namespace), "system:authenticated"],
                    "extra": extra}})
            }
        }
    };
    review["status"] = status;
    review
}

fn token_request(inner: &Inner, rt: &ResType, ns: &str, sa: &str, mut req: Value) -> Response {
    if inner.state.lock().expect("lock").get(rt, ns, sa).is_none() {
        return status(
            404,
            "NotFound",
            format!("serviceaccounts {sa:?} not found"),
            None,
        );
    }
    let secs = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600)
        .max(600);
    let exp = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    let audiences = strings_at(&req, "/spec/audiences");
    let pod = req
        .pointer("/spec/boundObjectRef")
        .filter(|b| b["kind"] == "Pod");
    let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
    inner.tokens.lock().expect("lock").insert(
        token.clone(),
        TokenIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: pod.and_then(|p| p["name"].as_str().map(String::from)),
            pod_uid: pod.and_then(|p| p["uid"].as_str().map(String::from)),
            audiences,
            expires_at: Some(exp),
        },
    );
    req["status"] = json!({"token": token, "expirationTimestamp": exp.round(jiff::Unit::Second).expect("round").to_string()});
    req["metadata"]["name"] = sa.into();
    req["metadata"]["namespace"] = ns.into();
    ok_json(StatusCode::CREATED, &req)
}

fn admin(inner: &Inner, method: &Method, segs: &[&str], body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct NewToken {
        token: String,
        #[serde(flatten)]
        identity: TokenIdentity,
    }
    match (method.as_str(), segs) {
        ("POST", ["tokens"]) => match serde_json::from_slice::<NewToken>(body) {
            Ok(t) => {
                inner
                    .tokens
                    .lock()
                    .expect("lock")
                    .insert(t.token, t.identity);
                (StatusCode::NO_CONTENT, "").into_response()
            }
            Err(e) => status(400, "BadRequest", format!("token body: {e}"), None),
        },
        ("POST", ["faults"]) => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => {
                inner.faults.lock().expect("lock").push(f);
                (StatusCode::NO_CONTENT, "").into_response()
            }
            Err(e) => status(400, "BadRequest", format!("fault body: {e}"), None),
        },
        ("POST", ["close-watches"]) => {
            inner.close_watches.send_modify(|g| *g += 1);
            (StatusCode::NO_CONTENT, "").into_response()
        }
        ("GET", ["snapshot"]) => {
            let st = inner.state.lock().expect("lock");
            let all: Vec<Value> = st
                .objects
                .values()
                .flat_map(|m| m.values().cloned())
                .collect();
            ok_json(StatusCode::OK, &Value::Array(all))
        }
        _ => status(404, "NotFound", "unknown test endpoint".into(), None),
    }
}

/// `keyward test-apiserver`: run the server until SIGINT/SIGTERM.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Write the kubeconfig here.
    #[arg(long, default_value = "keyward-test-kubeconfig")]
    pub kubeconfig: PathBuf,
}

/// Run standalone.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let s = TestApiServer::start_with(ServerOptions {
        port: Some(args.port),
        kubeconfig: Some(args.kubeconfig.clone()),
        history: 0,
    })
    .await?;
    println!(
        "test API server on {} ; kubeconfig {}",
        s.url(),
        args.kubeconfig.display()
    );
    crate::controller::cli::shutdown_signal().await;
    s.shutdown();
    Ok(())
}
