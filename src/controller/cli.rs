//! `keyward controller`: flags, leader election, `/healthz`, `/readyz`, `/metrics`.

use super::{Context, Metrics, SystemClock};
use crate::kek::Keyring;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Controller flags; every flag also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Namespace the controller runs in (root-key Secret and Lease live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "keyward-system")]
    pub namespace: String,
    /// This replica's identity for leader election and Events.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "KEYWARD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so two replicas never rotate at once.
    #[arg(long, env = "KEYWARD_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Lease name for leader election.
    #[arg(long, env = "KEYWARD_LEASE_NAME", default_value = "keyward-controller")]
    pub lease_name: String,
    /// Lease duration in seconds (a new leader takes over at most this long after a crash).
    #[arg(long, env = "KEYWARD_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Reconciles in flight at once (bounds API-server load and open connections).
    #[arg(long, env = "KEYWARD_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Longest wait between two reconciles of one key, in seconds.
    #[arg(long, env = "KEYWARD_MAX_REQUEUE_SECONDS", default_value_t = 300)]
    pub max_requeue_seconds: u64,
    /// KEK backend settings.
    #[command(flatten)]
    pub kek: crate::kek::config::KekArgs,
    /// Append the tamper-evident audit log to this file (also always on stdout, target
    /// `keyward::audit`).
    #[arg(long, env = "KEYWARD_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Ed25519 key (64 hex chars) that signs audit checkpoints; keep it apart from data keys.
    #[arg(long, env = "KEYWARD_AUDIT_SIGNING_KEY")]
    pub audit_signing_key: Option<PathBuf>,
    /// Most records between signed checkpoints (a cadence the checkpoints sign: `audit verify`
    /// fails on a longer run, so removed checkpoints are found).
    #[arg(long, env = "KEYWARD_AUDIT_CHECKPOINT_EVERY", default_value_t = 100)]
    pub audit_checkpoint_every: u64,
    /// Also sign a checkpoint this often (seconds) when records follow the last one, so the
    /// unsigned (and unanchored) tail stays short in time. 0: only by count.
    #[arg(long, env = "KEYWARD_AUDIT_CHECKPOINT_SECONDS", default_value_t = 60)]
    pub audit_checkpoint_seconds: u64,
    /// Rotate the audit file before it passes this many bytes (at least 65536).
    #[arg(long, env = "KEYWARD_AUDIT_MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub audit_max_file_bytes: u64,
    /// Audit files kept, the current one included (2..=1000); the oldest goes on rotation.
    #[arg(long, env = "KEYWARD_AUDIT_MAX_FILES", default_value_t = 3)]
    pub audit_max_files: u32,
    /// While the audit file cannot be written: `closed` serves no key (the Mount gets
    /// Unavailable), `open` serves and counts the lost records.
    #[arg(long, env = "KEYWARD_AUDIT_FAILURE", value_enum, default_value_t = crate::audit::FailureMode::Closed)]
    pub audit_failure: crate::audit::FailureMode,
    /// Copy each checkpoint to the ConfigMap `keyward-audit-anchor` in --namespace (an entry
    /// per replica), so `keyward audit verify --anchor` finds a cut tail or a rewritten log.
    #[arg(long, env = "KEYWARD_AUDIT_ANCHOR", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_anchor: bool,
    /// Key service (answers the CSI providers) embedded in the controller process.
    #[command(flatten)]
    pub key_service: crate::keyservice::KeyServiceArgs,
    /// Do not run the embedded key service (e.g. a separate deployment runs it).
    #[arg(long, env = "KEYWARD_DISABLE_KEY_SERVICE")]
    pub disable_key_service: bool,
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    keyring: Keyring,
    audit: Arc<crate::audit::Audit>,
}

