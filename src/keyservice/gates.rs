//! One caller at a time per key, for cache misses: when a cached entry expires under load,
//! every Mount that misses at that instant would otherwise make its own remote call (measured:
//! 64 concurrent clients sent about 64 TokenReviews for one token each time its cache entry
//! expired). The first caller does the work; the others wait for it and then find the cache
//! filled. A gate exists only while someone holds or waits for it, so the map never grows
//! beyond the number of callers in flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-key gates; see the module docs.
pub struct Gates<K: Hash + Eq + Clone> {
    map: Mutex<HashMap<K, Arc<AsyncMutex<()>>>>,
}

impl<K: Hash + Eq + Clone> Default for Gates<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// Held while a caller has the key's gate; dropping it lets the next waiter in.
pub struct Turn<'a, K: Hash + Eq + Clone> {
    gates: &'a Gates<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq + Clone> Gates<K> {
    /// Wait until no other caller holds `key`'s gate, then hold it.
    pub async fn enter(&self, key: &K) -> Turn<'_, K> {
        let gate = self
            .map
            .lock()
            .expect("gates lock")
            .entry(key.clone())
            .or_default()
            .clone();
        Turn {
            gates: self,
            key: key.clone(),
            guard: Some(gate.lock_owned().await),
        }
    }

    /// Gates that exist now (someone holds or waits for each).
    pub fn len(&self) -> usize {
        self.map.lock().expect("gates lock").len()
    }

    /// No gate exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        let mut map = self.gates.map.lock().expect("gates lock");
        drop(self.guard.take());
        // Under the map lock nobody can pick the gate up meanwhile: the map's own reference
        // is the last one exactly when nobody waits.
        if map
            .get(&self.key)
            .is_some_and(|g| Arc::strong_count(g) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_per_key_others_in_parallel_and_nothing_left_behind() {
        let gates = Arc::new(Gates::<u32>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (gates, inside, most) = (gates.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = gates.enter(&7).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two callers held one key");
        assert!(gates.is_empty(), "a gate outlived its callers");
        // Another key is not held up by a held one.
        let held = gates.enter(&1).await;
        let other = tokio::time::timeout(Duration::from_secs(1), gates.enter(&2)).await;
        assert!(other.is_ok());
        assert_eq!(gates.len(), 2);
        drop(other);
        drop(held);
        assert!(gates.is_empty());
    }
}
