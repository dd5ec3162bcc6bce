//! Prometheus metrics for the controller.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Labels for errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind.
    pub reason: String,
}

/// Labels for per-state counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Key-level state.
    pub state: String,
}

/// Labels for per-key gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Everything the controller exports.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile failures by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Versions created by rotation (first versions excluded).
    pub rotations: Counter,
    /// Keys by key-level state.
    pub keys_by_state: Family<StateLabels, Gauge>,
    /// Seconds until each key's next rotation (negative when overdue).
    pub seconds_to_next_rotation: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// Keys whose rotation is overdue.
    pub overdue_keys: Gauge,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// KEK rewraps done (KEK rotation / migration).
    pub rewraps: Counter,
    /// 1 while this replica reconciles (holds the Lease, or runs without leader election):
    /// the sum over replicas is 1, and 0 means no key rotates (the "no leader" alert).
    pub leader: Gauge,
    states: Mutex<HashMap<(String, String), (String, bool)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyward");
        let m = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            rotations: Counter::default(),
            keys_by_state: Family::default(),
            seconds_to_next_rotation: Family::default(),
            overdue_keys: Gauge::default(),
            reconcile_duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            rewraps: Counter::default(),
            leader: Gauge::default(),
            states: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "ManagedKey reconciles started",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "ManagedKey reconcile failures",
            m.errors.clone(),
        );
        registry.register(
            "rotations",
            "Key versions created by rotation",
            m.rotations.clone(),
        );
        registry.register("keys", "ManagedKeys by state", m.keys_by_state.clone());
        registry.register(
            "seconds_to_next_rotation",
            "Seconds until the next rotation of each key (negative when overdue)",
            m.seconds_to_next_rotation.clone(),
        );
        registry.register(
            "overdue_keys",
            "Keys whose rotation is overdue",
            m.overdue_keys.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the one reconciling ManagedKeys",
            m.leader.clone(),
        );
        registry.register(
            "kek_rewraps",
            "Envelopes rewrapped under a new KEK",
            m.rewraps.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Record a key's state and next-rotation distance; recomputes the aggregate gauges.
    pub fn observe_key(&self, ns: &str, name: &str, state: &str, secs_to_rotation: Option<f64>) {
        let labels = KeyLabels {
            namespace: ns.into(),
            name: name.into(),
        };
        let overdue = secs_to_rotation.is_some_and(|s| s < 0.0);
        match secs_to_rotation {
            Some(s) => {
                self.seconds_to_next_rotation.get_or_create(&labels).set(s);
            }
            None => {
                self.seconds_to_next_rotation.remove(&labels);
            }
        }
        let mut st = self.states.lock().expect("metrics lock");
        st.insert((ns.into(), name.into()), (state.into(), overdue));
        self.recount(&st);
    }

    /// Forget a deleted key.
    pub fn forget_key(&self, ns: &str, name: &str) {
        self.seconds_to_next_rotation.remove(&KeyLabels {
            namespace: ns.into(),
            name: name.into(),
        });
        let mut st = self.states.lock().expect("metrics lock");
        st.remove(&(ns.to_string(), name.to_string()));
        self.recount(&st);
    }

    fn recount(&self, st: &HashMap<(String, String), (String, bool)>) {
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for (s, _) in st.values() {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        self.keys_by_state.clear();
        for (s, n) in counts {
            self.keys_by_state
                .get_or_create(&StateLabels { state: s.into() })
                .set(n);
        }
        self.overdue_keys
            .set(st.values().filter(|(_, o)| *o).count() as i64);
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encode metrics");
        s
    }
}
