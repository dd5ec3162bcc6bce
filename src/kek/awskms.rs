//! KEK in AWS KMS: the DEK is encrypted by KMS `Encrypt` under a symmetric KMS key and the
//! envelope's ciphertext is the KMS `CiphertextBlob`.
//!
//! The envelope header is bound through the KMS encryption context (authenticated by KMS,
//! logged in CloudTrail, and usable in key-policy conditions):
//!
//! * `keyward.io/key` = `namespace/name`, `keyward.io/version` = key version;
//! * `keyward.io/aad` = base64 of SHA-256 of the envelope AAD (domain label + whole header,
//!   including backend, KEK ARN and KEK version), so any header change makes Decrypt fail.
//!
//! `kek_id` is the key ARN (resolved with DescribeKey, so an alias can be configured).
//! `kek_version`: KMS rotates key material transparently (a ciphertext names its backing
//! key), so keyward keeps its own counter in a tag on the KMS key, `keyward.io/kek-version`
//! (absent = 1). `rotate()` calls `RotateKeyOnDemand` (new backing material, same ARN, old
//! material kept by KMS for Decrypt) and then raises the tag; re-wrapped envelopes are then
//! encrypted under the new material. Creating a new key and moving an alias was rejected:
//! the ARN (our kek_id) would change and the key policy / grants would have to be copied.
//!
//! Client: a small SigV4 signer (HMAC-SHA256 from `hmac`/`sha2`, checked against the AWS
//! SigV4 test suite) over the hyper client and rustls already in the dependency tree, speaking
//! the KMS JSON protocol (`X-Amz-Target: TrentService.<Op>`). The full AWS SDK is not used:
//! it adds ~150 crates and several minutes of compile time for four API calls.
//! Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.

use super::{KekBackend, KekError};
use crate::crypto::module;
use crate::crypto::{Algorithm, CryptoError, Envelope, KeyContext, SecretBytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use zeroize::Zeroizing;

const KIND: &str = "awskms";
const S_ENDPOINT: &str =
    "--aws-endpoint-url / --aws-region (KEYWARD_AWS_ENDPOINT_URL / AWS_REGION)";
const S_CREDS: &str =
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (or the key policy)";
const S_KEY: &str = "--aws-kms-key-id (KEYWARD_AWS_KMS_KEY_ID)";
/// Tag on the KMS key that holds keyward's KEK version counter.
pub const VERSION_TAG: &str = "keyward.io/kek-version";

/// AWS credentials. Debug never prints the secret parts.
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretBytes,
    /// Session token for temporary credentials.
    pub session_token: Option<SecretBytes>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl AwsCredentials {
    /// Read AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    pub fn from_env() -> Result<Self, KekError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(Self {
                access_key_id: id,
                secret_access_key: SecretBytes::new(secret.into_bytes()),
                session_token: get("AWS_SESSION_TOKEN").map(|t| SecretBytes::new(t.into_bytes())),
            }),
            _ => Err(KekError::Misconfigured {
                setting: S_CREDS,
                detail: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set".into(),
            }),
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = module::HmacSha256::new(key);
    m.update(data);
    m.finish()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(module::sha256(data))
}

/// SigV4 canonical request for a request whose path and query are already canonical.
/// `headers` are (lower-case name, value) pairs, each signed.
pub fn sigv4_canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    payload: &[u8],
) -> (String, String) {
    let mut hs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    hs.sort();
    let canonical_headers: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = hs.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    (
        format!(
            "{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
            sha256_hex(payload)
        ),
        signed,
    )
}

/// SigV4 `Authorization` header value. `amz_date` is `YYYYMMDDTHHMMSSZ`.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_authorization(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    payload: &[u8],
    amz_date: &str,
    region: &str,
    service: &str,
    creds: &AwsCredentials,
) -> String {
    let (creq, signed) = sigv4_canonical_request(method, path, query, headers, payload);
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(creq.as_bytes())
    );
    let mut k_secret = Zeroizing::new(b"AWS4".to_vec());
    k_secret.extend_from_slice(creds.secret_access_key.expose());
    let k = Zeroizing::new(hmac(&k_secret, date.as_bytes()));
    let k = Zeroizing::new(hmac(&*k, region.as_bytes()));
    let k = Zeroizing::new(hmac(&*k, service.as_bytes()));
    let k = Zeroizing::new(hmac(&*k, b"aws4_request"));
    let sig = hex::encode(hmac(&*k, sts.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
        creds.access_key_id
    )
}

