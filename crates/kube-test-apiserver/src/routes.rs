//! Routing: discovery, resource paths and verbs, CRUD on the store, list filtering.

use crate::prelude::*;

/// Parsed resource path.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) plural: String,
    pub(crate) name: Option<String>,
    pub(crate) sub: Option<String>,
}

pub(crate) fn parse_target(
    st: &State,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Target> {
    let t = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        group: group.into(),
        version: version.into(),
        namespace: ns.map(String::from),
        plural: plural.into(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    };
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && st.find_type(group, rest[2]).is_some_and(|x| x.namespaced)
    {
        return Some(t(Some(rest[1]), rest[2], rest.get(3), rest.get(4)));
    }
    match rest {
        [plural] => Some(t(None, plural, None, None)),
        [plural, name] => Some(t(None, plural, Some(name), None)),
        [plural, name, sub] => Some(t(None, plural, Some(name), Some(sub))),
        _ => None,
    }
}

pub(crate) fn verb_of(method: &Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

pub(crate) async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let q = query(&uri);
    if segs.first() == Some(&"_test") {
        return admin(&inner, &method, &segs[1..], &body);
    }
    let Some(user) = authenticate(&inner, &headers) else {
        return status(401, "Unauthorized", "Unauthorized".into(), None);
    };
    let user = match rbac::impersonate(&inner, user, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = rbac::authorize_request(&inner, &user, &method, uri.path(), &q) {
        return r;
    }
    match segs.as_slice() {
        ["version"] => {
            return ok_json(
                StatusCode::OK,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-test-apiserver", "gitCommit": "test-apiserver", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => return (StatusCode::OK, "ok").into_response(),
        ["openapi", "v2"] => {
            return (
                StatusCode::OK,
                [(
                    "content-type",
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )],
                Vec::<u8>::new(),
            )
                .into_response();
        }
        ["openapi", "v3"] => return ok_json(StatusCode::OK, &json!({"paths": {}})),
        ["openapi", ..] => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
        }
        ["api"] => {
            return ok_json(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        ["apis"] => return ok_json(StatusCode::OK, &discovery_groups(&inner)),
        ["api", "v1"] => return ok_json(StatusCode::OK, &discovery_resources(&inner, "", "v1")),
        ["apis", g] => {
            let groups = discovery_groups(&inner);
            return match groups["groups"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == *g))
            {
                Some(grp) => {
                    let mut grp = grp.clone();
                    grp["kind"] = "APIGroup".into();
                    grp["apiVersion"] = "v1".into();
                    ok_json(StatusCode::OK, &grp)
                }
                None => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                    None,
                ),
            };
        }
        ["apis", g, v] => {
            let r = discovery_resources(&inner, g, v);
            return if r["resources"].as_array().is_some_and(|a| a.is_empty()) {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                    None,
                )
            } else {
                ok_json(StatusCode::OK, &r)
            };
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
        }
    };
    let target = {
        let st = inner.state.lock().expect("lock");
        parse_target(&st, group, version, rest)
    };
    let Some(target) = target else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    let verb = verb_of(&method, &target, &q);
    {
        let res = match &target.sub {
            Some(s) => format!("{}/{s}", target.plural),
            None => target.plural.clone(),
        };
        *inner
            .requests
            .lock()
            .expect("lock")
            .entry((verb.to_string(), res))
            .or_default() += 1;
    }
    if let Some(r) = apply_fault(&inner, verb, &target).await {
        return r;
    }
    // limitedReadBody (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go) with the
    // default MaxRequestBodyBytes.
    if matches!(verb, "create" | "update" | "patch")
        && body.len() > crate::validation::MAX_REQUEST_BODY
    {
        return status(
            413,
            "RequestEntityTooLarge",
            format!(
                "Request entity too large: limit is {}",
                crate::validation::MAX_REQUEST_BODY
            ),
            None,
        );
    }
    if verb == "create" && rbac::is_access_review(&target.group, &target.plural) {
        let ns = target.namespace.as_deref();
        return rbac::access_review(&inner, &user, &target.plural, ns, &headers, &body);
    }
    if verb == "create"
        && target.group == "authorization.k8s.io"
        && target.plural == "selfsubjectrulesreviews"
    {
        return rbac::rules_review(&inner, &user, &headers, &body);
    }
    let crd_before = crd_state(&inner, verb, &target);
    let fut = resource(&inner, &method, verb, target.clone(), &q, &headers, &body);
    // Only writes can escalate; reads need no requester in scope.
    let subject = if matches!(verb, "create" | "update" | "patch") {
        rbac::escalation_subject(&inner, &user)
    } else {
        None
    };
    let r = match subject {
        Some(u) => rbac::REQUESTER.scope(u, fut).await,
        None => fut.await,
    };
    with_crd_warnings(&inner, &target, crd_before, r)
}

/// A CRD write's old object, for the warnings of [`with_crd_warnings`].
fn crd_state(inner: &Inner, verb: &str, t: &Target) -> Option<Option<Value>> {
    if t.group != "apiextensions.k8s.io"
        || t.plural != "customresourcedefinitions"
        || t.sub.is_some()
        || !matches!(verb, "create" | "update" | "patch")
    {
        return None;
    }
    let st = inner.state.lock().expect("lock");
    let rt = st.find_type(&t.group, &t.plural)?;
    Some(t.name.as_ref().and_then(|n| st.get(rt, "", n).cloned()))
}

/// Add the `Warning` headers of a successful CRD write (validation::crd_warnings).
fn with_crd_warnings(
    inner: &Inner,
    t: &Target,
    before: Option<Option<Value>>,
    mut r: Response,
) -> Response {
    let Some(old) = before else { return r };
    if !r.status().is_success() {
        return r;
    }
    let new = {
        let st = inner.state.lock().expect("lock");
        let Some(rt) = st.find_type(&t.group, &t.plural) else {
            return r;
        };
        match &t.name {
            Some(n) => st.get(rt, "", n).cloned(),
            // A create: the newest CRD is the one just written.
            None => st.list(rt, None).into_iter().max_by_key(|o| {
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            }),
        }
    };
    let Some(new) = new else { return r };
    for w in crate::validation::crd_warnings(&new, old.as_ref()) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&crate::validation::warning_header(&w)) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

pub(crate) fn discovery_groups(inner: &Inner) -> Value {
    let st = inner.state.lock().expect("lock");
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in st.types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                for v in &t.versions {
                    if !vs.contains(v) {
                        vs.push(v.clone());
                    }
                }
            }
            None => groups.push((t.group.clone(), t.versions.clone())),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.iter().map(|(g, vs)| json!({
        "name": g,
        "versions": vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]},
    })).collect::<Vec<_>>()})
}

