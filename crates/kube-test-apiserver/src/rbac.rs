//! RBAC authorization as kube-apiserver does it (`--authorization-mode=RBAC`): request
//! attributes, rule matching over the Role/ClusterRole/RoleBinding/ClusterRoleBinding objects
//! in the store (read at request time), the bootstrap policy, impersonation, the 403 body,
//! SubjectAccessReview and a per-user record of what was allowed and denied.
//!
//! Upstream references are to github.com/kubernetes/kubernetes (staging paths for the
//! apiserver and apimachinery repositories).

use crate::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const AUTHZ_GROUP: &str = "authorization.k8s.io";
/// `user.SystemPrivilegedGroup` (staging/src/k8s.io/apiserver/pkg/authentication/user/user.go).
const MASTERS: &str = "system:masters";
const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";

/// The authenticated caller (after impersonation), as `user.Info` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserInfo {
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
}

impl UserInfo {
    /// The admin token's user: in `system:masters`, which the privileged-group authorizer
    /// allows before RBAC is asked, as a kubeadm admin.conf user would be.
    pub(crate) fn admin() -> Self {
        Self {
            name: "kubernetes-admin".into(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        }
    }

    /// A service account's user and groups: `MakeUsername` and `MakeGroupNames` in
    /// staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go, plus
    /// `system:authenticated` which the authentication filter adds.
    pub(crate) fn service_account(ns: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.into(),
            ],
        }
    }

    fn privileged(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

/// `SplitUsername` (serviceaccount/util.go): `system:serviceaccount:<ns>:<name>` with both
/// parts non-empty and no further colon.
fn split_sa_username(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// One authorization question: `authorizer.AttributesRecord`
/// (staging/src/k8s.io/apiserver/pkg/authorization/authorizer/interfaces.go).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attributes {
    pub(crate) verb: String,
    pub(crate) resource_request: bool,
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) path: String,
}

impl Attributes {
    /// The key a request is recorded under in the usage and denial records.
    fn access(&self) -> Access {
        if !self.resource_request {
            return Access {
                verb: self.verb.clone(),
                group: String::new(),
                resource: self.path.clone(),
                namespace: String::new(),
            };
        }
        Access {
            verb: self.verb.clone(),
            group: self.group.clone(),
            resource: self.combined_resource(),
            namespace: self.namespace.clone(),
        }
    }

    fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// One authorization decision recorded for a user: what was asked, as RBAC sees it.
///
/// For non-resource requests (`/version`, discovery, `/openapi/...`) `resource` is the URL
/// path and `group` and `namespace` are empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// The RBAC verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `impersonate`, ...).
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// `resource` or `resource/subresource`, or the path of a non-resource request.
    pub resource: String,
    /// Namespace ("" for cluster-scoped requests).
    pub namespace: String,
}

/// RBAC state kept by the server: whether service-account requests are enforced, and what
/// each user was allowed and denied.
pub(crate) struct Rbac {
    enforced: AtomicBool,
    allowed: Mutex<BTreeMap<String, BTreeSet<Access>>>,
    denied: Mutex<BTreeMap<String, BTreeSet<Access>>>,
}

impl Default for Rbac {
    fn default() -> Self {
        Self {
            enforced: AtomicBool::new(true),
            allowed: Mutex::default(),
            denied: Mutex::default(),
        }
    }
}

impl Rbac {
    pub(crate) fn set_enforced(&self, on: bool) {
        self.enforced.store(on, Ordering::SeqCst);
    }

