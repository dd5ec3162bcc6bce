//! The key service: runs inside the controller deployment, holds the KEK, and answers the
//! node-local CSI providers. It verifies the provider's own service-account token and the
//! pod's token with TokenReview, checks each ManagedKey's access policy and lifecycle state,
//! and only then unwraps. See docs/provider.md for the threat model.

pub mod auth;
pub mod gates;
pub mod limits;
pub mod material_cache;
pub mod select;
pub mod served;
pub mod service;
pub mod source;
pub mod version_id;
pub mod watch;

pub use auth::{AuthError, CachingReviewer, Identity, KubeTokenReviewer, TokenReviewer};
pub use select::{SelectError, Selection, Selector};
pub use served::{ServeMetrics, ServedMemory};
pub use service::{AUDIT_TARGET, FetchError, KeyService, Settings};
pub use source::{ApiKeySource, KeyRecord, KeySource, SourceError};
pub use version_id::{VersionIdError, VersionIdKey};
pub use watch::WatchKeySource;

use crate::kek::Keyring;
use crate::proto::keyservice::key_service_server::{self, KeyServiceServer};
use crate::proto::keyservice::{FetchRequest, FetchResponse};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};

/// Errors starting or running the key service.
#[derive(Debug, thiserror::Error)]
pub enum KeyServiceError {
    /// A flag is missing or inconsistent.
    #[error("key service configuration: {0}")]
    Config(String),
    /// A TLS file could not be read.
    #[error("reading {flag} {path}: {source}")]
    File {
        /// The flag naming the file.
        flag: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Binding the listen address failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The object-version key could not be loaded.
    #[error(transparent)]
    VersionKey(#[from] VersionIdError),
    /// gRPC transport failure.
    #[error("key service transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Key-service options the controller embeds (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone)]
pub struct KeyServiceArgs {
    /// Address the key service listens on.
    #[arg(
        long = "key-service-listen",
        env = "KEYWARD_KEY_SERVICE_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// PEM certificate (chain) the key service presents.
    #[arg(
        long = "key-service-tls-cert-file",
        env = "KEYWARD_KEY_SERVICE_TLS_CERT_FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for the certificate.
    #[arg(
        long = "key-service-tls-key-file",
        env = "KEYWARD_KEY_SERVICE_TLS_KEY_FILE"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, providers must present a client certificate signed by it.
    #[arg(
        long = "key-service-client-ca-file",
        env = "KEYWARD_KEY_SERVICE_CLIENT_CA_FILE"
    )]
    pub client_ca_file: Option<PathBuf>,
    /// Serve without TLS (local demos only; tokens and keys then cross the network in clear).
    #[arg(long = "insecure-key-service")]
    pub insecure: bool,
    /// Audience pod tokens must be issued for (the CSIDriver's tokenRequests audience).
    #[arg(long = "key-service-audience", default_value = "keyward")]
    pub audience: String,
    /// The CSI provider's service account, `namespace/name`; no other caller is answered.
    #[arg(
        long = "provider-service-account",
        default_value = "keyward-system/keyward-csi-provider"
    )]
    pub provider_service_account: String,
    /// Audience the provider's own token is checked for (default: the API server's).
    #[arg(long = "provider-token-audience")]
    pub provider_audience: Option<String>,
    /// How long a verified token is trusted without a new TokenReview (0 disables; never
    /// beyond the token's expiry).
    #[arg(long = "token-cache-seconds", default_value_t = 10)]
    pub token_cache_seconds: u64,
    /// Namespace of the key service's own Secrets (the object-version key).
    #[arg(
        id = "key_service_namespace",
        long = "key-service-namespace",
        env = "POD_NAMESPACE",
        default_value = "keyward-system"
    )]
    pub namespace: String,
    /// Secret holding the object-version HMAC key (wrapped under the KEK; created once).
    #[arg(
        long = "object-version-key-secret",
        default_value = "keyward-object-version-key"
    )]
    pub version_key_secret: String,
    /// Seconds an unwrapped key version is reused before the KEK is asked again (one KEK call
    /// per version per this period instead of one per Mount; 0 turns the cache off).
    #[arg(
        long = "material-cache-ttl-seconds",
        env = "KEYWARD_MATERIAL_CACHE_TTL_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub material_cache_ttl_seconds: u64,
    /// Most key versions the material cache holds.
    #[arg(
        long = "material-cache-max-entries",
        env = "KEYWARD_MATERIAL_CACHE_MAX_ENTRIES",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub material_cache_max_entries: u64,
    /// Most material bytes the material cache holds.
    #[arg(
        long = "material-cache-max-bytes",
        env = "KEYWARD_MATERIAL_CACHE_MAX_BYTES",
        default_value_t = 16 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(4096..=1 << 30)
    )]
    pub material_cache_max_bytes: u64,
    /// Where Mounts read keys: `watch` (caches kept by watches; no API read per Mount, refused
    /// as unavailable while a watch is not in sync) or `api` (GETs per key per Mount).
    #[arg(
        long = "key-source",
        env = "KEYWARD_KEY_SOURCE",
        default_value = "watch",
        value_parser = ["watch", "api"]
    )]
    pub key_source: String,
}

