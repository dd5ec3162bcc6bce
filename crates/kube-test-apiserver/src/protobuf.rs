//! Just enough of the Kubernetes protobuf wire format to read what `kubectl create` sends for
//! the simple built-ins tests create (Namespace, ServiceAccount, ConfigMap, Secret,
//! TokenRequest, the rbac.authorization.k8s.io/v1 kinds and the authorization.k8s.io/v1
//! access and rules reviews `kubectl auth can-i [--list]` sends; the workload kinds of
//! `kubectl create deployment|service|job|cronjob|priorityclass|pdb|quota` and `kubectl run`
//! in protobuf_workloads.rs). Anything else is answered with 415 so the
//! client can send JSON.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

pub(crate) fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        let f = match tag & 7 {
            0 => Field::Varint(varint(b, &mut pos)?),
            1 => {
                pos += 8;
                continue;
            }
            2 => {
                let n = varint(b, &mut pos)? as usize;
                let s = b.get(pos..pos.checked_add(n)?)?;
                pos += n;
                Field::Bytes(s)
            }
            5 => {
                pos += 4;
                continue;
            }
            _ => return None,
        };
        out.push((tag >> 3, f));
    }
    Some(out)
}

pub(crate) fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Field::Varint(_) => None,
    }
}

fn map_entry(b: &[u8]) -> Option<(String, String)> {
    let fs = fields(b)?;
    let get = |n| {
        fs.iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
    };
    Some((get(1)?, get(2).unwrap_or_default()))
}

