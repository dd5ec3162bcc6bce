//! The CSI provider: a gRPC server on a node-local unix socket that the Secrets Store CSI
//! Driver calls. It holds no KEK and reads no Secrets: every Mount is forwarded, with the
//! pod's token, to the key service, which decides. See docs/provider.md.

pub mod client;
pub mod error;
pub mod format;
pub mod metrics;
pub mod mount;
pub mod params;
pub mod paths;
pub mod probe;

use crate::proto::csi::csi_driver_provider_server::{CsiDriverProvider, CsiDriverProviderServer};
use crate::proto::csi::{MountRequest, MountResponse, VersionRequest, VersionResponse};
use crate::proto::keyservice::{FetchRequest, FetchResponse};
pub use client::{CallerToken, ClientConfig, ClientError, KeyServiceClient};
pub use error::MountError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::{Request, Response, Status};

/// Provider name: the socket is `<name>.sock` and SecretProviderClasses say `provider: keyward`.
pub const PROVIDER_NAME: &str = "keyward";
/// API version of the driver contract.
pub const API_VERSION: &str = "v1alpha1";
/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/secrets-store-csi-providers/keyward.sock";
/// Largest Mount request the provider decodes (tonic's default is 4 MiB): the attribute and
/// secret caps of [`params`] plus room for the other fields. A larger request is refused with
/// OutOfRange before it is allocated.
pub const MAX_MOUNT_REQUEST_BYTES: usize =
    params::MAX_ATTRIBUTES_BYTES + params::MAX_SECRETS_BYTES + 64 * 1024;

/// Errors starting or running the provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Socket setup failed.
    #[error("socket {path}: {detail}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// What failed and what to do.
        detail: String,
    },
    /// Reading a file named by a flag failed.
    #[error("reading {flag} {path}: {source}")]
    File {
        /// Flag.
        flag: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Key service client setup failed.
    #[error(transparent)]
    KeyService(#[from] ClientError),
    /// gRPC server failure.
    #[error("provider gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the provider needs from the key service; a trait so Mount logic is testable with
/// fakes.
#[tonic::async_trait]
pub trait Fetcher: Send + Sync + 'static {
    /// Forward one Fetch.
    async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, Status>;
}

#[tonic::async_trait]
impl Fetcher for KeyServiceClient {
    async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, Status> {
        KeyServiceClient::fetch(self, req)
            .await
            .map_err(Status::from)
    }
}

/// The provider's gRPC service. Stateless per Mount: concurrent Mounts share nothing but the
/// key-service connection.
pub struct Provider {
    fetcher: Arc<dyn Fetcher>,
    audience: String,
    metrics: Arc<metrics::ProviderMetrics>,
}

impl Provider {
    /// A provider asking `fetcher`, taking pod tokens issued for `audience`.
    pub fn new(fetcher: Arc<dyn Fetcher>, audience: impl Into<String>) -> Self {
        Self {
            fetcher,
            audience: audience.into(),
            metrics: Arc::default(),
        }
    }

    /// Count Mounts in `metrics` (served by `--metrics-listen`).
    pub fn with_metrics(mut self, metrics: Arc<metrics::ProviderMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Handle one Mount.
    pub async fn mount(&self, req: &MountRequest) -> Result<MountResponse, MountError> {
        let p = params::parse_mount(
            &req.attributes,
            &req.secrets,
            &req.permission,
            &self.audience,
            SystemTime::now(),
        )?;
        let (fetch, map) = mount::fetch_request(&p);
        let n = fetch.keys.len();
        let started = std::time::Instant::now();
        let resp = self.fetcher.fetch(fetch).await;
        self.metrics
            .fetch_duration
            .observe(started.elapsed().as_secs_f64());
        let resp = resp.map_err(MountError::KeyService)?;
        mount::build_response(&p, &map, &resp, n)
    }
}

#[tonic::async_trait]
impl CsiDriverProvider for Provider {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: API_VERSION.into(),
            runtime_name: PROVIDER_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let req = request.into_inner();
        let started = std::time::Instant::now();
        let r = match Provider::mount(self, &req).await {
            Ok(r) => {
                tracing::debug!(files = r.files.len(), "mount served");
                Ok(Response::new(r))
            }
            Err(e) => {
                let s = Status::from(e);
                tracing::warn!(code = ?s.code(), error = %s.message(), "mount refused");
                Err(s)
            }
        };
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.mount(code, started.elapsed().as_secs_f64());
        r
    }
}

/// `keyward provider` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Unix socket the driver dials (`<provider-volume>/keyward.sock`).
    #[arg(long, env = "KEYWARD_PROVIDER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Key service URL.
    #[arg(
        long,
        env = "KEYWARD_KEY_SERVICE_URL",
        default_value = "https://keyward-key-service.keyward-system.svc:8443"
    )]
    pub key_service_url: String,
    /// PEM CA that signed the key service's certificate.
    #[arg(long, env = "KEYWARD_KEY_SERVICE_CA_FILE")]
    pub key_service_ca_file: Option<PathBuf>,
    /// TLS server name to verify (default: the URL's host).
    #[arg(long)]
    pub key_service_server_name: Option<String>,
    /// Client certificate (PEM) when the key service requires mutual TLS.
    #[arg(long, requires = "client_key_file")]
    pub client_cert_file: Option<PathBuf>,
    /// Client key (PEM) for `--client-cert-file`.
    #[arg(long, requires = "client_cert_file")]
    pub client_key_file: Option<PathBuf>,
    /// The provider's own service-account token (projected; re-read every minute).
    #[arg(
        long,
        env = "KEYWARD_PROVIDER_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,
    /// Audience of the pod tokens to forward (the CSIDriver's tokenRequests audience).
    #[arg(long, default_value = "keyward")]
    pub audience: String,
    /// Allow an http:// key service URL (local demos only; logs a warning).
    #[arg(long)]
    pub insecure_key_service: bool,
    /// Deadline for one key-service call, in seconds.
    #[arg(long, default_value_t = 10)]
    pub fetch_timeout_seconds: u64,
    /// Serve `/metrics` and `/healthz` on this address (e.g. `0.0.0.0:8081`); off when unset.
    #[arg(long, env = "KEYWARD_PROVIDER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, ProviderError> {
    std::fs::read(path).map_err(|source| ProviderError::File {
        flag,
        path: path.into(),
        source,
    })
}

