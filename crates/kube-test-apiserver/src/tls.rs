//! TLS: a throwaway CA per run (kubectl sends bearer tokens only over TLS) and the kubeconfig.

use crate::prelude::*;

pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    token: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test-apiserver\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: test-apiserver\n  context:\n    cluster: test-apiserver\n    user: admin\n    namespace: default\ncurrent-context: test-apiserver\nusers:\n- name: admin\n  user:\n    token: {token}\n"
    );
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, cfg)?;
    Ok(())
}

pub(crate) struct Tls {
    pub(crate) ca_pem: String,
    pub(crate) ca_der: Vec<u8>,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) key_der: Vec<u8>,
}

impl Tls {
    /// A throwaway CA and a certificate for 127.0.0.1 / localhost.
    pub(crate) fn generate() -> anyhow::Result<Self> {
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

    pub(crate) fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
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
