//! In-memory object store with a global resourceVersion, a bounded event history for watch
//! resumption, and the Kubernetes write rules (generation, status subresource, finalizers,
//! optimistic concurrency, garbage collection).

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
}

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
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("round")
        .to_string()
}

fn meta(o: &Value, k: &str) -> Option<String> {
    o.get("metadata")?.get(k)?.as_str().map(String::from)
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
        if !name.is_empty() {
            let re = regex::Regex::new(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$").expect("regex");
            if name.len() > 253 || !re.is_match(&name) {
                return Err(StoreError::Invalid(
                    format!(
                        "{} {name:?} is invalid: metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                        Self::kind_group(t)
                    ),
                    vec![FieldError {
                        reason: "FieldValueInvalid",
                        field: "metadata.name".into(),
                        message: "Invalid value".into(),
                    }],
                ));
            }
        }
        let Some(schema) = t.schema(version) else {
            return Ok(obj.clone());
        };
        schema::check_object(schema, obj, old).map_err(|errs| {
            let list: Vec<String> = errs.iter().map(FieldError::render).collect();
            let joined = if list.len() == 1 {
                list[0].clone()
            } else {
                format!("[{}]", list.join(", "))
            };
            StoreError::Invalid(
                format!("{} {name:?} is invalid: {joined}", Self::kind_group(t)),
                errs,
            )
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
        if !obj.is_object() {
            return Err(StoreError::BadRequest("body must be a JSON object".into()));
        }
        let key = (t.group.clone(), t.plural.clone());
        if t.namespaced && t.plural != "namespaces" {
            let nst = self.find_type("", "namespaces").expect("builtin").clone();
            if self.get(&nst, "", ns).is_none() {
                return Err(StoreError::NotFound(format!("namespaces {ns:?} not found")));
            }
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
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
            name = format!("{prefix}{suffix}");
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
                mm.remove("managedFields");
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
        mut obj: Value,
        status_only: bool,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let key = (t.group.clone(), t.plural.clone());
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
                m.remove("managedFields");
            }
            v
        };
        if strip_rv(&next) == strip_rv(&cur) {
            // No-op writes do not bump the resourceVersion (as the real server).
            return Ok((cur, vec![]));
        }
        let rv = self.bump();
        next["metadata"]["resourceVersion"] = rv.to_string().into();
        let deleting = next["metadata"].get("deletionTimestamp").is_some();
        let no_finalizers = next["metadata"]
            .get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if deleting && no_finalizers {
            return self.remove(t, ns, name);
        }
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
        let c = self.record(&key, ns, "MODIFIED", next.clone());
        Ok((next, vec![c]))
    }

    /// Delete: mark with deletionTimestamp while finalizers remain, else remove (and collect
    /// garbage).
    pub fn delete(
        &mut self,
        t: &ResType,
        ns: &str,
        name: &str,
    ) -> Result<(Value, Vec<Arc<Change>>), StoreError> {
        let key = (t.group.clone(), t.plural.clone());
        let cur = self.get(t, ns, name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("{} {name:?} not found", Self::qualified(t)))
        })?;
        let has_finalizers = cur["metadata"]
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if cur["metadata"].get("deletionTimestamp").is_some() {
                return Ok((cur, vec![]));
            }
            let mut next = cur.clone();
            next["metadata"]["deletionTimestamp"] = now().into();
            next["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = (g + 1).into();
            let rv = self.bump();
            next["metadata"]["resourceVersion"] = rv.to_string().into();
            self.objects
                .entry(key.clone())
                .or_default()
                .insert((ns.to_string(), name.to_string()), next.clone());
            let c = self.record(&key, ns, "MODIFIED", next.clone());
            return Ok((next, vec![c]));
        }
        self.remove(t, ns, name)
    }

    fn remove(
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
        changes.extend(self.collect_garbage());
        Ok((obj, changes))
    }

    /// Background garbage collection: delete objects whose every owner is gone.
    fn collect_garbage(&mut self) -> Vec<Arc<Change>> {
        let mut changes = Vec::new();
        loop {
            let live: HashSet<String> = self
                .objects
                .values()
                .flat_map(|m| m.values())
                .filter_map(|o| meta(o, "uid"))
                .collect();
            let mut orphans = Vec::new();
            for ((g, p), m) in &self.objects {
                for ((ns, name), o) in m {
                    let owners = o["metadata"]
                        .get("ownerReferences")
                        .and_then(Value::as_array);
                    if let Some(owners) = owners
                        && !owners.is_empty()
                        && owners.iter().all(|r| {
                            r.get("uid")
                                .and_then(Value::as_str)
                                .is_none_or(|u| !live.contains(u))
                        })
                        && o["metadata"].get("deletionTimestamp").is_none()
                    {
                        orphans.push((g.clone(), p.clone(), ns.clone(), name.clone()));
                    }
                }
            }
            if orphans.is_empty() {
                return changes;
            }
            for (g, p, ns, name) in orphans {
                if let Some(t) = self.find_type(&g, &p).cloned()
                    && let Ok((_, c)) = self.delete(&t, &ns, &name)
                {
                    changes.extend(c);
                }
            }
        }
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
}
