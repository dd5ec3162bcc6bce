//! Server-side apply and `metadata.managedFields`, as structured-merge-diff (SMD) and the
//! apiserver's field manager do them: every write records which manager owns which fields;
//! an apply that changes a field another manager owns is a 409 unless forced; fields a manager
//! stops applying (and nobody else owns) are removed.
//!
//! Upstream references (read for the facts, not copied):
//! * sigs.k8s.io/structured-merge-diff `merge/update.go` (`Updater.update`, `Updater.Update`,
//!   `Updater.Apply`, `Updater.prune`), `typed/compare.go` (`compareWalker.compare`, `doLeaf`),
//!   `typed/tofieldset.go`, `fieldpath/serialize.go` (FieldsV1), `fieldpath/element.go`
//!   (`PathElement.String`).
//! * k8s.io/apimachinery `pkg/util/managedfields/internal/`: `conflict.go` (`NewConflictError`,
//!   `getConflictMessage`, `printManager`), `managedfieldsupdater.go` (the "current-operation"
//!   trick: an Update owns what it changed, merged into the manager's entry),
//!   `stripmeta.go` (`NewStripMetaManager`: server-owned metadata is never managed),
//!   `buildmanagerinfo.go` (`BuildManagerIdentifier`: Update entries are per apiVersion),
//!   `fields.go`/`managedfields.go` (`sortEncodedManagedFields`).
//! * k8s.io/apiserver `pkg/endpoints/handlers/`: `patch.go` (apply patcher, "Incorrect version
//!   specified in apply patch"), `create.go` (`managerOrUserAgent`, `prefixFromUserAgent`), and
//!   apimachinery `pkg/apis/meta/v1/validation` (`ValidatePatchOptions`).

use crate::prelude::*;
use std::collections::BTreeMap;

/// A set of field paths in the FieldsV1 shape: children keyed by their encoded path element
/// (`f:name`, `k:{"uid":"..."}`, `v:"x"`, `i:0`), `member` = the path itself is in the set.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Decode FieldsV1 (`fieldpath/serialize.go`): `{}` is a leaf member, `".": {}` marks a
    /// member that also has children.
    fn from_v1(v: &Value) -> Self {
        let mut s = FieldSet::default();
        if let Some(o) = v.as_object() {
            for (k, c) in o {
                if k == "." {
                    s.member = true;
                    continue;
                }
                let mut n = FieldSet::from_v1(c);
                if c.as_object().is_none_or(|m| m.is_empty()) {
                    n.member = true;
                }
                s.children.insert(k.clone(), n);
            }
        }
        s
    }

    fn to_v1(&self) -> Value {
        let mut m = serde_json::Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_v1());
            }
        }
        Value::Object(m)
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((h, rest)) => self.children.entry(h.clone()).or_default().insert(rest),
        }
    }

    fn union(&self, o: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= o.member;
        for (k, c) in &o.children {
            let n = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), n);
        }
        out
    }

    /// Members of `self` that are not members of `o`.
    fn difference(&self, o: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !o.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let n = match o.children.get(k) {
                Some(oc) => c.difference(oc),
                None => c.clone(),
            };
            if !n.is_empty() {
                out.children.insert(k.clone(), n);
            }
        }
        out
    }

    fn intersection(&self, o: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && o.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(oc) = o.children.get(k) {
                let n = c.intersection(oc);
                if !n.is_empty() {
                    out.children.insert(k.clone(), n);
                }
            }
        }
        out
    }

    /// Member paths in order.
    fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }
}

