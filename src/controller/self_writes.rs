//! The controller's own writes, remembered by resourceVersion so their watch events do not
//! reconcile the key again.
//!
//! A first version costs three writes the controller watches: the finalizer patch, the storage
//! Secret and the status. Each comes back as a watch event, and each event used to start
//! another full reconcile (a policy read, a storage read, often a status rewrite from a cache
//! that had not seen the first status yet): about 3.5 reconciles per key (docs/controller.md).
//! An event whose resourceVersion is one the controller itself was answered with shows the
//! state the reconcile that wrote it already acted on, so it is skipped. Any write by someone
//! else gets a resourceVersion of its own and is reconciled as before; so is every object of a
//! re-list (the controller re-plans everything after a lost watch).
//!
//! A status write is remembered only when the object it returned has the inputs the reconcile
//! read (generation, annotations, finalizers, deletion); otherwise someone changed the key
//! between the read and the write and the event must be reconciled.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Which object a remembered write went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A ManagedKey (finalizer or status).
    Key,
    /// A storage Secret (in the controller's namespace, named by the key's UID).
    Storage,
}

/// resourceVersions remembered per object: more than the writes of one reconcile (at most
/// finalizer, storage and status per object, in two kinds).
const PER_OBJECT: usize = 4;

/// Objects remembered at most. Past it everything is forgotten, which costs one extra
/// reconcile per key at worst; the bound keeps a stream of created and deleted keys, whose
/// last write's event may never arrive (a watch that re-listed past it), from growing memory.
pub const MAX_OBJECTS: usize = 100_000;

type Id = (Kind, String, String);

/// See the module documentation. Shared by every reconcile and the watch streams.
#[derive(Debug, Default)]
pub struct SelfWrites {
    seen: Mutex<HashMap<Id, VecDeque<String>>>,
}

impl SelfWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, VecDeque<String>>> {
        // A poisoned map only remembers writes: forgetting them costs extra reconciles.
        self.seen.lock().unwrap_or_else(|p| {
            let mut g = p.into_inner();
            g.clear();
            g
        })
    }

    /// Remember that the controller wrote `ns/name` and was answered with `rv`.
    pub fn record(&self, kind: Kind, ns: &str, name: &str, rv: Option<&str>) {
        let Some(rv) = rv else { return };
        let mut seen = self.lock();
        let id = (kind, ns.to_string(), name.to_string());
        if !seen.contains_key(&id) && seen.len() >= MAX_OBJECTS {
            seen.clear();
        }
        let rvs = seen.entry(id).or_default();
        if rvs.len() >= PER_OBJECT {
            rvs.pop_front();
        }
        rvs.push_back(rv.to_string());
    }

    /// Whether a watch event of `ns/name` at `rv` is one of the controller's own writes.
    /// Consumes the match: the same resourceVersion is not expected twice.
    pub fn is_own(&self, kind: Kind, ns: &str, name: &str, rv: Option<&str>) -> bool {
        let Some(rv) = rv else { return false };
        let mut seen = self.lock();
        let id = (kind, ns.to_string(), name.to_string());
        let Some(rvs) = seen.get_mut(&id) else {
            return false;
        };
        let Some(at) = rvs.iter().position(|r| r == rv) else {
            return false;
        };
        // Earlier writes of this object were overtaken: their events came or will not.
        rvs.drain(..=at);
        if rvs.is_empty() {
            seen.remove(&id);
        }
        true
    }

    /// [`Self::is_own`] for a watched object.
    pub fn is_own_object(&self, kind: Kind, o: &impl kube::ResourceExt) -> bool {
        self.is_own(
            kind,
            &o.namespace().unwrap_or_default(),
            &o.name_any(),
            o.resource_version().as_deref(),
        )
    }

    /// [`Self::forget`] a watched object.
    pub fn forget_object(&self, kind: Kind, o: &impl kube::ResourceExt) {
        self.forget(kind, &o.namespace().unwrap_or_default(), &o.name_any());
    }

    /// Forget an object (it was deleted).
    pub fn forget(&self, kind: Kind, ns: &str, name: &str) {
        self.lock()
            .remove(&(kind, ns.to_string(), name.to_string()));
    }

    /// Objects remembered (for tests and the bound).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a status write's answer still has the inputs the reconcile read: only then is its
