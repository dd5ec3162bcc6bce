//! `keyward provider-probe`: the provider DaemonSet's liveness and readiness check. The image
//! has no shell and the provider listens only on a unix socket, so the probe is this binary
//! calling `Version` over that socket exactly as the CSI driver does (authority `localhost`).

use crate::proto::csi::VersionRequest;
use crate::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the provider is not answering as the driver needs.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The socket could not be dialled.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// `Version` failed or timed out.
    #[error("Version call on {path} failed: {detail}")]
    Call {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The provider speaks another API version than the driver's `v1alpha1`.
    #[error("provider on {path} answered version {got:?}, the driver needs \"v1alpha1\"")]
    WrongVersion {
        /// Socket path.
        path: PathBuf,
        /// What it said.
        got: String,
    },
}

/// Call `Version` on the socket within `timeout`; Ok with the runtime version string.
pub async fn probe(socket: &Path, timeout: Duration) -> Result<String, ProbeError> {
    let path = socket.to_path_buf();
    let dial = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let p = dial.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|source| ProbeError::Connect {
            path: path.clone(),
            source,
        })?;
    let mut client = CsiDriverProviderClient::new(channel);
    let call = client.version(VersionRequest {
        version: "v1alpha1".into(),
    });
    let answer = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ProbeError::Call {
            path: path.clone(),
            detail: format!("no answer within {timeout:?}"),
        })?
        .map_err(|s| ProbeError::Call {
            path: path.clone(),
            detail: s.to_string(),
        })?
        .into_inner();
    if answer.version != "v1alpha1" {
        return Err(ProbeError::WrongVersion {
            path,
            got: answer.version,
        });
    }
    Ok(answer.runtime_version)
}