impl KeyServiceArgs {
    /// The material cache bounds these flags give.
    pub fn material_cache(&self) -> material_cache::Limits {
        material_cache::Limits {
            ttl: Duration::from_secs(self.material_cache_ttl_seconds),
            max_entries: usize::try_from(self.material_cache_max_entries).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(self.material_cache_max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Defaults, as if no flag were given (for tests and embedding).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: KeyServiceArgs,
        }
        <P as clap::Parser>::parse_from(["keyservice"]).a
    }

    /// Parsed `--provider-service-account`.
    pub fn settings(&self) -> Result<Settings, KeyServiceError> {
        let (ns, name) = self
            .provider_service_account
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
            .ok_or_else(|| {
                KeyServiceError::Config(format!(
                    "--provider-service-account must be namespace/name, got {:?}",
                    self.provider_service_account
                ))
            })?;
        Ok(Settings {
            audience: self.audience.clone(),
            provider_sa: (ns.into(), name.into()),
            provider_audience: self.provider_audience.clone(),
        })
    }

    /// The TLS configuration, or None with `--insecure-key-service`.
    pub fn tls(&self) -> Result<Option<ServerTlsConfig>, KeyServiceError> {
        if self.insecure {
            tracing::warn!(
                "key service runs WITHOUT TLS (--insecure-key-service): tokens and key material cross the network in clear; use only for local demos"
            );
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Err(KeyServiceError::Config(
                "set --key-service-tls-cert-file and --key-service-tls-key-file (or --insecure-key-service for a local demo)".into(),
            ));
        };
        // tonic builds its rustls config from the process default: this build's provider.
        crate::tls::install_default().map_err(|e| KeyServiceError::Config(e.to_string()))?;
        // The private key file must be owner (and group) readable only: see kek::keyfile.
        let key_pem = crate::kek::keyfile::read_key_file(key, "--key-service-tls-key-file")
            .map_err(|e| KeyServiceError::File {
                flag: "--key-service-tls-key-file",
                path: key.clone(),
                source: e.into(),
            })?;
        let mut tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(
            read(cert, "--key-service-tls-cert-file")?,
            key_pem.as_slice(),
        ));
        if let Some(ca) = &self.client_ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(read(
                ca,
                "--key-service-client-ca-file",
            )?));
        }
        Ok(Some(tls))
    }
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, KeyServiceError> {
    std::fs::read(path).map_err(|source| KeyServiceError::File {
        flag,
        path: path.into(),
        source,
    })
}