impl ProviderArgs {
    /// The key-service client these flags describe.
    pub fn client(&self) -> Result<KeyServiceClient, ProviderError> {
        let client_identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => Some((
                read(c, "--client-cert-file")?,
                crate::crypto::SecretBytes::from_slice(
                    &crate::kek::keyfile::read_key_file(k, "--client-key-file").map_err(|e| {
                        ProviderError::File {
                            flag: "--client-key-file",
                            path: k.into(),
                            source: e.into(),
                        }
                    })?,
                ),
            )),
            _ => None,
        };
        let cfg = ClientConfig {
            url: self.key_service_url.clone(),
            ca_pem: self
                .key_service_ca_file
                .as_deref()
                .map(|p| read(p, "--key-service-ca-file"))
                .transpose()?,
            server_name: self.key_service_server_name.clone(),
            client_identity,
            insecure: self.insecure_key_service,
            timeout: Duration::from_secs(self.fetch_timeout_seconds),
        };
        Ok(KeyServiceClient::new(
            &cfg,
            CallerToken::file(self.token_file.clone()),
        )?)
    }
}

/// Bind the socket: create its directory, replace a stale socket file, restrict access.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, ProviderError> {
    let err = |detail: String| ProviderError::Socket {
        path: path.into(),
        detail,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("creating directory {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(err(
                    "exists and is not a socket; remove it or choose another --socket".into(),
                ));
            }
            std::fs::remove_file(path).map_err(|e| err(format!("removing stale socket: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| err(format!("bind: {e}")))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(format!("chmod: {e}")))?;
    Ok(l)
}

/// Serve `provider` on `socket` until `shutdown`; the socket file is removed afterwards.
pub async fn serve(
    socket: &Path,
    provider: Provider,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProviderError> {
    let listener = bind_socket(socket)?;
    tracing::info!(socket = %socket.display(), "CSI provider listening");
    let r = tonic::transport::Server::builder()
        .add_service(
            CsiDriverProviderServer::new(provider)
                .max_decoding_message_size(MAX_MOUNT_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(socket);
    Ok(r?)
}

/// `keyward provider`: run until SIGTERM/SIGINT.
pub async fn run(args: ProviderArgs) -> Result<(), ProviderError> {
    let client = args.client()?;
    let metrics = Arc::new(metrics::ProviderMetrics::default());
    let provider =
        Provider::new(Arc::new(client), args.audience.clone()).with_metrics(metrics.clone());
    let shutdown = crate::shutdown::Shutdown::on_signals();
    if let Some(addr) = args.metrics_listen {
        let s = shutdown.clone();
        let listener =
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ProviderError::Socket {
                    path: PathBuf::from(addr.to_string()),
                    detail: format!("--metrics-listen: {e}"),
                })?;
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics, async move { s.wait().await }).await {
                tracing::error!(error = %e, "provider metrics endpoint stopped");
            }
        });
    }
    serve(&args.socket, provider, async move { shutdown.wait().await }).await
}
