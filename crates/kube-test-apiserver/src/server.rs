//! The server handle: start, kubeconfig, admin client, test controls.

use crate::prelude::*;

/// Options for [`TestApiServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Port (None = a free one).
    pub port: Option<u16>,
    /// Where to write the kubeconfig (None = a temp dir owned by the server).
    pub kubeconfig: Option<PathBuf>,
    /// Watch history length in changes (0 = default 100,000).
    pub history: usize,
    /// Run the garbage collector and namespace controller this long after the write that gave
    /// them work (None: synchronously, inside that write), to reproduce their asynchrony.
    pub controllers_delay: Option<Duration>,
}

pub(crate) struct Inner {
    pub(crate) ca_pem: String,
    pub(crate) ca_der: Vec<u8>,
    pub(crate) state: Mutex<State>,
    pub(crate) changes: tokio::sync::broadcast::Sender<Arc<Change>>,
    pub(crate) admin_token: String,
    pub(crate) tokens: Mutex<HashMap<String, TokenIdentity>>,
    pub(crate) faults: Mutex<Vec<Fault>>,
    pub(crate) close_watches: tokio::sync::watch::Sender<u64>,
    /// Resource requests served, by (verb, resource[/subresource]), for tests that count the
    /// API calls a component makes.
    pub(crate) requests: Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// RBAC enforcement switch and the allowed/denied records (rbac.rs).
    pub(crate) rbac: rbac::Rbac,
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
            state: Mutex::new({
                let mut st = State::new(if opts.history == 0 {
                    100_000
                } else {
                    opts.history
                });
                rbac::bootstrap(&mut st);
                st.controllers_delay = opts.controllers_delay;
                st.live = Some(changes.clone());
                st
            }),
            changes,
            admin_token: format!("admin-{}", uuid::Uuid::new_v4().simple()),
            tokens: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            close_watches: tokio::sync::watch::channel(0).0,
            requests: Mutex::default(),
            rbac: rbac::Rbac::default(),
        });
        if let Some(delay) = opts.controllers_delay {
            tokio::spawn(crate::lifecycle::run_delayed(Arc::downgrade(&inner), delay));
        }
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
        // Bodies are limited by the handler with the real server's 413 Status (routes.rs), not
        // by axum's 2 MB default.
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(inner.clone());
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

    /// A kube-rs client authenticated as service account `namespace/name`: registers a fresh
    /// token for it (no expiry, the API server's audience). Its requests are authorized by
    /// RBAC against the Roles and bindings in the store.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> kube::Client {
        let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
        self.add_token(
            &token,
            TokenIdentity {
                namespace: namespace.into(),
                service_account: name.into(),
                pod_name: None,
                pod_uid: None,
                audiences: Vec::new(),
                expires_at: None,
            },
        );
        let mut cfg = kube::Config::new(self.url().parse().expect("url"));
        cfg.root_cert = Some(vec![self.inner.ca_der.clone()]);
        cfg.auth_info.token = Some(token.into());
        cfg.default_namespace = namespace.into();
        kube::Client::try_from(cfg).expect("client")
    }

    /// Whether RBAC denials of service-account requests are enforced (default: on). Off,
    /// every authenticated request is served but denials are still recorded in
    /// [`TestApiServer::rbac_denials`], to learn what a component would need.
    pub fn set_rbac_enforced(&self, enforced: bool) {
        self.inner.rbac.set_enforced(enforced);
    }

    /// What RBAC allowed so far, by user name (`system:serviceaccount:<ns>:<name>`). Only
    /// users RBAC decides for are recorded (the admin, in `system:masters`, is not);
    /// access reviews are not recorded.
    pub fn rbac_usage(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeSet<crate::Access>> {
        self.inner.rbac.usage()
    }

    /// What RBAC denied so far (or would have, with enforcement off), by user name.
    pub fn rbac_denials(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeSet<crate::Access>> {
        self.inner.rbac.denials()
    }

    /// Forget the records of [`TestApiServer::rbac_usage`] and [`TestApiServer::rbac_denials`].
    pub fn clear_rbac_records(&self) {
        self.inner.rbac.clear();
    }

    /// Inject a fault.
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.faults.lock().expect("lock").push(fault);
    }

    /// Remove every injected fault not yet used up.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().expect("lock").clear();
    }

    /// End every open watch stream (clients must resume).
    pub fn close_watches(&self) {
        self.inner.close_watches.send_modify(|g| *g += 1);
    }

    /// Resource requests received so far (discovery and /version excluded), keyed by
    /// (verb, resource or resource/subresource); `create tokenreviews` counts TokenReviews.
    pub fn request_counts(&self) -> std::collections::BTreeMap<(String, String), u64> {
        self.inner.requests.lock().expect("lock").clone()
    }

    /// Total of [`TestApiServer::request_counts`].
    pub fn request_total(&self) -> u64 {
        self.inner.requests.lock().expect("lock").values().sum()
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
