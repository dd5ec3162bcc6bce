//! RBAC enforcement for service-account callers, with kube-rs and kubectl.

mod common;
use common::kubectl;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube_test_apiserver::{Access, TestApiServer, TokenIdentity};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const SA_USER: &str = "system:serviceaccount:app:sa";

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// A server with namespaces `app` and `other`, a service account app/sa, and a secret and a
/// configmap `x` in both namespaces.
async fn server() -> (TestApiServer, kube::Client) {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    for ns in ["app", "other"] {
        Api::<Namespace>::all(c.clone())
            .create(
                &PostParams::default(),
                &from(json!({"metadata": {"name": ns}})),
            )
            .await
            .unwrap();
        Api::<Secret>::namespaced(c.clone(), ns)
            .create(
                &PostParams::default(),
                &from(json!({"metadata": {"name": "x"}, "stringData": {"k": "v"}})),
            )
            .await
            .unwrap();
        for name in ["x", "y"] {
            Api::<ConfigMap>::namespaced(c.clone(), ns)
                .create(
                    &PostParams::default(),
                    &from(json!({"metadata": {"name": name}})),
                )
                .await
                .unwrap();
        }
    }
    Api::<ServiceAccount>::namespaced(c.clone(), "app")
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "sa"}})),
        )
        .await
        .unwrap();
    (s, c)
}

async fn role(c: &kube::Client, ns: &str, name: &str, rules: Value) {
    Api::<Role>::namespaced(c.clone(), ns)
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name}, "rules": rules})),
        )
        .await
        .unwrap();
}

async fn bind(c: &kube::Client, ns: &str, kind: &str, role: &str) {
    Api::<RoleBinding>::namespaced(c.clone(), ns)
        .create(
            &PostParams::default(),
            &from(json!({
                "metadata": {"name": format!("{role}-sa")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}],
            })),
        )
        .await
        .unwrap();
}

/// The Status of a failed call.
fn status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        e => panic!("not an API error: {e:?}"),
    }
}

fn access(verb: &str, group: &str, resource: &str, ns: &str) -> Access {
    Access {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: ns.into(),
    }
}

#[tokio::test]
async fn denied_requests_get_the_upstream_403_until_a_role_grants_them() {
    let (s, c) = server().await;
    let sa = s.service_account_client("app", "sa").await;
    let secrets = Api::<Secret>::namespaced(sa.clone(), "app");

    let e = status(secrets.get("x").await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        format!(
            r#"secrets "x" is forbidden: User "{SA_USER}" cannot get resource "secrets" in API group "" in the namespace "app""#
        )
    );
    let d = e.details.expect("details");
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("x", "", "secrets")
    );

    // Cluster scope, no name, a non-core group.
    let e = status(
        Api::<Namespace>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            r#"namespaces is forbidden: User "{SA_USER}" cannot list resource "namespaces" in API group "" at the cluster scope"#
        )
    );
    let e = status(
        Api::<ClusterRole>::all(sa.clone())
            .get("view")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            r#"clusterroles.rbac.authorization.k8s.io "view" is forbidden: User "{SA_USER}" cannot get resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope"#
        )
    );

    role(
        &c,
        "app",
        "read-secrets",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
    )
    .await;
    bind(&c, "app", "Role", "read-secrets").await;
    assert!(secrets.get("x").await.is_ok());
    // get does not grant list.
    assert_eq!(
        status(secrets.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );

    // A binding to a missing role says so in the reason, as upstream.
    bind(&c, "other", "Role", "nope").await;
    let e = status(
        Api::<Secret>::namespaced(sa.clone(), "other")
            .get("x")
            .await
            .unwrap_err(),
    );
    assert!(
        e.message.ends_with(
            r#"in the namespace "other": RBAC: role.rbac.authorization.k8s.io "nope" not found"#
        ),
        "{}",
        e.message
    );

    let usage = s.rbac_usage();
    let mine = &usage[SA_USER];
    assert!(mine.contains(&access("get", "", "secrets", "app")));
    assert!(!mine.contains(&access("list", "", "secrets", "app")));
    let denied = &s.rbac_denials()[SA_USER];
    assert!(denied.contains(&access("list", "", "secrets", "app")));
    assert!(denied.contains(&access("list", "", "namespaces", "")));
    assert!(denied.contains(&access(
        "get",
        "rbac.authorization.k8s.io",
        "clusterroles",
        ""
    )));
    // The admin is not recorded.
    assert_eq!(usage.len(), 1);

    // Enforcement off: served, but still recorded as a denial.
    s.clear_rbac_records();
    s.set_rbac_enforced(false);
    assert!(secrets.list(&ListParams::default()).await.is_ok());
    assert!(s.rbac_denials()[SA_USER].contains(&access("list", "", "secrets", "app")));
}