pub(crate) fn discovery_resources(inner: &Inner, group: &str, version: &str) -> Value {
    let st = inner.state.lock().expect("lock");
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = st
        .types
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .flat_map(|t| t.discovery())
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

pub(crate) async fn resource(
    inner: &Arc<Inner>,
    method: &Method,
    verb: &str,
    t: Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let rt = {
        let st = inner.state.lock().expect("lock");
        st.find_type(&t.group, &t.plural).cloned()
    };
    let Some(rt) = rt else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    };
    if !rt.versions.contains(&t.version) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        );
    }
    let ns = if rt.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let name = t.name.clone().unwrap_or_default();

    // Virtual create-only resources.
    if rt.plural == "tokenreviews" && verb == "create" {
        return match parse_body(headers, body) {
            Ok(b) => ok_json(StatusCode::CREATED, &token_review(inner, b)),
            Err(r) => r,
        };
    }
    if rt.plural == "serviceaccounts" && t.sub.as_deref() == Some("token") && verb == "create" {
        // TokenRequest is a create in the namespace: NamespaceLifecycle refuses it too.
        let refused = inner
            .state
            .lock()
            .expect("lock")
            .admit_create_in_namespace(&rt, &ns, &name);
        if let Err(e) = refused {
            return store_error(e, Some(&rt), &name);
        }
        return match parse_body(headers, body) {
            Ok(b) => token_request(inner, &rt, &ns, &name, b),
            Err(r) => r,
        };
    }
    if rt.create_only {
        return status(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on {}", rt.plural),
            None,
        );
    }
    let sub = match t.sub.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status => Sub::Status,
        // FinalizeREST (pkg/registry/core/namespace/storage/storage.go) only implements Update.
        Some("finalize") if store::is_namespace(&rt) => {
            if verb != "update" {
                return status(
                    405,
                    "MethodNotAllowed",
                    format!("{verb} is not supported on namespaces/finalize"),
                    None,
                );
            }
            Sub::Finalize
        }
        Some(s) => {
            return status(
                404,
                "NotFound",
                format!("subresource {s} of {} not found", rt.plural),
                None,
            );
        }
    };
    let status_only = sub == Sub::Status;
    let in_ns = if rt.namespaced {
        t.namespace.as_deref()
    } else {
        None
    };

    match verb {
        "list" => crate::paging::list(inner, &rt, &t.version, in_ns, q, headers),
        "watch" => watch(
            inner.clone(),
            rt,
            t.version.clone(),
            in_ns.map(String::from),
            q.clone(),
        ),
        "get" => {
            let obj = inner
                .state
                .lock()
                .expect("lock")
                .get(&rt, &ns, &name)
                .cloned();
            match obj {
                Some(mut o) => {
                    o["apiVersion"] = rt.api_version(&t.version).into();
                    if wants_table(headers) {
                        let rv = o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        return ok_json(StatusCode::OK, &table::table(&rt, &t.version, &[o], &rv));
                    }
                    ok_json(StatusCode::OK, &o)
                }
                None => store_error(
                    StoreError::NotFound(format!("{} {name:?} not found", qualified(&rt))),
                    Some(&rt),
                    &name,
                ),
            }
        }
        "create" => {
            let mut b = match parse_body(headers, body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let manager = crate::apply::manager_of(q, headers);
            crate::apply::track_update(&rt, &t.version, sub, &manager, None, &mut b);
            let r = inner
                .state
                .lock()
                .expect("lock")
                .create(&rt, &t.version, &ns, b);
            answer(r, StatusCode::CREATED, &rt, &name)
        }
        "update" => {
            let mut b = match parse_body(headers, body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let manager = crate::apply::manager_of(q, headers);
            let mut st = inner.state.lock().expect("lock");
            let live = st.get(&rt, &ns, &name).cloned();
            crate::apply::track_update(&rt, &t.version, sub, &manager, live.as_ref(), &mut b);
            let r = st.update_sub(&rt, &t.version, &ns, &name, b, sub);
            drop(st);
            answer(r, StatusCode::OK, &rt, &name)
        }
        "patch" => patch(
            inner,
            &rt,
            &t.version,
            &ns,
            &name,
            status_only,
            q,
            headers,
            body,
        ),
        "delete" => {
            let opts = match delete_options(headers, body, q) {
                Ok(o) => o,
                Err(r) => return r,
            };
            let r = inner
                .state
                .lock()
                .expect("lock")
                .delete(&rt, &ns, &name, &opts);
            answer(r, StatusCode::OK, &rt, &name)
        }
        "deletecollection" => {
            let opts = match delete_options(headers, body, q) {
                Ok(o) => o,
                Err(r) => return r,
            };
            let mut st = inner.state.lock().expect("lock");
            let mut items = st.list(&rt, in_ns);
            if let Err(e) = filter(&mut items, q) {
                return status(400, "BadRequest", e, None);
            }
            let mut all = Vec::new();
            for it in &items {
                let n = it["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ons = it["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Ok((_, ch)) = st.delete(&rt, &ons, &n, &opts) {
                    all.extend(ch);
                }
            }
            drop(st);
            drop(all);
            ok_json(
                StatusCode::OK,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&t.version), "metadata": {}, "items": items}),
            )
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} not allowed"),
            None,
        ),
    }
}

/// Publish a write's changes and answer with the object, or map the store error.
pub(crate) fn answer(
    r: Result<(Value, Vec<Arc<Change>>), StoreError>,
    code: StatusCode,
    rt: &ResType,
    name: &str,
) -> Response {
    match r {
        Ok((o, _changes)) => {
            // Watchers heard of the changes when the store recorded them.
            ok_json(code, &o)
        }
        Err(e) => store_error(e, Some(rt), name),
    }
}

pub(crate) fn qualified(t: &ResType) -> String {
    if t.group.is_empty() {
        t.plural.clone()
    } else {
        format!("{}.{}", t.plural, t.group)
    }
}

pub(crate) fn filter(items: &mut Vec<Value>, q: &HashMap<String, String>) -> Result<(), String> {
    if let Some(ls) = q.get("labelSelector").filter(|s| !s.is_empty()) {
        let mut keep = Vec::new();
        for it in items.drain(..) {
            if store::labels_match(ls, &it)? {
                keep.push(it);
            }
        }
        *items = keep;
    }
    if let Some(fs) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
        let mut keep = Vec::new();
        for it in items.drain(..) {
            if store::fields_match(fs, &it)? {
                keep.push(it);
            }
        }
        *items = keep;
    }
    Ok(())
}
