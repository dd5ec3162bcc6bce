//! Authentication: the admin token, service-account tokens, TokenReview and TokenRequest.

use crate::prelude::*;

/// Identity behind a service-account token, for TokenReview.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenIdentity {
    /// Service account namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Pod the token is bound to.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// UID of that pod.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Audiences the token is valid for (empty = the API server's).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Expiry.
    #[serde(default)]
    pub expires_at: Option<jiff::Timestamp>,
}

/// The strings of the JSON array at `pointer` (empty when absent).
pub(crate) fn strings_at(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The user behind the request's bearer token: the admin, or a registered, unexpired
/// service-account token. None is a 401.
pub(crate) fn authenticate(inner: &Inner, headers: &HeaderMap) -> Option<UserInfo> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)?;
    if token == inner.admin_token {
        return Some(UserInfo::admin());
    }
    let tokens = inner.tokens.lock().ok()?;
    let id = tokens.get(token)?;
    id.expires_at
        .is_none_or(|e| e > jiff::Timestamp::now())
        .then(|| UserInfo::service_account(&id.namespace, &id.service_account))
}

pub(crate) fn token_review(inner: &Inner, mut review: Value) -> Value {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let wanted = strings_at(&review, "/spec/audiences");
    let id = inner.tokens.lock().expect("lock").get(&token).cloned();
    let status = match id {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(id) if id.expires_at.is_some_and(|e| e <= jiff::Timestamp::now()) => {
            json!({"authenticated": false, "error": "token has expired"})
        }
        Some(id) => {
            let token_aud = if id.audiences.is_empty() {
                vec!["https://kubernetes.default.svc".to_string()]
            } else {
                id.audiences.clone()
            };
            let granted: Vec<String> = if wanted.is_empty() {
                token_aud.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| token_aud.contains(a))
                    .cloned()
                    .collect()
            };
            if granted.is_empty() {
                json!({"authenticated": false, "error": "token audiences do not match the requested audiences"})
            } else {
                let mut extra = serde_json::Map::new();
                if let Some(p) = &id.pod_name {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([p]));
                }
                if let Some(u) = &id.pod_uid {
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([u]));
                }
                json!({"authenticated": true, "audiences": granted, "user": {
                    "username": format!("system:serviceaccount:{}:{}", id.namespace, id.service_account),
                    "uid": format!("sa-uid-{}-{}", id.namespace, id.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", id.namespace), "system:authenticated"],
                    "extra": extra}})
            }
        }
    };
    review["status"] = status;
    review
}

pub(crate) fn token_request(
    inner: &Inner,
    rt: &ResType,
    ns: &str,
    sa: &str,
    mut req: Value,
) -> Response {
    if inner.state.lock().expect("lock").get(rt, ns, sa).is_none() {
        return status(
            404,
            "NotFound",
            format!("serviceaccounts {sa:?} not found"),
            None,
        );
    }
    let secs = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600)
        .max(600);
    let exp = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    let audiences = strings_at(&req, "/spec/audiences");
    let pod = req
        .pointer("/spec/boundObjectRef")
        .filter(|b| b["kind"] == "Pod");
    let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
    inner.tokens.lock().expect("lock").insert(
        token.clone(),
        TokenIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: pod.and_then(|p| p["name"].as_str().map(String::from)),
            pod_uid: pod.and_then(|p| p["uid"].as_str().map(String::from)),
            audiences,
            expires_at: Some(exp),
        },
    );
    req["status"] = json!({"token": token, "expirationTimestamp": exp.round(jiff::Unit::Second).expect("round").to_string()});
    req["metadata"]["name"] = sa.into();
    req["metadata"]["namespace"] = ns.into();
    ok_json(StatusCode::CREATED, &req)
}