#[tokio::test]
async fn edit_bound_in_a_namespace_reads_secrets_there_only_and_view_never() {
    let (s, c) = server().await;
    let sa = s.service_account_client("app", "sa").await;
    bind(&c, "app", "ClusterRole", "edit").await;

    let here = Api::<Secret>::namespaced(sa.clone(), "app");
    assert!(here.get("x").await.is_ok());
    assert_eq!(
        here.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    here.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "new"}, "stringData": {"a": "b"}})),
    )
    .await
    .unwrap();
    here.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(json!({"stringData": {"c": "d"}})),
    )
    .await
    .unwrap();
    here.delete("new", &Default::default()).await.unwrap();
    // The ClusterRole grants nothing outside the binding's namespace, nor cluster-wide.
    let there = Api::<Secret>::namespaced(sa.clone(), "other");
    let e = status(there.get("x").await.unwrap_err());
    assert_eq!(
        e.message,
        format!(
            r#"secrets "x" is forbidden: User "{SA_USER}" cannot get resource "secrets" in API group "" in the namespace "other""#
        )
    );
    assert_eq!(
        status(
            Api::<Secret>::all(sa.clone())
                .list(&ListParams::default())
                .await
                .unwrap_err()
        )
        .code,
        403
    );
    // Watch is its own verb: denied elsewhere with the watch wording.
    let e = status(
        there
            .watch(&WatchParams::default(), "0")
            .await
            .err()
            .expect("watch denied"),
    );
    assert_eq!(
        e.message,
        format!(
            r#"secrets is forbidden: User "{SA_USER}" cannot watch resource "secrets" in API group "" in the namespace "other""#
        )
    );
    let mut w = here
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(w.next().await.is_some());
    // edit cannot manage RBAC (admin can).
    assert_eq!(
        status(
            Api::<RoleBinding>::namespaced(sa.clone(), "app")
                .list(&ListParams::default())
                .await
                .unwrap_err()
        )
        .code,
        403
    );

    // view: configmaps yes, secrets no.
    let viewer = s.service_account_client("other", "viewer").await;
    Api::<RoleBinding>::namespaced(c.clone(), "other")
        .create(
            &PostParams::default(),
            &from(json!({
                "metadata": {"name": "view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "viewer"}],
            })),
        )
        .await
        .unwrap();
    assert!(
        Api::<ConfigMap>::namespaced(viewer.clone(), "other")
            .get("x")
            .await
            .is_ok()
    );
    assert_eq!(
        status(
            Api::<Secret>::namespaced(viewer.clone(), "other")
                .get("x")
                .await
                .unwrap_err()
        )
        .code,
        403
    );
    assert_eq!(
        status(
            Api::<ConfigMap>::namespaced(viewer.clone(), "other")
                .create(
                    &PostParams::default(),
                    &from(json!({"metadata": {"name": "z"}}))
                )
                .await
                .unwrap_err()
        )
        .code,
        403
    );
}

