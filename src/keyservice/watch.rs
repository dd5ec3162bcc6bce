//! A key source that answers from watch caches: no API read on the Mount path.
//!
//! Three reflectors (ManagedKeys in every namespace, RotationPolicies, and the storage Secrets
//! in the controller's namespace) keep what a Mount needs in memory. A revocation (a service
//! account removed from `spec.access`, a key compromised, suspended or deleted) reaches the
//! key service as one watch event, so it takes effect as fast as the direct reads did, without
//! their two or three GETs per key per Mount.
//!
//! Stale data is never served: until every watch has listed once, and whenever one has failed
//! and not yet recovered (re-listed or delivered an event again), every lookup is refused as
//! unavailable. The storage Secret is authenticated on every lookup exactly as a direct read is
//! (MAC, identity annotations, the generation the controller recorded). Because the ManagedKey
//! and its storage arrive on different watches, a ManagedKey whose status already records a
//! newer storage generation than the cached Secret has (the controller saves storage first,
//! then status) is answered with one direct read of that Secret instead of a false "rolled
//! back" refusal.

use super::source::{KeyRecord, KeySource, SourceError};
use crate::crd::{ManagedKey, RotationPolicy};
use crate::rotation::{DEFAULT_GRACE, Policy};
use crate::storage::{self, KeyIdentity, STORAGE_LABEL, STORAGE_LABEL_VALUE, StorageLocation};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The state of one watch, as lookups see it.
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// Listed completely at least once.
    synced: AtomicBool,
    /// The last thing the watch reported was not an error.
    healthy: AtomicBool,
    /// Errors seen (for logs and tests).
    errors: AtomicU64,
}

/// What one watcher event says about the watch's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A complete (re-)list finished: the cache matches the server.
    Listed,
    /// An object event on a working watch (the watch is restarted with a fresh list after
    /// any failure, so an event never follows a failure without a list in between).
    Event,
    /// A (re-)list started: the cache is kept until it completes.
    Relisting,
    /// The watch or list failed; the cache may miss changes from now on.
    Failed,
}