    pub(crate) fn usage(&self) -> BTreeMap<String, BTreeSet<Access>> {
        self.allowed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub(crate) fn denials(&self) -> BTreeMap<String, BTreeSet<Access>> {
        self.denied.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.allowed.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.denied.lock() {
            m.clear();
        }
    }

    fn record(&self, user: &str, a: &Attributes, allowed: bool) {
        let log = if allowed { &self.allowed } else { &self.denied };
        if let Ok(mut m) = log.lock() {
            m.entry(user.to_string()).or_default().insert(a.access());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request attributes
// ---------------------------------------------------------------------------------------

/// `IsPathSegmentName` (staging/src/k8s.io/apimachinery/pkg/api/validation/path/name.go):
/// a name that may stand in a URL path segment.
pub(crate) fn path_segment_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('%')
}

/// `fields.Selector.RequiresExactMatch("metadata.name")`
/// (staging/src/k8s.io/apimachinery/pkg/fields/selector.go): the value of a `metadata.name=`
/// or `metadata.name==` term of the selector; None when the selector does not parse.
fn field_selector_name(sel: &str) -> Option<String> {
    let mut found = None;
    for term in sel.split(',') {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        if let Some((k, _)) = term.split_once("!=") {
            if k.trim().is_empty() {
                return None;
            }
            continue;
        }
        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        if k.trim() == "metadata.name" && found.is_none() {
            found = Some(v.trim().to_string());
        }
    }
    found
}

/// The attributes of an HTTP request, as `RequestInfoFactory.NewRequestInfo`
/// (staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go) derives them:
/// `/api` and `/apis` paths with enough segments are resource requests, everything else is a
/// non-resource request whose verb is the lower-cased HTTP method.
pub(crate) fn request_attributes(
    method: &str,
    path: &str,
    q: &HashMap<String, String>,
) -> Attributes {
    let mut a = Attributes {
        verb: method.to_ascii_lowercase(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let parts: Vec<&str> = if parts == [""] { Vec::new() } else { parts };
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return a;
    }
    let mut rest = &parts[1..];
    if parts[0] == "apis" {
        // Grouped prefixes need group, version and a resource.
        if rest.len() < 3 {
            return a;
        }
        a.group = rest[0].to_string();
        rest = &rest[1..];
    }
    a.resource_request = true;
    a.version = rest[0].to_string();
    rest = &rest[1..];
    // The deprecated verb-in-path forms `/watch/...` and `/proxy/...` (specialVerbs).
    if matches!(rest.first(), Some(&"watch") | Some(&"proxy")) && rest.len() >= 2 {
        a.verb = rest[0].to_string();
        rest = &rest[1..];
    } else {
        a.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
    }
    // `/namespaces/{ns}/{resource}/...`; `namespaces/{ns}/status|finalize` stay subresources
    // of the namespace itself (namespaceSubresources).
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        a.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && a.verb != "proxy" {
        a.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        a.name = rest[1].to_string();
    }
    if let Some(r) = rest.first() {
        a.resource = r.to_string();
    }
    // A GET without a name is a list or a watch; a `metadata.name` field selector gives the
    // request a name that `resourceNames` rules can match (since Kubernetes 1.x this lets a
    // list/watch of one object be authorized by name).
    if a.name.is_empty() && a.verb == "get" {
        let watch = q
            .get("watch")
            .is_some_and(|w| !matches!(w.to_ascii_lowercase().as_str(), "false" | "0" | "f"));
        a.verb = if watch { "watch" } else { "list" }.into();
        if let Some(n) = q
            .get("fieldSelector")
            .and_then(|s| field_selector_name(s))
            .filter(|n| path_segment_name(n))
        {
            a.name = n;
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

// ---------------------------------------------------------------------------------------
// Rules and the authorizer
// ---------------------------------------------------------------------------------------

/// A `PolicyRule`; malformed fields of stored objects read as empty lists (match nothing).
#[derive(Debug, Clone, Default)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl Rule {
    fn from_json(v: &Value) -> Self {
        Self {
            verbs: strings_at(v, "/verbs"),
            api_groups: strings_at(v, "/apiGroups"),
            resources: strings_at(v, "/resources"),
            resource_names: strings_at(v, "/resourceNames"),
            non_resource_urls: strings_at(v, "/nonResourceURLs"),
        }
    }

    /// `RuleAllows` (plugin/pkg/auth/authorizer/rbac/rbac.go) with the matchers of
    /// pkg/apis/rbac/v1/evaluation_helpers.go (`VerbMatches`, `APIGroupMatches`,
    /// `ResourceMatches`, `ResourceNameMatches`, `NonResourceURLMatches`).
    fn allows(&self, a: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        if !verb {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*')
                        .is_some_and(|p| a.path.starts_with(p.trim_end_matches('*')))
            });
        }
        let group = self.api_groups.iter().any(|g| g == "*" || *g == a.group);
        let combined = a.combined_resource();
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty()
                    && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        });
        // A rule with resourceNames never matches a request without a name (list, create,
        // deletecollection, watch without a metadata.name selector).
        let name = self.resource_names.is_empty() || self.resource_names.contains(&a.name);
        group && resource && name
    }
}

fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules")
        .and_then(Value::as_array)
        .map(|rs| rs.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// `metav1.LabelSelector` match (`LabelSelectorAsSelector`, apimachinery
/// pkg/apis/meta/v1/helpers.go): matchLabels and matchExpressions; a malformed selector
/// matches nothing, an empty one matches everything.
fn selector_matches(sel: &Value, obj: &Value) -> bool {
    let Some(sel) = sel.as_object() else {
        return false;
    };
    let label = |k: &str| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
    };
    if let Some(ml) = sel.get("matchLabels") {
        let Some(ml) = ml.as_object() else {
            return false;
        };
        if !ml
            .iter()
            .all(|(k, v)| v.as_str().is_some() && label(k) == v.as_str())
        {
            return false;
        }
    }
    if let Some(me) = sel.get("matchExpressions") {
        let Some(me) = me.as_array() else {
            return false;
        };
        for e in me {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values = strings_at(e, "/values");
            let have = label(key);
            let ok = match e.get("operator").and_then(Value::as_str) {
                Some("In") => have.is_some_and(|h| values.iter().any(|v| v == h)),
                Some("NotIn") => have.is_none_or(|h| !values.iter().any(|v| v == h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// Read access to the RBAC objects of the store.
struct Policy<'a> {
    st: &'a State,
}

impl Policy<'_> {
    fn list(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        match self.st.find_type(RBAC_GROUP, plural) {
            Some(t) => self.st.list(t, ns),
            None => Vec::new(),
        }
    }

    fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let t = self.st.find_type(RBAC_GROUP, plural)?;
        self.st.get(t, ns, name).cloned()
    }

    /// A ClusterRole's effective rules. With an aggregationRule they are the union of the
    /// rules of the ClusterRoles its selectors pick (the aggregation controller,
    /// pkg/controller/clusterroleaggregation/clusterroleaggregation_controller.go
    /// `syncClusterRole`, writes exactly that into `rules`); computed here at request time so
    /// roles added later are aggregated at once.
    fn cluster_role_rules(&self, role: &Value, seen: &mut BTreeSet<String>) -> Vec<Rule> {
        let name = role
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        seen.insert(name.to_string());
        let Some(selectors) = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        else {
            return rules_of(role);
        };
        let mut out = Vec::new();
        for other in self.list("clusterroles", None) {
            let other_name = other
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if seen.contains(other_name) || !selectors.iter().any(|s| selector_matches(s, &other)) {
                continue;
            }
            out.extend(self.cluster_role_rules(&other, seen));
        }
        out
    }

    /// `GetRoleReferenceRules` (pkg/registry/rbac/validation/rule.go), with the lister's
    /// NotFound wording (`clusterrole.rbac.authorization.k8s.io "x" not found`).
    fn role_ref_rules(&self, role_ref: &Value, binding_ns: &str) -> Result<Vec<Rule>, String> {
        let name = role_ref
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match role_ref
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "Role" => self
                .get("roles", binding_ns, name)
                .map(|r| rules_of(&r))
                .ok_or_else(|| format!("role.{RBAC_GROUP} {name:?} not found")),
            "ClusterRole" => self
                .get("clusterroles", "", name)
                .map(|r| self.cluster_role_rules(&r, &mut BTreeSet::new()))
                .ok_or_else(|| format!("clusterrole.{RBAC_GROUP} {name:?} not found")),
            k => Err(format!("unsupported role reference kind: {k:?}")),
        }
    }
}

/// `appliesToUser` (pkg/registry/rbac/validation/rule.go): User by name, Group by
/// membership, ServiceAccount by `system:serviceaccount:<ns>:<name>` with the namespace
/// defaulting to the binding's.
fn applies_to(user: &UserInfo, subject: &Value, binding_ns: &str) -> bool {
    let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("kind") {
        "User" => user.name == s("name"),
        "Group" => user.groups.iter().any(|g| g == s("name")),
        "ServiceAccount" => {
            let ns = if s("namespace").is_empty() {
                binding_ns
            } else {
                s("namespace")
            };
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", s("name"))
        }
        _ => false,
    }
}

/// `describeSubject` (rule.go), for the "allowed by" reason.
fn describe_subject(subject: &Value, binding_ns: &str) -> String {
    let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("kind") {
        "ServiceAccount" => {
            let ns = if s("namespace").is_empty() {
                binding_ns
            } else {
                s("namespace")
            };
            format!("ServiceAccount {:?}", format!("{}/{ns}", s("name")))
        }
        k => format!("{k} {:?}", s("name")),
    }
}

/// The outcome of one authorization: allowed or not, and upstream's reason string.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    pub(crate) reason: String,
}

/// The authorizer chain of a kubeadm cluster for these users: the privileged-group
/// authorizer (`system:masters`, staging/src/k8s.io/apiserver/pkg/authorization/
/// authorizerfactory/builtin.go), then `RBACAuthorizer.Authorize`
/// (plugin/pkg/auth/authorizer/rbac/rbac.go), which visits ClusterRoleBindings, then the
/// RoleBindings of the request's namespace (`VisitRulesFor` in rule.go).
pub(crate) fn authorize(st: &State, user: &UserInfo, a: &Attributes) -> Decision {
    if user.privileged() {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let p = Policy { st };
    let mut errors: Vec<String> = Vec::new();
    let mut visit = |binding: &Value, ns: &str, kind: &str| -> Option<String> {
        let subjects = binding.get("subjects").and_then(Value::as_array)?;
        let subject = subjects.iter().find(|s| applies_to(user, s, ns))?;
        let role_ref = binding.get("roleRef").cloned().unwrap_or(Value::Null);
        match p.role_ref_rules(&role_ref, ns) {
            Err(e) => {
                if !errors.contains(&e) {
                    errors.push(e);
                }
                None
            }
            Ok(rules) => rules.iter().any(|r| r.allows(a)).then(|| {
                let bname = binding
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let shown = if ns.is_empty() {
                    bname.to_string()
                } else {
                    format!("{bname}/{ns}")
                };
                format!(
                    "RBAC: allowed by {kind} {shown:?} of {} {:?} to {}",
                    role_ref
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    role_ref
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    describe_subject(subject, ns)
                )
            }),
        }
    };
    for b in p.list("clusterrolebindings", None) {
        if let Some(reason) = visit(&b, "", "ClusterRoleBinding") {
            return Decision {
                allowed: true,
                reason,
            };
        }
    }
    if !a.namespace.is_empty() {
        for b in p.list("rolebindings", Some(&a.namespace)) {
            if let Some(reason) = visit(&b, &a.namespace, "RoleBinding") {
                return Decision {
                    allowed: true,
                    reason,
                };
            }
        }
    }
    // The aggregate of the visitor's errors (utilerrors.NewAggregate's Error()).
    let reason = match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    };
    Decision {
        allowed: false,
        reason,
    }
}

/// `forbiddenMessage` and `ForbiddenStatusError`
/// (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go) wrapped by
/// `NewForbidden` (staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go).
pub(crate) fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> Response {
    let sanitize = |s: String| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let msg = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path)
    } else if !a.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
            user.name,
            a.verb,
            a.combined_resource(),
            a.group,
            a.namespace
        )
    } else {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
            user.name,
            a.verb,
            a.combined_resource(),
            a.group
        )
    };
    let mut err = sanitize(msg);
    if !reason.is_empty() {
        err = format!("{err}: {reason}");
    }
    // GroupResource{Group, Resource}: no subresource; String() is `resource.group`.
    let qualified = match (a.resource.is_empty(), a.group.is_empty()) {
        (true, true) => String::new(),
        (false, true) => a.resource.clone(),
        _ => format!("{}.{}", a.resource, a.group),
    };
    let message = if qualified.is_empty() {
        format!("forbidden: {err}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {:?} is forbidden: {err}", a.name)
    };
    // StatusDetails fields are all omitempty.
    let mut details = serde_json::Map::new();
    for (k, v) in [
        ("name", &a.name),
        ("group", &a.group),
        ("kind", &a.resource),
    ] {
        if !v.is_empty() {
            details.insert(k.into(), v.clone().into());
        }
    }
    status(403, "Forbidden", message, Some(Value::Object(details)))
}

