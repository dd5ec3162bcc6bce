//! Audit of serves that grows with changes, not with mounts. With rotation on, the CSI driver
//! re-mounts every pod every couple of minutes; recording each repeat would write
//! O(pods x rounds) audit records that say nothing new. A (pod, key, version) is recorded the
//! first time this replica serves it; repeats only count in a metric. The memory is bounded:
//! when full, the oldest entries are forgotten, so a very long-running pod may be recorded
//! again (never less than once per replica, version and pod).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Default number of (pod, key, version) entries remembered (16 bytes each, about 3 MiB).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Counters the key service exports for serving.
#[derive(Clone, Debug, Default)]
pub struct ServeMetrics {
    /// Versions served to a pod for the first time (each also an audit record).
    pub first_serves: Counter,
    /// Versions served again to a pod that already had them (no audit record).
    pub repeat_serves: Counter,
    /// Requests refused because the caller is not the authenticated provider (never written
    /// to the audit file: an unauthenticated caller must not be able to fill it).
    pub unauthenticated_refusals: Counter,
    /// Requests from the provider refused because a field is out of bounds (see
    /// `keyservice::limits`).
    pub invalid_requests: Counter,
    /// Versions whose material came from the unwrapped-material cache (no KEK call).
    pub material_cache_hits: Counter,
    /// Versions that had to be unwrapped (a KEK call each).
    pub material_cache_misses: Counter,
    /// Versions held by the material cache.
    pub material_cache_entries: Gauge,
    /// Material bytes held by the material cache.
    pub material_cache_bytes: Gauge,
    /// KEK unwrap calls of the key service by primary backend kind and outcome.
    pub kek_unwraps: Family<KekCallLabels, Counter>,
    /// Fetch requests (one per Mount) by outcome and the gRPC code answered.
    pub fetches: Family<FetchLabels, Counter>,
    /// Time to answer a Fetch, TokenReviews and KEK calls included.
    pub fetch_duration: Latency,
    /// TokenReviews sent to the API server (cache misses), by outcome.
    pub token_reviews: Family<OutcomeLabels, Counter>,
    /// Token verifications answered from the TokenReview cache.
    pub token_cache_hits: Counter,
}

/// Labels of `keyward_key_service_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `ok`, or the refusal's reason (`access_denied`, `unavailable`, ...: the audit log's).
    pub outcome: String,
    /// The gRPC code the provider received (`OK`, `PermissionDenied`, ...).
    pub code: String,
}

/// Labels with one `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `rejected` (the API server said no) or `error` (it could not be asked).
    pub outcome: String,
}

/// A latency histogram with buckets from 0.5 ms to 10 s (the provider's default deadline).
#[derive(Clone, Debug)]
pub struct Latency(pub Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]))
    }
}

/// Labels of `keyward_key_service_kek_unwraps_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KekCallLabels {
    /// Backend kind (`local`, `passphrase`, `pkcs11`, `awskms`).
    pub backend: String,
    /// `ok` or `error`.
    pub outcome: String,
}

