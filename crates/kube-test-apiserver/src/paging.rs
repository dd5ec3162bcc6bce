//! List pagination (`limit`/`continue`) as the etcd3 store serves it
//! (staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go GetList, and
//! staging/src/k8s.io/apiserver/pkg/storage/continue.go): items in key order
//! (`namespace/name`), `metadata.continue` bound to the list's resourceVersion,
//! `remainingItemCount` for unfiltered lists, and `410 Expired` once that resourceVersion has
//! left the history (etcd compaction), with a token to continue inconsistently. Clients that
//! page (kube-runtime's watcher, `kubectl get --chunk-size`) must get the same pages here.

use crate::prelude::*;
use base64::Engine as _;
use std::collections::VecDeque;

/// How many list snapshots are kept for continue tokens (oldest dropped first).
const MAX_SNAPSHOTS: usize = 64;

/// The objects a paginated list saw at its resourceVersion, so that the following pages
/// are consistent with the first as etcd's MVCC reads are.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    entries: VecDeque<(String, u64, Keyed)>,
}

/// Objects with their etcd keys, in key order.
type Keyed = Arc<Vec<(String, Value)>>;

impl Snapshots {
    fn get(&self, key: &str) -> Option<Keyed> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.clone())
    }

    fn put(&mut self, key: String, rv: u64, items: Keyed, oldest: u64) {
        self.entries.retain(|(k, r, _)| *r >= oldest && *k != key);
        self.entries.push_back((key, rv, items));
        while self.entries.len() > MAX_SNAPSHOTS {
            self.entries.pop_front();
        }
    }
}

/// A Status with an optional reason and extra `metadata` (the real server omits the reason
/// of unconverted storage errors and puts the new continue token of `410 Expired` there).
pub(crate) fn raw_status(
    code: u16,
    reason: Option<&str>,
    message: String,
    meta: Value,
) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": meta, "status": "Failure", "message": message, "code": code});
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The etcd key of an object below the list's prefix: `namespace/name` when listing across
/// namespaces, `name` within one namespace or for cluster-scoped types.
fn key_of(o: &Value, all_namespaces: bool) -> String {
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    match o["metadata"]["namespace"].as_str() {
        Some(ns) if all_namespaces && !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// EncodeContinue (storage/continue.go): base64url of `{"v":"meta.k8s.io/v1","rv":N,"start":K}`.
fn encode(rv: i64, start: &str) -> String {
    let j = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j.to_string())
}

/// DecodeContinue (storage/continue.go), with its error texts.
fn decode(token: &str) -> Result<(i64, String), String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| format!("continue key is not valid: {e}"))?;
    let v: Value =
        serde_json::from_slice(&raw).map_err(|e| format!("continue key is not valid: {e}"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(format!(
            "continue key is not valid: server does not recognize this encoded key version {:?}",
            v["v"].as_str().unwrap_or_default()
        ));
    }
    let rv = v["rv"].as_i64().unwrap_or(0);
    if rv == 0 {
        return Err(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
                .into(),
        );
    }
    let start = v["start"].as_str().unwrap_or_default().to_string();
    if start.is_empty() {
        return Err("continue key is not valid: encoded start key empty".into());
    }
    if start.split('/').any(|p| p == ".." || p == ".") {
        return Err("continue key is not valid: path traversal not allowed".into());
    }
    Ok((rv, start))
}

