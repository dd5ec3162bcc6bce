//! The test API server against real clients: kube-rs (client and runtime) and kubectl.

mod common;
use common::kubectl;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use kube_test_apiserver::{Fault, TestApiServer, TokenIdentity};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// A sample CRD.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, Default)]
#[kube(
    group = "example.test.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wg",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
struct WidgetSpec {
    #[schemars(range(min = 1, max = 10))]
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<Color>,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Color {
    Red,
    Blue,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, Default)]
struct WidgetStatus {
    phase: String,
}

async fn server_with_crd() -> (TestApiServer, kube::Client) {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    Api::<CustomResourceDefinition>::all(c.clone())
        .create(&PostParams::default(), &Widget::crd())
        .await
        .unwrap();
    (s, c)
}

fn widget(name: &str, size: i32) -> Widget {
    let mut w = Widget::new(name, WidgetSpec { size, color: None });
    w.meta_mut().namespace = Some("default".into());
    w
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let s = TestApiServer::start().await.unwrap();
    let mut cfg = kube::Config::new(s.url().parse().unwrap());
    cfg.root_cert = Some(vec![rustls_pemfile_der(&s.ca_pem())]);
    cfg.auth_info.token = Some("wrong".to_string().into());
    let c = kube::Client::try_from(cfg).unwrap();
    let e = Api::<Namespace>::all(c)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 401),
        "{e:?}"
    );
}

#[tokio::test]
async fn crud_conflicts_generation_and_status_subresource() {
    let (_s, c) = server_with_crd().await;
    let api: Api<Widget> = Api::namespaced(c, "default");
    let w = api
        .create(&PostParams::default(), &widget("a", 2))
        .await
        .unwrap();
    assert_eq!(w.metadata.generation, Some(1));
    assert!(w.metadata.uid.is_some() && w.metadata.creation_timestamp.is_some());
    // Status writes through the main resource are ignored; /status changes only status.
    let mut with_status = w.clone();
    with_status.status = Some(WidgetStatus {
        phase: "Hacked".into(),
    });
    let w2 = api
        .replace("a", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(w2.status.is_none());
    let w3 = api
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(w3.status.unwrap().phase, "Ready");
    assert_eq!(w3.spec.size, 2, "status writes never change spec");
    assert_eq!(
        w3.metadata.generation,
        Some(1),
        "status does not bump generation"
    );
    // Spec change bumps generation; a metadata-only change does not.
    let w4 = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(w4.metadata.generation, Some(2));
    let w5 = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(w5.metadata.generation, Some(2));
    // Stale update -> 409 with the real message.
    let e = api
        .replace("a", &PostParams::default(), &w)
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    // JSON patch with a failing test op -> 422; a passing one applies.
    let bad: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 99}, {"op": "replace", "path": "/spec/size", "value": 4}])).unwrap();
    assert!(
        api.patch("a", &PatchParams::default(), &Patch::Json::<()>(bad))
            .await
            .is_err()
    );
    let good: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 3}, {"op": "replace", "path": "/spec/size", "value": 4}])).unwrap();
    assert_eq!(
        api.patch("a", &PatchParams::default(), &Patch::Json::<()>(good))
            .await
            .unwrap()
            .spec
            .size,
        4
    );
    // Server-side apply creates when missing.
    let applied = api.patch("b", &PatchParams::apply("test").force(), &Patch::Apply(json!({"apiVersion": "example.test.io/v1", "kind": "Widget", "metadata": {"name": "b"}, "spec": {"size": 5}}))).await.unwrap();
    assert_eq!(applied.spec.size, 5);
    // Schema validation: 422 naming the field.
    let e = api
        .create(&PostParams::default(), &widget("c", 11))
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.size"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    // Label selector list.
    let l = api
        .list(&kube::api::ListParams::default().labels("x=y"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owned_objects_are_collected() {
    let (_s, c) = server_with_crd().await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let mut w = widget("owner", 1);
    w.meta_mut().finalizers = Some(vec!["test/hold".into()]);
    let w = api.create(&PostParams::default(), &w).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("child".into());
    cm.metadata.owner_references = Some(vec![w.controller_owner_ref(&()).unwrap()]);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    let held = api.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get_opt("child").await.unwrap().is_some(),
        "owner still exists"
    );
    api.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("owner").await.unwrap().is_none());
    assert!(
        cms.get_opt("child").await.unwrap().is_none(),
        "owned object collected"
    );
}

