//! The one rustls crypto provider every TLS user in the process shares: the kube client, the
//! key service's gRPC server and the provider's client (tonic), and the AWS KMS client.
//!
//! The default build uses *ring*. The `fips` build installs AWS-LC's FIPS provider as the
//! process default, so the kube client and tonic (which take the process default) and the
//! AWS KMS client (which is handed [`provider`]) all negotiate only FIPS-approved suites.

use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// The TLS set-up cannot promise what this build promises.
#[derive(Debug, thiserror::Error)]
#[error("TLS crypto provider: {0}")]
pub struct TlsError(String);

/// This build's provider.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "fips")]
    let p = rustls::crypto::default_fips_provider();
    #[cfg(not(feature = "fips"))]
    let p = rustls::crypto::ring::default_provider();
    Arc::new(p)
}

/// Installs [`provider`] as the process default (once; later calls check what is installed).
/// In the `fips` build, fails if another provider got there first or is not in FIPS mode.
pub fn install_default() -> Result<(), TlsError> {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing the same provider is fine: checked below.
        let _ = (*provider()).clone().install_default();
    }
    let installed = CryptoProvider::get_default()
        .ok_or_else(|| TlsError("no process-default provider could be installed".into()))?;
    if cfg!(feature = "fips") && !installed.fips() {
        return Err(TlsError(
            "the process-default provider is not FIPS-approved: something installed another \
             provider before keyward started"
                .into(),
        ));
    }
    Ok(())
}

/// True when TLS in this process runs through the FIPS provider.
pub fn is_fips() -> bool {
    CryptoProvider::get_default().is_some_and(|p| p.fips())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client config built the way kube-client builds its own (from the process default)
    /// uses this build's provider: FIPS-approved in the `fips` build, ring otherwise.
    #[test]
    fn configs_from_the_process_default_use_this_builds_provider() {
        install_default().unwrap();
        // Installed now, whichever test got here first (rustls would otherwise pick a provider
        // from its crate features on first use, which the fips build cannot rely on).
        assert!(CryptoProvider::get_default().is_some());
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        assert_eq!(cfg.fips(), cfg!(feature = "fips"));
        assert_eq!(is_fips(), cfg!(feature = "fips"));
        assert_eq!(provider().fips(), cfg!(feature = "fips"));
        // Idempotent.
        install_default().unwrap();
    }
}