/// A path as `fieldpath.Path.String()` prints it: `.spec.x`, `[uid="u"]`, `[="v"]`, `[0]`.
fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(k)
                .map(|m| m.iter().map(|(n, v)| format!("{n}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", keys.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Schema of the metadata every object shares: the list types the built-in ObjectMeta
/// declares (finalizers is a set, ownerReferences a map keyed by uid).
fn metadata_schema() -> Value {
    json!({"type": "object", "properties": {
        "finalizers": {"type": "array", "x-kubernetes-list-type": "set"},
        "ownerReferences": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    }})
}

/// The schema SMD sees for a type: the CRD's openAPIV3Schema (lists atomic unless they say
/// `x-kubernetes-list-type`), or nothing for built-ins (maps granular, lists atomic), with
/// ObjectMeta's list types either way.
fn root_schema<'a>(rt: &'a ResType, version: &str) -> std::borrow::Cow<'a, Value> {
    match rt.version_schema(version) {
        Some(s) => std::borrow::Cow::Borrowed(&s.smd),
        None => std::borrow::Cow::Owned(smd_root(None)),
    }
}

/// [`root_schema`] from a version's openAPIV3Schema (None: a built-in), computed once per CRD
/// version (`types::VersionSchema`).
pub(crate) fn smd_root(openapi: Option<&Value>) -> Value {
    let mut root = openapi
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"type": "object"}));
    if !root["properties"].is_object() {
        root["properties"] = json!({});
    }
    root["properties"]["metadata"] = metadata_schema();
    root
}

fn field_schema<'a>(s: Option<&'a Value>, k: &str) -> Option<&'a Value> {
    let s = s?;
    s.get("properties")
        .and_then(|p| p.get(k))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// How a list's items are identified, or None when the list is atomic (the default, and the
/// fallback when an item lacks its keys or two items share them).
fn list_elems(arr: &[Value], s: Option<&Value>) -> Option<Vec<String>> {
    let s = s?;
    let elems: Vec<String> = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => arr
            .iter()
            .map(|v| (!v.is_object() && !v.is_array()).then(|| format!("v:{v}")))
            .collect::<Option<_>>()?,
        Some("map") => {
            let mut keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            keys.sort_unstable();
            if keys.is_empty() {
                return None;
            }
            arr.iter()
                .map(|item| {
                    let parts: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(*k).map(|v| format!("{}:{v}", json!(k))))
                        .collect::<Option<_>>()?;
                    Some(format!("k:{{{}}}", parts.join(",")))
                })
                .collect::<Option<_>>()?
        }
        _ => return None,
    };
    let mut seen = std::collections::HashSet::new();
    elems.iter().all(|e| seen.insert(e)).then_some(elems)
}

fn map_atomic(s: Option<&Value>) -> bool {
    s.and_then(|s| s.get("x-kubernetes-map-type"))
        .and_then(Value::as_str)
        == Some("atomic")
}

/// What SMD walks into: granular maps and lists have children, everything else is a leaf.
enum Shape {
    Leaf,
    Map,
    List(Vec<String>),
}

fn shape(v: &Value, s: Option<&Value>) -> Shape {
    match v {
        Value::Object(_) if !map_atomic(s) => Shape::Map,
        Value::Array(a) => list_elems(a, s).map_or(Shape::Leaf, Shape::List),
        _ => Shape::Leaf,
    }
}

fn items_schema(s: Option<&Value>) -> Option<&Value> {
    s.and_then(|s| s.get("items"))
}

/// The fields an applied configuration sets (ToFieldSet, typed/tofieldset.go): leaves and
/// list items are members, granular maps are not.
fn set_of(v: &Value, s: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::default();
    match (shape(v, s), v) {
        (Shape::Map, Value::Object(o)) => {
            for (k, c) in o {
                let cs = field_schema(s, k);
                let mut n = set_of(c, cs);
                if matches!(shape(c, cs), Shape::Leaf) {
                    n.member = true;
                }
                if !n.is_empty() {
                    out.children.insert(format!("f:{k}"), n);
                }
            }
        }
        (Shape::List(elems), Value::Array(a)) => {
            for (e, item) in elems.into_iter().zip(a) {
                let mut n = set_of(item, items_schema(s));
                n.member = true;
                out.children.insert(e, n);
            }
        }
        _ => {}
    }
    out
}

/// Fields added, modified and removed between two states (compareWalker, typed/compare.go):
/// an added or removed map or list item is itself a member, besides its leaves.
#[derive(Default)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