fn string_map(fs: &[(u64, Field<'_>)], n: u64) -> Option<Value> {
    let mut m = Map::new();
    for (_, f) in fs.iter().filter(|(k, _)| *k == n) {
        if let Field::Bytes(b) = f {
            let (k, v) = map_entry(b)?;
            m.insert(k, v.into());
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// A `map<string, bytes>` field as JSON: values base64, as the JSON form of `[]byte`.
fn bytes_map(fs: &[(u64, Field<'_>)], n: u64) -> Option<Value> {
    use base64::Engine;
    let mut m = Map::new();
    for (_, f) in fs.iter().filter(|(k, _)| *k == n) {
        if let Field::Bytes(b) = f {
            let entry = fields(b)?;
            let key = entry
                .iter()
                .find(|(k, _)| *k == 1)
                .and_then(|(_, f)| string(f))?;
            let value = entry
                .iter()
                .find_map(|(k, f)| match (k, f) {
                    (2, Field::Bytes(v)) => Some(*v),
                    _ => None,
                })
                .unwrap_or_default();
            m.insert(
                key,
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .into(),
            );
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn varint_field(fs: &[(u64, Field<'_>)], n: u64) -> Option<u64> {
    fs.iter().find_map(|(k, f)| match f {
        Field::Varint(v) if *k == n => Some(*v),
        _ => None,
    })
}

pub(crate) fn object_meta(b: &[u8]) -> Option<Value> {
    let fs = fields(b)?;
    let mut m = Map::new();
    for (n, key) in [(1, "name"), (2, "generateName"), (3, "namespace")] {
        if let Some(s) = fs
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
            .filter(|s| !s.is_empty())
        {
            m.insert(key.into(), s.into());
        }
    }
    if let Some(l) = string_map(&fs, 11) {
        m.insert("labels".into(), l);
    }
    if let Some(a) = string_map(&fs, 12) {
        m.insert("annotations".into(), a);
    }
    Some(Value::Object(m))
}

/// The strings of repeated field `n`.
fn strings(fs: &[(u64, Field<'_>)], n: u64) -> Vec<String> {
    fs.iter()
        .filter(|(k, _)| *k == n)
        .filter_map(|(_, f)| string(f))
        .collect()
}

/// The first string of field `n`, if set.
fn opt_string(fs: &[(u64, Field<'_>)], n: u64) -> Option<String> {
    fs.iter()
        .find(|(k, _)| *k == n)
        .and_then(|(_, f)| string(f))
}

/// The decoded fields of every embedded message in repeated field `n`.
fn messages<'a>(fs: &[(u64, Field<'a>)], n: u64) -> Vec<Vec<(u64, Field<'a>)>> {
    fs.iter()
        .filter(|(k, _)| *k == n)
        .filter_map(|(_, f)| match f {
            Field::Bytes(b) => fields(b),
            Field::Varint(_) => None,
        })
        .collect()
}

/// Put the strings of `fields` (number, JSON key) into `v`, skipping unset ones.
fn put_strings(v: &mut Value, fs: &[(u64, Field<'_>)], keys: &[(u64, &str)]) {
    for (n, key) in keys {
        if let Some(s) = opt_string(fs, *n) {
            v[*key] = s.into();
        }
    }
}

// rbac.authorization.k8s.io/v1 (staging/src/k8s.io/api/rbac/v1/generated.proto).

/// PolicyRule: verbs 1, apiGroups 2, resources 3, resourceNames 4, nonResourceURLs 5.
fn policy_rule(fs: &[(u64, Field<'_>)]) -> Value {
    let mut r = json!({"verbs": strings(fs, 1)});
    for (n, key) in [
        (2, "apiGroups"),
        (3, "resources"),
        (4, "resourceNames"),
        (5, "nonResourceURLs"),
    ] {
        let v = strings(fs, n);
        if !v.is_empty() {
            r[key] = v.into();
        }
    }
    r
}

/// LabelSelector (apimachinery meta/v1): matchLabels 1 (map), matchExpressions 2
/// (LabelSelectorRequirement: key 1, operator 2, values 3).
pub(crate) fn label_selector(fs: &[(u64, Field<'_>)]) -> Value {
    let mut s = json!({});
    if let Some(m) = string_map(fs, 1) {
        s["matchLabels"] = m;
    }
    let exprs: Vec<Value> = messages(fs, 2)
        .iter()
        .map(|e| json!({"key": opt_string(e, 1), "operator": opt_string(e, 2), "values": strings(e, 3)}))
        .collect();
    if !exprs.is_empty() {
        s["matchExpressions"] = exprs.into();
    }
    s
}

/// Subjects 2 (Subject: kind 1, apiGroup 2, name 3, namespace 4) and roleRef 3 (RoleRef:
/// apiGroup 1, kind 2, name 3) of RoleBinding and ClusterRoleBinding.
fn binding(v: &mut Value, obj: &[(u64, Field<'_>)]) {
    let subjects: Vec<Value> = messages(obj, 2)
        .iter()
        .map(|s| {
            let mut o = json!({});
            put_strings(
                &mut o,
                s,
                &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")],
            );
            o
        })
        .collect();
    if !subjects.is_empty() {
        v["subjects"] = subjects.into();
    }
    if let Some(r) = messages(obj, 3).first() {
        let mut o = json!({});
        put_strings(&mut o, r, &[(1, "apiGroup"), (2, "kind"), (3, "name")]);
        v["roleRef"] = o;
    }
}

// authorization.k8s.io/v1 (staging/src/k8s.io/api/authorization/v1/generated.proto).

/// SubjectAccessReviewSpec: resourceAttributes 1 (namespace 1, verb 2, group 3, version 4,
/// resource 5, subresource 6, name 7), nonResourceAttributes 2 (path 1, verb 2), user 3,
/// groups 4, uid 6. Also SelfSubjectAccessReviewSpec, which has fields 1 and 2 only.
fn access_review_spec(fs: &[(u64, Field<'_>)]) -> Value {
    let mut spec = json!({});
    if let Some(ra) = messages(fs, 1).first() {
        let mut o = json!({});
        put_strings(
            &mut o,
            ra,
            &[
                (1, "namespace"),
                (2, "verb"),
                (3, "group"),
                (4, "version"),
                (5, "resource"),
                (6, "subresource"),
                (7, "name"),
            ],
        );
        spec["resourceAttributes"] = o;
    }
    if let Some(nra) = messages(fs, 2).first() {
        let mut o = json!({});
        put_strings(&mut o, nra, &[(1, "path"), (2, "verb")]);
        spec["nonResourceAttributes"] = o;
    }
    put_strings(&mut spec, fs, &[(3, "user"), (6, "uid")]);
    let groups = strings(fs, 4);
    if !groups.is_empty() {
        spec["groups"] = groups.into();
    }
    spec
}

/// Decode a protobuf request body to JSON, for the kinds listed in the module docs.
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = unknown.iter().find_map(|(n, f)| match (n, f) {
        (1, Field::Bytes(b)) => fields(b),
        _ => None,
    })?;
    let tm = |n| {
        type_meta
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
    };
    let (api_version, kind) = (tm(1)?, tm(2)?);
    let raw = unknown.iter().find_map(|(n, f)| match (n, f) {
        (2, Field::Bytes(b)) => Some(*b),
        _ => None,
    })?;
    let obj = fields(raw)?;
    let meta = obj.iter().find_map(|(n, f)| match (n, f) {
        (1, Field::Bytes(b)) => object_meta(b),
        _ => None,
    });
    let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": meta.unwrap_or_else(|| json!({}))});
    match kind.as_str() {
        "Namespace" | "ServiceAccount" => {}
        // core/v1 generated.proto: ConfigMap data 2, binaryData 3, immutable 4.
        "ConfigMap" => {
            if let Some(d) = string_map(&obj, 2) {
                v["data"] = d;
            }
            if let Some(d) = bytes_map(&obj, 3) {
                v["binaryData"] = d;
            }
            if let Some(i) = varint_field(&obj, 4) {
                v["immutable"] = (i != 0).into();
            }
        }
        // Secret: data 2 (bytes), type 3, stringData 4, immutable 5.
        "Secret" => {
            if let Some(d) = bytes_map(&obj, 2) {
                v["data"] = d;
            }
            if let Some(t) = obj
                .iter()
                .find(|(k, _)| *k == 3)
                .and_then(|(_, f)| string(f))
                .filter(|t| !t.is_empty())
            {
                v["type"] = t.into();
            }
            if let Some(d) = string_map(&obj, 4) {
                v["stringData"] = d;
            }
            if let Some(i) = varint_field(&obj, 5) {
                v["immutable"] = (i != 0).into();
            }
        }
        "TokenRequest" => {
            let spec = obj.iter().find_map(|(n, f)| match (n, f) {
                (2, Field::Bytes(b)) => fields(b),
                _ => None,
            })?;
            let auds: Vec<String> = spec
                .iter()
                .filter(|(k, _)| *k == 1)
                .filter_map(|(_, f)| string(f))
                .collect();
            let mut s = json!({"audiences": auds});
            if let Some((_, Field::Varint(e))) = spec.iter().find(|(k, _)| *k == 4) {
                s["expirationSeconds"] = (*e as i64).into();
            }
            if let Some(b) = spec.iter().find_map(|(n, f)| match (n, f) {
                (3, Field::Bytes(b)) => fields(b),
                _ => None,
            }) {
                let g = |n| b.iter().find(|(k, _)| *k == n).and_then(|(_, f)| string(f));
                s["boundObjectRef"] =
                    json!({"kind": g(1), "apiVersion": g(2), "name": g(3), "uid": g(4)});
            }
            v["spec"] = s;
        }
        "Role" | "ClusterRole" => {
            v["rules"] = messages(&obj, 2)
                .iter()
                .map(|r| policy_rule(r))
                .collect::<Vec<_>>()
                .into();
            if let Some(agg) = messages(&obj, 3).first() {
                let sels: Vec<Value> = messages(agg, 1).iter().map(|s| label_selector(s)).collect();
                v["aggregationRule"] = json!({"clusterRoleSelectors": sels});
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => binding(&mut v, &obj),
        "SubjectAccessReview" | "SelfSubjectAccessReview" | "LocalSubjectAccessReview" => {
            v["spec"] = messages(&obj, 2)
                .first()
                .map(|s| access_review_spec(s))
                .unwrap_or_else(|| json!({}));
        }
        // SelfSubjectRulesReview: spec 2 (SelfSubjectRulesReviewSpec: namespace 1).
        "SelfSubjectRulesReview" => {
            let mut spec = json!({});
            if let Some(s) = messages(&obj, 2).first() {
                put_strings(&mut spec, s, &[(1, "namespace")]);
            }
            v["spec"] = spec;
        }
        // Deployment, Service, Pod, Job, CronJob, PriorityClass, PodDisruptionBudget,
        // ResourceQuota: protobuf_workloads.rs.
        k if crate::protobuf_workloads::handles(k) => {
            crate::protobuf_workloads::decode_into(&mut v, k, &obj)?
        }
        _ => return None,
    }
    Some(v)
}
