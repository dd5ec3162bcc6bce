//! List pagination (src/paging.rs) with kube-rs, kube-runtime's watcher, raw HTTP and kubectl.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube_test_apiserver::{ServerOptions, TestApiServer};
use serde_json::Value;
use std::process::Command;

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c
}

async fn get(c: &kube::Client, path: &str) -> (u16, Value) {
    let req = http::Request::builder()
        .uri(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn create_all(api: &Api<ConfigMap>, names: &[String]) {
    for n in names {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_consistent_and_ordered_by_key() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let all: Vec<String> = ["e", "a", "d", "c", "b", "g", "f"]
        .iter()
        .map(|n| format!("cm-{n}"))
        .collect();
    create_all(&api, &all).await;
    let base = "/api/v1/namespaces/default/configmaps";

    let (code, p1) = get(&c, &format!("{base}?limit=3")).await;
    assert_eq!(code, 200);
    assert_eq!(names(&p1), vec!["cm-a", "cm-b", "cm-c"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 4);
    let rv = p1["metadata"]["resourceVersion"].clone();
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();

    // Writes after the first page do not show up in the following pages.
    api.create(&PostParams::default(), &cm("cm-bb"))
        .await
        .unwrap();
    api.delete("cm-e", &Default::default()).await.unwrap();
    let (_, p2) = get(&c, &format!("{base}?limit=3&continue={token}")).await;
    assert_eq!(names(&p2), vec!["cm-d", "cm-e", "cm-f"]);
    assert_eq!(p2["metadata"]["resourceVersion"], rv);
    assert_eq!(p2["metadata"]["remainingItemCount"], 1);
    let token = p2["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, p3) = get(&c, &format!("{base}?limit=3&continue={token}")).await;
    assert_eq!(names(&p3), vec!["cm-g"]);
    assert!(p3["metadata"].get("continue").is_none());
    assert!(p3["metadata"].get("remainingItemCount").is_none());

    // Filtered lists page without remainingItemCount.
    let (_, f) = get(
        &c,
        &format!("{base}?limit=2&fieldSelector=metadata.name!%3Dcm-a"),
    )
    .await;
    assert_eq!(names(&f), vec!["cm-b", "cm-bb"]);
    assert!(f["metadata"]["continue"].is_string());
    assert!(f["metadata"].get("remainingItemCount").is_none());

    // resourceVersion=0 is served whole from the watch cache, as 1.32 does.
    let (_, whole) = get(&c, &format!("{base}?limit=2&resourceVersion=0")).await;
    assert_eq!(names(&whole).len(), 7);
    assert!(whole["metadata"].get("continue").is_none());

    // A malformed token is a 400.
    let (code, bad) = get(&c, &format!("{base}?limit=2&continue=bm9wZQ")).await;
    assert_eq!(code, 400);
    assert_eq!(bad["reason"], "BadRequest");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid continue token: continue key is not valid"),
        "{bad}"
    );

    // Api::list with a limit follows the token.
    let mut lp = ListParams::default().limit(2);
    let mut seen = Vec::new();
    loop {
        let l = api.list(&lp).await.unwrap();
        seen.extend(l.items.iter().map(|i| i.metadata.name.clone().unwrap()));
        match l.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => lp = lp.continue_token(&t),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["cm-a", "cm-b", "cm-bb", "cm-c", "cm-d", "cm-f", "cm-g"]
    );

    // kubectl --chunk-size pages through Tables.
    let before = s
        .request_counts()
        .get(&("list".into(), "configmaps".into()))
        .copied()
        .unwrap_or(0);
    let o = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig_path())
        .args(["get", "configmaps", "--chunk-size=2", "-o", "name"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got,
        vec![
            "configmap/cm-a",
            "configmap/cm-b",
            "configmap/cm-bb",
            "configmap/cm-c",
            "configmap/cm-d",
            "configmap/cm-f",
            "configmap/cm-g"
        ]
    );
    let after = s.request_counts()[&("list".into(), "configmaps".into())];
    assert_eq!(after - before, 4, "7 objects in pages of 2");
    let o = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig_path())
        .args(["get", "configmaps", "--chunk-size=2"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("cm-")).count(),
        7,
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continue_token_past_the_history_is_expired() {
    let s = TestApiServer::start_with(ServerOptions {
        history: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
    create_all(&api, &["a".into(), "b".into(), "c".into(), "d".into()]).await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (_, p1) = get(&c, &format!("{base}?limit=2")).await;
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let more: Vec<String> = (0..12).map(|i| format!("z{i:02}")).collect();
    create_all(&api, &more).await;

    let (code, st) = get(&c, &format!("{base}?limit=2&continue={token}")).await;
    assert_eq!(code, 410);
    assert_eq!(st["reason"], "Expired");
    assert_eq!(
        st["message"],
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
    );
    // The inconsistent token continues after "b" at the current state.
    let again = st["metadata"]["continue"].as_str().unwrap().to_string();
    let (code, rest) = get(&c, &format!("{base}?limit=100&continue={again}")).await;
    assert_eq!(code, 200);
    let mut want = vec!["c".to_string(), "d".to_string()];
    want.extend(more);
    assert_eq!(names(&rest), want);

    // kube-rs surfaces it as a 410 too.
    let e = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_more_than_one_page() {
    let s = TestApiServer::start().await.unwrap();
    let c = s.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let all: Vec<String> = (0..1100).map(|i| format!("cm-{i:04}")).collect();
    create_all(&api, &all).await;
    let before = s
        .request_counts()
        .get(&("list".into(), "configmaps".into()))
        .copied()
        .unwrap_or(0);
    // A consistent (paginated) initial list of 500 per page, as kube-runtime does.
    let cfg = watcher::Config::default()
        .page_size(500)
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut store = std::collections::BTreeSet::new();
    let mut stream = Box::pin(watcher(api.clone(), cfg));
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            watcher::Event::InitApply(o) => {
                store.insert(o.metadata.name.unwrap());
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(store.len(), 1100);
    let after = s.request_counts()[&("list".into(), "configmaps".into())];
    assert_eq!(after - before, 3, "1100 objects in pages of 500");
    // The default (resourceVersion=0) watcher gets them in one answer.
    let n = watcher(api, watcher::Config::default())
        .applied_objects()
        .take(1100)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1100);
}
