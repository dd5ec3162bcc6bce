//! Exact-call tests: the reconciler's HTTP conversation with the API server, checked call by
//! call with a tower-test mock (an `ApiServerVerifier`).

use http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use keyward::controller::{Context, ManualClock, Metrics, reconcile::reconcile};
use keyward::crd::{FINALIZER, ManagedKey, ManagedKeySpec, PolicyRef};
use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::{Keyring, local::LocalKek};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use std::sync::Arc;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// Expect one request; return its body as JSON (or Null) and answer `reply`.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        reply: Value,
    ) -> Value {
        let (req, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
                .expect("service not called");
        assert_eq!(req.method(), method, "method for {}", req.uri());
        assert_eq!(req.uri().path(), path, "path");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        body
    }
}

/// `state.json` of a storage Secret as sent on the wire (base64 in `data`).
fn state_json(secret: &Value) -> Value {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["state.json"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// No policy, no storage yet, and creating the storage answers 409 (another writer first).
async fn storage_create_loses_a_race(api: &mut ApiServerVerifier) {
    api.expect(Method::GET, RP, StatusCode::NOT_FOUND, not_found("policy"))
        .await;
    api.expect(
        Method::GET,
        SECRET,
        StatusCode::NOT_FOUND,
        not_found("secret"),
    )
    .await;
    let conflict = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409,"message":"secrets \"keyward-mk-uid-1\" already exists"});
    api.expect(
        Method::POST,
        "/api/v1/namespaces/keyward-system/secrets",
        StatusCode::CONFLICT,
        conflict,
    )
    .await;
}

fn not_found(what: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":format!("{what} not found")})
}

fn key(finalizer: bool) -> ManagedKey {
    let mut mk = ManagedKey::new(
        "payments",
        ManagedKeySpec {
            policy_ref: Some(PolicyRef {
                name: "quarterly".into(),
            }),
            ..Default::default()
        },
    );
    mk.meta_mut().namespace = Some("team-a".into());
    mk.meta_mut().uid = Some("uid-1".into());
    mk.meta_mut().resource_version = Some("10".into());
    mk.meta_mut().generation = Some(1);
    if finalizer {
        mk.meta_mut().finalizers = Some(vec![FINALIZER.into()]);
    }
    mk
}

fn setup() -> (Arc<Context>, ApiServerVerifier) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let kek = LocalKek::in_memory("test", SecretBytes::random(32), Algorithm::Aes256Kwp).unwrap();
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let ctx = Context::new(
        client,
        Keyring::new(Arc::new(kek)),
        Arc::new(Metrics::default()),
        clock,
        None,
    );
    (Arc::new(ctx), ApiServerVerifier(handle))
}