fn compare(
    old: Option<&Value>,
    new: Option<&Value>,
    s: Option<&Value>,
    path: &mut Vec<String>,
    c: &mut Comparison,
) {
    let (o, n) = match (old, new) {
        (None, None) => return,
        (None, Some(n)) => {
            if !path.is_empty() {
                c.added.insert(path);
            }
            walk_children(None, Some(n), s, path, c);
            return;
        }
        (Some(o), None) => {
            if !path.is_empty() {
                c.removed.insert(path);
            }
            walk_children(Some(o), None, s, path, c);
            return;
        }
        (Some(o), Some(n)) => (o, n),
    };
    match (shape(o, s), shape(n, s)) {
        (Shape::Map, Shape::Map) | (Shape::List(_), Shape::List(_)) => {
            walk_children(Some(o), Some(n), s, path, c)
        }
        (Shape::Leaf, Shape::Leaf) => {
            if o != n && !path.is_empty() {
                c.modified.insert(path);
            }
        }
        _ => {
            compare(Some(o), None, s, path, c);
            compare(None, Some(n), s, path, c);
        }
    }
}

/// Compare the children of a granular map or list (either side may be missing).
fn walk_children(
    old: Option<&Value>,
    new: Option<&Value>,
    s: Option<&Value>,
    path: &mut Vec<String>,
    c: &mut Comparison,
) {
    let children = |v: Option<&Value>| -> Vec<(String, Value, bool)> {
        let Some(v) = v else { return vec![] };
        match (shape(v, s), v) {
            (Shape::Map, Value::Object(m)) => m
                .iter()
                .map(|(k, x)| (format!("f:{k}"), x.clone(), false))
                .collect(),
            (Shape::List(elems), Value::Array(a)) => elems
                .into_iter()
                .zip(a)
                .map(|(e, x)| (e, x.clone(), true))
                .collect(),
            _ => vec![],
        }
    };
    let oc = children(old);
    let nc = children(new);
    let mut keys: Vec<&String> = oc.iter().map(|x| &x.0).collect();
    for (k, _, _) in &nc {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in keys {
        let ov = oc.iter().find(|x| &x.0 == k);
        let nv = nc.iter().find(|x| &x.0 == k);
        let item = ov.or(nv).is_some_and(|x| x.2);
        let cs = if item {
            items_schema(s)
        } else {
            k.strip_prefix("f:").and_then(|f| field_schema(s, f))
        };
        path.push(k.clone());
        compare(ov.map(|x| &x.1), nv.map(|x| &x.1), cs, path, c);
        path.pop();
    }
}

/// `live.Merge(config)`: maps merge by field, set and map lists by item, everything else is
/// replaced. A null in the configuration removes the field (the manager still owns it).
fn merge(live: &Value, cfg: &Value, s: Option<&Value>) -> Value {
    match (shape(live, s), shape(cfg, s), live, cfg) {
        (Shape::Map, Shape::Map, Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    out.remove(k);
                    continue;
                }
                let m = match l.get(k) {
                    Some(lv) => merge(lv, cv, field_schema(s, k)),
                    None => cv.clone(),
                };
                out.insert(k.clone(), m);
            }
            Value::Object(out)
        }
        (Shape::List(le), Shape::List(ce), Value::Array(l), Value::Array(c)) => {
            let mut out = l.clone();
            let mut keys = le;
            for (e, item) in ce.into_iter().zip(c) {
                match keys.iter().position(|k| *k == e) {
                    Some(i) => {
                        if let Some(slot) = out.get_mut(i) {
                            *slot = merge(slot, item, items_schema(s));
                        }
                    }
                    None => {
                        out.push(item.clone());
                        keys.push(e);
                    }
                }
            }
            Value::Array(out)
        }
        _ => cfg.clone(),
    }
}