impl ServeMetrics {
    /// Add the counters to the controller's registry (`/metrics`), which prefixes every name
    /// with `keyward_`: exported as `keyward_key_service_*_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "key_service_first_serves",
            "Key versions served to a pod for the first time (each one is audited)",
            self.first_serves.clone(),
        );
        registry.register(
            "key_service_repeat_serves",
            "Key versions served again to a pod that already had them (re-mounts; not audited again)",
            self.repeat_serves.clone(),
        );
        registry.register(
            "key_service_unauthenticated_refusals",
            "Key-service requests refused before the caller was authenticated as the CSI provider (not audited)",
            self.unauthenticated_refusals.clone(),
        );
        registry.register(
            "key_service_invalid_requests",
            "Key-service requests refused because a field is too long, holds a control character or asks for too many keys",
            self.invalid_requests.clone(),
        );
        registry.register(
            "key_service_material_cache_hits",
            "Key versions served from the unwrapped-material cache, without a KEK call",
            self.material_cache_hits.clone(),
        );
        registry.register(
            "key_service_material_cache_misses",
            "Key versions unwrapped with the KEK because the material cache did not hold them",
            self.material_cache_misses.clone(),
        );
        registry.register(
            "key_service_material_cache_entries",
            "Key versions held by the unwrapped-material cache",
            self.material_cache_entries.clone(),
        );
        registry.register(
            "key_service_material_cache_bytes",
            "Material bytes held by the unwrapped-material cache",
            self.material_cache_bytes.clone(),
        );
        registry.register(
            "key_service_kek_unwraps",
            "KEK unwrap calls made by the key service, by backend and outcome",
            self.kek_unwraps.clone(),
        );
        registry.register(
            "key_service_fetches",
            "Fetch requests (one per Mount) by outcome and gRPC code",
            self.fetches.clone(),
        );
        registry.register(
            "key_service_fetch_duration_seconds",
            "Time to answer a Fetch, TokenReviews and KEK calls included",
            self.fetch_duration.0.clone(),
        );
        registry.register(
            "key_service_token_reviews",
            "TokenReviews sent to the API server (token cache misses), by outcome",
            self.token_reviews.clone(),
        );
        registry.register(
            "key_service_token_cache_hits",
            "Token verifications answered from the TokenReview cache",
            self.token_cache_hits.clone(),
        );
    }
}

/// Which (pod, key, version) this replica has already served and audited.
#[derive(Debug)]
pub struct ServedMemory {
    hasher: RandomState,
    inner: Mutex<(HashSet<u128>, VecDeque<u128>)>,
    capacity: usize,
    metrics: ServeMetrics,
}

impl ServedMemory {
    /// Remember up to `capacity` entries.
    pub fn new(capacity: usize, metrics: ServeMetrics) -> Self {
        Self {
            hasher: RandomState::new(),
            inner: Mutex::default(),
            capacity: capacity.max(1),
            metrics,
        }
    }

    fn id(&self, pod: &str, namespace: &str, key: &str, version: u32) -> u128 {
        // Two independent 64-bit hashes of length-prefixed parts: collisions among 100,000
        // entries are far below one in 10^20.
        let parts = [pod, namespace, key];
        let h = |salt: u8| {
            let mut s = self.hasher.build_hasher();
            std::hash::Hasher::write_u8(&mut s, salt);
            for p in parts {
                std::hash::Hasher::write_usize(&mut s, p.len());
                std::hash::Hasher::write(&mut s, p.as_bytes());
            }
            std::hash::Hasher::write_u32(&mut s, version);
            std::hash::Hasher::finish(&s)
        };
        (u128::from(h(1)) << 64) | u128::from(h(2))
    }

    /// True when this is the first serve of `version` of `namespace/key` to `pod` (then it
    /// must be audited); false for a repeat (counted only). `pod` should be the pod UID.
    pub fn first_time(&self, pod: &str, namespace: &str, key: &str, version: u32) -> bool {
        let id = self.id(pod, namespace, key, version);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *g;
        if set.contains(&id) {
            self.metrics.repeat_serves.inc();
            return false;
        }
        if set.len() >= self.capacity
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        set.insert(id);
        order.push_back(id);
        self.metrics.first_serves.inc();
        true
    }

    /// Entries remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Nothing remembered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_serve_per_pod_key_version_then_counted_repeats() {
        let m = ServeMetrics::default();
        let s = ServedMemory::new(3, m.clone());
        assert!(s.first_time("uid-1", "ns", "db", 1));
        assert!(!s.first_time("uid-1", "ns", "db", 1));
        assert!(
            s.first_time("uid-1", "ns", "db", 2),
            "a new version is a change"
        );
        assert!(
            s.first_time("uid-2", "ns", "db", 1),
            "another pod is a change"
        );
        assert!(!s.first_time("uid-2", "ns", "db", 1));
        // Part boundaries are kept apart ("ab"+"c" vs "a"+"bc").
        assert!(s.first_time("uid-1", "nsa", "b", 1));
        assert_eq!((m.first_serves.get(), m.repeat_serves.get()), (4, 2));
        // Bounded: the fourth distinct entry pushed the oldest out.
        assert_eq!(s.len(), 3);
        assert!(
            s.first_time("uid-1", "ns", "db", 1),
            "oldest entry was forgotten"
        );
    }
}
