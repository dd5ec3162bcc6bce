//! The ManagedKey controller: kube-runtime `Controller`, leader election, health and metrics.

pub mod cli;
pub mod clock;
pub mod events;
pub mod metrics;
pub mod policy_status;
pub mod reconcile;
pub mod self_writes;

use crate::crd::{ManagedKey, RotationPolicy};
use crate::kek::{KekError, Keyring};
use crate::storage::{STORAGE_LABEL, STORAGE_LABEL_VALUE, StorageError, StorageLocation};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector::reflector, watcher};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::Metrics;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API failure.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Storage Secret failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// KEK backend failure.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// Crypto failure.
    #[error("crypto: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// A state change the stored state cannot take (a planner bug, never user input).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    /// Key material could not be processed (e.g. a public key not derivable).
    #[error("key material: {0}")]
    Key(#[from] crate::keys::KeyError),
    /// The blocking key-generation task died.
    #[error("key generation task failed: {0}")]
    Generation(#[from] tokio::task::JoinError),
    /// An object the API server should never send (no name or namespace).
    #[error("{0}")]
    Invalid(&'static str),
    /// The reconcile panicked: caught, reported on that key (Degraded `InternalError`, a
    /// Warning Event), and the process goes on serving every other key.
    #[error("internal error (a keyward bug; nothing was changed): {0}")]
    Internal(String),
}

impl Error {
    /// Unwrap the finalizer helper's error into ours.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Finalizer(e),
            F::UnnamedObject => Error::Invalid("ManagedKey has no name"),
            F::InvalidFinalizer => Error::Invalid("finalizer patch path is invalid"),
        }
    }

    /// A write lost an optimistic-concurrency race (HTTP 409): retry from a fresh read.
    /// The finalizer patches guard with a JSON-patch `test`, which the API server answers
    /// with 422 when someone else changed the list first: a lost race too.
    pub fn is_conflict(&self) -> bool {
        let code = match self {
            Error::Finalizer(kube::Error::Api(e)) if e.code == 422 => Some(409),
            Error::Finalizer(kube::Error::Api(e)) => Some(e.code),
            Error::Kube(kube::Error::Api(e)) => Some(e.code),
            Error::Storage(StorageError::Kube {
                source: kube::Error::Api(e),
                ..
            }) => Some(e.code),
            _ => None,
        };
        code == Some(409)
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "conflict",
            Error::Kube(_) => "kube",
            Error::Storage(_) => "storage",
            Error::Kek(_) => "kek",
            Error::Crypto(_) => "crypto",
            Error::State(_) => "state",
            Error::Finalizer(_) => "finalizer",
            Error::Key(_) => "key",
            Error::Generation(_) => "generation",
            Error::Invalid(_) => "invalid",
            Error::Internal(_) => "internal",
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// KEK backends.
    pub keyring: Keyring,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Event recorder.
    pub recorder: events::EventRecorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Longest wait between reconciles of one key (bounds drift and missed watch events).
    pub max_requeue: Duration,
    /// Audit sink for rotations, state changes and deletions.
    pub audit: Arc<crate::audit::Audit>,
    /// Reconciles in flight at once (bounds API-server load and connections).
    pub concurrency: u16,
    /// Where key storage lives (the controller's namespace) and the key authenticating it.
    pub storage: StorageLocation,
    /// How often the sweeper looks for storage of deleted keys (see [`reconcile::sweep`]).
    pub sweep_interval: Duration,
    /// Test hook, called at the start of every reconcile; never set by the controller command.
    /// Tests make it panic for one key to prove a panicking reconcile is caught and reported on
    /// that key while the others go on.
    pub reconcile_hook: Option<ReconcileHook>,
    /// The key service's object-version key, so status can name each version's `kid` (the
    /// opaque id pods receive in JWKs): `kubectl keyward jwks` then matches the mounted JWKS.
    /// None when this process serves no keys.
    pub version_ids: Option<crate::keyservice::VersionIdKey>,
    /// The controller's own writes, whose watch events reconcile nothing (see [`self_writes`]).
    pub self_writes: Arc<self_writes::SelfWrites>,
    /// RotationPolicies as the controller's policy watch sees them, set by [`run`]: a reconcile
    /// reads its policy here instead of from the API. None (tests calling `reconcile` without
    /// [`run`]): read from the API.
    pub policy_cache: std::sync::RwLock<Option<Store<RotationPolicy>>>,
}

/// See [`Context::reconcile_hook`].
pub type ReconcileHook = Arc<dyn Fn(&ManagedKey) + Send + Sync>;

impl Context {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        keyring: Keyring,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "keyward-controller".into(),
            instance,
        };
        Self {
            recorder: events::EventRecorder::new(client.clone(), reporter),
            client,
            keyring,
            clock,
            metrics,
            max_requeue: Duration::from_secs(300),
            audit: Arc::new(crate::audit::Audit::stdout_only()),
            concurrency: 16,
            sweep_interval: Duration::from_secs(300),
            reconcile_hook: None,
            version_ids: None,
            self_writes: Arc::default(),
            policy_cache: std::sync::RwLock::new(None),
            // A process-local MAC key: right for tests and single-process use; the controller
            // command replaces it with the shared key from the controller's namespace.
            storage: StorageLocation {
                namespace: "keyward-system".into(),
                mac: crate::storage::StateMacKey::new(crate::crypto::SecretBytes::random(32)),
            },
        }
    }
}

