//! Server-side apply and managed fields against real clients: kube-rs, kubectl and
//! kube-lease-manager (which relies on apply conflicts to elect one holder).

mod common;
use common::kubectl;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use kube_test_apiserver::TestApiServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A CRD with a status subresource.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, Default)]
#[kube(
    group = "ssa.test.io",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus"
)]
struct GadgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, Default)]
struct GadgetStatus {
    phase: String,
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Managed fields as JSON: (manager, operation, subresource, fieldsV1).
fn managed(meta: &kube::api::ObjectMeta) -> Vec<(String, String, String, Value)> {
    meta.managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            (
                e.manager.unwrap_or_default(),
                e.operation.unwrap_or_default(),
                e.subresource.unwrap_or_default(),
                e.fields_v1.map(|f| f.0).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn cm_apply(data: Value) -> Patch<Value> {
    Patch::Apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": data}),
    )
}

#[tokio::test]
async fn apply_tracks_owners_conflicts_and_pruning() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");

    // Apply creates, and the applier owns exactly what it applied.
    let cm = api
        .patch(
            "cm",
            &PatchParams::apply("a"),
            &cm_apply(json!({"k": "1", "j": "1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        managed(&cm.metadata),
        [(
            "a".into(),
            "Apply".into(),
            "".into(),
            json!({"f:data": {"f:j": {}, "f:k": {}}})
        )]
    );
    let t = cm.metadata.managed_fields.as_ref().unwrap()[0].clone();
    assert_eq!(t.api_version.as_deref(), Some("v1"));
    assert_eq!(t.fields_type.as_deref(), Some("FieldsV1"));
    assert!(t.time.is_some());

    // Another applier changing a's value: 409 with the real Status.
    let e = api_err(
        api.patch("cm", &PatchParams::apply("b"), &cm_apply(json!({"k": "2"})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "a": .data.k"#
    );
    let cause = &e.details.unwrap().causes[0];
    assert_eq!(
        (
            cause.reason.as_str(),
            cause.message.as_str(),
            cause.field.as_str()
        ),
        ("FieldManagerConflict", r#"conflict with "a""#, ".data.k")
    );

    // The same value co-owns without a conflict.
    let cm = api
        .patch("cm", &PatchParams::apply("b"), &cm_apply(json!({"k": "1"})))
        .await
        .unwrap();
    let owners: Vec<String> = managed(&cm.metadata).into_iter().map(|m| m.0).collect();
    assert_eq!(owners, ["a", "b"]);

    // a stops applying k and j: j goes (nobody else owns it), k stays (b still owns it).
    let cm = api
        .patch("cm", &PatchParams::apply("a"), &cm_apply(json!({"z": "1"})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(cm.data.unwrap()).unwrap(),
        json!({"k": "1", "z": "1"})
    );

    // Force takes ownership: b's entry loses k and, empty, disappears.
    let cm = api
        .patch(
            "cm",
            &PatchParams::apply("c").force(),
            &cm_apply(json!({"k": "3"})),
        )
        .await
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["k"], "3");
    let owners: Vec<(String, Value)> = managed(&cm.metadata)
        .into_iter()
        .map(|m| (m.0, m.3))
        .collect();
    assert_eq!(
        owners,
        [
            ("a".to_string(), json!({"f:data": {"f:z": {}}})),
            ("c".to_string(), json!({"f:data": {"f:k": {}}})),
        ]
    );

    // An Update (merge patch) takes the fields it changes; appliers then conflict with it.
    let edit = PatchParams {
        field_manager: Some("editor".into()),
        ..Default::default()
    };
    let cm = api
        .patch("cm", &edit, &Patch::Merge(json!({"data": {"k": "4"}})))
        .await
        .unwrap();
    let last = managed(&cm.metadata).pop().unwrap();
    assert_eq!(
        last,
        (
            "editor".into(),
            "Update".into(),
            "".into(),
            json!({"f:data": {"f:k": {}}})
        )
    );
    let e = api_err(
        api.patch("cm", &PatchParams::apply("c"), &cm_apply(json!({"k": "5"})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "editor" using v1: .data.k"#
    );

    // Two conflicts list by manager.
    api.patch("cm", &PatchParams::apply("d"), &cm_apply(json!({"y": "1"})))
        .await
        .unwrap();
    let e = api_err(
        api.patch(
            "cm",
            &PatchParams::apply("e"),
            &cm_apply(json!({"k": "6", "y": "2"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Apply failed with 2 conflicts: conflicts with \"d\":\n- .data.y\nconflicts with \"editor\" using v1:\n- .data.k"
    );
}

#[tokio::test]
async fn apply_lists_as_sets_and_maps() {
    let s = TestApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let fin = |f: &[&str]| {
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "finalizers": f}}),
        )
    };
    api.patch("l", &PatchParams::apply("a"), &fin(&["x/a"]))
        .await
        .unwrap();
    let cm = api
        .patch("l", &PatchParams::apply("b"), &fin(&["x/b"]))
        .await
        .unwrap();
    assert_eq!(cm.finalizers(), ["x/a", "x/b"]);
    assert_eq!(
        managed(&cm.metadata)[1].3,
        json!({"f:metadata": {"f:finalizers": {"v:\"x/b\"": {}}}})
    );
    // a stops applying its finalizer: only a's item goes.
    let cm = api
        .patch("l", &PatchParams::apply("a"), &fin(&[]))
        .await
        .unwrap();
    assert_eq!(cm.finalizers(), ["x/b"]);

    // ownerReferences merge by uid.
    let owner = |uid: &str| {
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": uid}]}}),
        )
    };
    api.patch("l", &PatchParams::apply("a"), &owner("u1"))
        .await
        .unwrap();
    let cm = api
        .patch("l", &PatchParams::apply("c"), &owner("u2"))
        .await
        .unwrap();
    let uids: Vec<String> = cm
        .owner_references()
        .iter()
        .map(|o| o.uid.clone())
        .collect();
    assert_eq!(uids, ["u1", "u2"]);
    let c_entry = managed(&cm.metadata)
        .into_iter()
        .find(|m| m.0 == "c")
        .unwrap();
    assert_eq!(
        c_entry.3,
        json!({"f:metadata": {"f:ownerReferences": {"k:{\"uid\":\"u2\"}": {
            ".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}}}}})
    );
}

#[tokio::test]
async fn patch_options_are_validated_and_update_managers_come_from_the_user_agent() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let raw = |method: &str, uri: &str, ct: &str, body: Value| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ct)
            .header("user-agent", "my-tool/v1.2.3 (linux/amd64) extra")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };
    // No fieldManager for an apply: 422 on PatchOptions.
    let e = api_err(
        c.request::<Value>(raw(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            "application/apply-patch+yaml",
            json!({"apiVersion": "v1", "kind": "ConfigMap"}),
        ))
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#
    );
    // force on a non-apply patch: 422.
    let e = api_err(
        c.request::<Value>(raw(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x?force=true",
            "application/merge-patch+json",
            json!({}),
        ))
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.message,
        r#"PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch"#
    );
    // Wrong apiVersion in the configuration: 400.
    let e = api_err(
        c.request::<Value>(raw(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x?fieldManager=a",
            "application/apply-patch+yaml",
            json!({"apiVersion": "v2", "kind": "ConfigMap"}),
        ))
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            400,
            "Incorrect version specified in apply patch. Specified patch version: v2, expected: v1"
        )
    );
    // Malformed configurations are 400s, never a crash.
    for (body, msg) in [
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": "x"}),
            "error decoding YAML: metadata must be an object",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "y"}}),
            "the name of the object (y) does not match the name on the URL (x)",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"managedFields": []}}),
            "metadata.managedFields must be nil",
        ),
    ] {
        let e = api_err(
            c.request::<Value>(raw(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/x?fieldManager=a",
                "application/apply-patch+yaml",
                body,
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!((e.code, e.message.as_str()), (400, msg));
    }
    // A create without fieldManager is managed by the User-Agent's prefix.
    let created: ConfigMap = c
        .request(raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}),
        ))
        .await
        .unwrap();
    assert_eq!(
        managed(&created.metadata),
        [(
            "my-tool".into(),
            "Update".into(),
            "".into(),
            json!({"f:data": {".": {}, "f:a": {}}})
        )]
    );
}

async fn gadgets(c: &kube::Client) -> Api<Gadget> {
    Api::<CustomResourceDefinition>::all(c.clone())
        .create(&PostParams::default(), &Gadget::crd())
        .await
        .unwrap();
    Api::namespaced(c.clone(), "default")
}

#[tokio::test]
async fn status_subresource_has_its_own_managers() {
    let s = TestApiServer::start().await.unwrap();
    let api = gadgets(&s.client().await).await;
    let spec = |size: i32| {
        Patch::Apply(
            json!({"apiVersion": "ssa.test.io/v1", "kind": "Gadget", "spec": {"size": size}}),
        )
    };
    let g = api
        .patch("g", &PatchParams::apply("a"), &spec(3))
        .await
        .unwrap();
    assert_eq!(g.spec.size, Some(3));
    let status = |phase: &str| {
        Patch::Apply(
            json!({"apiVersion": "ssa.test.io/v1", "kind": "Gadget", "status": {"phase": phase}, "spec": {"size": 9}}),
        )
    };
    let g = api
        .patch_status(
            "g",
            &PatchParams::apply("keyward").force(),
            &status("Ready"),
        )
        .await
        .unwrap();
    assert_eq!(g.spec.size, Some(3), "status apply never changes spec");
    assert_eq!(g.status.as_ref().unwrap().phase, "Ready");
    assert_eq!(
        managed(&g.metadata),
        [
            (
                "a".into(),
                "Apply".into(),
                "".into(),
                json!({"f:spec": {"f:size": {}}})
            ),
            (
                "keyward".into(),
                "Apply".into(),
                "status".into(),
                json!({"f:status": {"f:phase": {}}})
            ),
        ]
    );
    // A second status applier conflicts with the status manager, named with its subresource.
    let e = api_err(
        api.patch_status("g", &PatchParams::apply("other"), &status("Broken"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "keyward" with subresource "status": .status.phase"#
    );
    // Spec applies do not conflict with status managers, and the other way round.
    let e = api_err(
        api.patch("g", &PatchParams::apply("b"), &spec(4))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        r#"Apply failed with 1 conflict: conflict with "a": .spec.size"#
    );
    let g = api
        .patch("g", &PatchParams::apply("b").force(), &spec(4))
        .await
        .unwrap();
    assert_eq!(g.spec.size, Some(4));
    let owners: Vec<String> = managed(&g.metadata).into_iter().map(|m| m.0).collect();
    assert_eq!(owners, ["b", "keyward"], "a owned only size and is gone");
    // A status apply on a missing object is 404 (apply creates only through the resource).
    let e = api_err(
        api.patch_status("nope", &PatchParams::apply("keyward"), &status("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
}

// kubectl blocks a thread while the server answers it: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_conflicts_and_force() {
    let s = TestApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str, v: &str| {
        let p = dir.path().join(n);
        std::fs::write(
            &p,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sc\n  namespace: default\ndata:\n  k: \"{v}\"\n"),
        )
        .unwrap();
        p.to_string_lossy().into_owned()
    };
    let one = file("one.yaml", "1");
    let two = file("two.yaml", "2");
    let (ok, out) = kubectl(
        &s,
        &[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "-f",
            &one,
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "configmap/sc serverside-applied");
    let (ok, out) = kubectl(
        &s,
        &["apply", "--server-side", "--field-manager=bob", "-f", &two],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"Apply failed with 1 conflict: conflict with "alice": .data.k"#),
        "{out}"
    );
    let (ok, out) = kubectl(
        &s,
        &[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            &two,
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &s,
        &["get", "cm", "sc", "-o", "yaml", "--show-managed-fields"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("k: \"2\""), "{out}");
    assert!(out.contains("manager: bob"), "{out}");
    assert!(out.contains("operation: Apply"), "{out}");
    assert!(out.contains("f:k: {}"), "{out}");
    assert!(
        !out.contains("manager: alice"),
        "alice lost its only field: {out}"
    );
    let (ok, out) = kubectl(&s, &["get", "cm", "sc", "-o", "yaml"]);
    assert!(ok && !out.contains("managedFields"), "{out}");
}

#[tokio::test]
async fn two_lease_managers_race_and_one_holds_at_a_time() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let manager = |id: &str| {
        let c = c.clone();
        let id = id.to_string();
        async move {
            kube_lease_manager::LeaseManagerBuilder::new(c, "race")
                .with_namespace("default")
                .with_identity(&id)
                .with_duration(3)
                .with_grace(1)
                .build()
                .await
                .unwrap()
        }
    };
    let (ma, mb) = tokio::join!(manager("a"), manager("b"));
    let (ra, ta) = ma.watch().await;
    let (rb, tb) = mb.watch().await;
    // Both race for the free Lease: exactly one wins and keeps it while it renews.
    let start = Instant::now();
    let mut held = false;
    while start.elapsed() < Duration::from_secs(8) {
        let (a, b) = (*ra.borrow(), *rb.borrow());
        assert!(!(a && b), "both replicas hold the Lease");
        held |= a || b;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "nobody took the Lease");
    let lease = Api::<Lease>::namespaced(c.clone(), "default")
        .get("race")
        .await
        .unwrap();
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap();
    let (holder_rx, other_rx, holder_task, other_task) = if holder == "a" {
        (ra, rb, ta, tb)
    } else {
        (rb, ra, tb, ta)
    };
    assert!(*holder_rx.borrow() && !*other_rx.borrow());
    // The holder stops renewing (crash): the other takes over once the Lease expires.
    holder_task.abort();
    let start = Instant::now();
    while !*other_rx.borrow() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the other replica never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = Api::<Lease>::namespaced(c.clone(), "default")
        .get("race")
        .await
        .unwrap();
    let now_holder = lease.spec.and_then(|s| s.holder_identity).unwrap();
    assert_ne!(now_holder, holder);
    drop(other_rx);
    let _ = tokio::time::timeout(Duration::from_secs(10), other_task).await;
}