// ---------------------------------------------------------------------------------------
// Request filter: impersonation and authorization
// ---------------------------------------------------------------------------------------

/// Authorize one question for `user`, record it and answer a 403 when it is denied.
/// Only users outside `system:masters` are recorded; they are denied only while enforcement
/// is on (off, denials are still recorded: "would be denied").
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
fn check(inner: &Inner, user: &UserInfo, a: &Attributes) -> Result<(), Response> {
    if user.privileged() {
        return Ok(());
    }
    let d = match inner.state.lock() {
        Ok(st) => authorize(&st, user, a),
        Err(_) => {
            return Err(status(
                500,
                "InternalError",
                "store lock poisoned".into(),
                None,
            ));
        }
    };
    inner.rbac.record(&user.name, a, d.allowed);
    if d.allowed || !inner.rbac.enforced.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(forbidden(user, a, &d.reason))
    }
}

/// Impersonation (`WithImpersonation`, staging/src/k8s.io/apiserver/pkg/endpoints/filters/
/// impersonation/impersonation.go): `Impersonate-User` and `Impersonate-Group` headers, each
/// authorized as verb `impersonate` on `serviceaccounts` (a `system:serviceaccount:` user),
/// `users` or `groups`; without groups a service account gets its fixed groups, and
/// `system:authenticated` is added unless a group already says (un)authenticated.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn impersonate(
    inner: &Inner,
    caller: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, Response> {
    let values = |h: &str| -> Vec<String> {
        headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    };
    let wanted_user = values("impersonate-user")
        .into_iter()
        .next()
        .filter(|u| !u.is_empty());
    let wanted_groups = values("impersonate-group");
    let Some(wanted_user) = wanted_user else {
        if wanted_groups.is_empty() {
            return Ok(caller);
        }
        return Err(status(
            500,
            "InternalError",
            format!(
                "Internal error occurred: requested {wanted_groups:?} without impersonating a user"
            ),
            None,
        ));
    };
    let mut groups = Vec::new();
    let ask = |resource: &str, ns: &str, name: &str| {
        let a = Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            version: "v1".into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Attributes::default()
        };
        check(inner, &caller, &a)
    };
    if let Some((ns, name)) = split_sa_username(&wanted_user) {
        ask("serviceaccounts", ns, name)?;
        if wanted_groups.is_empty() {
            groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    } else {
        ask("users", "", &wanted_user)?;
    }
    for g in &wanted_groups {
        ask("groups", "", g)?;
        groups.push(g.clone());
    }
    let anonymous = wanted_user == "system:anonymous";
    let marker = if anonymous {
        UNAUTHENTICATED
    } else {
        AUTHENTICATED
    };
    let has_marker = groups
        .iter()
        .any(|g| g == UNAUTHENTICATED || (!anonymous && g == AUTHENTICATED));
    if !has_marker {
        groups.push(marker.into());
    }
    Ok(UserInfo {
        name: wanted_user,
        groups,
    })
}