/// Remove what the applier owned last time and nobody owns now (`Updater.prune`): a member of
/// `last` goes when `owned` has nothing at or below it; a map or list that pruning emptied
/// goes too when it was only there for the pruned fields.
fn prune(v: &mut Value, last: &FieldSet, owned: &FieldSet, s: Option<&Value>) {
    let empty = FieldSet::default();
    match shape(v, s) {
        Shape::Map => {
            let Some(m) = v.as_object_mut() else { return };
            for (e, ln) in &last.children {
                let Some(f) = e.strip_prefix("f:") else {
                    continue;
                };
                let on = owned.children.get(e).unwrap_or(&empty);
                if on.is_empty() && ln.member {
                    m.remove(f);
                    continue;
                }
                let cs = field_schema(s, f);
                if let Some(child) = m.get_mut(f) {
                    let was_empty = is_empty_container(child);
                    prune(child, ln, on, cs);
                    if on.is_empty() && !was_empty && is_empty_container(child) {
                        m.remove(f);
                    }
                }
            }
        }
        Shape::List(elems) => {
            let Some(a) = v.as_array_mut() else { return };
            for i in (0..elems.len()).rev() {
                let Some(ln) = last.children.get(&elems[i]) else {
                    continue;
                };
                let on = owned.children.get(&elems[i]).unwrap_or(&empty);
                if on.is_empty() {
                    if i < a.len() {
                        a.remove(i);
                    }
                } else if let Some(item) = a.get_mut(i) {
                    prune(item, ln, on, items_schema(s));
                }
            }
        }
        Shape::Leaf => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The part of a field set a write may manage: server-owned metadata never
/// (`NewStripMetaManager`, stripmeta.go); `status` only through the status subresource, and
/// nothing else there (the reset fields of the status strategies).
fn restrict(mut set: FieldSet, rt: &ResType, sub: Sub) -> FieldSet {
    set.member = false;
    set.children.remove("f:apiVersion");
    set.children.remove("f:kind");
    if let Some(m) = set.children.get_mut("f:metadata") {
        m.member = false;
        for k in [
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            m.children.remove(&format!("f:{k}"));
        }
    }
    match sub {
        Sub::Status => set.children.retain(|k, _| k == "f:status"),
        _ if rt.status => {
            set.children.remove("f:status");
        }
        _ => {}
    }
    set.children.retain(|_, c| !c.is_empty());
    set
}

fn restrict_cmp(c: Comparison, rt: &ResType, sub: Sub) -> Comparison {
    Comparison {
        added: restrict(c.added, rt, sub),
        modified: restrict(c.modified, rt, sub),
        removed: restrict(c.removed, rt, sub),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
}

impl Entry {
    /// BuildManagerIdentifier (buildmanagerinfo.go): appliers are one entry whatever the
    /// apiVersion; updaters one per apiVersion.
    fn same_id(&self, manager: &str, operation: &str, api_version: &str, sub: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == sub
            && (operation == "Apply" || self.api_version == api_version)
    }

    /// How conflict messages name the manager (`printManager`, conflict.go).
    fn printed(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

fn decode(obj: &Value) -> Vec<Entry> {
    let str_of = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: str_of(e, "manager"),
                    operation: str_of(e, "operation"),
                    api_version: str_of(e, "apiVersion"),
                    time: e.get("time").and_then(Value::as_str).map(String::from),
                    subresource: str_of(e, "subresource"),
                    set: e.get("fieldsV1").map(FieldSet::from_v1).unwrap_or_default(),
                })
                .filter(|e| !e.set.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Write the entries back, ordered as `sortEncodedManagedFields` (fields.go) orders them.
fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|p, q| {
        (
            &p.operation,
            &p.time,
            &p.manager,
            &p.api_version,
            &p.subresource,
        )
            .cmp(&(
                &q.operation,
                &q.time,
                &q.manager,
                &q.api_version,
                &q.subresource,
            ))
    });
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = serde_json::Map::new();
            if !e.manager.is_empty() {
                v.insert("manager".into(), e.manager.clone().into());
            }
            v.insert("operation".into(), e.operation.clone().into());
            v.insert("apiVersion".into(), e.api_version.clone().into());
            if let Some(t) = &e.time {
                v.insert("time".into(), t.clone().into());
            }
            v.insert("fieldsType".into(), "FieldsV1".into());
            v.insert("fieldsV1".into(), e.set.to_v1());
            if !e.subresource.is_empty() {
                v.insert("subresource".into(), e.subresource.clone().into());
            }
            Value::Object(v)
        })
        .collect();
    let Some(m) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn sub_name(sub: Sub) -> &'static str {
    match sub {
        Sub::Main => "",
        Sub::Status => "status",
        Sub::Finalize => "finalize",
    }
}

/// The manager of a non-apply write: `fieldManager`, else the User-Agent up to its first `/`
/// (`managerOrUserAgent` / `prefixFromUserAgent`, handlers/create.go), printable characters
/// only, at most 128 bytes.
pub(crate) fn manager_of(q: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    let ua = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut out = String::new();
    for ch in ua.split('/').next().unwrap_or("").chars() {
        if ch.is_control() {
            continue;
        }
        if out.len() + ch.len_utf8() > 128 {
            break;
        }
        out.push(ch);
    }
    out
}

/// `ValidatePatchOptions` (apimachinery meta/v1 validation): apply needs a fieldManager,
/// `force` is only for apply, a fieldManager is at most 128 printable characters. The 422
/// names `PatchOptions.meta.k8s.io ""` as the real one does.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn validate_patch_options(
    q: &HashMap<String, String>,
    apply: bool,
) -> Result<(), Response> {
    let mut causes: Vec<(&str, &str, String)> = Vec::new();
    let fm = q.get("fieldManager").map(String::as_str).unwrap_or("");
    if !apply && q.contains_key("force") {
        causes.push((
            "FieldValueForbidden",
            "force",
            "Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    if apply && fm.is_empty() {
        causes.push((
            "FieldValueRequired",
            "fieldManager",
            "Required value: is required for apply patch".into(),
        ));
    }
    if fm.len() > 128 {
        causes.push((
            "FieldValueTooLong",
            "fieldManager",
            "Too long: may not be more than 128 bytes".into(),
        ));
    }
    if fm.chars().any(char::is_control) {
        causes.push((
            "FieldValueInvalid",
            "fieldManager",
            format!("Invalid value: {fm:?}: must only contain printable characters"),
        ));
    }
    if causes.is_empty() {
        return Ok(());
    }
    let rendered: Vec<String> = causes.iter().map(|(_, f, m)| format!("{f}: {m}")).collect();
    let joined = if rendered.len() == 1 {
        rendered[0].clone()
    } else {
        format!("[{}]", rendered.join(", "))
    };
    Err(status(
        422,
        "Invalid",
        format!("PatchOptions.meta.k8s.io \"\" is invalid: {joined}"),
        Some(
            json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": causes
            .iter()
            .map(|(r, f, m)| json!({"reason": r, "message": m, "field": f}))
            .collect::<Vec<_>>()}),
        ),
    ))
}