#[tokio::test]
async fn watch_resumes_after_drop_and_410_relists() {
    let s = TestApiServer::start_with(kube_test_apiserver::ServerOptions {
        history: 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.client().await;
    Api::<CustomResourceDefinition>::all(c.clone())
        .create(&PostParams::default(), &Widget::crd())
        .await
        .unwrap();
    let api: Api<Widget> = Api::namespaced(c, "default");
    let mut seen = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    api.create(&PostParams::default(), &widget("w0", 1))
        .await
        .unwrap();
    assert_eq!(seen.try_next().await.unwrap().unwrap().name_any(), "w0");
    s.close_watches();
    api.create(&PostParams::default(), &widget("w1", 1))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let o = seen.try_next().await.unwrap().unwrap();
            if o.name_any() == "w1" {
                return o;
            }
        }
    })
    .await
    .expect("event after reconnect");
    assert_eq!(next.spec.size, 1);
    // A raw watch from a too-old resourceVersion gets 410 Expired.
    for i in 0..30 {
        api.patch(
            "w0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": (i % 9) + 1}})),
        )
        .await
        .unwrap();
    }
    let mut raw = api
        .watch(&kube::api::WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let first = raw.next().await.unwrap();
    assert!(
        matches!(first, Err(kube::Error::Api(ref e)) if e.code == 410)
            || matches!(first, Ok(kube::api::WatchEvent::Error(ref e)) if e.code == 410),
        "{first:?}"
    );
    // ...and the watcher still delivers changes after its re-list.
    s.close_watches();
    api.create(&PostParams::default(), &widget("w2", 1))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if seen.try_next().await.unwrap().unwrap().name_any() == "w2" {
                return;
            }
        }
    })
    .await
    .expect("watcher recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_and_token_request() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    s.add_token(
        "tok",
        TokenIdentity {
            namespace: "default".into(),
            service_account: "web".into(),
            pod_name: Some("web-0".into()),
            pod_uid: Some("u1".into()),
            audiences: vec!["my-audience".into()],
            expires_at: None,
        },
    );
    s.add_token(
        "old",
        TokenIdentity {
            namespace: "default".into(),
            service_account: "web".into(),
            pod_name: None,
            pod_uid: None,
            audiences: vec!["my-audience".into()],
            expires_at: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5)),
        },
    );
    let api: Api<TokenReview> = Api::all(c);
    let review = |t: &str, aud: &str| TokenReview {
        spec: TokenReviewSpec {
            token: t.into(),
            audiences: Some(vec![aud.into()]),
        },
        ..Default::default()
    };
    let ok = api
        .create(&PostParams::default(), &review("tok", "my-audience"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:web")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        vec!["web-0".to_string()]
    );
    for (t, aud) in [
        ("tok", "other"),
        ("old", "my-audience"),
        ("nope", "my-audience"),
    ] {
        let st = api
            .create(&PostParams::default(), &review(t, aud))
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(st.authenticated, Some(false), "{t} {aud}");
    }
    // kubectl create token issues a token the TokenReview accepts.
    assert!(kubectl(&s, &["create", "serviceaccount", "web"]).0);
    let (ok, out) = kubectl(&s, &["create", "token", "web", "--audience", "my-audience"]);
    assert!(ok, "{out}");
    let st = api
        .create(&PostParams::default(), &review(out.trim(), "my-audience"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.authenticated, Some(true));
}

#[tokio::test]
async fn injected_faults_fail_then_recover() {
    let (s, c) = server_with_crd().await;
    let api: Api<Widget> = Api::namespaced(c, "default");
    s.inject_fault(Fault::status("create", "widgets", 500, 2));
    for _ in 0..2 {
        let e = api
            .create(&PostParams::default(), &widget("f", 1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 500),
            "{e:?}"
        );
    }
    api.create(&PostParams::default(), &widget("f", 1))
        .await
        .unwrap();
    s.inject_fault(Fault::status("get", "widgets", 409, 1));
    assert!(api.get("f").await.is_err());
    assert!(api.get("f").await.is_ok());
    assert_eq!(
        s.snapshot()
            .iter()
            .filter(|o| o["kind"] == "Widget")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_and_deletes_custom_resources() {
    let s = TestApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, serde_yaml_ng::to_string(&Widget::crd()).unwrap()).unwrap();
    let (ok, out) = kubectl(&s, &["apply", "-f", crd.to_str().unwrap()]);
    assert!(ok, "{out}");
    let cr = dir.path().join("w.yaml");
    std::fs::write(&cr, "apiVersion: example.test.io/v1\nkind: Widget\nmetadata: {name: k1, namespace: default}\nspec: {size: 4, color: red}\n").unwrap();
    let (ok, out) = kubectl(&s, &["apply", "-f", cr.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Re-apply with a change goes through kubectl's patch path.
    std::fs::write(&cr, "apiVersion: example.test.io/v1\nkind: Widget\nmetadata: {name: k1, namespace: default}\nspec: {size: 6, color: red}\n").unwrap();
    let (ok, out) = kubectl(&s, &["apply", "-f", cr.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&s, &["get", "widgets"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SIZE") && out.contains("k1") && out.contains('6'),
        "{out}"
    );
    let (ok, out) = kubectl(&s, &["get", "wg", "k1", "-o", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["size"], 6);
    // A bad CR is refused with the schema's message.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: example.test.io/v1\nkind: Widget\nmetadata: {name: k2, namespace: default}\nspec: {size: 4, color: green}\n").unwrap();
    let (ok, out) = kubectl(&s, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("spec.color") && out.contains("Unsupported value"),
        "{out}"
    );
    let (ok, out) = kubectl(&s, &["delete", "widget", "k1"]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&s, &["get", "widgets", "-o", "name"]);
    assert!(ok && out.trim().is_empty(), "{out}");
}

fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_controller_with_finalizer_helper() {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::finalizer::{Event, finalizer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_s, c) = server_with_crd().await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let cleanups = Arc::new(AtomicUsize::new(0));
    let ctx = Arc::new((api.clone(), cleanups.clone()));
    async fn reconcile(
        w: Arc<Widget>,
        ctx: Arc<(Api<Widget>, Arc<AtomicUsize>)>,
    ) -> Result<Action, kube::runtime::finalizer::Error<std::convert::Infallible>> {
        let counter = ctx.1.clone();
        finalizer(&ctx.0, "example.test.io/cleanup", w, |ev| async move {
            if let Event::Cleanup(_) = ev {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Action::await_change())
        })
        .await
    }
    tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_millis(200)),
                ctx,
            )
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &widget("fin", 1))
        .await
        .unwrap();
    let mut has = false;
    for _ in 0..100 {
        if api
            .get("fin")
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|f| f == "example.test.io/cleanup")
        {
            has = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(has, "finalizer added by kube-runtime's helper");
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if api.get_opt("fin").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        api.get_opt("fin").await.unwrap().is_none(),
        "object gone after cleanup"
    );
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
}

/// A namespace `name` holding a ConfigMap and a Widget with a finalizer, then deleted:
/// Terminating until the Widget's finalizer goes. Returns the namespace's resourceVersion before the delete.
async fn terminating_namespace(c: &kube::Client, name: &str) -> String {
    let nss: Api<Namespace> = Api::all(c.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    let spec_fins = ns.spec.as_ref().and_then(|s| s.finalizers.clone());
    assert_eq!(spec_fins, Some(vec!["kubernetes".to_string()]));
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let widgets: Api<Widget> = Api::namespaced(c.clone(), name);
    let mut w = widget("held", 1);
    w.meta_mut().namespace = Some(name.into());
    w.meta_mut().finalizers = Some(vec!["keyward.io/deletion-window".into()]);
    widgets.create(&PostParams::default(), &w).await.unwrap();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("plain".into());
    Api::<ConfigMap>::namespaced(c.clone(), name)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let rv = nss.get(name).await.unwrap().resource_version().unwrap();
    let gone = nss.delete(name, &DeleteParams::default()).await.unwrap();
    let marked = gone.left().expect("the namespace is answered, not removed");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.status.unwrap().phase.as_deref(), Some("Terminating"));
    rv
}

#[tokio::test]
async fn namespace_stays_terminating_until_its_content_is_finalized() {
    let (_s, c) = server_with_crd().await;
    let nss: Api<Namespace> = Api::all(c.clone());
    let e = nss
        .delete("default", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 403 && s.message == r#"namespaces "default" is forbidden: this namespace may not be deleted"#),
        "{e:?}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "doomed");
    nss.create(&PostParams::default(), &{
        let mut ns = Namespace::default();
        ns.metadata.name = Some("other".into());
        ns
    })
    .await
    .unwrap();
    let widgets: Api<Widget> = Api::namespaced(c.clone(), "doomed");
    let before = terminating_namespace(&c, "doomed").await;
    // Content without finalizers goes at once; the Widget is only marked.
    assert!(cms.get_opt("plain").await.unwrap().is_none());
    let held = widgets.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let ns = nss.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    // A second delete changes nothing while the namespace is being finalized.
    let again = nss
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        again.left().unwrap().resource_version(),
        nss.get("doomed").await.unwrap().resource_version()
    );
    // The Widget's controller lets go: the Widget goes, then the namespace.
    widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(widgets.get_opt("held").await.unwrap().is_none());
    assert!(nss.get_opt("doomed").await.unwrap().is_none());
    assert!(
        nss.get_opt("other").await.unwrap().is_some(),
        "only its own"
    );
    let events: Vec<_> = nss
        .watch(&kube::api::WatchParams::default().timeout(1), &before)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let doomed: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            kube::api::WatchEvent::Modified(n) if n.name_any() == "doomed" => Some("MODIFIED"),
            kube::api::WatchEvent::Deleted(n) if n.name_any() == "doomed" => Some("DELETED"),
            _ => None,
        })
        .collect();
    assert_eq!(doomed, ["MODIFIED", "DELETED"], "{events:?}");
}

#[tokio::test]
async fn creating_in_a_terminating_namespace_is_forbidden() {
    let (_s, c) = server_with_crd().await;
    terminating_namespace(&c, "closing").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "closing");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("late".into());
    let e = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        r#"configmaps "late" is forbidden: unable to create new content in namespace closing because it is being terminated"#
    );
    // Events are not exempt (only localsubjectaccessreviews are).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "closing");
    let mut ev = k8s_openapi::api::core::v1::Event::default();
    ev.metadata.name = Some("late-event".into());
    let e = events
        .create(&PostParams::default(), &ev)
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 403),
        "{e:?}"
    );
    // Existing content can still be updated.
    let widgets: Api<Widget> = Api::namespaced(c, "closing");
    let w = widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"still": "writable"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        w.labels().get("still").map(String::as_str),
        Some("writable")
    );
}