/// The authorization filter (`WithAuthorization`, staging/src/k8s.io/apiserver/pkg/endpoints/
/// filters/authorization.go) for one HTTP request.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn authorize_request(
    inner: &Inner,
    user: &UserInfo,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
) -> Result<(), Response> {
    let a = request_attributes(method.as_str(), path, q);
    check(inner, user, &a)
}

// ---------------------------------------------------------------------------------------
// SubjectAccessReview, SelfSubjectAccessReview, LocalSubjectAccessReview
// ---------------------------------------------------------------------------------------

/// The access-review resources of authorization.k8s.io answered here.
pub(crate) fn is_access_review(group: &str, plural: &str) -> bool {
    group == AUTHZ_GROUP
        && matches!(
            plural,
            "subjectaccessreviews" | "selfsubjectaccessreviews" | "localsubjectaccessreviews"
        )
}

/// 422 for an invalid review, worded as `NewInvalid` words it.
fn invalid_review(kind: &str, field: &str, value: &str, why: &str) -> Response {
    let cause = format!("{field}: Invalid value: {value:?}: {why}");
    status(
        422,
        "Invalid",
        format!("{kind}.{AUTHZ_GROUP} \"\" is invalid: {cause}"),
        Some(
            json!({"group": AUTHZ_GROUP, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {value:?}: {why}"), "field": field}]}),
        ),
    )
}

/// A review's request body: a JSON (or protobuf) object, else 400.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
fn review_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    match parse_body(headers, body)? {
        b if b.is_object() => Ok(b),
        _ => Err(status(
            400,
            "BadRequest",
            "body must be a JSON object".into(),
            None,
        )),
    }
}

/// Create of an access review: the REST storages in pkg/registry/authorization/
/// {subjectaccessreview,selfsubjectaccessreview,localsubjectaccessreview}/rest.go, answered by
/// the same authorizer (`ResourceAttributesFrom`/`NonResourceAttributesFrom`,
/// pkg/registry/authorization/util/helpers.go). Not recorded in the usage record: a review
/// asks about access, it does not use it.
pub(crate) fn access_review(
    inner: &Inner,
    caller: &UserInfo,
    plural: &str,
    url_namespace: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut review = match review_body(headers, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let kind = match plural {
        "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
        "localsubjectaccessreviews" => "LocalSubjectAccessReview",
        _ => "SubjectAccessReview",
    };
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let ra = spec.get("resourceAttributes").filter(|v| v.is_object());
    let nra = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    // ValidateSubjectAccessReviewSpec (pkg/apis/authorization/validation/validation.go).
    match (ra, nra) {
        (Some(_), Some(_)) => {
            return invalid_review(
                kind,
                "spec.nonResourceAttributes",
                "",
                "cannot be specified in combination with resourceAttributes",
            );
        }
        (None, None) => {
            return status(
                422,
                "Invalid",
                format!(
                    "{kind}.{AUTHZ_GROUP} \"\" is invalid: spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
                ),
                Some(
                    json!({"group": AUTHZ_GROUP, "kind": kind, "causes": [{"reason": "FieldValueRequired", "message": "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified", "field": "spec.resourceAttributes"}]}),
                ),
            );
        }
        _ => {}
    }
    let s = |v: Option<&Value>, k: &str| -> String {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let user = if kind == "SelfSubjectAccessReview" {
        caller.clone()
    } else {
        let u = UserInfo {
            name: s(Some(&spec), "user"),
            groups: strings_at(&spec, "/groups"),
        };
        if u.name.is_empty() && u.groups.is_empty() {
            return invalid_review(
                kind,
                "spec.user",
                "",
                "at least one of user or group must be specified",
            );
        }
        u
    };
    if kind == "LocalSubjectAccessReview" {
        let ns = url_namespace.unwrap_or_default();
        if nra.is_some() {
            return invalid_review(
                kind,
                "spec.nonResourceAttributes",
                "",
                "disallowed on this kind of request",
            );
        }
        if s(ra, "namespace") != ns {
            return status(
                400,
                "BadRequest",
                format!("spec.resourceAttributes.namespace must match namespace: {ns}"),
                None,
            );
        }
    }
    let a = match ra {
        Some(_) => Attributes {
            verb: s(ra, "verb"),
            resource_request: true,
            group: s(ra, "group"),
            version: s(ra, "version"),
            resource: s(ra, "resource"),
            subresource: s(ra, "subresource"),
            namespace: s(ra, "namespace"),
            name: s(ra, "name"),
            path: String::new(),
        },
        None => Attributes {
            verb: s(nra, "verb"),
            path: s(nra, "path"),
            ..Attributes::default()
        },
    };
    let d = match inner.state.lock() {
        Ok(st) => authorize(&st, &user, &a),
        Err(_) => return status(500, "InternalError", "store lock poisoned".into(), None),
    };
    let mut st = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        st["reason"] = d.reason.into();
    }
    // Upstream echoes the review as sent with only the status filled in.
    review["status"] = st;
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    ok_json(StatusCode::CREATED, &review)
}

// ---------------------------------------------------------------------------------------
// Bootstrap policy
// ---------------------------------------------------------------------------------------

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = "rbac-defaults".into();
    let mut r = json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    });
    if let Some(a) = aggregate {
        r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("{RBAC_GROUP}/{a}"): "true"}}]});
    }
    r
}

