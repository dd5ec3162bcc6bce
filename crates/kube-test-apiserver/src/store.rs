//! In-memory object store with a global resourceVersion, a bounded event history for watch
//! resumption, and the Kubernetes write rules (generation, status subresource, finalizers,
//! optimistic concurrency, DeleteOptions, the namespace REST rules). The controllers that react
//! to these writes (garbage collector, namespace controller) are in `lifecycle.rs`.

use crate::schema::{self, FieldError};
use crate::types::ResType;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// (group, plural).
pub type TypeKey = (String, String);

/// One change, as a watch event.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion after the change.
    pub rv: u64,
    /// Resource type.
    pub key: TypeKey,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// ADDED, MODIFIED, DELETED.
    pub etype: &'static str,
    /// Object after the change (before, for DELETED).
    pub object: Value,
}

/// Errors of the write rules, mapped to HTTP by the handlers.
#[derive(Debug)]
pub enum StoreError {
    /// 404.
    NotFound(String),
    /// 409 AlreadyExists.
    AlreadyExists(String),
    /// 409 Conflict (stale resourceVersion).
    Conflict(String),
    /// 422 with field causes.
    Invalid(String, Vec<FieldError>),
    /// 400.
    BadRequest(String),
    /// 405.
    MethodNotAllowed(String),
    /// 500 without a reason: a storage error the real server does not convert.
    Internal(String),
    /// 403 Forbidden from an admission rule; `name` goes into the Status details.
    Forbidden {
        /// The whole Status message.
        message: String,
        /// Object name for the details.
        name: String,
        /// Status causes.
        causes: Vec<FieldError>,
    },
    /// 409 Conflict of a DeleteOptions precondition; the details name `kind` (the real server
    /// puts the object's Kind there for generic resources, `namespaces` for namespaces).
    PreconditionFailed {
        /// The whole Status message.
        message: String,
        /// `details.kind`.
        kind: String,
    },
}

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents lose their ownerReference and stay.
    Orphan,
    /// The owner goes at once; the garbage collector deletes dependents afterwards.
    Background,
    /// Dependents are deleted first; the owner waits with the `foregroundDeletion` finalizer.
    Foreground,
}

/// The parts of a DELETE request's `DeleteOptions` the store acts on (grace periods and
/// `dryRun` are accepted and ignored).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy`.
    pub propagation: Option<Propagation>,
    /// The deprecated `orphanDependents`, still honoured by the real server.
    pub orphan_dependents: Option<bool>,
}

impl DeleteOptions {
    /// Options with only a propagation policy, as the controllers send them.
    pub fn propagation(p: Propagation) -> Self {
        Self {
            propagation: Some(p),
            ..Self::default()
        }
    }

    /// Read a `DeleteOptions` body, validated as ValidateDeleteOptions does
    /// (staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go, called from
    /// BeforeDelete in staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go). The error is
    /// the message and causes of the 422 `DeleteOptions.meta.k8s.io "" is invalid`.
    pub fn from_json(v: &Value) -> Result<Self, (String, Vec<FieldError>)> {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
        let policy = s("/propagationPolicy");
        let orphan_dependents = v.get("orphanDependents").and_then(Value::as_bool);
        let mut errs = Vec::new();
        if orphan_dependents.is_some() && policy.is_some() {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                field: "propagationPolicy".into(),
                message: format!(
                    "Invalid value: {:?}: orphanDependents and deletionPropagation cannot be both set",
                    policy.clone().unwrap_or_default()
                ),
            });
        }
        let propagation = match policy.as_deref() {
            None => None,
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some(other) => {
                errs.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: "propagationPolicy".into(),
                    message: format!(
                        "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                });
                None
            }
        };
        if !errs.is_empty() {
            let list: Vec<String> = errs.iter().map(FieldError::render).collect();
            let joined = if list.len() == 1 {
                list[0].clone()
            } else {
                format!("[{}]", list.join(", "))
            };
            return Err((
                format!("DeleteOptions.meta.k8s.io \"\" is invalid: {joined}"),
                errs,
            ));
        }
        Ok(Self {
            uid: s("/preconditions/uid"),
            resource_version: s("/preconditions/resourceVersion"),
            propagation,
            orphan_dependents,
        })
    }
}