#[tokio::test]
async fn delete_preconditions_that_do_not_match_are_conflicts() {
    let s = TestApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kept".into());
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let uid = cm.uid().unwrap();
    let rv = cm.resource_version().unwrap();
    let with = |uid: Option<&str>, rv: Option<&str>| DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: uid.map(String::from),
            resource_version: rv.map(String::from),
        }),
        ..Default::default()
    };
    let e = cms
        .delete("kept", &with(Some("not-the-uid"), None))
        .await
        .unwrap_err();
    let kube::Error::Api(st) = e else {
        panic!("{e:?}")
    };
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        st.message,
        format!(
            "Operation cannot be fulfilled on ConfigMap \"kept\": the UID in the precondition (not-the-uid) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        )
    );
    let e = cms
        .delete("kept", &with(Some(&uid), Some("1")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 409 && s.message.contains(&format!("the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ({rv})"))),
        "{e:?}"
    );
    assert!(
        cms.get_opt("kept").await.unwrap().is_some(),
        "nothing deleted"
    );
    cms.delete("kept", &with(Some(&uid), Some(&rv)))
        .await
        .unwrap();
    assert!(cms.get_opt("kept").await.unwrap().is_none());
}

/// An owner Widget with the given finalizers and a ConfigMap it controls
/// (`blockOwnerDeletion: true`) that holds `child_finalizers`.
async fn owner_and_child(
    c: &kube::Client,
    owner_finalizers: &[&str],
    child_finalizers: &[&str],
) -> (Api<Widget>, Api<ConfigMap>) {
    let widgets: Api<Widget> = Api::namespaced(c.clone(), "default");
    let mut w = widget("owner", 1);
    w.meta_mut().finalizers = Some(owner_finalizers.iter().map(|f| f.to_string()).collect());
    let w = widgets.create(&PostParams::default(), &w).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("child".into());
    let mut owner = w.controller_owner_ref(&()).unwrap();
    // kube-rs leaves blockOwnerDeletion unset; without it a dependent does not hold the owner.
    owner.block_owner_deletion = Some(true);
    cm.metadata.owner_references = Some(vec![owner]);
    cm.metadata.finalizers = Some(child_finalizers.iter().map(|f| f.to_string()).collect());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    (widgets, cms)
}

