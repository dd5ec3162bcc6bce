//! The watch-backed key source (#18.1) against the test API server with the real controller:
//! Mounts make no API read of keys, storage or policies; revocations (a grant removed, a key
//! compromised, a key deleted) take effect within one watch event (< 1 s); and a cache whose
//! watch failed refuses with Unavailable until it has listed again, then serves again.

mod fixture;

use fixture::stack::{PROVIDER_TOKEN, Stack};
use keyward::controller::SystemClock;
use keyward::crd::ManagedKey;
use keyward::keyservice::service::FetchError;
use keyward::proto::keyservice::{FetchRequest, FetchResponse, KeyRequest};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube_test_apiserver::{Fault, FaultKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POD_UID: &str = "00000000-0000-0000-0000-0000000000aa";

fn request() -> FetchRequest {
    FetchRequest {
        pod_token: "app-token".into(),
        pod_namespace: "default".into(),
        pod_name: "app-pod".into(),
        pod_uid: POD_UID.into(),
        service_account: "app".into(),
        keys: vec![KeyRequest {
            key: "db".into(),
            selector: None,
        }],
        pod_token_expiration: String::new(),
    }
}

async fn fetch(stack: &Stack) -> Result<FetchResponse, FetchError> {
    stack
        .service
        .fetch(Some(PROVIDER_TOKEN), &request(), None)
        .await
}

/// Poll every 10 ms until `f` holds for a Fetch; the time it took.
async fn until(
    stack: &Stack,
    what: &str,
    limit: Duration,
    f: impl Fn(&Result<FetchResponse, FetchError>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = fetch(stack).await;
        if f(&r) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}; last answer: {:?}",
            r.map(|r| r.keys[0].current)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn key(access: &[&str]) -> serde_json::Value {
    let sas: Vec<_> = access
        .iter()
        .map(|sa| serde_json::json!({"namespace": "default", "name": sa}))
        .collect();
    serde_json::json!({
        "apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": "db"},
        "spec": {"algorithm": "aes-256", "access": {"serviceAccounts": sas}}
    })
}

/// Resource reads (get/list) of the kinds a Mount needs, so far.
fn key_reads(stack: &Stack) -> u64 {
    stack
        .server
        .request_counts()
        .iter()
        .filter(|((verb, res), _)| {
            verb == "get" && matches!(res.as_str(), "managedkeys" | "rotationpolicies" | "secrets")
        })
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_read_no_api_and_revocations_apply_within_one_event() {
    let stack = Stack::start(Arc::new(SystemClock), Duration::from_secs(2)).await;
    stack.add_pod_token("app-token", "default", "app", "app-pod", POD_UID);
    let keys: Api<ManagedKey> = Api::namespaced(stack.client.clone(), "default");
    let pp = PatchParams::apply("test").force();
    keys.patch("db", &pp, &Patch::Apply(key(&["app"])))
        .await
        .unwrap();
    until(
        &stack,
        "first version served",
        Duration::from_secs(10),
        |r| r.as_ref().is_ok_and(|r| r.keys[0].current == 1),
    )
    .await;

    // 200 Mounts: no GET of a ManagedKey, its storage or its policy. (The controller, which
    // uses the same API server, re-reads a new key a few times after its own writes; a second
    // of quiet first, so what is counted is the Mount path alone.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = key_reads(&stack);
    for _ in 0..200 {
        fetch(&stack).await.unwrap();
    }
    assert_eq!(key_reads(&stack) - before, 0, "Mounts read the API");

    // A grant removed: refused within one watch event.
    keys.patch("db", &pp, &Patch::Apply(key(&["someone-else"])))
        .await
        .unwrap();
    let revoked = until(&stack, "grant removal", Duration::from_secs(1), |r| {
        matches!(r, Err(FetchError::Denied { .. }))
    })
    .await;
    keys.patch("db", &pp, &Patch::Apply(key(&["app"])))
        .await
        .unwrap();
    until(&stack, "grant restored", Duration::from_secs(1), |r| {
        r.is_ok()
    })
    .await;

    // Compromised: version 1 is never served again once the controller saved its decision;
    // the replacement is served within the controller's reconcile plus one watch event.
    let mut compromised = key(&["app"]);
    compromised["spec"]["desiredState"] = "Compromised".into();
    keys.patch("db", &pp, &Patch::Apply(compromised))
        .await
        .unwrap();
    let replaced = until(&stack, "compromise", Duration::from_secs(2), |r| {
        r.as_ref().is_ok_and(|r| r.keys[0].current == 2)
    })
    .await;

    // Lost watch: the ManagedKey watch and its re-lists fail until the refusal is seen.
    // Lookups are refused as Unavailable (never answered from a cache that may have missed a
    // revocation), then served again once the watch has listed. (The faults stay until
    // cleared: the controller's own watches of the same resource take faults from the same
    // pool, so a fixed count could be used up before the key service's watch asks.)
    for verb in ["watch", "list"] {
        stack.server.inject_fault(Fault {
            verb: Some(verb.into()),
            resource: Some("managedkeys".into()),
            name: None,
            times: usize::MAX,
            kind: FaultKind::Status(500),
            delay_ms: 0,
        });
    }
    stack.server.close_watches();
    until(
        &stack,
        "refusal while the watch is down",
        Duration::from_secs(3),
        |r| matches!(r, Err(FetchError::Unavailable(_))),
    )
    .await;
    stack.server.clear_faults();
    let recovered = until(&stack, "recovery", Duration::from_secs(15), |r| {
        r.as_ref().is_ok_and(|r| r.keys[0].current == 2)
    })
    .await;
    assert!(stack.source.watch_errors() > 0);

    // Deleted: refused within one watch event (the object goes; storage stays for the
    // deletion window and serves nothing).
    keys.delete("db", &DeleteParams::default()).await.unwrap();
    let deleted = until(&stack, "deletion", Duration::from_secs(1), |r| {
        matches!(
            r,
            Err(FetchError::KeyNotFound(_) | FetchError::NotServable { .. })
        )
    })
    .await;
    println!(
        "watch source: grant removal refused after {revoked:?}, compromise replaced after {replaced:?}, deletion refused after {deleted:?}, recovery after a lost watch {recovered:?}; storage fallback reads {}",
        stack.source.fallback_reads()
    );
    assert!(revoked < Duration::from_secs(1) && deleted < Duration::from_secs(1));

    // Serving metrics, as /metrics exports them: every Fetch above counted once by outcome
    // and gRPC code, and in the latency histogram; TokenReviews by outcome and cache hits.
    let mut registry = prometheus_client::registry::Registry::with_prefix("keyward");
    stack.serve_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let fetches = value("keyward_key_service_fetches_total{");
    assert!(
        value("keyward_key_service_fetches_total{outcome=\"ok\",code=\"Ok\"}") >= 200.0,
        "{text}"
    );
    for (outcome, code) in [
        ("access_denied", "PermissionDenied"),
        ("unavailable", "Unavailable"),
    ] {
        assert!(
            value(&format!(
                "keyward_key_service_fetches_total{{outcome=\"{outcome}\",code=\"{code}\"}}"
            )) >= 1.0,
            "{outcome}: {text}"
        );
    }
    assert_eq!(
        value("keyward_key_service_fetch_duration_seconds_count"),
        fetches,
        "{text}"
    );
    assert!(
        value("keyward_key_service_token_cache_hits_total") >= 200.0,
        "{text}"
    );
    let reviews = value("keyward_key_service_token_reviews_total{outcome=\"ok\"}");
    assert!(
        (1.0..20.0).contains(&reviews),
        "{reviews} TokenReviews: {text}"
    );
}
