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

/// What the controller knows about one key after a reconcile: the per-key gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyObservation {
    /// Key-level state (status.state).
    pub state: String,
    /// When the current version rotates.
    pub next_rotation: Option<jiff::Timestamp>,
    /// The earliest upcoming expiry of a version that still holds material.
    pub expiry: Option<jiff::Timestamp>,
    /// When a version last became Active.
    pub last_rotation: Option<jiff::Timestamp>,
    /// The ExpiringSoon condition is True.
    pub expiring_soon: bool,
    /// The rotation is past due.
    pub overdue: bool,
}

type TimeGauge = Family<KeyLabels, Gauge<f64, AtomicU64>>;

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
    /// Unix time each key's current version rotates (timestamps, not countdowns: an alert
    /// compares with `time()`, and the value does not change between reconciles).
    pub next_rotation: TimeGauge,
    /// Unix time of each key's earliest upcoming version expiry (policy expireAfter).
    pub expiry: TimeGauge,
    /// Unix time each key last activated a version.
    pub last_rotation: TimeGauge,
    /// 1 while a key's ExpiringSoon condition is True (within its policy's
    /// notifyBeforeExpiry), else 0.
    pub expiring_soon: Family<KeyLabels, Gauge>,
    /// Keys whose rotation is overdue.
    pub overdue_keys: Gauge,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// KEK rewraps done (KEK rotation / migration).
    pub rewraps: Counter,
    /// 1 while this replica reconciles (holds the Lease, or runs without leader election):
    /// the sum over replicas is 1, and 0 means no key rotates (the "no leader" alert).
    pub leader: Gauge,
    /// Last (state, overdue) per key: the aggregate gauges move by the difference, so one
    /// observation costs the same at 10 keys and at 10,000.
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
            next_rotation: Family::default(),
            expiry: Family::default(),
            last_rotation: Family::default(),
            expiring_soon: Family::default(),
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
        crate::crypto::module::register_info(&mut registry);
        registry.register(
            "key_next_rotation_timestamp_seconds",
            "Unix time the current version of each key rotates",
            m.next_rotation.clone(),
        );
        registry.register(
            "key_expiry_timestamp_seconds",
            "Unix time of the earliest upcoming version expiry of each key",
            m.expiry.clone(),
        );
        registry.register(
            "key_last_rotation_timestamp_seconds",
            "Unix time each key last activated a version",
            m.last_rotation.clone(),
        );
        registry.register(
            "key_expiring_soon",
            "1 while a version of the key expires within its policy's notifyBeforeExpiry",
            m.expiring_soon.clone(),
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

fn set_time(g: &TimeGauge, labels: &KeyLabels, t: Option<jiff::Timestamp>) {
    match t {
        Some(t) => {
            g.get_or_create(labels)
                .set(t.as_millisecond() as f64 / 1000.0);
        }
        None => {
            g.remove(labels);
        }
    }
}

impl Metrics {
    /// Record a key after a reconcile: its time gauges, and the aggregates by difference.
    pub fn observe_key(&self, ns: &str, name: &str, o: &KeyObservation) {
        let labels = KeyLabels {
            namespace: ns.into(),
            name: name.into(),
        };
        set_time(&self.next_rotation, &labels, o.next_rotation);
        set_time(&self.expiry, &labels, o.expiry);
        set_time(&self.last_rotation, &labels, o.last_rotation);
        self.expiring_soon
            .get_or_create(&labels)
            .set(i64::from(o.expiring_soon));
        let mut st = self.states.lock().expect("metrics lock");
        let old = st.insert((ns.into(), name.into()), (o.state.clone(), o.overdue));
        self.shift(old.as_ref(), Some(&(o.state.clone(), o.overdue)));
    }

    /// Forget a deleted key.
    pub fn forget_key(&self, ns: &str, name: &str) {
        let labels = KeyLabels {
            namespace: ns.into(),
            name: name.into(),
        };
        for g in [&self.next_rotation, &self.expiry, &self.last_rotation] {
            g.remove(&labels);
        }
        self.expiring_soon.remove(&labels);
        let mut st = self.states.lock().expect("metrics lock");
        let old = st.remove(&(ns.to_string(), name.to_string()));
        self.shift(old.as_ref(), None);
    }

    /// Move the aggregate gauges from a key's old (state, overdue) to its new one.
    fn shift(&self, old: Option<&(String, bool)>, new: Option<&(String, bool)>) {
        if let Some((s, overdue)) = old {
            let labels = StateLabels { state: s.clone() };
            if self.keys_by_state.get_or_create(&labels).dec() <= 1 {
                self.keys_by_state.remove(&labels);
            }
            if *overdue {
                self.overdue_keys.dec();
            }
        }
        if let Some((s, overdue)) = new {
            self.keys_by_state
                .get_or_create(&StateLabels { state: s.clone() })
                .inc();
            if *overdue {
                self.overdue_keys.inc();
            }
        }
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encode metrics");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(m: &Metrics, name: &str) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_owned)
            .collect()
    }

    /// A scrape names the cryptographic module: FIPS only in the fips build.
    #[test]
    fn crypto_module_info_is_exported() {
        let m = Metrics::default();
        let line = sample(&m, "keyward_crypto_module_info{");
        assert_eq!(line.len(), 1, "{line:?}");
        let fips = format!("fips=\"{}\"", cfg!(feature = "fips"));
        assert!(
            line[0].contains(&fips) && line[0].ends_with(" 1"),
            "{line:?}"
        );
        let name = crate::crypto::module::info().name;
        assert!(line[0].contains(&format!("name=\"{name}\"")), "{line:?}");
    }

    /// Aggregates follow each key's latest observation; a forgotten key leaves no series.
    #[test]
    fn per_key_gauges_and_aggregates() {
        let m = Metrics::default();
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let obs = |state: &str, overdue| KeyObservation {
            state: state.into(),
            next_rotation: Some(t),
            expiry: None,
            last_rotation: Some(t),
            expiring_soon: overdue,
            overdue,
        };
        m.observe_key("a", "k1", &obs("Active", false));
        m.observe_key("a", "k2", &obs("Active", true));
        m.observe_key("a", "k2", &obs("Active", true));
        m.observe_key("b", "k3", &obs("Suspended", false));
        let mut keys = sample(&m, "keyward_keys{");
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "keyward_keys{state=\"Active\"} 2",
                "keyward_keys{state=\"Suspended\"} 1"
            ]
        );
        assert_eq!(
            sample(&m, "keyward_overdue_keys "),
            vec!["keyward_overdue_keys 1"]
        );
        assert!(
            sample(&m, "keyward_key_next_rotation_timestamp_seconds{")
                .contains(&"keyward_key_next_rotation_timestamp_seconds{namespace=\"a\",name=\"k1\"} 1800000000.0".to_string()),
            "{:?}",
            sample(&m, "keyward_key_next_rotation_timestamp_seconds{")
        );
        assert!(sample(&m, "keyward_key_expiry_timestamp_seconds{").is_empty());
        m.observe_key("a", "k2", &obs("Deactivated", false));
        m.forget_key("b", "k3");
        assert_eq!(
            sample(&m, "keyward_overdue_keys "),
            vec!["keyward_overdue_keys 0"]
        );
        let mut keys = sample(&m, "keyward_keys{");
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "keyward_keys{state=\"Active\"} 1",
                "keyward_keys{state=\"Deactivated\"} 1"
            ]
        );
        assert!(!m.encode().contains("name=\"k3\""));
    }
}