async fn metrics(State(h): State<Http>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn readyz(State(h): State<Http>) -> (StatusCode, String) {
    if !h.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".into());
    }
    // With --audit-failure=closed a replica that cannot write its audit log serves no key:
    // not ready, so the Service sends Mounts to a replica that can (and the pod shows it).
    if let Err(e) = h.audit.ensure_writable() {
        return (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    // Cached for kek::HEALTH_TTL: probes must not turn into a KMS request or HSM call each.
    match h.keyring.health_cached().await {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Serve health and metrics.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    keyring: Keyring,
    audit: Arc<crate::audit::Audit>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(Http {
            metrics,
            ready,
            keyring,
            audit,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz /readyz /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Run the controller process.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let keyring =
        crate::kek::config::build_keyring(&args.kek, Some(client.clone()), &args.namespace).await?;
    tracing::info!(kek = %keyring.describe(), "KEK ready");
    let mut registry = Metrics::default();
    let serve_metrics = crate::keyservice::ServeMetrics::default();
    serve_metrics.register(&mut registry.registry);
    let audit = Arc::new(match &args.audit_log {
        Some(path) => crate::audit::Audit::with_options(crate::audit::AuditOptions {
            path: path.clone(),
            signing_key: args.audit_signing_key.clone(),
            checkpoint_every: args.audit_checkpoint_every,
            max_file_bytes: args.audit_max_file_bytes,
            max_files: args.audit_max_files,
            failure: args.audit_failure,
        })?,
        None => crate::audit::Audit::stdout_only(),
    });
    audit.register_metrics(&mut registry.registry);
    let metrics = Arc::new(registry);
    let ready = Arc::new(AtomicBool::new(false));
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("keyward-{}", uuid::Uuid::new_v4()));
    let mut ctx = Context::new(
        client.clone(),
        keyring.clone(),
        metrics.clone(),
        Arc::new(SystemClock),
        Some(identity.clone()),
    );
    ctx.max_requeue = std::time::Duration::from_secs(args.max_requeue_seconds.max(1));
    // Key storage lives in this namespace, authenticated with a key shared by every replica.
    ctx.storage = crate::storage::StorageLocation {
        namespace: args.namespace.clone(),
        mac: crate::storage::StateMacKey::load_or_create(
            client.clone(),
            &args.namespace,
            &ctx.keyring,
        )
        .await?,
    };
    let old = crate::storage::old_layout_keys(
        &kube::Api::<crate::crd::ManagedKey>::all(client.clone())
            .list(&Default::default())
            .await?
            .items,
    );
    if !old.is_empty() {
        anyhow::bail!(
            "ManagedKeys {} hold versions in the old layout (a Secret <name>.keyward-versions beside each key), which this version no longer reads: delete and re-create those keys (no release used that layout), then start again",
            old.join(", ")
        );
    }
    ctx.concurrency = args.concurrency.max(1);
    if !args.disable_key_service {
        // The same key the key service loads (load_or_create is idempotent), so status names
        // the kids pods receive.
        ctx.version_ids = Some(
            crate::keyservice::VersionIdKey::load_or_create(
                &kube::Api::namespaced(client.clone(), &args.key_service.namespace),
                &args.key_service.namespace,
                &args.key_service.version_key_secret,
                &ctx.keyring,
            )
            .await?,
        );
    }
    ctx.audit = audit;
    let ctx = Arc::new(ctx);
    // One signal for every task: SIGTERM/SIGINT, or a task that cannot go on (the key service
    // losing its listener), stops the controller, releases the Lease and ends the process.
    let shutdown = crate::shutdown::Shutdown::on_signals();
    // The anchor publisher stops last (after the key service's last record), with a final
    // checkpoint and anchor.
    let (anchor_stop, anchor_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut anchor_task = None;
    if args.audit_log.is_some() && args.audit_checkpoint_every > 0 {
        if args.audit_anchor {
            anchor_task = Some(tokio::spawn(crate::audit::anchor::run_publisher(
                ctx.audit.clone(),
                client.clone(),
                args.namespace.clone(),
                identity.clone(),
                async move {
                    let _ = anchor_stopped.await;
                },
            )));
        }
        if args.audit_checkpoint_seconds > 0 {
            let (audit, stop) = (ctx.audit.clone(), shutdown.clone());
            let every = std::time::Duration::from_secs(args.audit_checkpoint_seconds);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => audit.checkpoint(),
                        _ = stop.wait() => return,
                    }
                }
            });
        }
    }
    {
        // Pick up KEK rotations made by another replica or `keyward kek rotate`.
        let ring = ctx.keyring.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                    _ = stop.wait() => return,
                }
                if let Err(e) = ring.refresh().await {
                    tracing::warn!(error = %e, "KEK refresh failed");
                }
            }
        });
    }
    let key_service = if args.disable_key_service {
        None
    } else {
        // Every replica answers providers (reads and unwraps only); only the leader rotates.
        let ks = args.key_service.clone();
        // The key service reads storage where the controller writes it, with the same MAC key.
        let (c, k, a, s) = (
            client.clone(),
            ctx.keyring.clone(),
            ctx.audit.clone(),
            ctx.storage.clone(),
        );
        let stop = shutdown.clone();
        Some(tokio::spawn(async move {
            let wait = stop.clone();
            let r = crate::keyservice::serve(ks, c, k, a, serve_metrics, s, async move {
                wait.wait().await
            })
            .await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "key service stopped");
                stop.trigger("key service failed");
            }
            r
        }))
    };
    let http = {
        let stop = shutdown.clone();
        tokio::spawn(serve_http(
            args.metrics_addr,
            metrics,
            ready.clone(),
            keyring,
            ctx.audit.clone(),
            async move { stop.wait().await },
        ))
    };
    let stop = shutdown.clone();
    if args.leader_election {
        let lease = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.namespace.clone(),
            identity,
            seconds: args.lease_seconds,
        };
        run_leader_elected(ctx, lease, async move { stop.wait().await }, ready).await?;
    } else {
        ctx.metrics.leader.set(1);
        super::run(ctx, async move { stop.wait().await }, None, ready).await;
    }
    // The controller returns only once the signal fired; let the other tasks finish with it.
    shutdown.trigger("controller stopped");
    let _ = http.await;
    let served = match key_service {
        Some(ks) => ks.await.map_err(anyhow::Error::from),
        None => Ok(Ok(())),
    };
    let _ = anchor_stop.send(());
    if let Some(t) = anchor_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    served??;
    Ok(())
}