/// Which part of an object an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// The resource itself.
    Main,
    /// The `status` subresource.
    Status,
    /// `namespaces/{name}/finalize`: the only way to change a namespace's `spec.finalizers`.
    Finalize,
}

/// The namespaces NamespaceLifecycle refuses to delete (its Register in
/// staging/src/k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go).
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Everything stored.
pub struct State {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// Known types.
    pub types: Vec<ResType>,
    /// Objects by type, then (namespace, name).
    pub objects: HashMap<TypeKey, BTreeMap<(String, String), Value>>,
    /// Recent changes, oldest first.
    pub history: VecDeque<Arc<Change>>,
    /// History bound.
    pub history_cap: usize,
    /// Snapshots behind the continue tokens of paginated lists.
    pub(crate) pages: crate::paging::Snapshots,
    /// When set, the emulated controllers (garbage collector, namespace controller) run this
    /// long after the write that gave them work instead of inside it
    /// ([`crate::ServerOptions::controllers_delay`]).
    pub(crate) controllers_delay: Option<std::time::Duration>,
    /// Since when the delayed controllers have had work waiting.
    pub(crate) settle_due: Option<std::time::Instant>,
    /// Where open watches hear of changes. Sent while the store lock is held, in the same
    /// step that hands out the resourceVersion, so watchers see changes in resourceVersion
    /// order as etcd's watch delivers them (sent after the lock, two concurrent writes could
    /// arrive in the other order and a watch would skip the older one as already seen).
    pub(crate) live: Option<tokio::sync::broadcast::Sender<Arc<Change>>>,
}

/// A write body must be an object whose `metadata`, if present, is an object: the decoder
/// upstream refuses anything else with 400 before any handler looks at it (and here an index
/// into a non-object `metadata` would panic while the store lock is held).
fn object_body(obj: &Value) -> Result<(), StoreError> {
    match obj.as_object() {
        None => Err(StoreError::BadRequest("body must be a JSON object".into())),
        Some(o)
            if o.get("metadata")
                .is_some_and(|m| !m.is_object() && !m.is_null()) =>
        {
            Err(StoreError::BadRequest(
                "metadata must be a JSON object".into(),
            ))
        }
        Some(_) => Ok(()),
    }
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("round")
        .to_string()
}

pub(crate) fn meta(o: &Value, k: &str) -> Option<String> {
    o.get("metadata")?.get(k)?.as_str().map(String::from)
}