#[tokio::test]
async fn foreground_delete_removes_dependents_before_the_owner() {
    let (_s, c) = server_with_crd().await;
    let (widgets, cms) = owner_and_child(&c, &["keyward.io/deletion-window"], &["test/hold"]).await;
    widgets
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let owner = widgets.get("owner").await.unwrap();
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert_eq!(
        owner.finalizers(),
        ["keyward.io/deletion-window", "foregroundDeletion"]
    );
    let child = cms.get("child").await.unwrap();
    assert!(
        child.metadata.deletion_timestamp.is_some(),
        "the collector deletes the dependent first"
    );
    // The dependent's finalizer goes: it is removed, and it no longer blocks the owner.
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("child").await.unwrap().is_none());
    let owner = widgets.get("owner").await.unwrap();
    assert_eq!(
        owner.finalizers(),
        ["keyward.io/deletion-window"],
        "foregroundDeletion removed; the other finalizer still holds it"
    );
    widgets
        .patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(widgets.get_opt("owner").await.unwrap().is_none());
}

#[tokio::test]
async fn orphan_delete_keeps_dependents_without_the_owner_reference() {
    let (_s, c) = server_with_crd().await;
    let (widgets, cms) = owner_and_child(&c, &[], &[]).await;
    widgets
        .delete("owner", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(widgets.get_opt("owner").await.unwrap().is_none());
    let child = cms.get("child").await.unwrap();
    assert!(child.metadata.deletion_timestamp.is_none());
    assert!(child.owner_references().is_empty(), "{child:?}");
}

#[tokio::test]
async fn namespace_finalizers_change_only_through_finalize() {
    let (_s, c) = server_with_crd().await;
    terminating_namespace(&c, "stuck").await;
    let nss: Api<Namespace> = Api::all(c.clone());
    let mut ns = nss.get("stuck").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = Some(vec![]);
    // The main resource keeps spec.finalizers (the namespace strategy's PrepareForUpdate)...
    let kept = nss
        .replace("stuck", &PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(
        kept.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    // ...and the finalize subresource releases it although content remains.
    ns.metadata.resource_version = None;
    nss.replace_subresource("finalize", "stuck", &PostParams::default(), &ns)
        .await
        .unwrap();
    assert!(nss.get_opt("stuck").await.unwrap().is_none());
}

/// `kubectl create secret` and `create configmap --from-file` send protobuf bodies (bytes
/// maps): decoded to the same objects as their JSON forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_secrets_and_binary_configmaps_over_protobuf() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=user=admin",
            "--from-literal=pass=s3cr3t",
            "--type=example.com/basic",
        ],
    );
    assert!(ok, "{out}");
    let sec = Api::<Secret>::namespaced(c.clone(), "default")
        .get("creds")
        .await
        .unwrap();
    assert_eq!(sec.type_.as_deref(), Some("example.com/basic"));
    let data = sec.data.unwrap();
    assert_eq!(data["user"].0, b"admin");
    assert_eq!(data["pass"].0, b"s3cr3t");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("blob");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255]).unwrap();
    let (ok, out) = kubectl(
        &s,
        &[
            "create",
            "configmap",
            "mixed",
            "--from-literal=a=b",
            &format!("--from-file=blob={}", bin.display()),
        ],
    );
    assert!(ok, "{out}");
    let cm = Api::<ConfigMap>::namespaced(c, "default")
        .get("mixed")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["a"], "b");
    assert_eq!(
        cm.binary_data.unwrap()["blob"].0,
        vec![0u8, 159, 146, 150, 255]
    );
}