#[tokio::test]
async fn resource_names_and_subresources() {
    let (s, c) = server().await;
    let sa = s.service_account_client("app", "sa").await;
    role(
        &c,
        "app",
        "one",
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["x"], "verbs": ["get", "list", "watch", "update", "create"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["sa"], "verbs": ["create"]},
        ]),
    )
    .await;
    bind(&c, "app", "Role", "one").await;
    let cms = Api::<ConfigMap>::namespaced(sa.clone(), "app");
    assert!(cms.get("x").await.is_ok());
    assert_eq!(status(cms.get("y").await.unwrap_err()).code, 403);
    // No name: list and create never match a resourceNames rule...
    assert_eq!(
        status(cms.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );
    let e = status(
        cms.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "x2"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            r#"configmaps is forbidden: User "{SA_USER}" cannot create resource "configmaps" in API group "" in the namespace "app""#
        )
    );
    // ...but a metadata.name field selector names the list or watch (requestinfo.go).
    let one = ListParams::default().fields("metadata.name=x");
    assert_eq!(cms.list(&one).await.unwrap().items.len(), 1);
    assert!(
        cms.watch(&WatchParams::default().fields("metadata.name=x"), "0")
            .await
            .is_ok()
    );
    assert_eq!(
        status(
            cms.list(&ListParams::default().fields("metadata.name=y"))
                .await
                .unwrap_err()
        )
        .code,
        403
    );

    // Subresources are authorized as resource/subresource.
    let pods = Api::<Pod>::namespaced(c.clone(), "app");
    pods.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})),
    )
    .await
    .unwrap();
    let sa_pods = Api::<Pod>::namespaced(sa.clone(), "app");
    assert!(sa_pods.get_status("p").await.is_ok());
    let e = status(sa_pods.get("p").await.unwrap_err());
    assert_eq!(e.code, 403);
    let e = status(
        sa_pods
            .patch_status(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            r#"pods "p" is forbidden: User "{SA_USER}" cannot patch resource "pods/status" in API group "" in the namespace "app""#
        )
    );
    // TokenRequest for itself only.
    let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["x"]}});
    let sas = Api::<ServiceAccount>::namespaced(sa.clone(), "app");
    let req = from::<k8s_openapi::api::authentication::v1::TokenRequest>(tr);
    assert!(
        sas.create_token_request("sa", &PostParams::default(), &req)
            .await
            .is_ok()
    );
    let e = status(
        sas.create_token_request("other", &PostParams::default(), &req)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            r#"serviceaccounts "other" is forbidden: User "{SA_USER}" cannot create resource "serviceaccounts/token" in API group "" in the namespace "app""#
        )
    );
    let used = &s.rbac_usage()[SA_USER];
    assert!(used.contains(&access("create", "", "serviceaccounts/token", "app")));
    assert!(used.contains(&access("get", "", "pods/status", "app")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_resource_urls_and_discovery() {
    let (s, c) = server().await;
    let sa = s.service_account_client("app", "sa").await;
    // system:discovery and system:public-info-viewer cover these for every authenticated user.
    assert!(sa.apiserver_version().await.is_ok());
    assert!(sa.list_api_groups().await.is_ok());
    assert!(sa.list_core_api_versions().await.is_ok());
    let get = |p: &str| axum::http::Request::get(p).body(Vec::new()).unwrap();
    let e = status(sa.request_text(get("/logs/x")).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        format!(r#"forbidden: User "{SA_USER}" cannot get path "/logs/x""#)
    );
    Api::<ClusterRole>::all(c.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "logs"}, "rules": [{"nonResourceURLs": ["/logs/*"], "verbs": ["get"]}]})),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(
            &PostParams::default(),
            &from(json!({
                "metadata": {"name": "logs"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "logs"},
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts:app"}],
            })),
        )
        .await
        .unwrap();
    // Authorized now; the path itself does not exist here.
    assert_eq!(
        status(sa.request_text(get("/logs/x")).await.unwrap_err()).code,
        404
    );
    assert_eq!(
        status(sa.request_text(get("/logsx")).await.unwrap_err()).code,
        403
    );
    let used = &s.rbac_usage()[SA_USER];
    assert!(used.contains(&access("get", "", "/version", "")));
    assert!(used.contains(&access("get", "", "/logs/x", "")));

    // kubectl with the service account's token does discovery and gets the same 403.
    s.add_token(
        "kubectl-sa",
        TokenIdentity {
            namespace: "app".into(),
            service_account: "sa".into(),
            pod_name: None,
            pod_uid: None,
            audiences: vec![],
            expires_at: None,
        },
    );
    let (ok, out) = kubectl(
        &s,
        &["--token", "kubectl-sa", "get", "secrets", "-n", "app"],
    );
    assert!(!ok);
    assert!(
        out.contains(&format!(
            r#"Error from server (Forbidden): secrets is forbidden: User "{SA_USER}" cannot list resource "secrets" in API group "" in the namespace "app""#
        )),
        "{out}"
    );
    let (ok, out) = kubectl(&s, &["--token", "kubectl-sa", "get", "--raw", "/version"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_rbac_objects_and_can_i_impersonates() {
    let (s, c) = server().await;
    let can_i = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--as", SA_USER]);
        kubectl(&s, &a)
    };
    let (ok, out) = can_i(&["get", "secrets", "-n", "app"]);
    assert!(!ok && out.lines().next() == Some("no"), "{out}");

    // kubectl sends these as protobuf.
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "role",
            "cm-reader",
            "-n",
            "app",
            "--verb=get,list",
            "--resource=configmaps",
            "--resource-name=x",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "rolebinding",
            "cm-reader",
            "-n",
            "app",
            "--role=cm-reader",
            "--serviceaccount=app:sa",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "clusterrole",
            "ns-reader",
            "--verb=get",
            "--resource=namespaces",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "clusterrolebinding",
            "ns-reader",
            "--clusterrole=ns-reader",
            "--group=system:serviceaccounts",
        ],
    );
    assert!(ok, "{out}");
    let r = Api::<Role>::namespaced(c.clone(), "app")
        .get("cm-reader")
        .await
        .unwrap();
    let rule = &r.rules.unwrap()[0];
    assert_eq!(rule.resource_names.as_deref(), Some(&["x".to_string()][..]));
    let b = Api::<RoleBinding>::namespaced(c.clone(), "app")
        .get("cm-reader")
        .await
        .unwrap();
    assert_eq!(b.subjects.unwrap()[0].namespace.as_deref(), Some("app"));

    let (ok, out) = can_i(&["get", "configmaps/x", "-n", "app"]);
    assert!(ok && out.lines().next() == Some("yes"), "{out}");
    let (ok, out) = can_i(&["get", "configmaps/y", "-n", "app"]);
    assert!(!ok && out.lines().next() == Some("no"), "{out}");
    let (ok, out) = can_i(&["get", "namespaces/other"]);
    assert!(ok && out.lines().next() == Some("yes"), "{out}");
    let (ok, out) = can_i(&["get", "/version"]);
    assert!(ok && out.lines().next() == Some("yes"), "{out}");
    // An impersonated request is authorized as the service account.
    let (ok, out) = kubectl(&s, &["get", "configmap", "x", "-n", "app", "--as", SA_USER]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&s, &["get", "configmap", "y", "-n", "app", "--as", SA_USER]);
    assert!(
        !ok && out.contains(r#"configmaps "y" is forbidden"#),
        "{out}"
    );
    assert!(s.rbac_usage()[SA_USER].contains(&access("get", "", "configmaps", "app")));

    // A service account may not impersonate without the impersonate verb.
    sa_token(&s, "t");
    let (ok, out) = kubectl(&s, &["--token", "t", "get", "ns", "--as", "bob"]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            r#"users "bob" is forbidden: User "{SA_USER}" cannot impersonate resource "users" in API group "" at the cluster scope"#
        )),
        "{out}"
    );
    // kubectl auth can-i with the service account's own token (SelfSubjectAccessReview).
    let (ok, out) = kubectl(
        &s,
        &[
            "--token",
            "t",
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            "app",
        ],
    );
    assert!(!ok && out.lines().next() == Some("no"), "{out}");

    // SubjectAccessReview from the admin, with kube-rs.
    let sar: SubjectAccessReview = from(json!({"spec": {
        "user": SA_USER, "groups": ["system:serviceaccounts", "system:serviceaccounts:app", "system:authenticated"],
        "resourceAttributes": {"namespace": "app", "verb": "get", "resource": "configmaps", "name": "x"}}}));
    let r = Api::<SubjectAccessReview>::all(c.clone())
        .create(&PostParams::default(), &sar)
        .await
        .unwrap();
    let st = r.status.unwrap();
    assert!(st.allowed);
    assert_eq!(
        st.reason.as_deref(),
        Some(
            r#"RBAC: allowed by RoleBinding "cm-reader/app" of Role "cm-reader" to ServiceAccount "sa/app""#
        )
    );
}