/// `metadata.finalizers`.
pub(crate) fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `spec.finalizers` of a namespace.
fn spec_finalizers(o: &Value) -> Vec<String> {
    o.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn is_namespace(t: &ResType) -> bool {
    t.group.is_empty() && t.plural == "namespaces"
}

pub(crate) fn is_deleting(o: &Value) -> bool {
    o["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|d| !d.is_null())
}

/// Whether a write leaves an object that must go at once: being deleted with no finalizers
/// left (ShouldDeleteDuringUpdate in
/// staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go); a namespace also needs
/// empty `spec.finalizers` (ShouldDeleteNamespaceDuringUpdate in
/// pkg/registry/core/namespace/storage/storage.go).
pub(crate) fn should_remove(t: &ResType, o: &Value) -> bool {
    is_deleting(o)
        && finalizers(o).is_empty()
        && (!is_namespace(t) || spec_finalizers(o).is_empty())
}

/// The finalizers a delete leaves on an object: deletionFinalizersForGarbageCollection with
/// shouldOrphanDependents / shouldDeleteDependents
/// (staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go). The options win, then
/// a GC finalizer already present, then the type's default (background for every type here).
fn gc_finalizers(old: &[String], opts: &DeleteOptions) -> Vec<String> {
    let first_gc = old
        .iter()
        .find(|f| *f == "orphan" || *f == "foregroundDeletion")
        .map(String::as_str);
    let orphan = match (opts.orphan_dependents, opts.propagation) {
        (Some(b), _) => b,
        (None, Some(p)) => p == Propagation::Orphan,
        (None, None) => first_gc == Some("orphan"),
    };
    let foreground = match (opts.orphan_dependents, opts.propagation) {
        (Some(_), _) => false,
        (None, Some(p)) => p == Propagation::Foreground,
        (None, None) => first_gc == Some("foregroundDeletion"),
    };
    let mut new: Vec<String> = old
        .iter()
        .filter(|f| *f != "orphan" && *f != "foregroundDeletion")
        .cloned()
        .collect();
    if orphan {
        new.push("orphan".into());
    }
    if foreground {
        new.push("foregroundDeletion".into());
    }
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<String>>();
    if set(&new) == set(old) {
        old.to_vec()
    } else {
        new
    }
}

/// The namespace REST Delete's own GC finalizers (shouldHaveOrphanFinalizer /
/// shouldHaveDeleteDependentsFinalizer in pkg/registry/core/namespace/storage/storage.go): unlike
/// the generic store, `orphanDependents: false` asks for foreground deletion.
fn namespace_gc_finalizers(old: &[String], opts: &DeleteOptions) -> Vec<String> {
    let has = |f: &str| old.iter().any(|x| x == f);
    let orphan = match (opts.orphan_dependents, opts.propagation) {
        (Some(b), _) => b,
        (None, Some(p)) => p == Propagation::Orphan,
        (None, None) => has("orphan"),
    };
    let foreground = match (opts.orphan_dependents, opts.propagation) {
        (Some(b), _) => !b,
        (None, Some(p)) => p == Propagation::Foreground,
        (None, None) => has("foregroundDeletion"),
    };
    if orphan == has("orphan") && foreground == has("foregroundDeletion") {
        return old.to_vec();
    }
    let mut new: Vec<String> = old
        .iter()
        .filter(|f| *f != "orphan" && *f != "foregroundDeletion")
        .cloned()
        .collect();
    if orphan {
        new.push("orphan".into());
    }
    if foreground {
        new.push("foregroundDeletion".into());
    }
    new
}

fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

impl State {
    /// A store with the built-in types and the default namespaces.
    pub fn new(history_cap: usize) -> Self {
        let mut s = Self {
            rv: 0,
            types: crate::types::builtins(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap,
            pages: Default::default(),
            controllers_delay: None,
            settle_due: None,
            live: None,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            let t = s.find_type("", "namespaces").expect("builtin").clone();
            s.create(&t, "v1", "", obj).expect("default namespace");
        }
        s
    }

    /// Find a type by group and plural.
    pub fn find_type(&self, group: &str, plural: &str) -> Option<&ResType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        key: &TypeKey,
        ns: &str,
        etype: &'static str,
        object: Value,
    ) -> Arc<Change> {
        let c = Arc::new(Change {
            rv: self.rv,
            key: key.clone(),
            namespace: ns.into(),
            etype,
            object,
        });
        self.history.push_back(c.clone());
        if let Some(live) = &self.live {
            // No receiver (no open watch) is not an error.
            let _ = live.send(c.clone());
        }
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        c
    }

    /// Oldest resourceVersion a watch can resume from.
    pub fn oldest_resumable(&self) -> u64 {
        self.history
            .front()
            .map(|c| c.rv.saturating_sub(1))
            .unwrap_or(self.rv)
    }

    /// Get one object.
    pub fn get(&self, t: &ResType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(t.group.clone(), t.plural.clone()))?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a type (in one namespace, or all when `ns` is None).
    pub fn list(&self, t: &ResType, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .get(&(t.group.clone(), t.plural.clone()))
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|x| x == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn qualified(t: &ResType) -> String {
        if t.group.is_empty() {
            t.plural.clone()
        } else {
            format!("{}.{}", t.plural, t.group)
        }
    }

    fn kind_group(t: &ResType) -> String {
        if t.group.is_empty() {
            t.kind.clone()
        } else {
            format!("{}.{}", t.kind, t.group)
        }
    }

    fn validate(
        &self,
        t: &ResType,
        version: &str,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Value, StoreError> {
        let name = meta(obj, "name").unwrap_or_default();
        // The RBAC storages check escalation before the standard storage validates.
        if t.group == crate::rbac::RBAC_GROUP {
            crate::rbac::escalation_check(self, &t.plural, obj, old)?;
        }
        // Upstream validation of names, metadata and per-type rules (validation.rs), then the
        // CRD schema; their errors are reported together as the custom resource strategy does.
        let obj = &crate::validation::normalize(t, obj.clone())?;
        let mut errs = crate::validation::check(t, obj, old);
        let out = match t.version_schema(version) {
            None => obj.clone(),
            Some(schema) => match schema::check_object(schema, obj, old) {
                Ok(v) => v,
                Err(e) => {
                    errs.extend(e);
                    obj.clone()
                }
            },
        };
        if !errs.is_empty() {
            let list: Vec<String> = errs.iter().map(FieldError::render).collect();
            let joined = if list.len() == 1 {
                list[0].clone()
            } else {
                format!("[{}]", list.join(", "))
            };
            return Err(StoreError::Invalid(
                format!("{} {name:?} is invalid: {joined}", Self::kind_group(t)),
                errs,
            ));
        }
        crate::validation::storage_size(t, &out)?;
        Ok(out)
    }

    /// The create rule of the NamespaceLifecycle admission plugin (Admit in
    /// staging/src/k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go): no
    /// new content in a Terminating namespace. Only `localsubjectaccessreviews` are exempt
    /// (accessReviewResources); Events are not. `shown` is the name the Forbidden names
    /// (extractResourceName in staging/src/k8s.io/apiserver/pkg/admission/errors.go: name, else
    /// generateName, else "Unknown").
    pub(crate) fn admit_create_in_namespace(
        &self,
        t: &ResType,
        ns: &str,
        shown: &str,
    ) -> Result<(), StoreError> {
        if t.group == "authorization.k8s.io" && t.plural == "localsubjectaccessreviews" {
            return Ok(());
        }
        let nst = self.find_type("", "namespaces").expect("builtin");
        let terminating = self
            .get(nst, "", ns)
            .is_some_and(|n| n.pointer("/status/phase") == Some(&json!("Terminating")));
        if !terminating {
            return Ok(());
        }
        Err(StoreError::Forbidden {
            message: format!(
                "{} {shown:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                Self::qualified(t)
            ),
            name: shown.into(),
            causes: vec![FieldError {
                reason: "NamespaceTerminating",
                field: "metadata.namespace".into(),
                message: format!("namespace {ns} is being terminated"),
            }],
        })
    }

    /// Create. Returns the stored object and the change.
    pub fn create(
        &mut self,
        t: &ResType,
        version: &str,
        ns: &str,
        mut obj: Value,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        object_body(&obj)?;
        let key = (t.group.clone(), t.plural.clone());
        if t.namespaced && t.plural != "namespaces" {
            let nst = self.find_type("", "namespaces").expect("builtin").clone();
            if self.get(&nst, "", ns).is_none() {
                return Err(StoreError::NotFound(format!("namespaces {ns:?} not found")));
            }
            let shown = meta(&obj, "name")
                .filter(|n| !n.is_empty())
                .or_else(|| meta(&obj, "generateName").filter(|n| !n.is_empty()))
                .unwrap_or_else(|| "Unknown".into());
            self.admit_create_in_namespace(t, ns, &shown)?;
        }
        if is_namespace(t) {
            // PrepareForCreate in pkg/registry/core/namespace/strategy.go: a new namespace is
            // Active and always carries the `kubernetes` finalizer the namespace controller owns.
            let o = obj.as_object_mut().expect("object");
            o.insert("status".into(), json!({"phase": "Active"}));
            let spec = o.entry("spec").or_insert_with(|| json!({}));
            if !spec.is_object() {
                *spec = json!({});
            }
            let mut fins = spec_finalizers(&json!({"spec": spec.clone()}));
            if !fins.iter().any(|f| f == "kubernetes") {
                fins.push("kubernetes".into());
            }
            spec["finalizers"] = json!(fins);
        }
        let mut name = meta(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            let Some(prefix) = meta(&obj, "generateName") else {
                return Err(StoreError::Invalid(
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        Self::kind_group(t)
                    ),
                    vec![FieldError {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        message: "Required value".into(),
                    }],
                ));
            };
            name = crate::validation::generate_name(&prefix);
        }
        if let Some(body_ns) = meta(&obj, "namespace").filter(|n| !n.is_empty())
            && t.namespaced
            && !ns.is_empty()
            && body_ns != ns
        {
            return Err(StoreError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()));
        }
        if self.get(t, ns, &name).is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "{} {name:?} already exists",
                Self::qualified(t)
            )));
        }
        {
            let o = obj.as_object_mut().expect("object");
            o.insert("apiVersion".into(), t.api_version(version).into());
            o.insert("kind".into(), t.kind.clone().into());
            if t.status && t.from_crd {
                o.remove("status");
            }
            let m = o.entry("metadata").or_insert_with(|| json!({}));
            m["name"] = name.clone().into();
            if t.namespaced {
                m["namespace"] = ns.into();
            } else if let Some(mm) = m.as_object_mut() {
                mm.remove("namespace");
            }
            m["uid"] = uuid::Uuid::new_v4().to_string().into();
            m["creationTimestamp"] = now().into();
            m["generation"] = 1.into();
            if let Some(mm) = m.as_object_mut() {
                mm.remove("deletionTimestamp");
                mm.remove("resourceVersion");
            }
        }
        let mut obj = self.validate(t, version, &obj, None)?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        if t.plural == "customresourcedefinitions" {
            obj["status"] = json!({"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}],
                "acceptedNames": obj["spec"]["names"].clone(), "storedVersions": [obj["spec"]["versions"][0]["name"].clone()]});
            match ResType::from_crd(&obj) {
                Some(rt) => {
                    self.types
                        .retain(|x| !(x.group == rt.group && x.plural == rt.plural));
                    self.types.push(rt);
                }
                None => {
                    return Err(StoreError::BadRequest(
                        "CustomResourceDefinition spec is incomplete (group, names, versions)"
                            .into(),
                    ));
                }
            }
        }
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name), obj.clone());
        let c = self.record(&key, ns, "ADDED", obj.clone());
        Ok((obj, vec![c]))
    }

    /// Replace (PUT) or the result of a patch. `status_only` = the /status subresource.
    pub fn update(
        &mut self,
        t: &ResType,
        version: &str,
        ns: &str,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let sub = if status_only { Sub::Status } else { Sub::Main };
        self.update_sub(t, version, ns, name, obj, sub)
    }

    /// Replace one part of an object (`sub`), then let the emulated controllers react.
    pub fn update_sub(
        &mut self,
        t: &ResType,
        version: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        sub: Sub,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let status_only = sub == Sub::Status;
        object_body(&obj)?;
        let cur = self.get(t, ns, name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("{} {name:?} not found", Self::qualified(t)))
        })?;
        if let Some(rv) = meta(&obj, "resourceVersion")
            && !rv.is_empty()
            && Some(&rv) != meta(&cur, "resourceVersion").as_ref()
        {
            return Err(StoreError::Conflict(format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                Self::qualified(t)
            )));
        }
        if let Some(body_name) = meta(&obj, "name")
            && body_name != name
        {
            return Err(StoreError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let mut next = if status_only {
            let mut n = cur.clone();
            n["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if n["status"].is_null() {
                n.as_object_mut().expect("object").remove("status");
            }
            // The status strategies keep the managedFields the field manager computed.
            match obj.pointer("/metadata/managedFields") {
                Some(mf) => n["metadata"]["managedFields"] = mf.clone(),
                None => {
                    if let Some(m) = n["metadata"].as_object_mut() {
                        m.remove("managedFields");
                    }
                }
            }
            n
        } else {
            let o = obj
                .as_object_mut()
                .ok_or_else(|| StoreError::BadRequest("body must be a JSON object".into()))?;
            if t.status {
                match cur.get("status") {
                    Some(s) => {
                        o.insert("status".into(), s.clone());
                    }
                    None => {
                        o.remove("status");
                    }
                }
            }
            if is_namespace(t) && sub == Sub::Main {
                // PrepareForUpdate in pkg/registry/core/namespace/strategy.go: spec.finalizers
                // only change through the finalize subresource.
                let fins = cur.pointer("/spec/finalizers").cloned();
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    match fins {
                        Some(f) => {
                            spec.insert("finalizers".into(), f);
                        }
                        None => {
                            spec.remove("finalizers");
                        }
                    }
                }
            }
            // Server-owned metadata survives every update.
            let m = o.entry("metadata").or_insert_with(|| json!({}));
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "namespace",
                "name",
                "generation",
            ] {
                match cur["metadata"].get(k) {
                    Some(v) => m[k] = v.clone(),
                    None => {
                        if let Some(mm) = m.as_object_mut() {
                            mm.remove(k);
                        }
                    }
                }
            }
            obj
        };
        next["apiVersion"] = t.api_version(version).into();
        next["kind"] = t.kind.clone().into();
        let mut next = self.validate(t, version, &next, Some(&cur))?;
        if spec_part(&next) != spec_part(&cur) && !status_only {
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = (g + 1).into();
        }
        let strip_rv = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            v
        };
        if strip_rv(&next) == strip_rv(&cur) {
            // No-op writes do not bump the resourceVersion (as the real server).
            return Ok((cur, vec![]));
        }
        let work = crate::lifecycle::may_give_controllers_work(t, &cur, &next);
        let (out, mut changes) = self.put_or_remove(t, ns, name, next)?;
        if work {
            changes.extend(self.settle_or_schedule());
        }
        Ok((out, changes))
    }

    /// Store a new state of an existing object (bumps the resourceVersion, records MODIFIED).
    pub(crate) fn put(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
        mut next: Value,
    ) -> Arc<Change> {
        let key = (t.group.clone(), t.plural.clone());
        let rv = self.bump();
        next["metadata"]["resourceVersion"] = rv.to_string().into();
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), next.clone());
        if t.plural == "customresourcedefinitions"
            && let Some(rt) = ResType::from_crd(&next)
        {
            self.types
                .retain(|x| !(x.group == rt.group && x.plural == rt.plural));
            self.types.push(rt);
        }
        self.record(&key, ns, "MODIFIED", next)
    }

    /// Store an update, or remove the object when the update emptied the finalizers of an
    /// object being deleted (see [`should_remove`]).
    pub(crate) fn put_or_remove(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
        next: Value,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        if should_remove(t, &next) {
            return self.remove(t, ns, name);
        }
        let c = self.put(t, ns, name, next);
        Ok((c.object.clone(), vec![c]))
    }

    /// DELETE with its options, then let the emulated controllers (garbage collector,
    /// namespace controller) react.
    pub fn delete(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let (out, mut changes) = self.delete_one(t, ns, name, opts)?;
        changes.extend(self.settle_or_schedule());
        Ok((out, changes))
    }

    /// One delete as the registry does it, without the controllers' reaction.
    pub(crate) fn delete_one(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let cur = self.get(t, ns, name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("{} {name:?} not found", Self::qualified(t)))
        })?;
        if is_namespace(t) {
            return self.delete_namespace(t, name, cur, opts);
        }
        self.delete_generic(t, ns, name, cur, opts)
    }

    /// Store.Delete of the generic registry.
    fn delete_generic(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
        cur: Value,
        opts: &DeleteOptions,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        // BeforeDelete (staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go) checks the
        // preconditions first; its Conflict names the Kind (and group) as the resource.
        let uid = meta(&cur, "uid").unwrap_or_default();
        let rv = meta(&cur, "resourceVersion").unwrap_or_default();
        let conflict = |why: String| StoreError::PreconditionFailed {
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                Self::kind_group(t)
            ),
            kind: t.kind.clone(),
        };
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(conflict(format!(
                "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            )));
        }
        if let Some(want) = &opts.resource_version
            && *want != rv
        {
            return Err(conflict(format!(
                "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
            )));
        }
        // Store.Delete / updateForGracefulDeletionAndFinalizers (same file as gc_finalizers):
        // with finalizers left after the GC ones are set from the options, the object is only
        // marked (markAsDeleting); otherwise it goes now.
        let old = finalizers(&cur);
        let fins = gc_finalizers(&old, opts);
        if fins.is_empty() {
            return self.remove(t, ns, name);
        }
        let mut next = cur.clone();
        if fins != old {
            next["metadata"]["finalizers"] = json!(fins);
        }
        if !is_deleting(&cur) {
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(0);
            if g > 0 {
                next["metadata"]["generation"] = (g + 1).into();
            }
            next["metadata"]["deletionTimestamp"] = now().into();
        }
        next["metadata"]["deletionGracePeriodSeconds"] = 0.into();
        if next == cur {
            return Ok((cur, vec![]));
        }
        let c = self.put(t, ns, name, next);
        Ok((c.object.clone(), vec![c]))
    }

    /// The namespace REST Delete (Delete in pkg/registry/core/namespace/storage/storage.go),
    /// after NamespaceLifecycle admission refuses the immortal namespaces.
    fn delete_namespace(
        &mut self,
        t: &ResType,
        name: &str,
        cur: Value,
        opts: &DeleteOptions,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        if IMMORTAL_NAMESPACES.contains(&name) {
            return Err(StoreError::Forbidden {
                message: format!(
                    "namespaces {name:?} is forbidden: this namespace may not be deleted"
                ),
                name: name.into(),
                causes: vec![],
            });
        }
        let uid = meta(&cur, "uid").unwrap_or_default();
        let rv = meta(&cur, "resourceVersion").unwrap_or_default();
        let conflict = |why: String| StoreError::PreconditionFailed {
            message: format!("Operation cannot be fulfilled on namespaces {name:?}: {why}"),
            kind: "namespaces".into(),
        };
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
            )));
        }
        if let Some(want) = &opts.resource_version
            && *want != rv
        {
            return Err(conflict(format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            )));
        }
        if !is_deleting(&cur) {
            // First delete: mark it and switch to Terminating; the namespace controller
            // (crate::lifecycle) empties it and removes the `kubernetes` finalizer.
            let mut next = cur.clone();
            next["metadata"]["deletionTimestamp"] = now().into();
            if !next["status"].is_object() {
                next["status"] = json!({});
            }
            next["status"]["phase"] = "Terminating".into();
            let old = finalizers(&cur);
            let fins = namespace_gc_finalizers(&old, opts);
            if fins != old {
                next["metadata"]["finalizers"] = json!(fins);
            }
            let c = self.put(t, "", name, next);
            return Ok((c.object.clone(), vec![c]));
        }
        if !spec_finalizers(&cur).is_empty() {
            // Still being finalized: answered with the namespace as it is.
            return Ok((cur, vec![]));
        }
        // Finalized: the generic store deletes it (or waits for metadata.finalizers).
        self.delete_generic(t, "", name, cur, opts)
    }

    /// Take an object out of the store (DELETED). Deleting a CRD takes its objects with it.
    pub(crate) fn remove(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let key = (t.group.clone(), t.plural.clone());
        let mut obj = self
            .objects
            .get_mut(&key)
            .and_then(|m| m.remove(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| StoreError::NotFound(name.into()))?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        let mut changes = vec![self.record(&key, ns, "DELETED", obj.clone())];
        if t.plural == "customresourcedefinitions"
            && let Some(rt) = ResType::from_crd(&obj)
        {
            self.types
                .retain(|x| !(x.group == rt.group && x.plural == rt.plural && x.from_crd));
            let k = (rt.group.clone(), rt.plural.clone());
            if let Some(objs) = self.objects.remove(&k) {
                for ((ons, _), o) in objs {
                    self.bump();
                    changes.push(self.record(&k, &ons, "DELETED", o));
                }
            }
        }
        Ok((obj, changes))
    }
}

