//! The real apiserver's validations (src/validation.rs) against kube-rs, raw HTTP and kubectl:
//! exact status codes, messages and causes.

mod common;
use common::kubectl_io as kubectl;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use kube_test_apiserver::TestApiServer;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One request with the admin client; the status, the headers and the JSON body.
async fn raw(
    c: &kube::Client,
    method: &str,
    path: &str,
    body: &Value,
    content_type: &str,
) -> (u16, http::HeaderMap, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body.to_string().into_bytes()))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (
        code,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post(c: &kube::Client, path: &str, body: Value) -> (u16, Value) {
    let (code, _, v) = raw(c, "POST", path, &body, "application/json").await;
    (code, v)
}

fn causes(v: &Value) -> Vec<(String, String)> {
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("{other:?}"),
    }
}

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_names_follow_each_resource_rule() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());

    let e = cms
        .create(&PostParams::default(), &cm("Bad_Name"))
        .await
        .unwrap_err();
    assert_eq!(
        api_err(e),
        (
            422,
            "Invalid".into(),
            format!(
                "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {SUBDOMAIN_MSG}"
            )
        )
    );
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"name": "x".repeat(254)}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(v["details"]["kind"], "ConfigMap");
    assert_eq!(
        causes(&v),
        vec![(
            "metadata.name".into(),
            format!(
                "Invalid value: \"{}\": must be no more than 253 characters",
                "x".repeat(254)
            )
        )]
    );
    assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueInvalid");

    // Namespaces are DNS-1123 labels, Services DNS-1035 labels.
    let (code, v) = post(
        &c,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "a.b"}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots"
    );
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "1svc"}, "spec": {}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Service \"1svc\" is invalid: metadata.name: Invalid value: \"1svc\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
    );
    // RBAC names are path segments: `system:` names are fine, '/' and '%' are not.
    let (code, _) = post(
        &c,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"metadata": {"name": "system:controller:Keyward"}, "rules": []}),
    )
    .await;
    assert_eq!(code, 201);
    let (code, v) = post(
        &c,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "a%b"}, "rules": []}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Role.rbac.authorization.k8s.io \"a%b\" is invalid: metadata.name: Invalid value: \"a%b\": may not contain '%'"
    );

    // generateName: the prefix is validated too, and names are the prefix + 5 characters.
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"generateName": "Cm-"}}),
    )
    .await;
    assert_eq!(code, 422);
    let fields: Vec<String> = causes(&v).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, vec!["metadata.generateName", "metadata.name"]);
    let mut g = ConfigMap::default();
    g.metadata.generate_name = Some("cm-".into());
    let made = cms.create(&PostParams::default(), &g).await.unwrap();
    assert!(made.name_any().starts_with("cm-") && made.name_any().len() == 8);

    // kubectl shows the same message.
    let (ok, _, err) = kubectl(&s, &["create", "configmap", "Bad_Name"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {SUBDOMAIN_MSG}"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_annotations_finalizers_and_owner_references() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let mut bad = cm("labels");
    bad.metadata.labels = Some(BTreeMap::from([
        ("example.com/ok".to_string(), "v".repeat(64)),
        ("Bad_Prefix/x".to_string(), "v".to_string()),
    ]));
    let (code, _, msg) = api_err(cms.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        format!(
            "ConfigMap \"labels\" is invalid: [metadata.labels: Invalid value: \"Bad_Prefix/x\": prefix part {SUBDOMAIN_MSG}, metadata.labels: Invalid value: \"{}\": must be no more than 63 characters]",
            "v".repeat(64)
        )
    );

    // Annotations: at most 256 KiB of keys and values, also on patch and apply.
    cms.create(&PostParams::default(), &cm("ann"))
        .await
        .unwrap();
    let big = "a".repeat(256 * 1024);
    let e = cms
        .patch(
            "ann",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"k": big}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_err(e),
        (
            422,
            "Invalid".into(),
            "ConfigMap \"ann\" is invalid: metadata.annotations: Too long: must have at most 262144 bytes".into()
        )
    );
    let e = cms
        .patch(
            "ann",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ann", "labels": {"a": "-x"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        api_err(e).2.contains(
            "metadata.labels: Invalid value: \"-x\": a valid label must be an empty string"
        )
    );

    // Finalizers: qualified names; core types also need a '/' unless standard.
    let e = cms
        .patch(
            "ann",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["my-finalizer"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_err(e).2,
        "ConfigMap \"ann\" is invalid: metadata.finalizers[0]: Invalid value: \"my-finalizer\": name is neither a standard finalizer name nor is it fully qualified"
    );
    cms.patch(
        "ann",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["keyward.io/x"]}})),
    )
    .await
    .unwrap();

    // ownerReferences need apiVersion, kind, name and uid.
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ann", "uid": ""}]}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        causes(&v),
        vec![(
            "metadata.ownerReferences.uid".into(),
            "Invalid value: \"\": must not be empty".into()
        )]
    );

    // kubectl apply gets the same 422.
    let (ok, _, err) = kubectl(
        &s,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-kubectl\n  labels:\n    team: \"a b\"\n",
        ),
    );
    assert!(!ok);
    assert!(
        err.contains(
            "ConfigMap \"from-kubectl\" is invalid: metadata.labels: Invalid value: \"a b\""
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_config_map_data_and_size_limits() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let secrets: Api<Secret> = Api::default_namespaced(c.clone());

    // stringData is merged into data and not stored.
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/secrets",
        json!({"metadata": {"name": "sd"}, "data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "yz"}}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let got = secrets.get("sd").await.unwrap();
    assert!(got.string_data.is_none());
    let data = got.data.unwrap();
    assert_eq!(data["a"].0, b"x");
    assert_eq!(data["b"].0, b"yz");

    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/secrets",
        json!({"metadata": {"name": "keys"}, "stringData": {"a b": "x"}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        causes(&v),
        vec![(
            "data[a b]".into(),
            "Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into()
        )]
    );

    let mut big = Secret::default();
    big.metadata.name = Some("big".into());
    big.data = Some(BTreeMap::from([(
        "k".to_string(),
        k8s_openapi::ByteString(vec![0; 1024 * 1024 + 1]),
    )]));
    assert_eq!(
        api_err(
            secrets
                .create(&PostParams::default(), &big)
                .await
                .unwrap_err()
        ),
        (
            422,
            "Invalid".into(),
            "Secret \"big\" is invalid: data: Too long: must have at most 1048576 bytes".into()
        )
    );
    // Exactly 1 MiB is fine.
    big.data = Some(BTreeMap::from([(
        "k".to_string(),
        k8s_openapi::ByteString(vec![0; 1024 * 1024]),
    )]));
    secrets.create(&PostParams::default(), &big).await.unwrap();

    let mut tls = Secret::default();
    tls.metadata.name = Some("tls".into());
    tls.type_ = Some("kubernetes.io/tls".into());
    assert_eq!(
        api_err(
            secrets
                .create(&PostParams::default(), &tls)
                .await
                .unwrap_err()
        )
        .2,
        "Secret \"tls\" is invalid: [data[tls.crt]: Required value, data[tls.key]: Required value]"
    );

    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let mut big = cm("big");
    big.data = Some(BTreeMap::from([(
        "k".to_string(),
        "x".repeat(1024 * 1024 + 1),
    )]));
    assert_eq!(
        api_err(cms.create(&PostParams::default(), &big).await.unwrap_err()).2,
        "ConfigMap \"big\" is invalid: []: Too long: must have at most 1048576 bytes"
    );

    // A body over 3 MiB is refused before decoding.
    let (code, _, v) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "huge"}, "data": {"k": "x".repeat(3 * 1024 * 1024)}}),
        "application/json",
    )
    .await;
    assert_eq!(code, 413);
    assert_eq!(v["reason"], "RequestEntityTooLarge");
    assert_eq!(v["message"], "Request entity too large: limit is 3145728");

    // An object etcd cannot hold (over 1.5 MiB) is etcd's error as a 500 without a reason.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "fat"}, "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": "E", "value": "x".repeat(2 * 1024 * 1024)}]}]}})).unwrap();
    let (code, _, v) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        &serde_json::to_value(&pod).unwrap(),
        "application/json",
    )
    .await;
    assert_eq!(code, 500);
    assert_eq!(v["message"], "etcdserver: request is too large");
    assert!(v.get("reason").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_k8s_io_v1_is_validated_strictly() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let (code, v) = post(
        &c,
        "/apis/events.k8s.io/v1/namespaces/default/events",
        json!({"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "type": "Info", "regarding": {"kind": "ConfigMap", "namespace": "default", "name": "x"}, "note": "n".repeat(1025)}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        causes(&v),
        vec![
            ("reportingController".into(), "Required value".into()),
            (
                "reportingController".into(),
                "Invalid value: \"\": name part must be non-empty".into()
            ),
            (
                "reportingController".into(),
                "Invalid value: \"\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into()
            ),
            ("reportingInstance".into(), "Required value".into()),
            ("action".into(), "Required value".into()),
            ("reason".into(), "Required value".into()),
            (
                "message".into(),
                "Invalid value: \"\": can have at most 1024 characters".into()
            ),
            (
                "type".into(),
                "Invalid value: \"\": has invalid value: Info".into()
            ),
        ]
    );
    let (code, v) = post(
        &c,
        "/apis/events.k8s.io/v1/namespaces/default/events",
        json!({"metadata": {"name": "e2"}, "type": "Normal", "reason": "R", "action": "A", "reportingController": "keyward.io/c", "reportingInstance": "i"}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        causes(&v),
        vec![("eventTime".into(), "Required value".into())]
    );

    // kube-runtime's Recorder (create, then a merge patch of the series) passes.
    let rec = Recorder::new(
        c.clone(),
        Reporter {
            controller: "keyward-controller".into(),
            instance: None,
        },
    );
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".into());
    owner.metadata.namespace = Some("default".into());
    let reference = owner.object_ref(&());
    let ev = Event {
        type_: EventType::Normal,
        reason: "Rotated".into(),
        note: Some("rotated".into()),
        action: "Rotate".into(),
        secondary: None,
    };
    rec.publish(&ev, &reference).await.unwrap();
    rec.publish(&ev, &reference).await.unwrap();
    let events: Api<EventV1> = Api::default_namespaced(c.clone());
    let list = events.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().unwrap().count, 2);

    // core/v1 Events: only the legacy rules and path-segment names.
    let (code, v) = post(
        &c,
        "/api/v1/namespaces/default/events",
        json!({"metadata": {"name": "a%b"}, "involvedObject": {"namespace": "default"}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Event \"a%b\" is invalid: metadata.name: Invalid value: \"a%b\": may not contain '%'"
    );
    let (code, _) = post(
        &c,
        "/api/v1/namespaces/default/events",
        json!({"metadata": {"name": "Legacy.Name"}, "involvedObject": {"namespace": "default"}, "reason": "x"}),
    )
    .await;
    assert_eq!(code, 201);
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.test.io
spec:
  group: example.test.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              at: {type: string, format: date-time}
              n: {type: integer, format: int32}
              odd: {type: string, format: made-up}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_format_warnings_and_format_checks() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let crd: Value = serde_yaml_ng::from_str(CRD).unwrap();
    let (code, headers, _) = raw(
        &c,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &crd,
        "application/json",
    )
    .await;
    assert_eq!(code, 201);
    let warnings: Vec<&str> = headers
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        vec!["299 - \"unrecognized format \\\"made-up\\\"\""]
    );

    // A CRD name must be plural.group.
    let mut wrong = crd.clone();
    wrong["metadata"]["name"] = "gadgets".into();
    let (code, v) = post(
        &c,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        wrong,
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        causes(&v),
        vec![(
            "metadata.name".into(),
            "Invalid value: \"gadgets\": must be spec.names.plural+\".\"+spec.group".into()
        )]
    );

    // Recognized formats are checked on custom resources.
    let (code, v) = post(
        &c,
        "/apis/example.test.io/v1/namespaces/default/gadgets",
        json!({"apiVersion": "example.test.io/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"at": "yesterday", "odd": "anything"}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Gadget.example.test.io \"g\" is invalid: spec.at: Invalid value: \"yesterday\": spec.at in body must be of type date-time: \"yesterday\""
    );
    let (code, _) = post(
        &c,
        "/apis/example.test.io/v1/namespaces/default/gadgets",
        json!({"apiVersion": "example.test.io/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"at": "2026-01-02T03:04:05Z", "n": 3}}),
    )
    .await;
    assert_eq!(code, 201);

    // kubectl prints the warning on stderr (an update that adds a new unknown format).
    let (ok, _, err) = kubectl(
        &s,
        &["apply", "-f", "-"],
        Some(&CRD.replace("made-up", "also-made-up")),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("Warning: unrecognized format \"also-made-up\""),
        "{err}"
    );
}