/// Answer a list request (`rt` in `ns`, or across namespaces) with pagination.
pub(crate) fn list(
    inner: &Inner,
    rt: &ResType,
    version: &str,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let all_namespaces = rt.namespaced && ns.is_none();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .and_then(|l| usize::try_from(l).ok());
    let token = q.get("continue").filter(|c| !c.is_empty());
    // The watch cache serves resourceVersion=0 lists whole and ignores `limit`
    // (shouldDelegateList in staging/src/k8s.io/apiserver/pkg/storage/cacher/cacher.go, 1.32).
    let limit = limit
        .filter(|_| token.is_some() || q.get("resourceVersion").map(String::as_str) != Some("0"));
    let filtered = q.get("labelSelector").is_some_and(|s| !s.is_empty())
        || q.get("fieldSelector").is_some_and(|s| !s.is_empty());
    let snap_key = format!(
        "{}|{}|{}|{}|{}",
        rt.group,
        rt.plural,
        ns.unwrap_or(""),
        q.get("labelSelector").map(String::as_str).unwrap_or(""),
        q.get("fieldSelector").map(String::as_str).unwrap_or("")
    );
    let current = |st: &State| -> Result<Vec<(String, Value)>, String> {
        let mut items = st.list(rt, ns);
        filter(&mut items, q)?;
        let mut keyed: Vec<(String, Value)> = items
            .into_iter()
            .map(|o| (key_of(&o, all_namespaces), o))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keyed)
    };
    let mut st = inner.state.lock().expect("lock");
    let (rv, items, start): (u64, Keyed, String) = match token {
        Some(tok) => {
            let (trv, start) = match decode(tok) {
                Ok(x) => x,
                Err(e) => {
                    return status(
                        400,
                        "BadRequest",
                        format!("invalid continue token: {e}"),
                        None,
                    );
                }
            };
            if trv == -1 {
                // The token of an Expired answer: continue at the current state.
                match current(&st) {
                    Ok(items) => (st.rv, Arc::new(items), start),
                    Err(e) => return status(400, "BadRequest", e, None),
                }
            } else {
                let trv = u64::try_from(trv).unwrap_or(0);
                let snap = (trv >= st.oldest_resumable())
                    .then(|| st.pages.get(&format!("{trv}|{snap_key}")))
                    .flatten();
                match snap {
                    Some(items) => (trv, items, start),
                    None => {
                        // handleCompactedErrorForPaging (storage/etcd3/errors.go).
                        return raw_status(
                            410,
                            Some("Expired"),
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
                            json!({"continue": encode(-1, &start)}),
                        );
                    }
                }
            }
        }
        None => match current(&st) {
            Ok(items) => (st.rv, Arc::new(items), String::new()),
            Err(e) => return status(400, "BadRequest", e, None),
        },
    };
    let rest: Vec<&(String, Value)> = items.iter().filter(|(k, _)| *k >= start).collect();
    let (page, more) = match limit {
        Some(l) if rest.len() > l => (&rest[..l], rest.len() - l),
        _ => (&rest[..], 0),
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if more > 0 {
        let last = page.last().map(|(k, _)| k.clone()).unwrap_or_default();
        meta["continue"] = encode(
            i64::try_from(rv).unwrap_or(i64::MAX),
            &format!("{last}\u{0}"),
        )
        .into();
        if !filtered {
            meta["remainingItemCount"] = more.into();
        }
        if token.is_none() {
            let oldest = st.oldest_resumable();
            st.pages
                .put(format!("{rv}|{snap_key}"), rv, items.clone(), oldest);
        }
    }
    drop(st);
    let api_version = rt.api_version(version);
    let out: Vec<Value> = page
        .iter()
        .map(|(_, o)| {
            let mut o = o.clone();
            o["apiVersion"] = api_version.clone().into();
            o
        })
        .collect();
    if wants_table(headers) {
        let mut t = table::table(rt, version, &out, &rv.to_string());
        if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut)
            && let Some(extra) = meta.as_object()
        {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        return ok_json(StatusCode::OK, &t);
    }
    ok_json(
        StatusCode::OK,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": api_version, "metadata": meta, "items": out}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = encode(42, "default/b\u{0}");
        assert_eq!(decode(&t).unwrap(), (42, "default/b\u{0}".to_string()));
        assert!(decode("!!!").is_err());
        assert!(decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{}")).is_err());
    }
}
