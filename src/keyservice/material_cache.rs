//! Unwrapped key material, kept for a short while so a KEK is called once per version rather
//! than once per Mount. With rotation on, the CSI driver re-mounts every pod every couple of
//! minutes; for the AWS KMS and PKCS#11 backends each unwrap is a remote call (billed and
//! throttled by AWS), so without this a 1,000-pod cluster is a steady stream of KEK calls.
//!
//! What is cached is exactly what a KEK unwrap produced for one envelope, and nothing else
//! decides who gets it: every Mount still authenticates, reads the key's current state and
//! access list, and selects versions before it looks here. An entry is found only under the
//! same key UID, version, lifecycle state, fingerprint, envelope bytes (a rewrap under a new
//! KEK version is a new envelope) and primary KEK (`backend/id@version`): any change of those
//! misses, and the stale entry is dropped at once. Bounded in entries and bytes, with a TTL;
//! values are zeroized when dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Bounds of the cache; `ttl` zero disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long an unwrapped version may be reused.
    pub ttl: Duration,
    /// Most versions held.
    pub max_entries: usize,
    /// Most material bytes held.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_entries: 4096,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Which version an entry is for; equal only when nothing that matters changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    /// ManagedKey UID (a re-created key of the same name is another key).
    pub uid: String,
    /// Version number.
    pub version: u32,
    /// Lifecycle state of the version when it was unwrapped.
    pub state: &'static str,
    /// Recorded fingerprint.
    pub fingerprint: String,
    /// SHA-256 of the envelope bytes.
    pub envelope: [u8; 32],
    /// The primary KEK (`backend/id@version`) when it was unwrapped.
    pub kek: String,
}

impl EntryKey {
    /// The key for `envelope` of `uid` version `version` in `state`.
    pub fn new(
        uid: &str,
        version: u32,
        state: &'static str,
        fingerprint: &str,
        envelope: &[u8],
        kek: String,
    ) -> Self {
        Self {
            uid: uid.to_owned(),
            version,
            state,
            fingerprint: fingerprint.to_owned(),
            envelope: crate::crypto::module::sha256(envelope),
            kek,
        }
    }
}

struct Entry {
    material: Arc<Zeroizing<Vec<u8>>>,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<EntryKey, Entry>,
    /// Insertion order, oldest first (eviction order).
    order: VecDeque<EntryKey>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, k: &EntryKey) {
        if let Some(e) = self.map.remove(k) {
            self.bytes -= e.material.len();
            self.order.retain(|o| o != k);
        }
    }
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Versions held.
    pub entries: usize,
    /// Material bytes held.
    pub bytes: usize,
}

/// The cache (cheap to clone: shared).
#[derive(Clone)]
pub struct MaterialCache {
    limits: Limits,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MaterialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterialCache")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

impl MaterialCache {
    /// An empty cache with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            inner: Arc::default(),
        }
    }

    /// The material for `k` if it was unwrapped within the TTL.
    pub fn get(&self, k: &EntryKey) -> Option<Arc<Zeroizing<Vec<u8>>>> {
        if self.limits.ttl.is_zero() {
            return None;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.map.get(k) {
            Some(e) if e.at.elapsed() < self.limits.ttl => Some(e.material.clone()),
            Some(_) => {
                inner.remove(k);
                None
            }
            None => None,
        }
    }

    /// Keep `material` for `k`, dropping any other entry of the same key UID and version (its
    /// state, envelope or KEK changed) and the oldest entries beyond the bounds.
    pub fn insert(&self, k: EntryKey, material: Arc<Zeroizing<Vec<u8>>>) {
        if self.limits.ttl.is_zero()
            || self.limits.max_entries == 0
            || material.len() > self.limits.max_bytes
        {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<EntryKey> = inner
            .map
            .keys()
            .filter(|o| o.uid == k.uid && o.version == k.version)
            .cloned()
            .collect();
        for o in &stale {
            inner.remove(o);
        }
        inner.bytes += material.len();
        inner.order.push_back(k.clone());
        inner.map.insert(
            k,
            Entry {
                material,
                at: Instant::now(),
            },
        );
        while inner.map.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            let Some(oldest) = inner.order.front().cloned() else {
                break;
            };
            inner.remove(&oldest);
        }
    }

    /// Forget everything (tests, and a KEK configuration change).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner = Inner::default();
    }

    /// Entries and bytes held.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            entries: inner.map.len(),
            bytes: inner.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, version: u32, state: &'static str, env: &[u8], kek: &str) -> EntryKey {
        EntryKey::new(uid, version, state, "fp", env, kek.into())
    }

    fn m(n: usize) -> Arc<Zeroizing<Vec<u8>>> {
        Arc::new(Zeroizing::new(vec![7; n]))
    }

    #[test]
    fn hits_only_for_the_same_version_state_envelope_and_kek() {
        let c = MaterialCache::new(Limits::default());
        let k = key("u1", 1, "Active", b"env", "local/k@1");
        c.insert(k.clone(), m(32));
        assert_eq!(c.get(&k).map(|v| v.len()), Some(32));
        for other in [
            key("u2", 1, "Active", b"env", "local/k@1"),
            key("u1", 2, "Active", b"env", "local/k@1"),
            key("u1", 1, "Compromised", b"env", "local/k@1"),
            key("u1", 1, "Active", b"rewrapped", "local/k@1"),
            key("u1", 1, "Active", b"env", "local/k@2"),
        ] {
            assert!(c.get(&other).is_none(), "{other:?}");
        }
        // A new state of the same version replaces the old entry at once.
        c.insert(key("u1", 1, "Deactivated", b"env", "local/k@1"), m(32));
        assert!(c.get(&k).is_none());
        assert_eq!(
            c.stats(),
            Stats {
                entries: 1,
                bytes: 32
            }
        );
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_first() {
        let c = MaterialCache::new(Limits {
            ttl: Duration::from_secs(60),
            max_entries: 3,
            max_bytes: 100,
        });
        for v in 1..=4 {
            c.insert(key("u", v, "Active", b"e", "k"), m(10));
        }
        assert_eq!(
            c.stats(),
            Stats {
                entries: 3,
                bytes: 30
            }
        );
        assert!(c.get(&key("u", 1, "Active", b"e", "k")).is_none());
        assert!(c.get(&key("u", 4, "Active", b"e", "k")).is_some());
        c.insert(key("u", 9, "Active", b"e", "k"), m(90));
        assert!(c.stats().bytes <= 100, "{:?}", c.stats());
        // Larger than the whole cache: not kept.
        c.insert(key("u", 10, "Active", b"e", "k"), m(101));
        assert!(c.get(&key("u", 10, "Active", b"e", "k")).is_none());
    }

    #[test]
    fn expires_after_the_ttl_and_zero_disables() {
        let c = MaterialCache::new(Limits {
            ttl: Duration::from_millis(30),
            ..Limits::default()
        });
        let k = key("u", 1, "Active", b"e", "k");
        c.insert(k.clone(), m(32));
        assert!(c.get(&k).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(&k).is_none());
        assert_eq!(c.stats().entries, 0);
        let off = MaterialCache::new(Limits {
            ttl: Duration::ZERO,
            ..Limits::default()
        });
        off.insert(k.clone(), m(32));
        assert!(off.get(&k).is_none());
    }

    #[test]
    fn debug_shows_no_material() {
        let c = MaterialCache::new(Limits::default());
        c.insert(key("u", 1, "Active", b"e", "k"), m(32));
        let d = format!("{c:?}");
        assert!(d.contains("entries: 1") && !d.contains("7, 7"), "{d}");
    }
}
