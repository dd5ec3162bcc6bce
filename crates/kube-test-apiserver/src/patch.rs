//! Patches: JSON merge, JSON patch, strategic merge and server-side apply.

use crate::prelude::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    inner: &Inner,
    rt: &ResType,
    version: &str,
    ns: &str,
    name: &str,
    status_only: bool,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let sub = if status_only { Sub::Status } else { Sub::Main };
    // Server-side apply and managed fields live in apply.rs.
    if ct.starts_with("application/apply-patch") {
        return crate::apply::apply_patch(inner, rt, version, ns, name, sub, q, body);
    }
    if let Err(r) = crate::apply::validate_patch_options(q, false) {
        return r;
    }
    let manager = crate::apply::manager_of(q, headers);
    let mut st = inner.state.lock().expect("lock");
    let cur = st.get(rt, ns, name).cloned();
    let result = (|| -> Result<(Value, Vec<Arc<Change>>, bool), StoreError> {
        let cur = cur
            .ok_or_else(|| StoreError::NotFound(format!("{} {name:?} not found", qualified(rt))))?;
        let mut next = cur.clone();
        if ct.starts_with("application/json-patch+json") {
            let mut ops: Vec<Value> = serde_json::from_slice(body)
                .map_err(|e| StoreError::BadRequest(format!("invalid JSON patch: {e}")))?;
            // Like the real server, `test` of a missing path against null passes (kube-runtime's
            // finalizer helper sends it for objects without finalizers).
            ops.retain(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && op["path"]
                        .as_str()
                        .is_some_and(|p| next.pointer(p).is_none()))
            });
            let p: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| StoreError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut next, &p).map_err(|e| {
                StoreError::Invalid(
                    format!("the server rejected our request due to an error in our request: {e}"),
                    vec![],
                )
            })?;
        } else if ct.starts_with("application/merge-patch+json") {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| StoreError::BadRequest(format!("invalid merge patch: {e}")))?;
            json_patch::merge(&mut next, &p);
        } else if ct.starts_with("application/strategic-merge-patch+json") {
            if rt.from_crd {
                return Err(StoreError::BadRequest("strategic merge patch is not supported for custom resources; use a JSON merge patch".into()));
            }
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                StoreError::BadRequest(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(&mut next, &p);
        } else {
            return Err(StoreError::BadRequest(format!(
                "unsupported patch content type {ct:?}"
            )));
        }
        // A patch that carries a resourceVersion is optimistic; one without is not.
        let patched_rv = next["metadata"].get("resourceVersion").cloned();
        if patched_rv != cur["metadata"].get("resourceVersion").cloned()
            && patched_rv.as_ref().is_some_and(|v| !v.is_null())
        {
            // keep it: update() compares it with the stored one and answers 409
        } else if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        crate::apply::track_update(rt, version, sub, &manager, Some(&cur), &mut next);
        let (o, c) = st.update(rt, version, ns, name, next, status_only)?;
        Ok((o, c, false))
    })();
    drop(st);
    match result {
        Ok((o, _changes, created)) => ok_json(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &o,
        ),
        Err(e) => store_error(e, Some(rt), name),
    }
}

/// Strategic merge: a merge patch, except lists of objects keyed by `name` merge by name,
/// and `$patch: delete` entries remove them.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if k.starts_with("$setElementOrder") || k == "$retainKeys" {
                    continue;
                }
                if pv.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), pv) {
                    (Some(Value::Array(ta)), Value::Array(pa))
                        if pa.iter().all(|x| x.get("name").is_some())
                            && ta.iter().all(|x| x.get("name").is_some()) =>
                    {
                        for pe in pa {
                            let n = pe["name"].clone();
                            let del = pe.get("$patch").and_then(Value::as_str) == Some("delete");
                            match ta.iter().position(|x| x["name"] == n) {
                                Some(i) if del => {
                                    ta.remove(i);
                                }
                                Some(i) => strategic_merge(&mut ta[i], pe),
                                None if !del => ta.push(pe.clone()),
                                None => {}
                            }
                        }
                    }
                    (Some(tv), _) if tv.is_object() && pv.is_object() => strategic_merge(tv, pv),
                    _ => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
