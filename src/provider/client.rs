//! The provider's side of the key-service connection: its own service-account token, TLS to
//! the controller's key service, and one multiplexed HTTP/2 channel. The request and response
//! types both sides use are the generated ones in `crate::proto::keyservice`.

use super::error::MountError;
use crate::proto::keyservice::key_service_client::KeyServiceClient as RawClient;
use crate::proto::keyservice::{FetchRequest, FetchResponse};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

/// Errors building the key-service client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A flag is missing or inconsistent.
    #[error("key service client configuration: {0}")]
    Config(&'static str),
    /// The URL is plaintext and `--insecure-key-service` was not given.
    #[error(
        "key service URL {0} is not https://; use TLS or pass --insecure-key-service for a local demo"
    )]
    Plaintext(String),
    /// The endpoint or TLS settings were refused by the transport.
    #[error("key service client transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

type CachedToken = (std::time::Instant, Arc<str>);

/// Where the provider's own service-account token comes from.
#[derive(Clone)]
pub enum CallerToken {
    /// A fixed token (tests).
    Static(Arc<str>),
    /// A projected token file, re-read every minute (kubelet rotates it).
    File(PathBuf, Arc<std::sync::Mutex<Option<CachedToken>>>),
}

impl std::fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(_) => f.write_str("CallerToken::Static([redacted])"),
            Self::File(p, _) => write!(f, "CallerToken::File({})", p.display()),
        }
    }
}

impl CallerToken {
    /// A token read from `path`.
    pub fn file(path: PathBuf) -> Self {
        Self::File(path, Arc::default())
    }

    fn get(&self) -> Result<Arc<str>, MountError> {
        match self {
            Self::Static(t) => Ok(t.clone()),
            Self::File(path, cache) => {
                let mut c = cache.lock().expect("token lock");
                if let Some((at, t)) = c.as_ref()
                    && at.elapsed() < Duration::from_secs(60)
                {
                    return Ok(t.clone());
                }
                let t: Arc<str> = std::fs::read_to_string(path)
                    .map_err(|source| MountError::CallerToken {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .into();
                *c = Some((std::time::Instant::now(), t.clone()));
                Ok(t)
            }
        }
    }
}

/// How the provider connects to the key service. `Debug` is written by hand: it shows which
/// parts are set, never the client private key (which is held in zeroizing memory).
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` with `insecure`).
    pub url: String,
    /// PEM CA that signed the key service's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// Override of the TLS server name (default: the URL's host).
    pub server_name: Option<String>,
    /// Client certificate and private key (PEM) for mutual TLS.
    pub client_identity: Option<(Vec<u8>, crate::crypto::SecretBytes)>,
    /// Allow plaintext.
    pub insecure: bool,
    /// Per-call deadline.
    pub timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("server_name", &self.server_name)
            .field(
                "client_identity",
                &self
                    .client_identity
                    .as_ref()
                    .map(|(cert, _)| format!("certificate {} bytes, key [redacted]", cert.len())),
            )
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The provider's handle on the key service: one multiplexed HTTP/2 connection, the
/// provider's token attached to every call.
#[derive(Clone)]
pub struct KeyServiceClient {
    inner: RawClient<Channel>,
    token: CallerToken,
}

impl KeyServiceClient {
    /// Connect lazily (the first call dials) so the provider starts even while the
    /// controller is not up yet.
    pub fn new(cfg: &ClientConfig, token: CallerToken) -> Result<Self, ClientError> {
        let is_https = cfg.url.starts_with("https://");
        if !is_https && !cfg.insecure {
            return Err(ClientError::Plaintext(cfg.url.clone()));
        }
        let mut ep = Endpoint::from_shared(cfg.url.clone())?
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if is_https {
            // tonic builds its rustls config from the process default: this build's provider.
            crate::tls::install_default().map_err(|_| {
                ClientError::Config("the TLS crypto provider of this build could not be installed")
            })?;
            let mut tls = ClientTlsConfig::new();
            let ca = cfg.ca_pem.as_ref().ok_or_else(|| {
                ClientError::Config(
                    "set --key-service-ca-file to the CA that signed the key service's certificate",
                )
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(ca));
            if let Some(n) = &cfg.server_name {
                tls = tls.domain_name(n.clone());
            }
            if let Some((c, k)) = &cfg.client_identity {
                tls = tls.identity(TlsIdentity::from_pem(c, k.expose()));
            }
            ep = ep.tls_config(tls)?;
        } else {
            tracing::warn!(
                url = %cfg.url,
                "talking to the key service WITHOUT TLS (--insecure-key-service): local demos only"
            );
        }
        Ok(Self {
            inner: RawClient::new(ep.connect_lazy()).max_decoding_message_size(8 * 1024 * 1024),
            token,
        })
    }

    /// Fetch keys for a pod. A refusal keeps the key service's gRPC status; a transport
    /// failure (Unavailable, or Unknown from below gRPC) says what to check.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, MountError> {
        let token = self.token.get()?;
        let mut r = tonic::Request::new(req);
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| MountError::CallerTokenNotHeader)?;
        r.metadata_mut().insert("authorization", v);
        let mut c = self.inner.clone();
        c.fetch(r)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => {
                    MountError::KeyServiceUnreachable {
                        detail: s.message().into(),
                    }
                }
                _ => MountError::KeyService(s),
            })
    }
}

#[cfg(test)]
mod debug_redaction_tests {
    use super::*;

    /// A `{:?}` of the client TLS configuration (e.g. in a start-up log line) shows what is set
    /// but not one byte of the client private key, in any encoding.
    #[test]
    fn client_config_debug_never_prints_the_private_key() {
        let key_pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAnSecretKeyBytesNeverPrinted\n-----END PRIVATE KEY-----\n";
        let cfg = ClientConfig {
            url: "https://keyward.keyward-system.svc:8443".into(),
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----\nCA\n".to_vec()),
            server_name: Some("keyward".into()),
            client_identity: Some((
                b"-----BEGIN CERTIFICATE-----\nCERT\n".to_vec(),
                crate::crypto::SecretBytes::from_slice(key_pem),
            )),
            insecure: false,
            timeout: Duration::from_secs(5),
        };
        for out in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(out.contains("key [redacted]"), "{out}");
            assert!(out.contains("keyward.keyward-system.svc"), "{out}");
            for needle in [
                "SecretKeyBytesNeverPrinted".to_string(),
                "PRIVATE KEY".to_string(),
                // as derived Debug would print the bytes: a list of numbers
                format!("{:?}", &key_pem[..12])
                    .trim_matches(['[', ']'])
                    .to_string(),
                hex::encode(&key_pem[..12]),
            ] {
                assert!(!out.contains(&needle), "{needle:?} in {out}");
            }
        }
    }
}