impl WatchHealth {
    /// Apply what the watcher reported. Pure state machine: a failure makes lookups refuse
    /// until the (restarted) watch has listed completely again.
    pub fn observe(&self, seen: Seen) {
        match seen {
            Seen::Listed => {
                self.synced.store(true, Ordering::SeqCst);
                self.healthy.store(true, Ordering::SeqCst);
            }
            // Only a complete list says the cache matches the server again.
            Seen::Event | Seen::Relisting => {}
            Seen::Failed => {
                self.errors.fetch_add(1, Ordering::SeqCst);
                self.healthy.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Lookups may use this cache.
    pub fn usable(&self) -> bool {
        self.synced.load(Ordering::SeqCst) && self.healthy.load(Ordering::SeqCst)
    }

    /// Errors seen so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }
}

fn seen<K>(e: &Result<watcher::Event<K>, watcher::Error>) -> Seen {
    match e {
        Ok(watcher::Event::InitDone) => Seen::Listed,
        Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => Seen::Relisting,
        Ok(watcher::Event::Apply(_)) | Ok(watcher::Event::Delete(_)) => Seen::Event,
        Err(_) => Seen::Failed,
    }
}

/// Answers lookups from watch caches; see the module docs.
pub struct WatchKeySource {
    client: kube::Client,
    storage: StorageLocation,
    keys: Store<ManagedKey>,
    policies: Store<RotationPolicy>,
    secrets: Store<Secret>,
    health: [(&'static str, Arc<WatchHealth>); 3],
    /// Direct reads made because the Secret cache lagged the ManagedKey cache.
    fallbacks: AtomicU64,
    /// The watch tasks, stopped when the source is dropped.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for WatchKeySource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl WatchKeySource {
    /// Start the three watches (tasks on the current runtime, stopped when the source is
    /// dropped) and return the source at once: lookups refuse until
    /// every watch has listed. Needs `list`/`watch` on managedkeys and rotationpolicies, and
    /// on Secrets in the controller's namespace (the storage label selects them).
    pub fn start(client: kube::Client, storage: StorageLocation) -> Arc<Self> {
        let (keys, kw) = reflector::store();
        let (policies, pw) = reflector::store();
        let (secrets, sw) = reflector::store();
        let health = [
            ("managedkeys", Arc::new(WatchHealth::default())),
            ("rotationpolicies", Arc::new(WatchHealth::default())),
            ("storage secrets", Arc::new(WatchHealth::default())),
        ];
        let tasks = vec![
            spawn_watch(
                Api::<ManagedKey>::all(client.clone()),
                watcher::Config::default(),
                kw,
                health[0].1.clone(),
            ),
            spawn_watch(
                Api::<RotationPolicy>::all(client.clone()),
                watcher::Config::default(),
                pw,
                health[1].1.clone(),
            ),
            spawn_watch(
                Api::<Secret>::namespaced(client.clone(), &storage.namespace),
                watcher::Config::default()
                    .labels(&format!("{STORAGE_LABEL}={STORAGE_LABEL_VALUE}")),
                sw,
                health[2].1.clone(),
            ),
        ];
        Arc::new(Self {
            client,
            storage,
            keys,
            policies,
            secrets,
            health,
            fallbacks: AtomicU64::new(0),
            tasks,
        })
    }

    /// Whether every watch is synced and healthy (the key service's readiness).
    pub fn usable(&self) -> bool {
        self.health.iter().all(|(_, h)| h.usable())
    }

    /// Wait until every watch has listed once (start-up), or `timeout` passes.
    pub async fn wait_synced(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.usable() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Direct Secret reads made because the Secret cache lagged (see the module docs).
    pub fn fallback_reads(&self) -> u64 {
        self.fallbacks.load(Ordering::SeqCst)
    }

    /// Errors each watch has seen.
    pub fn watch_errors(&self) -> u64 {
        self.health.iter().map(|(_, h)| h.errors()).sum()
    }
}

/// Run one reflector in the background, reporting its health. On any error the watch is
/// started over with a fresh list (after a back-off), so the cache is usable again exactly
/// when it matches the server: resuming a failed watch from its last resourceVersion would
/// leave no event to say so in a quiet cluster. Managed fields are dropped before caching:
/// nothing here reads them, and they are most of a small object's size.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: reflector::store::Writer<K>,
    health: Arc<WatchHealth>,
) -> tokio::task::AbortHandle
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let mut backoff = RETRY_MIN;
        loop {
            let mut stream = watcher(api.clone(), config.clone()).boxed();
            while let Some(e) = stream.next().await {
                health.observe(seen(&e));
                match e {
                    Ok(mut event) => {
                        match &mut event {
                            watcher::Event::Apply(o)
                            | watcher::Event::InitApply(o)
                            | watcher::Event::Delete(o) => o.meta_mut().managed_fields = None,
                            watcher::Event::Init | watcher::Event::InitDone => {}
                        }
                        if matches!(event, watcher::Event::InitDone) {
                            backoff = RETRY_MIN;
                        }
                        writer.apply_watcher_event(&event);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?backoff, "key-service watch failed; lookups refuse until it lists again");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    })
    .abort_handle()
}

/// First wait before a failed watch lists again; doubled up to [`RETRY_MAX`].
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest wait between attempts.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

#[async_trait::async_trait]
impl KeySource for WatchKeySource {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<KeyRecord>, SourceError> {
        if let Some((what, _)) = self.health.iter().find(|(_, h)| !h.usable()) {
            return Err(SourceError::Unavailable(format!(
                "the key service's {what} cache is not in sync with the API server (starting, or its watch failed and is retrying); try again shortly"
            )));
        }
        let Some(key) = self.keys.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let key = (*key).clone();
        let min_generation = key
            .status
            .as_ref()
            .and_then(|s| s.storage_generation)
            .unwrap_or(0);
        let id = KeyIdentity::of(&key);
        let cached = self
            .secrets
            .get(&ObjectRef::new(&storage::secret_name(&id.uid)).within(&self.storage.namespace));
        let stored = match cached {
            Some(secret) => match storage::parse(&secret, &id, &self.storage.mac, 0) {
                Ok(s) if s.state.generation >= min_generation => s,
                // Older than the ManagedKey's record: the Secret's event may still be on its
                // way. One direct read decides (fresh copy, or a real rollback refused there).
                Ok(_) => self.read_storage(&id, min_generation).await?,
                Err(e) => return Err(e.into()),
            },
            None if min_generation > 0 => self.read_storage(&id, min_generation).await?,
            None => storage::Stored::default(),
        };
        let grace = match &key.spec.policy_ref {
            None => DEFAULT_GRACE,
            // A missing or invalid policy means the default grace period, as in the planner.
            Some(r) => self
                .policies
                .get(&ObjectRef::new(&r.name).within(namespace))
                .and_then(|p| Policy::from_spec(&p.spec).ok())
                .map_or(DEFAULT_GRACE, |p| p.grace),
        };
        Ok(Some(KeyRecord { key, stored, grace }))
    }
}

impl WatchKeySource {
    async fn read_storage(
        &self,
        id: &KeyIdentity,
        min_generation: u64,
    ) -> Result<storage::Stored, SourceError> {
        self.fallbacks.fetch_add(1, Ordering::SeqCst);
        Ok(storage::load(&self.storage, &self.client, id, min_generation).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_refuse_until_listed_and_after_a_failure_until_recovered() {
        let h = WatchHealth::default();
        assert!(!h.usable(), "not yet listed");
        h.observe(Seen::Relisting);
        h.observe(Seen::Event);
        assert!(
            !h.usable(),
            "events before the first complete list do not count"
        );
        h.observe(Seen::Listed);
        assert!(h.usable());
        h.observe(Seen::Failed);
        assert!(!h.usable(), "a failed watch may have missed a revocation");
        h.observe(Seen::Relisting);
        assert!(!h.usable(), "a re-list in progress is not in sync yet");
        h.observe(Seen::Listed);
        assert!(h.usable());
        h.observe(Seen::Failed);
        h.observe(Seen::Event);
        assert!(
            !h.usable(),
            "only a complete list makes the cache usable again"
        );
        assert_eq!(h.errors(), 2);
    }

    #[test]
    fn watcher_events_map_to_health() {
        let ok = |e: watcher::Event<Secret>| seen(&Ok(e));
        assert_eq!(ok(watcher::Event::Init), Seen::Relisting);
        assert_eq!(
            ok(watcher::Event::InitApply(Secret::default())),
            Seen::Relisting
        );
        assert_eq!(ok(watcher::Event::InitDone), Seen::Listed);
        assert_eq!(ok(watcher::Event::Apply(Secret::default())), Seen::Event);
        assert_eq!(ok(watcher::Event::Delete(Secret::default())), Seen::Event);
        let failed: Result<watcher::Event<Secret>, _> = Err(watcher::Error::NoResourceVersion);
        assert_eq!(seen(&failed), Seen::Failed);
    }
}
