//! Resource types the server knows: built-ins that operators and their tests use, and kinds registered by CRDs.

use serde_json::{Value, json};
use std::sync::Arc;

/// One served version's schema and the forms of it the write path needs, derived once when
/// the type is registered (a CRD write) instead of on every write of a custom resource: at
/// 10,000 objects, cloning and re-serializing the schema per write was over a tenth of the
/// server's CPU in the controller benchmark.
#[derive(Debug)]
pub struct VersionSchema {
    /// The version's `openAPIV3Schema` as the CRD gives it.
    pub openapi: Value,
    /// The same without `apiVersion`, `kind` and `metadata`: those are the server's, so the
    /// body is pruned, defaulted and validated without them (`schema::check_object`).
    pub body: Value,
    /// The schema structured merge diff sees (`apply::root_schema`).
    pub smd: Value,
}

impl VersionSchema {
    /// Derive the forms of one version's schema.
    pub fn new(openapi: Value) -> Self {
        let mut body = openapi.clone();
        if let Some(p) = body.get_mut("properties").and_then(Value::as_object_mut) {
            for k in ["apiVersion", "kind", "metadata"] {
                p.remove(k);
            }
        }
        let smd = crate::apply::smd_root(Some(&openapi));
        Self { openapi, body, smd }
    }
}

/// One served resource type.
#[derive(Debug, Clone)]
pub struct ResType {
    /// API group ("" for core).
    pub group: String,
    /// Served versions (first = storage/preferred).
    pub versions: Vec<String>,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Has a status subresource (writes split between main and /status).
    pub status: bool,
    /// openAPIV3Schema per version (shared: a clone of the type does not copy it).
    pub schemas: Vec<(String, Arc<VersionSchema>)>,
    /// additionalPrinterColumns per version.
    pub columns: Vec<(String, Vec<Value>)>,
    /// Create-only virtual resources (tokenreviews).
    pub create_only: bool,
    /// Defined by a CRD (so deleting the CRD unregisters it).
    pub from_crd: bool,
}

impl ResType {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: vec![],
            // The built-ins with a status subresource (pkg/registry/*/storage in
            // kubernetes/kubernetes: a StatusREST beside the REST of each of these).
            status: matches!(
                plural,
                "namespaces"
                    | "pods"
                    | "services"
                    | "customresourcedefinitions"
                    | "deployments"
                    | "daemonsets"
                    | "jobs"
                    | "cronjobs"
                    | "poddisruptionbudgets"
                    | "resourcequotas"
            ),
            schemas: vec![],
            columns: vec![],
            create_only: false,
            from_crd: false,
        }
    }

    /// `group/version` for apiVersion.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// A version's schema with its derived forms.
    pub fn version_schema(&self, version: &str) -> Option<&Arc<VersionSchema>> {
        self.schemas
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }

    /// Printer columns for a version.
    pub fn printer_columns(&self, version: &str) -> &[Value] {
        self.columns
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[])
    }

    /// Verbs for discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    /// Build from a CRD object; None when the CRD is malformed.
    pub fn from_crd(crd: &Value) -> Option<Self> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let versions: Vec<&Value> = spec
            .get("versions")?
            .as_array()?
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
            .collect();
        // storage version first
        let mut ordered = versions.clone();
        ordered.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
        let kind = names.get("kind")?.as_str()?.to_string();
        Some(Self {
            group: spec.get("group")?.as_str()?.to_string(),
            versions: ordered
                .iter()
                .filter_map(|v| v.get("name")?.as_str().map(String::from))
                .collect(),
            plural: names.get("plural")?.as_str()?.to_string(),
            singular: names
                .get("singular")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase()),
            kind,
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            short_names: crate::auth::strings_at(names, "/shortNames"),
            categories: crate::auth::strings_at(names, "/categories"),
            status: ordered
                .iter()
                .any(|v| v.pointer("/subresources/status").is_some()),
            schemas: ordered
                .iter()
                .filter_map(|v| {
                    Some((
                        v.get("name")?.as_str()?.to_string(),
                        Arc::new(VersionSchema::new(
                            v.pointer("/schema/openAPIV3Schema")?.clone(),
                        )),
                    ))
                })
                .collect(),
            columns: ordered
                .iter()
                .filter_map(|v| {
                    Some((
                        v.get("name")?.as_str()?.to_string(),
                        v.get("additionalPrinterColumns")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    ))
                })
                .collect(),
            create_only: false,
            from_crd: true,
        })
    }

    /// APIResource entries for discovery (the resource and its subresources).
    pub fn discovery(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced, "kind": self.kind,
            "verbs": self.verbs(), "shortNames": self.short_names, "categories": self.categories,
        })];
        if self.status {
            out.push(json!({"name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced, "kind": self.kind, "verbs": ["get", "patch", "update"]}));
        }
        if self.plural == "serviceaccounts" {
            out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        out
    }
}

/// The built-in types operators under test and kubectl need.
pub fn builtins() -> Vec<ResType> {
    let mut v = vec![
        ResType::builtin("", "v1", "namespaces", "Namespace", false, &["ns"]),
        ResType::builtin("", "v1", "secrets", "Secret", true, &[]),
        ResType::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        ResType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        ResType::builtin("", "v1", "pods", "Pod", true, &["po"]),
        ResType::builtin("", "v1", "services", "Service", true, &["svc"]),
        ResType::builtin("", "v1", "events", "Event", true, &["ev"]),
        ResType::builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        ResType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        ResType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        ),
        ResType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
        ),
        ResType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        ResType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        ResType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        ResType::builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
        ResType::builtin("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"]),
        ResType::builtin(
            "",
            "v1",
            "resourcequotas",
            "ResourceQuota",
            true,
            &["quota"],
        ),
        ResType::builtin("batch", "v1", "jobs", "Job", true, &[]),
        ResType::builtin("batch", "v1", "cronjobs", "CronJob", true, &["cj"]),
        ResType::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
        ),
        ResType::builtin(
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            "PriorityClass",
            false,
            &["pc"],
        ),
    ];
    let mut tr = ResType::builtin(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        &[],
    );
    tr.create_only = true;
    v.push(tr);
    let mut sar = ResType::builtin(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
        &[],
    );
    sar.create_only = true;
    v.push(sar);
    // Answered by the RBAC authorizer (rbac.rs).
    for (plural, kind, namespaced) in [
        ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
        ("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
        (
            "localsubjectaccessreviews",
            "LocalSubjectAccessReview",
            true,
        ),
    ] {
        let mut r = ResType::builtin("authorization.k8s.io", "v1", plural, kind, namespaced, &[]);
        r.create_only = true;
        v.push(r);
    }
    v
}
