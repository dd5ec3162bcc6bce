//! The test API server's patch code (JSON patch, JSON merge patch, strategic merge patch and
//! server-side apply) under arbitrary bodies, sent over HTTP to one running server. Properties:
//! the server answers every body with a success or a 4xx `Status` (never a 5xx: a panic under
//! the store lock would poison it and fail every later request), keeps serving the object
//! afterwards, and a patch never changes what the object is (kind, name, namespace).

use kube_test_apiserver::TestApiServer;
use proptest::prelude::*;
use serde_json::{Value, json};

const CONTENT_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// JSON values over the keys patches care about (metadata, lists keyed by name, `$patch`).
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("metadata".to_string()),
        Just("data".to_string()),
        Just("labels".to_string()),
        Just("name".to_string()),
        Just("namespace".to_string()),
        Just("resourceVersion".to_string()),
        Just("finalizers".to_string()),
        Just("kind".to_string()),
        Just("apiVersion".to_string()),
        Just("$patch".to_string()),
        Just("$setElementOrder/finalizers".to_string()),
        Just("$retainKeys".to_string()),
        "[a-z]{1,3}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!("delete")),
        Just(json!("v1")),
        Just(json!("ConfigMap")),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// RFC 6902 operations over paths that exist, do not, escape, append, or point into scalars.
fn json_patch() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("add"),
        Just("remove"),
        Just("replace"),
        Just("move"),
        Just("copy"),
        Just("test"),
        Just("frobnicate"),
    ];
    let path = prop_oneof![
        Just(""),
        Just("/"),
        Just("/data/a"),
        Just("/data/-"),
        Just("/data/a/b/c"),
        Just("/metadata"),
        Just("/metadata/name"),
        Just("/metadata/labels/x"),
        Just("/metadata/finalizers/0"),
        Just("/metadata/finalizers/-"),
        Just("/metadata/resourceVersion"),
        Just("/kind"),
        Just("/x~1y~0z"),
        Just("/data/~2"),
        Just("no-slash"),
    ];
    let one = (op, path.clone(), path, proptest::option::of(json_value())).prop_map(
        |(op, path, from, value)| {
            let mut o = json!({"op": op, "path": path, "from": from});
            if let Some(v) = value {
                o["value"] = v;
            }
            o
        },
    );
    proptest::collection::vec(one, 0..6).prop_map(Value::from)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json_patch().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        // A near-valid apply configuration.
        json_value().prop_map(|v| {
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "target", "namespace": "default"}, "data": v}))
            .unwrap()
        }),
    ]
}

#[test]
fn patches_never_fail_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(async {
        let s = TestApiServer::start().await.unwrap();
        let c = s.client().await;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "target", "namespace": "default", "labels": {"x": "y"},
                "finalizers": ["example.com/a"]},
            "data": {"a": "1"}});
        let req = http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&cm).unwrap())
            .unwrap();
        c.request_text(req).await.unwrap();
        (s, c)
    });
    let url = "/api/v1/namespaces/default/configmaps/target";
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(crate::config("apiserver_patch"));
    runner
        .run(
            &(0..CONTENT_TYPES.len(), body(), any::<bool>()),
            |(ct, body, force)| {
                let ct = CONTENT_TYPES[ct];
                let uri = if ct.starts_with("application/apply-patch") {
                    format!("{url}?fieldManager=fuzz&force={force}")
                } else {
                    url.to_string()
                };
                let req = http::Request::patch(uri)
                    .header("content-type", ct)
                    .body(body.clone())
                    .unwrap();
                let answer = rt.block_on(client.request::<Value>(req));
                match answer {
                    Ok(obj) => {
                        accepted.set(accepted.get() + 1);
                        prop_assert_eq!(&obj["kind"], &json!("ConfigMap"));
                        prop_assert_eq!(&obj["metadata"]["name"], &json!("target"));
                        prop_assert_eq!(&obj["metadata"]["namespace"], &json!("default"));
                    }
                    Err(kube::Error::Api(s)) => {
                        refused.set(refused.get() + 1);
                        prop_assert!(
                            (400..500).contains(&s.code),
                            "{ct} body {:?}: {} {}",
                            String::from_utf8_lossy(&body),
                            s.code,
                            s.message
                        );
                    }
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "{ct} body {:?}: not an API answer: {e}",
                            String::from_utf8_lossy(&body)
                        )));
                    }
                }
                let get = http::Request::get(url).body(Vec::new()).unwrap();
                let live = rt.block_on(client.request::<Value>(get));
                prop_assert!(live.is_ok(), "the server stopped serving: {live:?}");
                Ok(())
            },
        )
        .unwrap();
    println!(
        "apiserver_patch: {} patches applied, {} refused with a 4xx",
        accepted.get(),
        refused.get()
    );
    assert!(
        accepted.get() > 0,
        "no patch was ever applied: the harness reaches too little"
    );
    drop(server);
}