/// The workload kinds kubectl's generators send as protobuf (`create deployment|service|job|
/// cronjob|priorityclass|pdb|quota`, `run`) are decoded field by field and read back, typed,
/// by kube-rs with what kubectl put in; `kubectl get` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_workloads_over_protobuf() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    for args in [
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=3",
            "--port=8080",
        ][..],
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
        &[
            "run",
            "one",
            "--image=busybox:1.36",
            "--labels=app=one",
            "--env=MODE=test",
            "--",
            "sleep",
            "60",
        ],
        &[
            "create",
            "job",
            "migrate",
            "--image=busybox:1.36",
            "--",
            "echo",
            "done",
        ],
        &[
            "create",
            "cronjob",
            "nightly",
            "--image=busybox:1.36",
            "--schedule=0 3 * * *",
        ],
        &[
            "create",
            "priorityclass",
            "high",
            "--value=1000",
            "--description=important",
        ],
        &[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=50%",
        ],
        &["create", "quota", "small", "--hard=pods=10,requests.cpu=2"],
    ] {
        let (ok, out) = kubectl(&s, args);
        assert!(ok, "kubectl {args:?}: {out}");
    }
    let d = Api::<Deployment>::namespaced(c.clone(), "default")
        .get("web")
        .await
        .unwrap();
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("nginx:1.27"));
    assert_eq!(
        pod.containers[0].ports.as_ref().unwrap()[0].container_port,
        8080
    );
    assert_eq!(spec.selector.match_labels.unwrap()["app"], "web");
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .get("web")
        .await
        .unwrap();
    let sp = svc.spec.unwrap();
    let port = &sp.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (80, Some(IntOrString::Int(8080)))
    );
    assert_eq!(sp.type_.as_deref(), Some("ClusterIP"));
    let p = Api::<Pod>::namespaced(c.clone(), "default")
        .get("one")
        .await
        .unwrap();
    let ps = p.spec.unwrap();
    assert_eq!(
        ps.containers[0].args.as_deref(),
        Some(&["sleep".to_string(), "60".to_string()][..])
    );
    assert_eq!(
        ps.containers[0].env.as_ref().unwrap()[0].value.as_deref(),
        Some("test")
    );
    assert_eq!(p.metadata.labels.unwrap()["app"], "one");
    let j = Api::<Job>::namespaced(c.clone(), "default")
        .get("migrate")
        .await
        .unwrap();
    let jc = &j.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        jc.command.as_deref(),
        Some(&["echo".to_string(), "done".to_string()][..])
    );
    let cj = Api::<CronJob>::namespaced(c.clone(), "default")
        .get("nightly")
        .await
        .unwrap();
    assert_eq!(cj.spec.schedule, "0 3 * * *");
    let pc = Api::<PriorityClass>::all(c.clone())
        .get("high")
        .await
        .unwrap();
    assert_eq!(
        (pc.value, pc.description.as_deref()),
        (Some(1000), Some("important"))
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(c.clone(), "default")
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(IntOrString::String("50%".into()))
    );
    let q = Api::<ResourceQuota>::namespaced(c, "default")
        .get("small")
        .await
        .unwrap();
    let hard = q.spec.unwrap().hard.unwrap();
    assert_eq!(
        (hard["pods"].0.as_str(), hard["requests.cpu"].0.as_str()),
        ("10", "2")
    );
    let (ok, out) = kubectl(&s, &["get", "deploy,svc,po,job,cj,pdb,quota", "-o", "name"]);
    assert!(ok, "{out}");
    for name in [
        "deployment.apps/web",
        "service/web",
        "pod/one",
        "job.batch/migrate",
        "cronjob.batch/nightly",
        "poddisruptionbudget.policy/web",
        "resourcequota/small",
    ] {
        assert!(out.contains(name), "{name} missing from {out}");
    }
}

