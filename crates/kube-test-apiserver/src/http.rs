//! HTTP helpers: Status bodies, query strings, request bodies, content negotiation.

use crate::prelude::*;

pub(crate) fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    if let Some(d) = details {
        body["details"] = d;
    }
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

pub(crate) fn store_error(e: StoreError, t: Option<&ResType>, name: &str) -> Response {
    let details = |t: Option<&ResType>| json!({"name": name, "group": t.map(|t| t.group.clone()).unwrap_or_default(), "kind": t.map(|t| t.plural.clone()).unwrap_or_default()});
    match e {
        StoreError::NotFound(m) => status(404, "NotFound", m, Some(details(t))),
        StoreError::AlreadyExists(m) => status(409, "AlreadyExists", m, Some(details(t))),
        StoreError::Conflict(m) => status(409, "Conflict", m, Some(details(t))),
        StoreError::BadRequest(m) => status(400, "BadRequest", m, None),
        StoreError::MethodNotAllowed(m) => status(405, "MethodNotAllowed", m, None),
        StoreError::Internal(m) => crate::paging::raw_status(500, None, m, json!({})),
        StoreError::Forbidden {
            message,
            name,
            causes,
        } => {
            // NewForbidden in staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go.
            let mut d = json!({"name": name, "group": t.map(|t| t.group.clone()).unwrap_or_default(), "kind": t.map(|t| t.plural.clone()).unwrap_or_default()});
            if !causes.is_empty() {
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect::<Vec<_>>()
                    .into();
            }
            status(403, "Forbidden", message, Some(d))
        }
        StoreError::PreconditionFailed { message, kind } => {
            let mut d = details(t);
            d["kind"] = kind.into();
            status(409, "Conflict", message, Some(d))
        }
        StoreError::Invalid(m, causes) => {
            let mut d = details(t);
            // NewInvalid names the object (a create's URL has no name); kubectl prints it.
            if name.is_empty()
                && let Some((prefix, _)) = m.split_once(" is invalid: ")
                && let Some((_, quoted)) = prefix.split_once(' ')
                && let Ok(n) = serde_json::from_str::<String>(quoted)
            {
                d["name"] = n.into();
            }
            d["kind"] = t.map(|t| t.kind.clone()).unwrap_or_default().into();
            d["causes"] = causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect::<Vec<_>>()
                .into();
            status(422, "Invalid", m, Some(d))
        }
    }
}

pub(crate) fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") {
        if let Some(v) = protobuf::decode(body) {
            return Ok(v);
        }
        return Err(status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
            ),
            None,
        ));
    }
    if ct.contains("yaml") {
        serde_yaml_ng::from_slice(body)
            .map_err(|e| status(400, "BadRequest", format!("invalid YAML body: {e}"), None))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| status(400, "BadRequest", format!("invalid JSON body: {e}"), None))
    }
}

pub(crate) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// The DeleteOptions of a DELETE: the body (kube-rs and kubectl send one), else the query
/// parameters the real server also decodes them from. An invalid one is the real 422.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn delete_options(
    headers: &HeaderMap,
    body: &[u8],
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, Response> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        let mut v = json!({});
        if let Some(p) = q.get("propagationPolicy") {
            v["propagationPolicy"] = p.clone().into();
        }
        if let Some(o) = q.get("orphanDependents") {
            v["orphanDependents"] = (o == "true").into();
        }
        v
    } else {
        parse_body(headers, body)?
    };
    DeleteOptions::from_json(&v).map_err(|(message, causes)| {
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        status(
            422,
            "Invalid",
            message,
            Some(json!({"name": "", "group": "meta.k8s.io", "kind": "DeleteOptions", "causes": causes})),
        )
    })
}