fn cluster_binding(role: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
        "metadata": {"name": role, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": groups.iter().map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g})).collect::<Vec<_>>(),
    })
}

/// The part of the bootstrap policy a workload test meets (`clusterRoles` and
/// `clusterRoleBindings` in plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go, as of
/// Kubernetes 1.32): cluster-admin, the discovery/basic-user/public-info-viewer roles and
/// their bindings, and the aggregated admin/edit/view roles with the system:aggregate-to-*
/// roles they aggregate. The node, controller-manager and scheduler roles are left out.
fn bootstrap_objects() -> (Vec<Value>, Vec<Value>) {
    let none = || json!({});
    let agg = |a: &str| json!({format!("{RBAC_GROUP}/aggregate-to-{a}"): "true"});
    let to_admin = vec![
        rule(&["create"], &[AUTHZ_GROUP], &["localsubjectaccessreviews"]),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ];
    let to_edit = vec![
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses"],
        ),
    ];
    // view: read-only on non-escalating resources (no secrets, no pods/exec...).
    let to_view = vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ];
    // The aggregated roles carry the union the aggregation controller would have written.
    let view_rules = to_view.clone();
    let edit_rules: Vec<Value> = to_edit.iter().chain(&view_rules).cloned().collect();
    let admin_rules: Vec<Value> = to_admin.iter().chain(&edit_rules).cloned().collect();
    let roles = vec![
        cluster_role(
            "cluster-admin",
            none(),
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
            None,
        ),
        cluster_role(
            "system:discovery",
            none(),
            vec![url_rule(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
            None,
        ),
        cluster_role(
            "system:basic-user",
            none(),
            vec![
                rule(
                    &["create"],
                    &[AUTHZ_GROUP],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            none(),
            vec![url_rule(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
            None,
        ),
        cluster_role("system:aggregate-to-admin", agg("admin"), to_admin, None),
        cluster_role("system:aggregate-to-edit", agg("edit"), to_edit, None),
        cluster_role("system:aggregate-to-view", agg("view"), to_view, None),
        cluster_role("admin", none(), admin_rules, Some("aggregate-to-admin")),
        cluster_role("edit", agg("admin"), edit_rules, Some("aggregate-to-edit")),
        cluster_role("view", agg("edit"), view_rules, Some("aggregate-to-view")),
    ];
    let bindings = vec![
        cluster_binding("cluster-admin", &[MASTERS]),
        cluster_binding("system:discovery", &[AUTHENTICATED]),
        cluster_binding("system:basic-user", &[AUTHENTICATED]),
        cluster_binding(
            "system:public-info-viewer",
            &[AUTHENTICATED, UNAUTHENTICATED],
        ),
    ];
    (roles, bindings)
}

/// Store the bootstrap policy, as the apiserver's `rbac/bootstrap-roles` post-start hook
/// does before a cluster serves its first request.
pub(crate) fn bootstrap(st: &mut State) {
    let (roles, bindings) = bootstrap_objects();
    for (plural, objs) in [("clusterroles", roles), ("clusterrolebindings", bindings)] {
        let Some(t) = st.find_type(RBAC_GROUP, plural).cloned() else {
            continue;
        };
        for o in objs {
            // A fresh store has none of these names, and they are valid.
            if let Err(e) = st.create(&t, "v1", "", o) {
                debug_assert!(false, "bootstrap policy refused: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_info_matches_upstream() {
        let a = request_attributes(
            "GET",
            "/api/v1/namespaces/ns/secrets",
            &q(&[("watch", "true")]),
        );
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("watch", "ns", "secrets")
        );
        let a = request_attributes(
            "GET",
            "/api/v1/namespaces/ns/secrets",
            &q(&[("fieldSelector", "metadata.name=x")]),
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "x"));
        let a = request_attributes("DELETE", "/apis/apps/v1/namespaces/ns/deployments", &q(&[]));
        assert_eq!(
            (a.verb.as_str(), a.group.as_str()),
            ("deletecollection", "apps")
        );
        let a = request_attributes("PUT", "/api/v1/namespaces/ns/finalize", &q(&[]));
        assert_eq!(
            (
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str(),
                a.namespace.as_str()
            ),
            ("namespaces", "ns", "finalize", "ns")
        );
        let a = request_attributes(
            "POST",
            "/api/v1/namespaces/ns/serviceaccounts/sa/token",
            &q(&[]),
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.combined_resource().as_str(),
                a.name.as_str()
            ),
            ("create", "serviceaccounts/token", "sa")
        );
        let a = request_attributes("GET", "/apis/rbac.authorization.k8s.io/v1", &q(&[]));
        assert!(!a.resource_request);
        assert_eq!(a.verb, "get");
        let a = request_attributes("GET", "/", &q(&[]));
        assert!(!a.resource_request);
    }

    #[test]
    fn rule_matching() {
        let r = Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*/status"], "resourceNames": ["a"]}),
        );
        let mut a = request_attributes("GET", "/api/v1/namespaces/ns/pods/a/status", &q(&[]));
        assert!(r.allows(&a));
        a.name = "b".into();
        assert!(!r.allows(&a));
        let u = Rule::from_json(&json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}));
        assert!(u.allows(&request_attributes("GET", "/apis/apps/v1", &q(&[]))));
        assert!(!u.allows(&request_attributes("GET", "/api", &q(&[]))));
        // Malformed rules match nothing and do not panic.
        let bad = Rule::from_json(&json!({"verbs": "get", "resources": [1, null]}));
        assert!(!bad.allows(&a));
    }
}

// ---------------------------------------------------------------------------------------
// Privilege-escalation prevention on RBAC writes
// ---------------------------------------------------------------------------------------

tokio::task_local! {
    /// The caller of the request being served, set by the router for RBAC-enforced callers
    /// outside `system:masters` only (upstream's `EscalationAllowed` lets those through), so
    /// the store's write path can run the escalation checks the RBAC REST storages run.
    pub(crate) static REQUESTER: UserInfo;
}

/// The user whose writes must pass the escalation checks, if enforcement applies to them.
pub(crate) fn escalation_subject(inner: &Inner, user: &UserInfo) -> Option<UserInfo> {
    (!user.privileged() && inner.rbac.enforced.load(Ordering::SeqCst)).then(|| user.clone())
}

/// `RulesFor` (pkg/registry/rbac/validation/rule.go, `DefaultRuleResolver.VisitRulesFor`): every
/// rule that applies to `user` through ClusterRoleBindings and, for a namespace, the
/// RoleBindings there, with the errors of role references that do not resolve.
fn rules_for(st: &State, user: &UserInfo, ns: &str) -> (Vec<Rule>, Vec<String>) {
    let p = Policy { st };
    let (mut rules, mut errors) = (Vec::new(), Vec::new());
    let mut visit = |b: &Value, bns: &str| {
        let applies = b
            .get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|ss| ss.iter().any(|s| applies_to(user, s, bns)));
        if !applies {
            return;
        }
        match p.role_ref_rules(b.get("roleRef").unwrap_or(&Value::Null), bns) {
            Ok(rs) => rules.extend(rs),
            Err(e) => errors.push(e),
        }
    };
    for b in p.list("clusterrolebindings", None) {
        visit(&b, "");
    }
    if !ns.is_empty() {
        for b in p.list("rolebindings", Some(ns)) {
            visit(&b, ns);
        }
    }
    (rules, errors)
}

/// `BreakdownRule` (staging/src/k8s.io/component-helpers/auth/rbac/validation/
/// policy_comparator.go): one rule per (group, resource, verb[, resourceName]) and per
/// (nonResourceURL, verb).
fn breakdown(rule: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for g in &rule.api_groups {
        for r in &rule.resources {
            for v in &rule.verbs {
                let one = |names: Vec<String>| Rule {
                    verbs: vec![v.clone()],
                    api_groups: vec![g.clone()],
                    resources: vec![r.clone()],
                    resource_names: names,
                    non_resource_urls: Vec::new(),
                };
                if rule.resource_names.is_empty() {
                    out.push(one(Vec::new()));
                } else {
                    out.extend(rule.resource_names.iter().map(|n| one(vec![n.clone()])));
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(Rule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Rule::default()
            });
        }
    }
    out
}

/// `ruleCovers` (policy_comparator.go): whether one owner rule covers an atomic rule.
fn rule_covers(owner: &Rule, sub: &Rule) -> bool {
    let has = |set: &[String], e: &str| set.iter().any(|s| s == e);
    let has_all = |set: &[String], want: &[String]| want.iter().all(|w| has(set, w));
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups);
    // resourceCoversAll: `*`, exact, or `*/<subresource>` for a subresource.
    let resources = has(&owner.resources, "*")
        || sub.resources.iter().all(|r| {
            has(&owner.resources, r)
                || r.split_once('/')
                    .is_some_and(|(_, s)| has(&owner.resources, &format!("*/{s}")))
        });
    // nonResourceURLsCoversAll with nonResourceURLCovers (exact, or a `*`-suffixed prefix).
    let urls = sub.non_resource_urls.iter().all(|u| {
        owner.non_resource_urls.iter().any(|o| {
            o == u
                || o.strip_suffix('*')
                    .is_some_and(|_| u.starts_with(o.trim_end_matches('*')))
        })
    });
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    verbs && groups && resources && names && urls
}

/// `Covers` (policy_comparator.go): the atomic rules of `servant` no owner rule covers.
fn uncovered(owner: &[Rule], servant: &[Rule]) -> Vec<Rule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|s| !owner.iter().any(|o| rule_covers(o, s)))
        .collect()
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// `CompactString` (pkg/apis/rbac/v1/evaluation_helpers.go).
fn compact_string(r: &Rule) -> String {
    let mut parts = Vec::new();
    for (label, v) in [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("NonResourceURLs", &r.non_resource_urls),
        ("ResourceNames", &r.resource_names),
        ("Verbs", &r.verbs),
    ] {
        if !v.is_empty() {
            parts.push(format!("{label}:{}", go_quoted_list(v)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// `CompactRules` (pkg/registry/rbac/validation/policy_compact.go): atomic rules that differ
/// only by verb on one group and resource are shown as one.
fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut simple: Vec<Rule> = Vec::new();
    let mut out = Vec::new();
    for r in rules {
        let is_simple = r.resource_names.is_empty()
            && r.non_resource_urls.is_empty()
            && r.api_groups.len() == 1
            && r.resources.len() == 1;
        if !is_simple {
            out.push(r);
            continue;
        }
        match simple
            .iter_mut()
            .find(|s| s.api_groups == r.api_groups && s.resources == r.resources)
        {
            Some(s) => s.verbs.extend(r.verbs),
            None => simple.push(r),
        }
    }
    out.extend(simple);
    out
}

/// `ConfirmNoEscalation` (pkg/registry/rbac/validation/rule.go): `rules` must be covered by
/// what `user` already holds in `ns`; the error text is upstream's.
fn confirm_no_escalation(
    st: &State,
    user: &UserInfo,
    ns: &str,
    rules: &[Rule],
) -> Result<(), String> {
    let (owner, errors) = rules_for(st, user, ns);
    let missing = uncovered(&owner, rules);
    if missing.is_empty() {
        return Ok(());
    }
    // sets.NewString(...).List(): unique and sorted.
    let shown: BTreeSet<String> = compact(missing).iter().map(compact_string).collect();
    let mut msg = format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        go_quoted_list(&user.groups),
        shown.into_iter().collect::<Vec<_>>().join("\n")
    );
    if !errors.is_empty() {
        // `%v` of a []error.
        msg = format!("{msg}; resolution errors: [{}]", errors.join(" "));
    }
    Err(msg)
}

/// `IsOnlyMutatingGCFields` (pkg/registry/rbac/helpers.go): an update that changes nothing but
/// ownerReferences and finalizers is never an escalation.
fn only_gc_fields_change(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
                "generation",
                "creationTimestamp",
                "uid",
            ] {
                m.remove(k);
            }
        }
        if let Some(m) = v.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    };
    strip(new) == strip(old)
}