/// (namespace, name) of a policy -> (uid, generation) last acted on.
type SeenPolicies = std::collections::HashMap<(String, String), (Option<String>, Option<i64>)>;

/// Key events waiting to re-count their policy (see [`run`]).
const POLICY_COUNT_TRIGGERS: usize = 4096;

/// Policies whose last acted-on generation the controller remembers (see [`run`]).
const MAX_POLICIES_REMEMBERED: usize = 10_000;

/// Run the controller until `shutdown` resolves. `trigger` re-plans every key (tests use it
/// after moving their clock).
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    trigger: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
    ready: Arc<AtomicBool>,
) {
    let client = ctx.client.clone();
    let keys: Api<ManagedKey> = Api::all(client.clone());
    // Only the storage Secrets in the controller's namespace: no cluster-wide Secret access.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ctx.storage.namespace);
    let policies: Api<RotationPolicy> = Api::all(client.clone());
    // Managed fields are never read here: dropped before caching (they are most of an object).
    let strip = |o: &mut ManagedKey| o.metadata.managed_fields = None;
    let (key_cache, key_writer) = reflector::store();
    let own = ctx.self_writes.clone();
    // The policy-status controller counts keys from this same watch (a second watch of every
    // ManagedKey cost the API server a second copy of each event, and this process a second
    // decode): each key event that is not the controller's own write re-counts the key's
    // policy. Bounded: a trigger dropped when full is made up by the periodic look.
    let (count_policy, count_requests) =
        tokio::sync::mpsc::channel::<ObjectRef<RotationPolicy>>(POLICY_COUNT_TRIGGERS);
    let recount = move |mk: &ManagedKey| {
        if let (Some(ns), Some(r)) = (mk.namespace(), mk.spec.policy_ref.as_ref()) {
            let _ = count_policy.try_send(ObjectRef::new(&r.name).within(&ns));
        }
    };
    let key_events = reflector(
        key_writer,
        watcher(keys, watcher::Config::default()).modify(strip),
    )
    .filter_map(move |e| {
        futures::future::ready(match e {
            // The watch event of the controller's own write: already acted on.
            Ok(watcher::Event::Apply(mk)) if own.is_own_object(self_writes::Kind::Key, &mk) => None,
            Ok(watcher::Event::Apply(mk) | watcher::Event::InitApply(mk)) => {
                recount(&mk);
                Some(Ok(mk))
            }
            Ok(watcher::Event::Delete(mk)) => {
                recount(&mk);
                own.forget_object(self_writes::Kind::Key, &mk);
                None
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    });
    let controller = Controller::for_stream(key_events, key_cache.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency));
    let store = key_cache.clone();
    // Storage Secrets: a change by anyone but this controller (deletion, a rolled-back copy)
    // reconciles the key it belongs to.
    let own = ctx.self_writes.clone();
    let storage_events = watcher(
        secrets,
        watcher::Config::default().labels(&format!("{STORAGE_LABEL}={STORAGE_LABEL_VALUE}")),
    )
    .filter_map(move |e| {
        futures::future::ready(match e {
            Ok(watcher::Event::Apply(s)) if own.is_own_object(self_writes::Kind::Storage, &s) => {
                None
            }
            Ok(watcher::Event::Delete(s)) => {
                own.forget_object(self_writes::Kind::Storage, &s);
                Some(Ok(s))
            }
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => Some(Ok(s)),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    });
    // RotationPolicies: cached for the reconciles (no API read per reconcile), and a spec
    // change re-plans the keys that use the policy.
    let (policy_cache, policy_writer) = reflector::store();
    *ctx.policy_cache.write().unwrap_or_else(|p| p.into_inner()) = Some(policy_cache);
    let policy_events = reflector(
        policy_writer,
        watcher(policies, watcher::Config::default())
            .modify(|rp: &mut RotationPolicy| rp.metadata.managed_fields = None),
    )
    .applied_objects();
    // Per policy (namespace, name): the (uid, generation) last acted on, see the policy watch
    // below. Bounded: past MAX_POLICIES_REMEMBERED entries (names of deleted policies stay)
    // it is cleared, which costs one re-plan of each policy's keys at most.
    let seen_generations: std::sync::Mutex<SeenPolicies> = std::sync::Mutex::default();
    let mut controller = controller
        .watches_stream(storage_events, |s: Secret| {
            let a = s.metadata.annotations.unwrap_or_default();
            match (
                a.get(crate::storage::NAMESPACE_ANNOTATION),
                a.get(crate::storage::NAME_ANNOTATION),
            ) {
                (Some(ns), Some(name)) => Some(ObjectRef::<ManagedKey>::new(name).within(ns)),
                _ => None,
            }
        })
        .watches_stream(policy_events, move |rp: RotationPolicy| {
            // A change of a policy's spec re-plans every key that uses it. Status-only
            // updates (the policy-status controller's key count) keep the generation and
            // re-plan nothing: otherwise each count update during a bulk creation re-planned
            // every key of the policy (1,000 keys took 21 s instead of 4). A deleted policy
            // reaches its keys at their next periodic look (--max-requeue-seconds).
            let ns = rp.namespace();
            let name = rp.name_any();
            let version = (rp.metadata.uid.clone(), rp.metadata.generation);
            {
                let mut seen = seen_generations.lock().expect("generation memory");
                let id = (ns.clone().unwrap_or_default(), name.clone());
                if seen.get(&id) == Some(&version) {
                    return Vec::new();
                }
                if seen.len() >= MAX_POLICIES_REMEMBERED {
                    seen.clear();
                }
                seen.insert(id, version);
            }
            store
                .state()
                .into_iter()
                .filter(|mk| {
                    mk.namespace() == ns
                        && mk.spec.policy_ref.as_ref().is_some_and(|r| r.name == name)
                })
                .map(|mk| ObjectRef::from_obj(&*mk))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown);
    // A trigger re-plans every key and sweeps once.
    let sweep_now = Arc::new(tokio::sync::Notify::new());
    if let Some(mut rx) = trigger {
        let (tx, replan) = tokio::sync::mpsc::unbounded_channel();
        let notify = sweep_now.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                notify.notify_one();
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        controller = controller
            .reconcile_all_on(tokio_stream::wrappers::UnboundedReceiverStream::new(replan));
    }
    // RotationPolicy status (Valid, key count): keys are counted from the key controller's
    // cache. A key event re-counts only the policy it references, debounced so a burst of key
    // changes costs one status write; the policy a key stopped referencing is re-counted at its
    // periodic requeue (`max_requeue`). Triggering every policy of the namespace instead would
    // let a tenant with many policies multiply the work of every key event.
    let policy_controller = Controller::new(
        Api::<RotationPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(
        kube::runtime::controller::Config::default()
            .concurrency(2)
            .debounce(Duration::from_secs(1)),
    )
    .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(count_requests))
    .run(
        policy_status::reconcile,
        policy_status::error_policy,
        Arc::new(policy_status::PolicyContext {
            ctx: ctx.clone(),
            keys: key_cache,
        }),
    )
    .for_each(|_| async {});
    ready.store(true, Ordering::SeqCst);
    let sweeper = sweep_loop(ctx.clone(), sweep_now);
    let controller = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    // The controller ends on shutdown; the sweeper (each sweep step is one idempotent API
    // call) and the policy-status controller (a dropped status write is repeated by the next
    // leader) end with it.
    tokio::select! {
        _ = controller => {}
        _ = sweeper => {}
        _ = policy_controller => {}
    }
}

/// Sweep at start, every `sweep_interval`, and when asked.
async fn sweep_loop(ctx: Arc<Context>, now: Arc<tokio::sync::Notify>) {
    loop {
        // A panic in a sweep (a bug) is logged and the next sweep retries: it must not end
        // the controller and the key service with it.
        let swept =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(reconcile::sweep(&ctx)))
                .await
                .unwrap_or_else(|_| Err(Error::Internal("the sweep panicked".into())));
        match swept {
            Ok(r) if r != reconcile::SweepReport::default() => {
                tracing::info!(
                    kept = r.kept,
                    destroyed = r.destroyed,
                    scheduled = r.scheduled,
                    restored = r.restored,
                    "swept storage of deleted keys"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed; next one retries"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.sweep_interval) => {}
            _ = now.notified() => {}
        }
    }
}