/// Record an Update (create, PUT, non-apply patch) by `manager` in `new`'s managedFields:
/// the manager takes the fields it added or changed, from everyone else, and nobody keeps
/// the fields it removed (`managedFieldsUpdater.Update` + `Updater.Update`). managedFields
/// sent in the body replace the live ones when non-empty, so `[{}]` clears them.
pub(crate) fn track_update(
    rt: &ResType,
    version: &str,
    sub: Sub,
    manager: &str,
    live: Option<&Value>,
    new: &mut Value,
) {
    if !new.is_object() {
        return;
    }
    let sent = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let mut entries = match (sent, live) {
        (true, _) => decode(new),
        (false, Some(l)) => decode(l),
        (false, None) => vec![],
    };
    let schema = root_schema(rt, version);
    let mut c = Comparison::default();
    let empty = json!({});
    compare(
        Some(live.unwrap_or(&empty)),
        Some(new),
        Some(&*schema),
        &mut Vec::new(),
        &mut c,
    );
    let c = restrict_cmp(c, rt, sub);
    let taken = c.added.union(&c.modified);
    let gone = taken.union(&c.removed);
    for e in &mut entries {
        e.set = e.set.difference(&gone);
    }
    if !taken.is_empty() {
        let api_version = rt.api_version(version);
        let sr = sub_name(sub);
        match entries
            .iter_mut()
            .find(|e| e.same_id(manager, "Update", &api_version, sr))
        {
            Some(e) => {
                e.set = e.set.union(&taken);
                e.time = Some(store::now());
            }
            None => entries.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version,
                time: Some(store::now()),
                subresource: sr.into(),
                set: taken,
            }),
        }
    }
    encode(new, entries);
}