/// The escalation checks of the RBAC REST storages, run on every create and update of a Role,
/// ClusterRole, RoleBinding or ClusterRoleBinding by a [`REQUESTER`]:
/// - roles (pkg/registry/rbac/role/policybased/storage.go) and cluster roles
///   (pkg/registry/rbac/clusterrole/policybased/storage.go): allowed with verb `escalate` on
///   the role (`RoleEscalationAuthorized`, pkg/registry/rbac/escalation_check.go), else every
///   rule must be held already; an `aggregationRule` (new or old) needs full authority;
/// - bindings (rolebinding/ and clusterrolebinding/policybased/storage.go): allowed with verb
///   `bind` on the referenced role (`BindingAuthorized`), else the role must exist (404) and
///   its rules be held already.
///
/// Denials are 403 `NewForbidden(groupResource, name, err)`.
pub(crate) fn escalation_check(
    st: &State,
    plural: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), StoreError> {
    if !matches!(
        plural,
        "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings"
    ) {
        return Ok(());
    }
    let Ok(user) = REQUESTER.try_with(Clone::clone) else {
        return Ok(());
    };
    if old.is_some_and(|o| only_gc_fields_change(obj, o)) {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ns = if plural.starts_with("cluster") {
        String::new()
    } else {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let forbidden = |err: String| StoreError::Forbidden {
        message: format!("{plural}.{RBAC_GROUP} {name:?} is forbidden: {err}"),
        name: name.clone(),
        causes: Vec::new(),
    };
    let allowed = |verb: &str, resource: &str, rname: &str| {
        authorize(
            st,
            &user,
            &Attributes {
                verb: verb.into(),
                resource_request: true,
                group: RBAC_GROUP.into(),
                resource: resource.into(),
                namespace: ns.clone(),
                name: rname.into(),
                ..Attributes::default()
            },
        )
        .allowed
    };
    match plural {
        "roles" | "clusterroles" => {
            if allowed("escalate", plural, &name) {
                return Ok(());
            }
            confirm_no_escalation(st, &user, &ns, &rules_of(obj)).map_err(forbidden)?;
            let aggregates = |v: &Value| {
                v.pointer("/aggregationRule/clusterRoleSelectors")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            };
            if plural == "clusterroles" && (aggregates(obj) || old.is_some_and(aggregates)) {
                let full = [
                    Rule {
                        verbs: vec!["*".into()],
                        api_groups: vec!["*".into()],
                        resources: vec!["*".into()],
                        ..Rule::default()
                    },
                    Rule {
                        verbs: vec!["*".into()],
                        non_resource_urls: vec!["*".into()],
                        ..Rule::default()
                    },
                ];
                confirm_no_escalation(st, &user, &ns, &full).map_err(|_| {
                    forbidden(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    )
                })?;
            }
            Ok(())
        }
        _ => {
            let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
            let rs = |k: &str| {
                role_ref
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (kind, rname) = (rs("kind"), rs("name"));
            let resource = match kind.as_str() {
                "Role" => "roles",
                "ClusterRole" => "clusterroles",
                _ => "",
            };
            if !resource.is_empty() && allowed("bind", resource, &rname) {
                return Ok(());
            }
            let p = Policy { st };
            // The REST getters' NotFound (plural resource), not the listers' wording.
            let rules = p.role_ref_rules(&role_ref, &ns).map_err(|e| {
                if resource.is_empty() {
                    StoreError::Internal(e)
                } else {
                    StoreError::NotFound(format!("{resource}.{RBAC_GROUP} {rname:?} not found"))
                }
            })?;
            confirm_no_escalation(st, &user, &ns, &rules).map_err(forbidden)
        }
    }
}

// ---------------------------------------------------------------------------------------
// SelfSubjectRulesReview (`kubectl auth can-i --list`)
// ---------------------------------------------------------------------------------------

/// Create of a SelfSubjectRulesReview (pkg/registry/authorization/selfsubjectrulesreview/
/// rest.go): 400 without `spec.namespace`; the status lists the caller's rules from the rule
/// resolvers of a Node,RBAC cluster: the Node authorizer contributes nothing for these users,
/// RBAC (`RBACAuthorizer.RulesFor`, plugin/pkg/auth/authorizer/rbac/rbac.go) one resource rule
/// per policy rule with resources and one non-resource rule per rule with URLs, in binding
/// order; unresolved role references become `evaluationError`. `system:masters` gets what the
/// bootstrap `cluster-admin` binding gives it, as upstream (the privileged-group authorizer
/// resolves no rules).
pub(crate) fn rules_review(
    inner: &Inner,
    caller: &UserInfo,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut review = match review_body(headers, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ns = review
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if ns.is_empty() {
        return status(400, "BadRequest", "no namespace on request".into(), None);
    }
    let (rules, errors) = match inner.state.lock() {
        Ok(st) => rules_for(&st, caller, &ns),
        Err(_) => return status(500, "InternalError", "store lock poisoned".into(), None),
    };
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in &rules {
        if !r.resources.is_empty() {
            let mut o =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                o["resourceNames"] = r.resource_names.clone().into();
            }
            resource_rules.push(o);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut st = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    match errors.len() {
        0 => {}
        1 => st["evaluationError"] = errors[0].clone().into(),
        _ => st["evaluationError"] = format!("[{}]", errors.join(", ")).into(),
    }
    review["status"] = st;
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    ok_json(StatusCode::CREATED, &review)
}