/// Leader-election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease duration in seconds.
    pub seconds: u64,
}

/// Run the controller only while holding the Lease, so two replicas never rotate at once.
/// Standby replicas wait; a leader that loses the Lease stops reconciling at once and
/// campaigns again.
pub async fn run_leader_elected(
    ctx: Arc<Context>,
    lease: LeaseConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.seconds)
        .with_grace(lease.seconds.div_ceil(3).max(1))
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let identity = lease.identity.clone();
    // Standby replicas are ready (healthy) but do not reconcile.
    ready.store(true, Ordering::SeqCst);
    loop {
        tracing::info!(%identity, "waiting for leadership");
        let mut stop = stop_rx.clone();
        tokio::select! {
            r = leader.wait_for(|l| *l) => { r?; }
            _ = stop.wait_for(|s| *s) => break,
        }
        tracing::info!(%identity, "leader: starting controller");
        ctx.metrics.leader.set(1);
        let mut lost_rx = leader.clone();
        let mut stop2 = stop_rx.clone();
        let lost = async move {
            tokio::select! {
                _ = lost_rx.wait_for(|l| !*l) => {}
                _ = stop2.wait_for(|s| *s) => {}
            }
        };
        super::run(ctx.clone(), lost, None, ready.clone()).await;
        ctx.metrics.leader.set(0);
        if *stop_rx.borrow() {
            break;
        }
        tracing::warn!(%identity, "lost leadership: controller stopped");
    }
    drop(leader);
    let _ = task.await;
    Ok(())
}
