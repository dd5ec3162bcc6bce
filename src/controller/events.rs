//! Kubernetes Events about ManagedKeys (events.k8s.io/v1), with repeats counted in a series,
//! in bounded memory.
//!
//! kube-runtime's `Recorder` keeps a full copy of every Event it published for six minutes, in
//! a map it scans on every publish. When 10,000 keys get their first version in a burst that
//! map was the controller's largest allocation (18 MiB at 4,000 Events, heaptrack) and the
//! scan an O(n) cost per Event. This recorder keeps what a series needs (the Event's name and
//! count) for at most [`MAX_SERIES`] recent Events; a repeat of one that was forgotten (more
//! than [`SERIES_WINDOW`] old, or dropped for the bound) starts a new Event instead of counting
//! in the old series.
//!
//! Same Events as the `Recorder`: one Event is "the same" as an earlier one when it regards the
//! same object with the same type, reason and action from the same reporter (the events
//! broadcaster's rule, client-go `tools/events`, `getKey`: the note is not part of it). The
//! name is `<object name>.<nanoseconds in hex>`, the object name cut so the whole stays a
//! 253-character DNS subdomain (kubernetes `pkg/apis/core/validation/events.go`,
//! `ValidateEventCreate`).

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a repeat counts in the earlier Event's series (as kube-runtime and client-go).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Series remembered at most; when full, expired ones are dropped, and if none had expired,
/// all (a repeat then starts a new Event).
pub const MAX_SERIES: usize = 4096;

/// Longest object name in an Event name (`<name>.<16 hex digits>` within 253).
const MAX_NAME_PREFIX: usize = 253 - 17;

/// What makes two Events the same (the note and time are not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    warning: bool,
    reason: String,
    action: String,
}

impl SeriesKey {
    /// The key of `ev` about `regarding`.
    pub fn of(ev: &Event, regarding: &ObjectReference) -> Self {
        Self {
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

/// The remembered series: pure, so its rules are unit tests.
#[derive(Debug, Default)]
pub struct SeriesCache {
    series: HashMap<SeriesKey, Series>,
}

impl SeriesCache {
    /// For a repeat within the window: the earlier Event's name and the count this one makes.
    pub fn repeat_of(&self, key: &SeriesKey, now: Timestamp) -> Option<(String, i32)> {
        let s = self.series.get(key)?;
        (now < s.last + SERIES_WINDOW).then(|| (s.name.clone(), s.count.saturating_add(1)))
    }

    /// A repeat was counted in the API.
    pub fn counted(&mut self, key: &SeriesKey, count: i32, now: Timestamp) {
        if let Some(s) = self.series.get_mut(key) {
            s.count = count;
            s.last = now;
        }
    }

    /// A new Event named `name` was created.
    pub fn started(&mut self, key: SeriesKey, name: String, now: Timestamp) {
        if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
            self.series.retain(|_, s| now < s.last + SERIES_WINDOW);
            if self.series.len() >= MAX_SERIES {
                self.series.clear();
            }
        }
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                last: now,
            },
        );
    }

    /// Series remembered.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Publishes Events (see the module documentation).
pub struct EventRecorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Mutex<SeriesCache>,
}

impl EventRecorder {
    /// Events reported by `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SeriesCache> {
        // A poisoned cache only loses series: the next repeat starts a new Event.
        self.cache.lock().unwrap_or_else(|p| {
            let mut g = p.into_inner();
            *g = SeriesCache::default();
            g
        })
    }

    /// Publish `ev` about `regarding`: a repeat within the window counts in the earlier
    /// Event's series, anything else is a new Event.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey::of(ev, regarding);
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let repeat = self.cache().repeat_of(&key, now);
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({
                "series": {"count": count, "lastObservedTime": MicroTime(now)}
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.cache().counted(&key, count, now);
                    return Ok(());
                }
                // The Event is gone (its TTL in the API server): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = new_event(ev, regarding, &self.reporter, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &event).await?;
        self.cache().started(key, name, now);
        Ok(())
    }
}