/// The 409 of a refused apply (`NewConflictError`, conflict.go): one cause per field (the Go
/// `StatusCause.Type` is serialized as `reason`), the message listing them by manager.
fn conflict_response(conflicts: &[(String, String)]) -> Response {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
        .collect();
    let message = if let [(m, p)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {m}: {p}")
    } else {
        let mut lines = Vec::new();
        let mut managers: Vec<&String> = conflicts.iter().map(|c| &c.0).collect();
        managers.sort();
        managers.dedup();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            for (_, p) in conflicts.iter().filter(|c| &c.0 == m) {
                lines.push(format!("- {p}"));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    status(409, "Conflict", message, Some(json!({"causes": causes})))
}

/// PATCH with `application/apply-patch+yaml`: merge the configuration into the live object
/// (or an empty one: apply creates), give the applier exactly the fields it applied, prune
/// what it applied before and nobody owns now, and refuse (409) changes to fields other
/// managers own unless `force=true` (`Updater.Apply`, merge/update.go).
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_patch(
    inner: &Inner,
    rt: &ResType,
    version: &str,
    ns: &str,
    name: &str,
    sub: Sub,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    if let Err(r) = validate_patch_options(q, true) {
        return r;
    }
    let manager = q.get("fieldManager").cloned().unwrap_or_default();
    let force = q.get("force").is_some_and(|f| f == "true");
    let cfg: Value = match serde_yaml_ng::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return status(
                400,
                "BadRequest",
                "error decoding YAML: the apply configuration must be an object".into(),
                None,
            );
        }
        Err(e) => {
            return status(400, "BadRequest", format!("error decoding YAML: {e}"), None);
        }
    };
    if cfg
        .get("metadata")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        return status(
            400,
            "BadRequest",
            "error decoding YAML: metadata must be an object".into(),
            None,
        );
    }
    if let Some(n) = cfg.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return status(
            400,
            "BadRequest",
            format!("the name of the object ({n}) does not match the name on the URL ({name})"),
            None,
        );
    }
    let gv = rt.api_version(version);
    let pv = cfg.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if pv != gv {
        return status(
            400,
            "BadRequest",
            format!(
                "Incorrect version specified in apply patch. Specified patch version: {pv}, expected: {gv}"
            ),
            None,
        );
    }
    if cfg
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return status(
            400,
            "BadRequest",
            "metadata.managedFields must be nil".into(),
            None,
        );
    }
    let mut st = inner.state.lock().expect("lock");
    let cur = st.get(rt, ns, name).cloned();
    if cur.is_none() && sub != Sub::Main {
        drop(st);
        return store_error(
            StoreError::NotFound(format!("{} {name:?} not found", qualified(rt))),
            Some(rt),
            name,
        );
    }
    let live = cur.clone().unwrap_or_else(|| json!({}));
    let schema = root_schema(rt, version);
    let s = Some(&*schema);
    let mut entries = decode(&live);
    let set = restrict(set_of(&cfg, s), rt, sub);
    let sr = sub_name(sub);
    let pos = entries
        .iter()
        .position(|e| e.same_id(&manager, "Apply", &gv, sr));
    let last = pos.map(|i| entries[i].set.clone()).unwrap_or_default();
    let mut merged = merge(&live, &cfg, s);
    if cur.is_none()
        && let Some(o) = merged.as_object_mut()
    {
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        if !m.is_object() {
            *m = json!({});
        }
        if let Some(m) = m.as_object_mut() {
            m.entry("name").or_insert_with(|| name.into());
        }
    }
    if !last.is_empty() {
        let owned = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != pos)
            .fold(set.clone(), |acc, (_, e)| acc.union(&e.set));
        prune(&mut merged, &last, &owned, s);
    }
    let mut c = Comparison::default();
    compare(Some(&live), Some(&merged), s, &mut Vec::new(), &mut c);
    let c = restrict_cmp(c, rt, sub);
    let changed = c.added.union(&c.modified);
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) == pos {
            continue;
        }
        let clash = e.set.intersection(&changed);
        for p in clash.paths() {
            conflicts.push((e.printed(), path_string(&p)));
        }
        e.set = e.set.difference(&clash).difference(&c.removed);
    }
    if !force && !conflicts.is_empty() {
        drop(st);
        conflicts.sort();
        return conflict_response(&conflicts);
    }
    let object_changed = !changed.is_empty() || !c.removed.is_empty();
    match pos {
        Some(i) => {
            entries[i].set = set;
            entries[i].api_version = gv.clone();
            if object_changed || entries[i].time.is_none() {
                entries[i].time = Some(store::now());
            }
        }
        None => entries.push(Entry {
            manager,
            operation: "Apply".into(),
            api_version: gv,
            time: Some(store::now()),
            subresource: sr.into(),
            set,
        }),
    }
    encode(&mut merged, entries);
    let result = match cur {
        None => st.create(rt, version, ns, merged).map(|r| (r, true)),
        Some(_) => st
            .update(rt, version, ns, name, merged, sub == Sub::Status)
            .map(|r| (r, false)),
    };
    drop(st);
    match result {
        Ok(((o, _changes), created)) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok_json(code, &o)
        }
        Err(e) => store_error(e, Some(rt), name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: Value) -> FieldSet {
        FieldSet::from_v1(&v)
    }

    #[test]
    fn fields_v1_round_trip_and_paths() {
        let v = json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"a\"": {}}}, "f:spec": {"f:x": {}}});
        let s = set(v.clone());
        assert_eq!(s.to_v1(), v);
        let paths: Vec<String> = s.paths().iter().map(|p| path_string(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.finalizers",
                ".metadata.finalizers[=\"a\"]",
                ".spec.x"
            ]
        );
        assert_eq!(
            path_string(&["f:metadata".into(), "k:{\"uid\":\"u\"}".into()]),
            ".metadata[uid=\"u\"]"
        );
    }

    #[test]
    fn set_of_uses_list_types() {
        let schema = json!({"properties": {"metadata": metadata_schema()}});
        let v = json!({"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "u", "name": "o"}]}, "spec": {"l": [1, 2], "m": {}}});
        assert_eq!(
            set_of(&v, Some(&schema)).to_v1(),
            json!({"f:metadata": {
                "f:finalizers": {"v:\"a\"": {}},
                "f:ownerReferences": {"k:{\"uid\":\"u\"}": {".": {}, "f:name": {}, "f:uid": {}}}},
                "f:spec": {"f:l": {}}})
        );
    }

    #[test]
    fn compare_marks_added_maps_as_members() {
        let mut c = Comparison::default();
        compare(
            Some(&json!({"a": 1, "b": 2})),
            Some(&json!({"a": 3, "c": {"d": 1}})),
            None,
            &mut Vec::new(),
            &mut c,
        );
        assert_eq!(c.modified.to_v1(), json!({"f:a": {}}));
        assert_eq!(c.added.to_v1(), json!({"f:c": {".": {}, "f:d": {}}}));
        assert_eq!(c.removed.to_v1(), json!({"f:b": {}}));
    }

    #[test]
    fn merge_and_prune() {
        let schema = json!({"properties": {"metadata": metadata_schema()}});
        let s = Some(&schema);
        let live = json!({"metadata": {"finalizers": ["a", "b"]}, "x": 1, "y": {"z": 1}});
        let m = merge(
            &live,
            &json!({"metadata": {"finalizers": ["c"]}, "y": {"w": 2}}),
            s,
        );
        assert_eq!(
            m,
            json!({"metadata": {"finalizers": ["a", "b", "c"]}, "x": 1, "y": {"z": 1, "w": 2}})
        );
        let mut m2 = m.clone();
        let last =
            set(json!({"f:metadata": {"f:finalizers": {"v:\"c\"": {}}}, "f:y": {"f:w": {}}}));
        prune(&mut m2, &last, &FieldSet::default(), s);
        assert_eq!(m2, live);
    }

    #[test]
    fn conflict_messages() {
        let one = [("\"a\"".to_string(), ".data.k".to_string())];
        let r = conflict_response(&one);
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let many = [
            ("\"a\"".to_string(), ".data.k".to_string()),
            ("\"b\" using v1".to_string(), ".data.j".to_string()),
        ];
        let _ = conflict_response(&many);
    }
}