/// With `controllers_delay`, the garbage collector and namespace controller act after the
/// write, as in a real cluster: a background-deleted owner's dependent and a Terminating
/// namespace's content are still there when the DELETE has been answered, and go once the
/// delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_controllers_reproduce_eventual_consistency() {
    let s = TestApiServer::start_with(kube_test_apiserver::ServerOptions {
        controllers_delay: Some(std::time::Duration::from_millis(600)),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let dep: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {
        "name": "dep",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner.uid().unwrap()}]}}))
    .unwrap();
    cms.create(&PostParams::default(), &dep).await.unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        cms.get_opt("dep").await.unwrap().is_some(),
        "collected at once"
    );
    while cms.get_opt("dep").await.unwrap().is_some() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never collected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );

    // A namespace: Terminating with its content until the namespace controller runs.
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let team: Api<ConfigMap> = Api::namespaced(c.clone(), "team");
    team.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "cfg"}})).unwrap(),
    )
    .await
    .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("team").await.unwrap();
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(team.get_opt("cfg").await.unwrap().is_some());
    let t0 = std::time::Instant::now();
    while nss.get_opt("team").await.unwrap().is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "namespace never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(team.get_opt("cfg").await.unwrap().is_none());
}

/// Bodies whose `metadata` is not an object are refused with 400 on create, update and
/// status update, and the server keeps answering (no panic under the store lock).
#[tokio::test]
async fn malformed_metadata_is_a_bad_request_not_a_panic() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "cm"}})).unwrap(),
    )
    .await
    .unwrap();
    for (method, path) in [
        ("POST", "/api/v1/namespaces/default/configmaps"),
        ("PUT", "/api/v1/namespaces/default/configmaps/cm"),
        ("PUT", "/api/v1/namespaces/default/configmaps/cm/status"),
    ] {
        for metadata in [
            serde_json::json!("x"),
            serde_json::json!([1]),
            serde_json::json!(7),
        ] {
            let body =
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata});
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            match c.request::<serde_json::Value>(req).await {
                Err(kube::Error::Api(e)) => {
                    assert!(e.code == 400 || e.code == 404, "{method} {path}: {e:?}")
                }
                other => panic!("{method} {path} {metadata}: {other:?}"),
            }
        }
    }
    assert!(
        cms.get_opt("cm").await.unwrap().is_some(),
        "server still answers"
    );
}