/// A new Event (no series yet), named for `regarding` and `now`.
pub fn new_event(
    ev: &Event,
    regarding: &ObjectReference,
    reporter: &Reporter,
    now: Timestamp,
) -> K8sEvent {
    let object = regarding.name.as_deref().unwrap_or(&reporter.controller);
    let mut cut = MAX_NAME_PREFIX.min(object.len());
    while !object.is_char_boundary(cut) {
        cut -= 1;
    }
    // A DNS subdomain ends in an alphanumeric character.
    let base = object[..cut].trim_end_matches(['-', '.']);
    K8sEvent {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{base}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(match ev.type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, type_: EventType) -> Event {
        Event {
            type_,
            reason: reason.into(),
            note: Some("n".into()),
            action: "Rotate".into(),
            secondary: None,
        }
    }

    fn obj(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("ManagedKey".into()),
            namespace: Some("a".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_repeat_within_the_window_counts_in_the_series() {
        let mut c = SeriesCache::default();
        let k = SeriesKey::of(&ev("Rotated", EventType::Normal), &obj("k", "u"));
        assert_eq!(c.repeat_of(&k, t(0)), None);
        c.started(k.clone(), "k.1".into(), t(0));
        assert_eq!(c.repeat_of(&k, t(10)), Some(("k.1".into(), 2)));
        c.counted(&k, 2, t(10));
        assert_eq!(c.repeat_of(&k, t(20)), Some(("k.1".into(), 3)));
        // The window runs from the last repeat; at its end the next one is a new Event.
        assert_eq!(c.repeat_of(&k, t(10 + 359)), Some(("k.1".into(), 3)));
        assert_eq!(c.repeat_of(&k, t(10 + 360)), None);
    }

    #[test]
    fn type_reason_action_and_object_separate_series_but_the_note_does_not() {
        let base = SeriesKey::of(&ev("Rotated", EventType::Normal), &obj("k", "u"));
        let mut noted = ev("Rotated", EventType::Normal);
        noted.note = Some("other".into());
        assert_eq!(SeriesKey::of(&noted, &obj("k", "u")), base);
        let mut acted = ev("Rotated", EventType::Normal);
        acted.action = "Other".into();
        for other in [
            SeriesKey::of(&ev("Rotated", EventType::Warning), &obj("k", "u")),
            SeriesKey::of(&ev("Created", EventType::Normal), &obj("k", "u")),
            SeriesKey::of(&acted, &obj("k", "u")),
            SeriesKey::of(&ev("Rotated", EventType::Normal), &obj("j", "u")),
            SeriesKey::of(&ev("Rotated", EventType::Normal), &obj("k", "re-created")),
        ] {
            assert_ne!(other, base);
        }
    }

    #[test]
    fn memory_is_bounded_expired_series_go_first() {
        let mut c = SeriesCache::default();
        let key = |i: usize| SeriesKey::of(&ev("R", EventType::Normal), &obj(&i.to_string(), "u"));
        c.started(key(0), "old".into(), t(0));
        for i in 1..MAX_SERIES {
            c.started(key(i), format!("e{i}"), t(300));
        }
        assert_eq!(c.len(), MAX_SERIES);
        // Full: the one expired series makes room; the others stay.
        c.started(key(MAX_SERIES), "new".into(), t(400));
        assert_eq!(c.len(), MAX_SERIES);
        assert_eq!(c.repeat_of(&key(0), t(400)), None);
        assert_eq!(c.repeat_of(&key(1), t(400)), Some(("e1".into(), 2)));
        // Full and nothing expired: all are forgotten, never more than the bound.
        c.started(key(MAX_SERIES + 1), "newer".into(), t(401));
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.repeat_of(&key(MAX_SERIES + 1), t(401)),
            Some(("newer".into(), 2))
        );
        // A series already remembered is updated in place even when full.
        let mut full = SeriesCache::default();
        for i in 0..MAX_SERIES {
            full.started(key(i), format!("e{i}"), t(0));
        }
        full.started(key(5), "again".into(), t(1));
        assert_eq!(full.len(), MAX_SERIES);
    }

    #[test]
    fn event_names_fit_a_dns_subdomain() {
        let reporter = Reporter {
            controller: "keyward-controller".into(),
            instance: None,
        };
        let e = new_event(
            &ev("R", EventType::Warning),
            &obj("k", "u"),
            &reporter,
            t(0),
        );
        let name = e.metadata.name.unwrap();
        assert_eq!(name, format!("k.{:x}", t(0).as_nanosecond()));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("keyward-controller"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("a"));
        // The longest object name: cut, and never ending in '-' or '.' before the suffix.
        let long = format!("{}-.{}", "a".repeat(234), "b".repeat(17));
        assert_eq!(long.len(), 253);
        let e = new_event(
            &ev("R", EventType::Normal),
            &obj(&long, "u"),
            &reporter,
            t(0),
        );
        let name = e.metadata.name.unwrap();
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with(&format!("{}.", "a".repeat(234))), "{name}");
        assert_eq!(e.regarding.unwrap().name.as_deref(), Some(long.as_str()));
    }
}
