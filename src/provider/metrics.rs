//! The provider's own metrics (`keyward provider --metrics-listen`): what the driver asked and
//! what it got, and how long the key service took. Per node, so a node whose Mounts fail or
//! slow down stands out; the key service's metrics say why.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of `keyward_provider_mounts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// gRPC code answered to the driver (`OK`, `PermissionDenied`, ...).
    pub code: String,
}

/// Everything the provider exports.
pub struct ProviderMetrics {
    registry: Registry,
    /// Mount calls by the gRPC code the driver received.
    pub mounts: Family<CodeLabels, Counter>,
    /// Time to answer a Mount (parsing, the key-service call, encoding).
    pub mount_duration: Histogram,
    /// Time of the key-service call alone.
    pub fetch_duration: Histogram,
}

fn latency() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for ProviderMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyward_provider");
        let m = Self {
            mounts: Family::default(),
            mount_duration: latency(),
            fetch_duration: latency(),
            registry: Registry::default(),
        };
        crate::crypto::module::register_info(&mut registry);
        registry.register(
            "mounts",
            "Mount calls by the gRPC code the driver received",
            m.mounts.clone(),
        );
        registry.register(
            "mount_duration_seconds",
            "Time to answer a Mount",
            m.mount_duration.clone(),
        );
        registry.register(
            "key_service_duration_seconds",
            "Time of the key-service Fetch within a Mount",
            m.fetch_duration.clone(),
        );
        Self { registry, ..m }
    }
}

impl ProviderMetrics {
    /// Count one answered Mount.
    pub fn mount(&self, code: tonic::Code, seconds: f64) {
        self.mounts
            .get_or_create(&CodeLabels {
                code: format!("{code:?}"),
            })
            .inc();
        self.mount_duration.observe(seconds);
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("encoding to a String cannot fail");
        s
    }
}

/// Serve `/metrics` and `/healthz` on a bound listener until `shutdown` (bound by the
/// caller, so a taken port fails the start instead of a background task).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<ProviderMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        );
    tracing::info!(addr = ?listener.local_addr().ok(), "provider serving /metrics /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_counted_by_code() {
        let m = ProviderMetrics::default();
        m.mount(tonic::Code::Ok, 0.001);
        m.mount(tonic::Code::Ok, 0.002);
        m.mount(tonic::Code::PermissionDenied, 0.003);
        let text = m.encode();
        assert!(
            text.contains("keyward_provider_mounts_total{code=\"Ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("keyward_provider_mounts_total{code=\"PermissionDenied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keyward_provider_mount_duration_seconds_count 3"),
            "{text}"
        );
    }
}