/// A RoleBinding of `role` (kind `kind`) to app/sa in `ns`, created by `c`.
async fn try_bind(c: &kube::Client, ns: &str, kind: &str, role: &str) -> kube::Result<RoleBinding> {
    Api::<RoleBinding>::namespaced(c.clone(), ns)
        .create(
            &PostParams::default(),
            &from(json!({
                "metadata": {"name": format!("{}-by-sa", role.to_lowercase())},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}],
            })),
        )
        .await
}

#[tokio::test]
async fn rbac_writes_cannot_grant_more_than_the_writer_holds() {
    let (s, c) = server().await;
    // The built-in `admin` in `app`: it may write Roles and RoleBindings there.
    bind(&c, "app", "ClusterRole", "admin").await;
    let sa = s.service_account_client("app", "sa").await;
    let groups =
        r#"["system:serviceaccounts" "system:serviceaccounts:app" "system:authenticated"]"#;

    // A Role within what admin holds is created; one beyond it is the upstream 403.
    let roles = Api::<Role>::namespaced(sa.clone(), "app");
    let held: Role = from(json!({"metadata": {"name": "held"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}));
    roles.create(&PostParams::default(), &held).await.unwrap();
    let beyond: Role = from(json!({"metadata": {"name": "beyond"}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        {"apiGroups": ["keyward.io"], "resources": ["managedkeys/status"], "verbs": ["patch", "update"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"], "resourceNames": ["n1"]}]}));
    let e = status(
        roles
            .create(&PostParams::default(), &beyond)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        format!(
            "roles.rbac.authorization.k8s.io \"beyond\" is forbidden: user \"{SA_USER}\" (groups={groups}) is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"\"], Resources:[\"nodes\"], ResourceNames:[\"n1\"], Verbs:[\"get\"]}}\n{{APIGroups:[\"keyward.io\"], Resources:[\"managedkeys/status\"], Verbs:[\"patch\" \"update\"]}}"
        )
    );
    let d = e.details.expect("details");
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("beyond", "rbac.authorization.k8s.io", "roles")
    );
    assert!(
        roles.get_opt("beyond").await.unwrap().is_none(),
        "nothing stored"
    );
    // Nor can an update widen an existing Role.
    let mut widened = roles.get("held").await.unwrap();
    widened.rules = beyond.rules.clone();
    let e = status(
        roles
            .replace("held", &PostParams::default(), &widened)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403, "{}", e.message);
    // A Role beyond the writer, made by the admin: an update touching only finalizers and
    // ownerReferences is not an escalation (IsOnlyMutatingGCFields); a label change is checked.
    let mut wide = beyond.clone();
    wide.metadata.name = Some("wide".into());
    Api::<Role>::namespaced(c.clone(), "app")
        .create(&PostParams::default(), &wide)
        .await
        .unwrap();
    let p = json!({"metadata": {"finalizers": ["example.com/keep"]}});
    roles
        .patch("wide", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let p = json!({"metadata": {"labels": {"team": "a"}}});
    let e = status(
        roles
            .patch("wide", &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403, "{}", e.message);

    // Bindings: `edit` is covered by admin, `cluster-admin` is not, a missing role is 404.
    try_bind(&sa, "app", "ClusterRole", "edit").await.unwrap();
    let e = status(
        try_bind(&sa, "app", "ClusterRole", "cluster-admin")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    assert!(
        e.message.starts_with(&format!(
            "rolebindings.rbac.authorization.k8s.io \"cluster-admin-by-sa\" is forbidden: user \"{SA_USER}\" (groups={groups}) is attempting to grant RBAC permissions not currently held:\n"
        )),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains(r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains(r#"{NonResourceURLs:["*"], Verbs:["*"]}"#),
        "{}",
        e.message
    );
    let e = status(
        try_bind(&sa, "app", "ClusterRole", "no-such-role")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    assert_eq!(
        e.message,
        r#"clusterroles.rbac.authorization.k8s.io "no-such-role" not found"#
    );
    // A binding in another namespace is judged by what the writer holds there: nothing.
    let e = status(
        try_bind(&sa, "other", "ClusterRole", "view")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403, "{}", e.message);

    // `bind` on cluster-admin, granted by the admin, lets the same request through.
    role(
        &c,
        "app",
        "may-bind",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["cluster-admin"]}]),
    )
    .await;
    bind(&c, "app", "Role", "may-bind").await;
    try_bind(&sa, "app", "ClusterRole", "cluster-admin")
        .await
        .unwrap();
    // ... and `escalate` on roles lets a Role beyond one's rules through.
    let lead = Api::<ServiceAccount>::namespaced(c.clone(), "other");
    lead.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "lead"}})),
    )
    .await
    .unwrap();
    let lead_client = s.service_account_client("other", "lead").await;
    Api::<RoleBinding>::namespaced(c.clone(), "other")
        .create(&PostParams::default(), &from(json!({
            "metadata": {"name": "lead-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "lead", "namespace": "other"}]})))
        .await
        .unwrap();
    let other_roles = Api::<Role>::namespaced(lead_client.clone(), "other");
    let mut beyond_other = beyond.clone();
    beyond_other.metadata.namespace = None;
    assert_eq!(
        status(
            other_roles
                .create(&PostParams::default(), &beyond_other)
                .await
                .unwrap_err()
        )
        .code,
        403
    );
    role(
        &c,
        "other",
        "may-escalate",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles"], "verbs": ["escalate"]}]),
    )
    .await;
    Api::<RoleBinding>::namespaced(c.clone(), "other")
        .create(&PostParams::default(), &from(json!({
            "metadata": {"name": "lead-escalate"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "may-escalate"},
            "subjects": [{"kind": "ServiceAccount", "name": "lead", "namespace": "other"}]})))
        .await
        .unwrap();
    other_roles
        .create(&PostParams::default(), &beyond_other)
        .await
        .unwrap();

    // An aggregationRule needs full authority even when its rules are empty.
    let cr_writer: ClusterRole = from(json!({"metadata": {"name": "cr-writer"}, "rules": [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]}]}));
    Api::<ClusterRole>::all(c.clone())
        .create(&PostParams::default(), &cr_writer)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(&PostParams::default(), &from(json!({
            "metadata": {"name": "cr-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cr-writer"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}]})))
        .await
        .unwrap();
    let crs = Api::<ClusterRole>::all(sa.clone());
    let agg: ClusterRole = from(json!({"metadata": {"name": "gatherer"}, "rules": [],
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}}));
    let e = status(crs.create(&PostParams::default(), &agg).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        r#"clusterroles.rbac.authorization.k8s.io "gatherer" is forbidden: must have cluster-admin privileges to use the aggregationRule"#
    );
    // The admin (system:masters) is never checked.
    Api::<ClusterRole>::all(c.clone())
        .create(&PostParams::default(), &agg)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_list_shows_the_callers_rules() {
    let (s, c) = server().await;
    role(&c, "app", "cm-reader", json!([
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"], "resourceNames": ["x"]},
        {"apiGroups": ["keyward.io"], "resources": ["managedkeys"], "verbs": ["get"]}])).await;
    bind(&c, "app", "Role", "cm-reader").await;
    bind(&c, "app", "Role", "missing").await;
    sa_token(&s, "t");
    let (ok, out) = kubectl(
        &s,
        &["--token", "t", "auth", "can-i", "--list", "-n", "app"],
    );
    assert!(ok, "{out}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        line("configmaps "),
        Some(vec!["configmaps", "[]", "[x]", "[get", "list]"]),
        "{out}"
    );
    assert_eq!(
        line("managedkeys.keyward.io"),
        Some(vec!["managedkeys.keyward.io", "[]", "[]", "[get]"]),
        "{out}"
    );
    // system:basic-user and discovery from the bootstrap policy.
    assert!(
        out.lines()
            .any(|l| l.starts_with("selfsubjectrulesreviews.authorization.k8s.io")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains("[/version]")), "{out}");
    // Secrets are not listed: nothing grants them.
    assert!(!out.lines().any(|l| l.starts_with("secrets")), "{out}");
    // In another namespace only the cluster-wide rules apply.
    let (ok, out) = kubectl(
        &s,
        &["--token", "t", "auth", "can-i", "--list", "-n", "other"],
    );
    assert!(ok, "{out}");
    assert!(!out.lines().any(|l| l.starts_with("configmaps")), "{out}");

    // The raw review: the unresolvable binding is the evaluationError; no namespace is a 400.
    let sa = s.service_account_client("app", "sa").await;
    let req = |ns: Option<&str>| {
        let body = match ns {
            Some(n) => {
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": n}})
            }
            None => {
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {}})
            }
        };
        http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };
    let v: Value = sa.request(req(Some("app"))).await.unwrap();
    assert_eq!(
        v["status"]["evaluationError"],
        json!(r#"role.rbac.authorization.k8s.io "missing" not found"#)
    );
    assert_eq!(v["status"]["incomplete"], json!(false));
    let e = status(sa.request::<Value>(req(None)).await.unwrap_err());
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "no namespace on request")
    );
}

/// Register bearer token `t` for the service account app/sa.
fn sa_token(s: &TestApiServer, t: &str) {
    s.add_token(
        t,
        TokenIdentity {
            namespace: "app".into(),
            service_account: "sa".into(),
            pod_name: None,
            pod_uid: None,
            audiences: vec![],
            expires_at: None,
        },
    );
}