const MK: &str = "/apis/keyward.io/v1alpha1/namespaces/team-a/managedkeys/payments";
const RP: &str = "/apis/keyward.io/v1alpha1/namespaces/team-a/rotationpolicies/quarterly";
/// Storage lives in the controller's namespace, named by the ManagedKey's UID.
const SECRET: &str = "/api/v1/namespaces/keyward-system/secrets/keyward-mk-uid-1";

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_optimistically_then_goes_on() {
    let (ctx, mut api) = setup();
    let task = tokio::spawn(reconcile(Arc::new(key(false)), ctx.clone()));
    let body = api
        .expect(
            Method::PATCH,
            MK,
            StatusCode::OK,
            serde_json::to_value(key(true)).unwrap(),
        )
        .await;
    assert_eq!(body["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(
        body["metadata"]["resourceVersion"], "10",
        "finalizer patch is optimistic"
    );
    // The same reconcile goes on to make version 1 (here its storage write loses a race).
    storage_create_loses_a_race(&mut api).await;
    assert!(task.await.unwrap().unwrap_err().is_conflict());
}

#[tokio::test]
async fn next_reconcile_creates_version_one_and_writes_status() {
    let (ctx, mut api) = setup();
    let mk = key(true);
    let task = tokio::spawn(reconcile(Arc::new(mk.clone()), ctx.clone()));

    let policy = json!({"apiVersion":"keyward.io/v1alpha1","kind":"RotationPolicy","metadata":{"name":"quarterly","namespace":"team-a"},"spec":{"rotationPeriod":"90d","gracePeriod":"7d","retainVersions":3,"deletionWindowDays":30}});
    api.expect(Method::GET, RP, StatusCode::OK, policy).await;
    api.expect(
        Method::GET,
        SECRET,
        StatusCode::NOT_FOUND,
        not_found("secret"),
    )
    .await;

    let secret = api
        .expect(
            Method::POST,
            "/api/v1/namespaces/keyward-system/secrets",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
    assert_eq!(secret["type"], "keyward.io/key-storage");
    // No owner reference (it would cross namespaces); the key is named in annotations.
    assert!(secret["metadata"]["ownerReferences"].is_null());
    let ann = &secret["metadata"]["annotations"];
    assert_eq!(
        (
            &ann["keyward.io/key-namespace"],
            &ann["keyward.io/key-name"],
            &ann["keyward.io/key-uid"]
        ),
        (&json!("team-a"), &json!("payments"), &json!("uid-1"))
    );
    assert_eq!(
        secret["data"]["state.mac"].as_str().map(str::len),
        Some(88),
        "hex MAC, base64"
    );
    assert!(secret["data"]["v1"].is_string(), "version 1 stored wrapped");
    let state = state_json(&secret);
    assert_eq!(state["versions"][0]["state"], "Active");

    let ev = api
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team-a/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
    assert_eq!(ev["reason"], "KeyCreated");

    let status = api
        .expect(
            Method::PATCH,
            &format!("{MK}/status"),
            StatusCode::OK,
            serde_json::to_value(key(true)).unwrap(),
        )
        .await;
    assert_eq!(status["status"]["currentVersion"], 1);
    assert_eq!(status["status"]["state"], "Active");
    // now (2027-01-15T08:00:00Z) + 90d
    assert_eq!(status["status"]["nextRotation"], "2027-04-15T08:00:00Z");
    assert_eq!(
        status["status"]["versions"][0]["fingerprint"],
        state["versions"][0]["fingerprint"]
    );

    let action = task.await.unwrap().expect("reconcile ok");
    assert!(
        format!("{action:?}").contains("300s"),
        "requeue capped at max_requeue: {action:?}"
    );
}

#[tokio::test]
async fn conflict_on_storage_write_is_an_error_and_writes_no_status() {
    let (ctx, mut api) = setup();
    let task = tokio::spawn(reconcile(Arc::new(key(true)), ctx.clone()));
    storage_create_loses_a_race(&mut api).await;
    let err = task.await.unwrap().expect_err("conflict surfaces");
    assert!(err.is_conflict());
    // Nothing else was called: no status, no event for a plain conflict.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), api.0.next_request())
            .await
            .is_err()
    );
}

/// Deleting a key with live versions: the pending destruction is written to storage (in the
/// controller's namespace) and the finalizer goes in the same reconcile, so neither the
/// object nor its namespace waits for the window.
#[tokio::test]
async fn deletion_records_the_window_in_storage_then_drops_the_finalizer_at_once() {
    use keyward::lifecycle::KeyState;
    use keyward::storage::{KeyIdentity, Stored, to_secret};
    let (ctx, mut api) = setup();
    let mut mk = key(true);
    let deleted_at = Timestamp::from_second(1_799_000_000).unwrap();
    mk.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        deleted_at,
    ));
    let mut stored = Stored::default();
    stored.state.generation = 1;
    stored
        .state
        .add_version(1, deleted_at, "fp1".into(), None, None);
    stored
        .state
        .transition(1, KeyState::Active, deleted_at, "first version")
        .unwrap();
    stored.envelopes.insert(1, vec![7; 40]);
    stored.resource_version = Some("5".into());
    let secret = to_secret(&ctx.storage, &KeyIdentity::of(&mk), &stored).unwrap();
    let task = tokio::spawn(reconcile(Arc::new(mk.clone()), ctx.clone()));

    api.expect(
        Method::GET,
        SECRET,
        StatusCode::OK,
        serde_json::to_value(&secret).unwrap(),
    )
    .await;
    api.expect(Method::GET, RP, StatusCode::NOT_FOUND, not_found("policy"))
        .await;
    let put = api
        .expect(
            Method::PUT,
            SECRET,
            StatusCode::OK,
            serde_json::to_value(&secret).unwrap(),
        )
        .await;
    assert_eq!(put["metadata"]["resourceVersion"], "5", "optimistic write");
    let state = state_json(&put);
    // The policy is gone (as in a namespace deletion): the default 30-day window, counted
    // from the deletionTimestamp.
    assert_eq!(
        state["pendingDeletion"]["destroyAt"],
        (deleted_at + jiff::SignedDuration::from_hours(30 * 24)).to_string()
    );
    assert!(
        put["data"]["v1"].is_string(),
        "material kept for the window"
    );
    let ev = api
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team-a/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
    assert_eq!(ev["reason"], "DeletionScheduled");
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains("keyward.io/restore-from-uid=uid-1"),
        "{ev}"
    );
    let body = api
        .expect(
            Method::PATCH,
            MK,
            StatusCode::OK,
            serde_json::to_value(key(false)).unwrap(),
        )
        .await;
    assert_eq!(
        body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    task.await.unwrap().expect("reconcile ok");
}