/// Label selector matching (`=`, `==`, `!=`, `in`, `notin`, exists, `!exists`).
pub fn labels_match(selector: &str, obj: &Value) -> Result<bool, String> {
    let labels = obj["metadata"].get("labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    for req in split_requirements(selector) {
        let req = req.trim();
        if req.is_empty() {
            continue;
        }
        let ok = if let Some((k, rest)) = req.split_once(" notin ") {
            let set = parse_set(rest)?;
            get(k.trim()).is_none_or(|v| !set.contains(&v.to_string()))
        } else if let Some((k, rest)) = req.split_once(" in ") {
            let set = parse_set(rest)?;
            get(k.trim()).is_some_and(|v| set.contains(&v.to_string()))
        } else if let Some((k, v)) = req.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = req.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(req).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn split_requirements(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| format!("invalid label selector set {s:?}"))?;
    Ok(inner.split(',').map(|x| x.trim().to_string()).collect())
}

/// Field selector matching (metadata.name, metadata.namespace; `=`, `==`, `!=`).
pub fn fields_match(selector: &str, obj: &Value) -> Result<bool, String> {
    for req in selector.split(',').filter(|r| !r.is_empty()) {
        let (k, v, neg) = if let Some((k, v)) = req.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            (k, v, false)
        } else {
            return Err(format!("invalid field selector {req:?}"));
        };
        let actual = match k.trim() {
            "metadata.name" => meta(obj, "name"),
            "metadata.namespace" => meta(obj, "namespace"),
            "type" => obj.get("type").and_then(Value::as_str).map(String::from),
            "spec.nodeName" => obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(String::from),
            "involvedObject.name" => obj
                .pointer("/involvedObject/name")
                .and_then(Value::as_str)
                .map(String::from),
            "involvedObject.uid" => obj
                .pointer("/involvedObject/uid")
                .and_then(Value::as_str)
                .map(String::from),
            other => return Err(format!("field label not supported: {other}")),
        };
        if (actual.as_deref() == Some(v.trim())) == neg {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "x", "tier": "db"}}});
        assert!(labels_match("app=x,tier in (db, web)", &o).unwrap());
        assert!(!labels_match("app!=x", &o).unwrap());
        assert!(labels_match("!missing,app", &o).unwrap());
        assert!(!labels_match("tier notin (db)", &o).unwrap());
        assert!(fields_match("metadata.name=a,metadata.namespace!=m", &o).unwrap());
        assert!(!fields_match("metadata.name==b", &o).unwrap());
        assert!(fields_match("spec.bogus=1", &o).is_err());
    }

    #[test]
    fn delete_options_and_gc_finalizers() {
        let o = DeleteOptions::from_json(
            &json!({"propagationPolicy": "Foreground", "preconditions": {"uid": "u"}}),
        )
        .unwrap();
        assert_eq!(
            (o.propagation, o.uid.as_deref()),
            (Some(Propagation::Foreground), Some("u"))
        );
        let (msg, causes) =
            DeleteOptions::from_json(&json!({"propagationPolicy": "Sideways"})).unwrap_err();
        assert_eq!(
            msg,
            r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": supported values: "Foreground", "Background", "Orphan", "nil""#
        );
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
        let keep = vec!["a".to_string()];
        assert_eq!(gc_finalizers(&keep, &o), ["a", "foregroundDeletion"]);
        // Background strips the GC finalizers; no options keep what is there.
        let fg = vec!["a".to_string(), "foregroundDeletion".to_string()];
        let bg = DeleteOptions::propagation(Propagation::Background);
        assert_eq!(gc_finalizers(&fg, &bg), ["a"]);
        assert_eq!(gc_finalizers(&fg, &DeleteOptions::default()), fg);
        // orphanDependents=false means foreground for a namespace, background elsewhere.
        let no_orphan = DeleteOptions {
            orphan_dependents: Some(false),
            ..Default::default()
        };
        assert_eq!(
            namespace_gc_finalizers(&[], &no_orphan),
            ["foregroundDeletion"]
        );
        assert!(gc_finalizers(&[], &no_orphan).is_empty());
    }
}