/// Settings of the AWS KMS backend.
#[derive(Debug, Clone)]
pub struct AwsKmsConfig {
    /// Key id, key ARN, alias name or alias ARN.
    pub key_id: String,
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint; default `https://kms.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Credentials.
    pub credentials: AwsCredentials,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// A failed KMS call.
#[derive(Debug)]
enum Failure {
    /// No HTTP answer (connection refused, DNS, TLS, timeout).
    Transport(String),
    /// An AWS error response.
    Api {
        status: u16,
        kind: String,
        message: String,
    },
}

/// Largest KMS answer read (Decrypt of the 4 KiB KMS maximum is about 6 KiB of JSON).
const MAX_RESPONSE: usize = 256 * 1024;

/// Minimal KMS JSON-protocol client.
pub struct KmsClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: http::Uri,
    region: String,
    creds: AwsCredentials,
    timeout: Duration,
}

impl KmsClient {
    /// A client for `region` at `endpoint` (default: the public regional endpoint).
    pub fn new(
        region: &str,
        endpoint: Option<&str>,
        creds: AwsCredentials,
        timeout: Duration,
    ) -> Result<Self, KekError> {
        if region.is_empty() {
            return Err(KekError::Misconfigured {
                setting: "--aws-region (AWS_REGION)",
                detail: "no region: set --aws-region, AWS_REGION or AWS_DEFAULT_REGION".into(),
            });
        }
        let ep = endpoint
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        let endpoint: http::Uri = ep.parse().map_err(|e| KekError::Misconfigured {
            setting: "--aws-endpoint-url (KEYWARD_AWS_ENDPOINT_URL)",
            detail: format!("{ep:?} is not a URL: {e}"),
        })?;
        if endpoint.authority().is_none()
            || !matches!(endpoint.scheme_str(), Some("https") | Some("http"))
        {
            return Err(KekError::Misconfigured {
                setting: "--aws-endpoint-url (KEYWARD_AWS_ENDPOINT_URL)",
                detail: format!("{ep:?} must be an http(s):// URL with a host"),
            });
        }
        let provider = crate::tls::provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            // No system CA bundle: still fine for a plain-http endpoint (tests, a local proxy).
            Err(e) if endpoint.scheme_str() == Some("http") => {
                tracing::debug!(error = %e, "no native TLS roots; http endpoint only");
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| KekError::Misconfigured {
                        setting: S_ENDPOINT,
                        detail: format!("TLS setup: {e}"),
                    })?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg)
            }
            Err(e) => {
                return Err(KekError::Misconfigured {
                    setting: S_ENDPOINT,
                    detail: format!("no TLS root certificates for {ep}: {e}"),
                });
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
            endpoint,
            region: region.into(),
            creds,
            timeout,
        })
    }

    async fn send(
        &self,
        op: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let host = self
            .endpoint
            .authority()
            .expect("checked")
            .as_str()
            .to_string();
        let mut headers = vec![
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("host".to_string(), host),
            ("x-amz-date".to_string(), amz_date.clone()),
            ("x-amz-target".to_string(), format!("TrentService.{op}")),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push((
                "x-amz-security-token".into(),
                String::from_utf8_lossy(t.expose()).into_owned(),
            ));
        }
        let auth = sigv4_authorization(
            "POST",
            "/",
            "",
            &headers,
            &body,
            &amz_date,
            &self.region,
            "kms",
            &self.creds,
        );
        let path = self.endpoint.path();
        let mut req = http::Request::post(self.endpoint.clone());
        if path != "/" && !path.is_empty() {
            return Err(Failure::Transport(format!(
                "endpoint {} must not have a path",
                self.endpoint
            )));
        }
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req = req.header("authorization", auth);
        // hyper needs owned bytes; the request buffer is not zeroized (documented limit).
        let req = req
            .body(Full::new(Bytes::copy_from_slice(&body)))
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let fut = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    src = c.source();
                }
                Failure::Transport(s)
            })?;
            let status = resp.status().as_u16();
            // KMS answers are a few KiB; a larger body (a wrong endpoint, or a hostile one
            // without TLS) is cut off instead of buffered.
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    Failure::Transport(format!(
                        "answer unreadable or larger than {MAX_RESPONSE} bytes: {e}"
                    ))
                })?
                .to_bytes();
            Ok::<_, Failure>((status, Zeroizing::new(bytes.to_vec())))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Failure::Transport(format!("no answer within {:?}", self.timeout)))??;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let kind = v["__type"]
            .as_str()
            .unwrap_or("")
            .rsplit('#')
            .next()
            .unwrap_or("")
            .to_string();
        let message = v["message"]
            .as_str()
            .or(v["Message"].as_str())
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        Err(Failure::Api {
            status,
            kind,
            message,
        })
    }

    fn map(&self, op: &str, f: Failure) -> KekError {
        match f {
            Failure::Transport(d) => KekError::Unavailable {
                backend: KIND,
                setting: S_ENDPOINT,
                detail: format!("KMS {op} at {}: {d}", self.endpoint),
            },
            Failure::Api {
                status,
                kind,
                message,
            } => {
                let detail = format!("KMS {op}: {kind} (HTTP {status}): {message}");
                match kind.as_str() {
                    "InvalidCiphertextException" | "IncorrectKeyException" => {
                        KekError::Crypto(CryptoError::Integrity)
                    }
                    "NotFoundException" | "InvalidArnException" => KekError::Misconfigured {
                        setting: S_KEY,
                        detail,
                    },
                    "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "IncompleteSignature"
                    | "MissingAuthenticationToken"
                    | "ExpiredTokenException"
                    | "AccessDeniedException"
                    | "InvalidClientTokenId" => KekError::Unavailable {
                        backend: KIND,
                        setting: S_CREDS,
                        detail,
                    },
                    _ => KekError::Unavailable {
                        backend: KIND,
                        setting: S_KEY,
                        detail,
                    },
                }
            }
        }
    }

    /// Call `TrentService.<op>` with a JSON body (no key material: use for admin calls).
    pub async fn call(
        &self,
        op: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KekError> {
        let out = self
            .send(op, Zeroizing::new(serde_json::to_vec(body).expect("json")))
            .await
            .map_err(|f| self.map(op, f))?;
        if out.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&out).map_err(|e| KekError::Unavailable {
            backend: KIND,
            setting: S_ENDPOINT,
            detail: format!("KMS {op}: unreadable answer: {e}"),
        })
    }
}

fn context_map(env: &Envelope) -> BTreeMap<&'static str, String> {
    [
        ("keyward.io/key", env.key_id.clone()),
        ("keyward.io/version", env.key_version.to_string()),
        ("keyward.io/aad", B64.encode(module::sha256(&env.aad()))),
    ]
    .into()
}

#[derive(serde::Deserialize)]
struct EncryptOut {
    #[serde(rename = "CiphertextBlob")]
    blob: String,
}

#[derive(serde::Deserialize)]
struct DecryptOut {
    #[serde(rename = "Plaintext")]
    plaintext: String,
    #[serde(rename = "KeyId")]
    key_id: Option<String>,
}

/// KEK in AWS KMS.
pub struct AwsKmsKek {
    client: KmsClient,
    arn: String,
    version: Mutex<u32>,
}

impl AwsKmsKek {
    /// Resolve the key (DescribeKey), check it is an enabled symmetric encryption key, and
    /// read keyward's version tag.
    pub async fn connect(cfg: AwsKmsConfig) -> Result<Self, KekError> {
        if cfg.key_id.is_empty() {
            return Err(KekError::Misconfigured {
                setting: S_KEY,
                detail: "no KMS key configured".into(),
            });
        }
        let client = KmsClient::new(
            &cfg.region,
            cfg.endpoint.as_deref(),
            cfg.credentials,
            cfg.timeout,
        )?;
        let d = client
            .call("DescribeKey", &serde_json::json!({ "KeyId": cfg.key_id }))
            .await?;
        let md = &d["KeyMetadata"];
        let arn = md["Arn"].as_str().unwrap_or_default().to_string();
        if arn.is_empty() {
            return Err(KekError::Unavailable {
                backend: KIND,
                setting: S_ENDPOINT,
                detail: "DescribeKey answer has no KeyMetadata.Arn".into(),
            });
        }
        let bad = |detail: String| {
            Err(KekError::Misconfigured {
                setting: S_KEY,
                detail,
            })
        };
        if md["KeyState"].as_str() != Some("Enabled") {
            return bad(format!("key {arn} is {} (must be Enabled)", md["KeyState"]));
        }
        if md["KeyUsage"]
            .as_str()
            .is_some_and(|u| u != "ENCRYPT_DECRYPT")
        {
            return bad(format!(
                "key {arn} has usage {} (must be ENCRYPT_DECRYPT)",
                md["KeyUsage"]
            ));
        }
        if md["KeySpec"]
            .as_str()
            .is_some_and(|s| s != "SYMMETRIC_DEFAULT")
        {
            return bad(format!(
                "key {arn} has spec {} (must be SYMMETRIC_DEFAULT)",
                md["KeySpec"]
            ));
        }
        let me = Self {
            client,
            arn,
            version: Mutex::new(1),
        };
        let v = me.read_version_tag().await?;
        *me.version.lock().expect("lock") = v;
        Ok(me)
    }

    /// The KMS client (for admin calls).
    pub fn client(&self) -> &KmsClient {
        &self.client
    }

    async fn read_version_tag(&self) -> Result<u32, KekError> {
        let t = self
            .client
            .call(
                "ListResourceTags",
                &serde_json::json!({ "KeyId": self.arn }),
            )
            .await?;
        Ok(t["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["TagKey"] == VERSION_TAG)
            .and_then(|t| t["TagValue"].as_str()?.parse().ok())
            .unwrap_or(1))
    }
}

#[async_trait::async_trait]
impl KekBackend for AwsKmsKek {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn kek_id(&self) -> String {
        self.arn.clone()
    }

    fn kek_version(&self) -> u32 {
        *self.version.lock().expect("lock")
    }

    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        let mut env = Envelope::for_context(
            Algorithm::Aes256Gcm,
            KIND,
            &self.arn,
            self.kek_version(),
            ctx,
        );
        let pt = Zeroizing::new(B64.encode(dek.expose()));
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "KeyId": self.arn,
                "Plaintext": *pt,
                "EncryptionContext": context_map(&env),
            }))
            .expect("json"),
        );
        let out = self
            .client
            .send("Encrypt", body)
            .await
            .map_err(|f| self.client.map("Encrypt", f))?;
        let o: EncryptOut = serde_json::from_slice(&out).map_err(|e| KekError::Unavailable {
            backend: KIND,
            setting: S_ENDPOINT,
            detail: format!("KMS Encrypt: unreadable answer: {e}"),
        })?;
        env.ciphertext = B64
            .decode(o.blob)
            .map_err(|_| CryptoError::Malformed("KMS CiphertextBlob is not base64".into()))?;
        Ok(env)
    }

    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        super::check_owner(env, KIND, &self.arn)?;
        env.check_context(ctx)?;
        if !env.nonce.is_empty() || !env.params.is_empty() {
            return Err(CryptoError::Integrity.into());
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "KeyId": self.arn,
            "CiphertextBlob": B64.encode(&env.ciphertext),
            "EncryptionContext": context_map(env),
        }))
        .expect("json");
        let out = self
            .client
            .send("Decrypt", Zeroizing::new(body))
            .await
            .map_err(|f| self.client.map("Decrypt", f))?;
        let o: DecryptOut = serde_json::from_slice(&out).map_err(|e| KekError::Unavailable {
            backend: KIND,
            setting: S_ENDPOINT,
            detail: format!("KMS Decrypt: unreadable answer: {e}"),
        })?;
        let pt = Zeroizing::new(o.plaintext);
        if o.key_id.as_deref().is_some_and(|k| k != self.arn) {
            return Err(CryptoError::Integrity.into());
        }
        let dek = B64
            .decode(pt.as_bytes())
            .map_err(|_| CryptoError::Malformed("KMS Plaintext is not base64".into()))?;
        Ok(SecretBytes::new(dek))
    }

    async fn health(&self) -> Result<(), KekError> {
        let d = self
            .client
            .call("DescribeKey", &serde_json::json!({ "KeyId": self.arn }))
            .await?;
        match d["KeyMetadata"]["KeyState"].as_str() {
            Some("Enabled") => Ok(()),
            s => Err(KekError::Unavailable {
                backend: KIND,
                setting: S_KEY,
                detail: format!("key {} is {}", self.arn, s.unwrap_or("in an unknown state")),
            }),
        }
    }

    async fn rotate(&self) -> Result<u32, KekError> {
        self.client
            .call(
                "RotateKeyOnDemand",
                &serde_json::json!({ "KeyId": self.arn }),
            )
            .await?;
        // Another replica may have rotated since we read the tag.
        let next = self.read_version_tag().await?.max(self.kek_version()) + 1;
        self.client
            .call(
                "TagResource",
                &serde_json::json!({
                    "KeyId": self.arn,
                    "Tags": [{ "TagKey": VERSION_TAG, "TagValue": next.to_string() }],
                }),
            )
            .await?;
        *self.version.lock().expect("lock") = next;
        tracing::info!(kek = %self.arn, version = next, "AWS KMS KEK rotated (RotateKeyOnDemand)");
        Ok(next)
    }

    /// Another process may have rotated: the version tag on the key is the shared record.
    async fn refresh(&self) -> Result<(), KekError> {
        let tagged = self.read_version_tag().await?;
        let mut cur = self.version.lock().expect("lock");
        if tagged > *cur {
            *cur = tagged;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretBytes::from_slice(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    fn vanilla_headers() -> Vec<(String, String)> {
        vec![
            ("Host".into(), "example.amazonaws.com".into()),
            ("X-Amz-Date".into(), "20150830T123600Z".into()),
        ]
    }

    /// An endpoint answering with an endless body: the client stops at MAX_RESPONSE and
    /// reports it, without buffering the rest.
    #[tokio::test]
    async fn oversized_kms_answer_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n";
            sock.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0usize;
            // Stops when the client hangs up.
            while sock.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let client = KmsClient::new(
            "eu-west-1",
            Some(&format!("http://{addr}")),
            AwsCredentials {
                access_key_id: "AKID".into(),
                secret_access_key: SecretBytes::from_slice(b"secret"),
                session_token: None,
            },
            Duration::from_secs(10),
        )
        .unwrap();
        let r = client
            .send("DescribeKey", Zeroizing::new(b"{}".to_vec()))
            .await;
        match r {
            Err(Failure::Transport(m)) => assert!(m.contains("larger than 262144"), "{m}"),
            Err(f) => panic!("{f:?}"),
            Ok(b) => panic!("accepted {} bytes", b.len()),
        }
        drop(client);
        let sent = server.await.unwrap();
        // The server got to write far less than the 1 GiB it announced.
        assert!(sent < 64 * 1024 * 1024, "{sent}");
    }

    /// AWS SigV4 test suite, `get-vanilla` and `post-vanilla`: canonical-request hash and
    /// final signature.
    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let (creq, _) = sigv4_canonical_request("POST", "/", "", &vanilla_headers(), b"");
        assert_eq!(
            sha256_hex(creq.as_bytes()),
            "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87"
        );
        let (creq, _) = sigv4_canonical_request("GET", "/", "", &vanilla_headers(), b"");
        assert_eq!(
            sha256_hex(creq.as_bytes()),
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let auth = sigv4_authorization(
            "POST",
            "/",
            "",
            &vanilla_headers(),
            b"",
            "20150830T123600Z",
            "us-east-1",
            "service",
            &example_creds(),
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let mut c = example_creds();
        c.session_token = Some(SecretBytes::from_slice(b"tok-secret"));
        let d = format!("{c:?}");
        assert!(d.contains("AKIDEXAMPLE"));
        assert!(!d.contains("wJalr") && !d.contains("tok-secret"), "{d}");
    }

    #[test]
    fn bad_endpoint_and_region_name_the_flag() {
        let e = KmsClient::new("", None, example_creds(), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--aws-region"), "{e}");
        let e = KmsClient::new(
            "eu-west-1",
            Some("not a url"),
            example_creds(),
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("--aws-endpoint-url"), "{e}");
    }

    #[test]
    fn encryption_context_binds_the_header() {
        let ctx = KeyContext::new("ns", "k", 3);
        let a = Envelope::for_context(Algorithm::Aes256Gcm, KIND, "arn:x", 1, &ctx);
        let b = Envelope::for_context(Algorithm::Aes256Gcm, KIND, "arn:x", 2, &ctx);
        assert_eq!(context_map(&a)["keyward.io/key"], "ns/k");
        assert_eq!(context_map(&a)["keyward.io/version"], "3");
        assert_ne!(
            context_map(&a)["keyward.io/aad"],
            context_map(&b)["keyward.io/aad"]
        );
    }
}