/// watch event the controller's own and nothing else.
pub fn same_inputs(read: &crate::crd::ManagedKey, written: &crate::crd::ManagedKey) -> bool {
    let (a, b) = (&read.metadata, &written.metadata);
    a.uid == b.uid
        && a.generation == b.generation
        && a.annotations == b.annotations
        && a.finalizers == b.finalizers
        && a.deletion_timestamp == b.deletion_timestamp
        && read.spec == written.spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_write_is_recognised_once_and_others_are_not() {
        let s = SelfWrites::default();
        s.record(Kind::Key, "a", "k", Some("10"));
        assert!(
            !s.is_own(Kind::Key, "a", "k", Some("11")),
            "someone else's write"
        );
        assert!(!s.is_own(Kind::Storage, "a", "k", Some("10")), "other kind");
        assert!(
            !s.is_own(Kind::Key, "b", "k", Some("10")),
            "other namespace"
        );
        assert!(!s.is_own(Kind::Key, "a", "j", Some("10")), "other name");
        assert!(!s.is_own(Kind::Key, "a", "k", None), "no resourceVersion");
        assert!(s.is_own(Kind::Key, "a", "k", Some("10")));
        assert!(!s.is_own(Kind::Key, "a", "k", Some("10")), "consumed");
        assert!(s.is_empty());
    }

    #[test]
    fn a_matched_write_drops_the_earlier_ones_and_the_per_object_memory_is_bounded() {
        let s = SelfWrites::default();
        for rv in ["1", "2", "3"] {
            s.record(Kind::Key, "a", "k", Some(rv));
        }
        assert!(s.is_own(Kind::Key, "a", "k", Some("2")));
        assert!(!s.is_own(Kind::Key, "a", "k", Some("1")), "overtaken");
        assert!(s.is_own(Kind::Key, "a", "k", Some("3")));
        for rv in 0..(PER_OBJECT + 2) {
            s.record(Kind::Key, "a", "k", Some(&rv.to_string()));
        }
        assert!(!s.is_own(Kind::Key, "a", "k", Some("1")), "pushed out");
        assert!(s.is_own(Kind::Key, "a", "k", Some("2")));
        assert!(s.is_own(Kind::Key, "a", "k", Some(&(PER_OBJECT + 1).to_string())));
        s.record(Kind::Key, "a", "k", None);
        assert!(s.is_empty(), "no resourceVersion, nothing remembered");
    }

    #[test]
    fn forgetting_and_the_object_bound() {
        let s = SelfWrites::default();
        s.record(Kind::Storage, "ns", "x", Some("5"));
        s.forget(Kind::Storage, "ns", "x");
        assert!(!s.is_own(Kind::Storage, "ns", "x", Some("5")));
        for i in 0..MAX_OBJECTS {
            s.record(Kind::Key, "a", &i.to_string(), Some("1"));
        }
        assert_eq!(s.len(), MAX_OBJECTS);
        // One more object of an existing name does not clear; a new one past the bound does.
        s.record(Kind::Key, "a", "0", Some("2"));
        assert_eq!(s.len(), MAX_OBJECTS);
        s.record(Kind::Key, "a", "new", Some("1"));
        assert_eq!(s.len(), 1);
        assert!(s.is_own(Kind::Key, "a", "new", Some("1")));
    }

    #[test]
    fn watched_objects_are_known_by_namespace_name_and_resource_version() {
        use crate::crd::{ManagedKey, ManagedKeySpec};
        let mut mk = ManagedKey::new("k", ManagedKeySpec::default());
        mk.metadata.namespace = Some("a".into());
        mk.metadata.resource_version = Some("7".into());
        let s = SelfWrites::default();
        s.record(Kind::Key, "a", "k", Some("7"));
        assert!(!s.is_own_object(Kind::Storage, &mk));
        assert!(s.is_own_object(Kind::Key, &mk));
        s.record(Kind::Key, "a", "k", Some("8"));
        s.forget_object(Kind::Key, &mk);
        assert!(s.is_empty());
    }

    #[test]
    fn same_inputs_sees_every_input_change() {
        use crate::crd::{ManagedKey, ManagedKeySpec};
        let mut read = ManagedKey::new("k", ManagedKeySpec::default());
        read.metadata.generation = Some(1);
        read.metadata.uid = Some("u".into());
        let mut written = read.clone();
        written.metadata.resource_version = Some("9".into());
        written.metadata.managed_fields = Some(vec![]);
        written.status = Some(Default::default());
        assert!(
            same_inputs(&read, &written),
            "status and bookkeeping are outputs"
        );
        let changes: [fn(&mut ManagedKey); 6] = [
            |m| m.metadata.uid = Some("v".into()),
            |m| m.metadata.generation = Some(2),
            |m| {
                m.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("x".into(), "y".into());
            },
            |m| m.metadata.finalizers = Some(vec!["f".into()]),
            |m| {
                m.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ))
            },
            |m| m.spec.policy_ref = Some(crate::crd::PolicyRef { name: "p".into() }),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut w = written.clone();
            change(&mut w);
            assert!(!same_inputs(&read, &w), "change {i} not seen");
        }
    }
}