/// Build the production key service: TokenReview with cache, direct API reads, and the
/// object-version key from its Secret (created on first start).
pub async fn build(
    args: &KeyServiceArgs,
    client: kube::Client,
    keyring: Keyring,
    storage: crate::storage::StorageLocation,
) -> Result<KeyService<KubeTokenReviewer>, KeyServiceError> {
    let settings = args.settings()?;
    let source: Arc<dyn KeySource> = if args.key_source == "api" {
        Arc::new(ApiKeySource::new(client.clone(), storage))
    } else {
        let w = WatchKeySource::start(client.clone(), storage);
        // Serving starts at once; lookups are refused as unavailable until the caches list.
        if !w.wait_synced(Duration::from_secs(30)).await {
            tracing::warn!(
                "key-service caches not in sync after 30 s; Mounts are refused until they are"
            );
        }
        w
    };
    let secrets = kube::Api::namespaced(client.clone(), &args.namespace);
    let version_key = VersionIdKey::load_or_create(
        &secrets,
        &args.namespace,
        &args.version_key_secret,
        &keyring,
    )
    .await?;
    Ok(KeyService::new(
        CachingReviewer::new(
            KubeTokenReviewer::new(client.clone()),
            Duration::from_secs(args.token_cache_seconds),
            65_536,
        ),
        source,
        keyring,
        version_key,
        settings,
    )
    .with_material_cache(args.material_cache()))
}

/// Largest HTTP/2 header list the key service accepts (the caller's bearer token rides there).
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// Run the key service until `shutdown` completes. This is what the controller calls.
pub async fn serve(
    args: KeyServiceArgs,
    client: kube::Client,
    keyring: Keyring,
    audit: Arc<crate::audit::Audit>,
    metrics: ServeMetrics,
    storage: crate::storage::StorageLocation,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), KeyServiceError> {
    let tls = args.tls()?;
    let svc = build(&args, client, keyring, storage)
        .await?
        .with_audit(audit)
        .with_serve_metrics(metrics);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| KeyServiceError::Bind {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %args.listen, tls = tls.is_some(), "key service listening");
    serve_on(listener, Arc::new(svc), tls, shutdown).await
}

/// Serve an already-built key service on a bound listener (tests, custom wiring).
pub async fn serve_on<R: TokenReviewer>(
    listener: tokio::net::TcpListener,
    svc: Arc<KeyService<R>>,
    tls: Option<ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), KeyServiceError> {
    let mut b = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        b = b.tls_config(tls)?;
    }
    // Requests are capped before decoding (tonic's default is 4 MiB): a larger one is refused
    // with OutOfRange and never allocated. Metadata (the bearer token) is capped by HTTP/2.
    b.http2_max_header_list_size(MAX_HEADER_BYTES)
        .add_service(
            KeyServiceServer::new(Grpc(svc)).max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// The pod token's expiry the provider forwarded (the driver's `expirationTimestamp`), if it
/// parses; the key service never trusts a token past it.
pub fn pod_token_expiry(req: &FetchRequest) -> Option<std::time::SystemTime> {
    req.pod_token_expiration
        .parse::<jiff::Timestamp>()
        .ok()
        .map(std::time::SystemTime::from)
}

struct Grpc<R: TokenReviewer>(Arc<KeyService<R>>);

#[tonic::async_trait]
impl<R: TokenReviewer> key_service_server::KeyService for Grpc<R> {
    async fn fetch(
        &self,
        request: tonic::Request<FetchRequest>,
    ) -> Result<tonic::Response<FetchResponse>, tonic::Status> {
        let caller = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let req = request.into_inner();
        let out = self
            .0
            .fetch(caller.as_deref(), &req, pod_token_expiry(&req))
            .await?;
        Ok(tonic::Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_provider_sa_parsing() {
        let a = KeyServiceArgs::defaults();
        assert_eq!(a.audience, "keyward");
        assert_eq!(a.listen.port(), 8443);
        let s = a.settings().unwrap();
        assert_eq!(
            s.provider_sa,
            ("keyward-system".into(), "keyward-csi-provider".into())
        );
        for bad in ["nons", "/x", "a/", "a/b/c"] {
            let mut b = a.clone();
            b.provider_service_account = bad.into();
            assert!(b.settings().is_err(), "{bad}");
        }
        // TLS is required unless explicitly insecure.
        let e = a.tls().unwrap_err();
        assert!(e.to_string().contains("--insecure-key-service"), "{e}");
        let mut i = a.clone();
        i.insecure = true;
        assert!(i.tls().unwrap().is_none());
    }
}

#[cfg(test)]
mod hostile_tests;
