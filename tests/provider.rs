//! The CSI provider and key service end to end: real gRPC on a unix socket and over TLS,
//! real envelopes and lifecycle rules; TokenReview and the key store are in-memory fakes.

mod common;
mod fixture;

use common::*;
use fixture::assert_refused as refused;
use keyward::lifecycle::KeyState::*;
use keyward::proto::csi::VersionRequest;
use keyward::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

const TOKEN: &str = "pod-token-web";

async fn env() -> Env {
    let e = Env::start(Duration::ZERO).await;
    e.add_token(TOKEN, NS, SA, "web-0", &["keyward"], 3600);
    own_key(&e, "db", KeyBuilder::default().with(Active, 10)).await;
    e
}

fn ok_attrs(objects: &str) -> serde_json::Value {
    attrs(NS, SA, "web-0", Some(TOKEN), objects)
}

/// (namespace, service account, pod, token, objects) as the driver claims them, and the code
/// and message fragment of the refusal they must get.
type Claim<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Code,
    &'a str,
);

/// A key that only the test pod's service account may mount.
async fn own_key(e: &Env, name: &str, kb: KeyBuilder) {
    e.put_key(NS, name, &[(NS, SA)], kb).await;
}

/// Mount `objects` as the test pod; it must be refused with `code` naming `needle`.
async fn refused_mount(e: &Env, objects: &str, code: Code, needle: &str) {
    refused(e.mount(&ok_attrs(objects)).await, code, needle);
}

#[tokio::test]
async fn version_answers_per_contract() {
    let e = env().await;
    let mut c = CsiDriverProviderClient::new(uds_channel(&e.socket).await);
    let v = c
        .version(VersionRequest {
            version: "v1alpha1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "v1alpha1");
    assert_eq!(v.runtime_name, "keyward");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn allowed_pod_gets_the_current_key() {
    let e = env().await;
    let r = e.mount(&ok_attrs("- key: db")).await.unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, "db");
    assert_eq!(r.files[0].mode, 0o644);
    assert_eq!(&r.files[0].contents[..], &material(NS, "db", 1)[..]);
    assert_eq!(r.object_version.len(), 1);
    assert_eq!(r.object_version[0].id, "db");
    assert_eq!(r.object_version[0].version.len(), 32);
    assert!(r.error.is_none());
}

/// A key shared across namespaces, as the CRD documents: a pod of team-a mounts
/// `team-b/shared` only while team-b's key lists team-a's service account in its own
/// `spec.access`; the file has the bytes of team-b's key (its envelope bound to team-b), and
/// the audit names the key's namespace and the pod's.
#[tokio::test]
async fn cross_namespace_grants_are_served_only_as_the_key_grants() {
    let e = env().await;
    e.put_key(
        "team-b",
        "shared",
        &[("team-b", "app"), (NS, SA)],
        KeyBuilder::default().with(Active, 10),
    )
    .await;
    e.put_key(
        "team-b",
        "private",
        &[("team-b", "app")],
        KeyBuilder::default().with(Active, 10),
    )
    .await;
    // Granted: team-b's bytes, at the path the key names.
    let r = e
        .mount(&ok_attrs("- key: team-b/shared\n- key: db"))
        .await
        .unwrap();
    let by_path: std::collections::HashMap<&str, &[u8]> = r
        .files
        .iter()
        .map(|f| (f.path.as_str(), &f.contents[..]))
        .collect();
    assert_eq!(
        by_path["team-b/shared"],
        &material("team-b", "shared", 1)[..]
    );
    assert_eq!(by_path["db"], &material(NS, "db", 1)[..]);
    // Not granted: refused naming the fix on team-b's key.
    refused_mount(
        &e,
        "- key: team-b/private",
        Code::PermissionDenied,
        "service account team-a/web may not mount ManagedKey team-b/private; add {namespace: team-a, name: web}",
    )
    .await;
    // A missing key of another namespace is answered exactly like one not granted (no
    // probing which keys exist there).
    refused_mount(
        &e,
        "- key: team-b/missing",
        Code::PermissionDenied,
        "service account team-a/web may not mount ManagedKey team-b/missing",
    )
    .await;
    // The grant removed while mounted: the next Mount (a republish) is refused.
    e.edit("team-b", "shared", |rec| {
        rec.key
            .spec
            .access
            .service_accounts
            .retain(|s| s.namespace != NS)
    });
    refused_mount(
        &e,
        "- key: team-b/shared",
        Code::PermissionDenied,
        "may not mount ManagedKey team-b/shared",
    )
    .await;
}

#[tokio::test]
async fn authorisation_matrix() {
    let e = env().await;
    e.put_key(
        "team-b",
        "db",
        &[("team-b", "web")],
        KeyBuilder::default().with(Active, 10),
    )
    .await;
    e.add_token("tok-other-sa", NS, "other", "other-0", &["keyward"], 3600);
    e.add_token(
        "tok-team-b",
        "team-b",
        "intruder",
        "b-0",
        &["keyward"],
        3600,
    );
    e.add_token("tok-expired", NS, SA, "web-0", &["keyward"], -5);
    e.add_token("tok-vault", NS, SA, "web-0", &["vault"], 3600);

    // A token issued for the same SA but bound to another pod.
    e.add_token("tok-other-pod", NS, SA, "web-9", &["keyward"], 3600);

    assert!(e.mount(&ok_attrs("- key: db")).await.is_ok());
    let cases: &[Claim] = &[
        // Another service account of the same namespace.
        (
            NS,
            "other",
            "other-0",
            Some("tok-other-sa"),
            "- key: db",
            Code::PermissionDenied,
            "spec.access.serviceAccounts",
        ),
        // A pod of another namespace cannot name our key, neither bare nor qualified.
        (
            "team-b",
            "intruder",
            "b-0",
            Some("tok-team-b"),
            "- key: db",
            Code::PermissionDenied,
            "team-b/intruder",
        ),
        (
            "team-b",
            "intruder",
            "b-0",
            Some("tok-team-b"),
            "- key: team-a/db",
            Code::PermissionDenied,
            "service account team-b/intruder may not mount ManagedKey team-a/db",
        ),
        // Claims in attributes must match the verified token.
        (
            NS,
            SA,
            "web-0",
            Some("tok-other-sa"),
            "- key: db",
            Code::PermissionDenied,
            "belongs to service account team-a/other",
        ),
        (
            "team-b",
            "web",
            "web-0",
            Some(TOKEN),
            "- key: db",
            Code::PermissionDenied,
            "belongs to service account team-a/web",
        ),
        (
            NS,
            SA,
            "web-0",
            None,
            "- key: db",
            Code::Unauthenticated,
            "tokenRequests",
        ),
        (
            NS,
            SA,
            "web-0",
            Some("forged.jwt.token"),
            "- key: db",
            Code::Unauthenticated,
            "invalid bearer token",
        ),
        (
            NS,
            SA,
            "web-0",
            Some("tok-expired"),
            "- key: db",
            Code::Unauthenticated,
            "expired",
        ),
        (
            NS,
            SA,
            "web-0",
            Some("tok-vault"),
            "- key: db",
            Code::Unauthenticated,
            "audiences",
        ),
        (
            NS,
            SA,
            "web-0",
            Some("tok-other-pod"),
            "- key: db",
            Code::PermissionDenied,
            "bound to another pod",
        ),
    ];
    for (ns, sa, pod, token, objects, code, needle) in cases {
        refused(
            e.mount(&attrs(ns, sa, pod, *token, objects)).await,
            *code,
            needle,
        );
    }
}

#[tokio::test]
async fn only_the_provider_service_account_may_call_the_key_service() {
    let e = env().await;
    // A compromised pod calling the key service directly with its default (API-audience)
    // token, with its keyward-audience token, and with an unknown token.
    e.add_token("web-api-token", NS, SA, "web-0", &[API_AUDIENCE], 3600);
    for (caller, code, needle) in [
        (
            "web-api-token",
            Code::PermissionDenied,
            "team-a/web is not the CSI provider service account",
        ),
        (TOKEN, Code::Unauthenticated, "audiences"),
        ("nobody", Code::Unauthenticated, "provider's credentials"),
    ] {
        let sock = e.dir.path().join(format!("p-{caller}.sock"));
        let _stop = e.start_provider(e.client(caller), &sock);
        wait_for_socket(&sock).await;
        refused(mount_on(&sock, &ok_attrs("- key: db")).await, code, needle);
    }
}

#[tokio::test]
async fn rotation_changes_object_version_exactly_when_current_changes() {
    let e = env().await;
    let a = e.mount(&ok_attrs("- key: db")).await.unwrap();
    let a2 = e.mount(&ok_attrs("- key: db")).await.unwrap();
    assert_eq!(a.object_version, a2.object_version, "stable across mounts");
    // A new version exists but is not current yet: nothing changes.
    let ring = e.keyring.clone();
    let mut rec = e.source.keys.lock().unwrap()[&(NS.to_string(), "db".to_string())].clone();
    add_version(&ring, &mut rec.stored, NS, "db", 2, PreActivation, 0).await;
    e.edit(NS, "db", |r| *r = rec.clone());
    let b = e.mount(&ok_attrs("- key: db")).await.unwrap();
    assert_eq!(a.object_version, b.object_version);
    assert_eq!(&b.files[0].contents[..], &material(NS, "db", 1)[..]);
    // Rotate: v1 Deactivated, v2 Active.
    e.edit(NS, "db", |r| {
        let now = jiff::Timestamp::now();
        r.stored
            .state
            .transition(1, Deactivated, now, "rotated")
            .unwrap();
        r.stored
            .state
            .transition(2, Active, now, "rotated")
            .unwrap();
    });
    let c = e.mount(&ok_attrs("- key: db")).await.unwrap();
    assert_ne!(a.object_version[0].version, c.object_version[0].version);
    assert_eq!(&c.files[0].contents[..], &material(NS, "db", 2)[..]);
    // The previous version is now what "previous" serves, with v1's object version.
    let p = e
        .mount(&ok_attrs("- key: db\n  version: previous"))
        .await
        .unwrap();
    assert_eq!(&p.files[0].contents[..], &material(NS, "db", 1)[..]);
    assert_eq!(p.object_version[0].version, a.object_version[0].version);
}

#[tokio::test]
async fn previous_within_grace_only() {
    let e = env().await;
    own_key(
        &e,
        "fresh",
        KeyBuilder::default()
            .with(Deactivated, 10)
            .with(Active, 10)
            .grace(3600),
    )
    .await;
    own_key(
        &e,
        "stale",
        KeyBuilder::default()
            .with(Deactivated, 7200)
            .with(Active, 7200)
            .grace(3600),
    )
    .await;
    let r = e
        .mount(&ok_attrs("- key: fresh\n  version: previous"))
        .await
        .unwrap();
    assert_eq!(&r.files[0].contents[..], &material(NS, "fresh", 1)[..]);
    refused_mount(
        &e,
        "- key: stale\n  version: previous",
        Code::FailedPrecondition,
        "grace period",
    )
    .await;
    // `all` drops the version whose grace ended and keeps the base file = current.
    let r = e
        .mount(&ok_attrs("- key: stale\n  version: all"))
        .await
        .unwrap();
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["stale.v2", "stale"]);
    let r = e
        .mount(&ok_attrs("- key: fresh\n  version: all\n  mode: \"0400\""))
        .await
        .unwrap();
    let got: Vec<(&str, i32)> = r.files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert_eq!(
        got,
        [("fresh.v1", 0o400), ("fresh.v2", 0o400), ("fresh", 0o400)]
    );
    assert_eq!(r.object_version.len(), 3);
    assert_eq!(r.object_version[1].version, r.object_version[2].version);
}

#[tokio::test]
async fn compromised_destroyed_suspended_and_pending_deletion_are_not_served() {
    let e = env().await;
    own_key(
        &e,
        "leaked",
        KeyBuilder::default().with(Compromised, 5).with(Active, 5),
    )
    .await;
    for y in [
        "- key: leaked\n  version: 1",
        "- key: leaked\n  version: \"1\"",
    ] {
        refused_mount(&e, y, Code::FailedPrecondition, "Compromised").await;
    }
    refused_mount(
        &e,
        "- key: leaked\n  version: previous",
        Code::FailedPrecondition,
        "previous",
    )
    .await;
    let r = e
        .mount(&ok_attrs("- key: leaked\n  version: all"))
        .await
        .unwrap();
    assert_eq!(r.files.len(), 2);
    assert!(
        r.files
            .iter()
            .all(|f| f.contents[..] == material(NS, "leaked", 2)[..])
    );

    own_key(&e, "burnt", KeyBuilder::default().with(Compromised, 5)).await;
    refused_mount(
        &e,
        "- key: burnt",
        Code::FailedPrecondition,
        "no Active version",
    )
    .await;
    own_key(
        &e,
        "gone",
        KeyBuilder::default().with(Destroyed, 5).with(Active, 5),
    )
    .await;
    refused_mount(
        &e,
        "- key: gone\n  version: 1",
        Code::FailedPrecondition,
        "Destroyed",
    )
    .await;
    refused_mount(
        &e,
        "- key: gone\n  version: 7",
        Code::NotFound,
        "no version 7",
    )
    .await;
    own_key(&e, "new", KeyBuilder::default().with(PreActivation, 5)).await;
    refused_mount(
        &e,
        "- key: new",
        Code::FailedPrecondition,
        "no Active version",
    )
    .await;
    // A PreActivation version is a pre-published next one (staged rotation): readers get it
    // by number (and in `all`), never as current.
    let staged = e
        .mount(&ok_attrs("- key: new\n  version: 1"))
        .await
        .unwrap();
    assert_eq!(staged.files.len(), 1, "{:?}", staged.files.len());
    own_key(&e, "paused", KeyBuilder::default().with(Suspended, 5)).await;
    refused_mount(&e, "- key: paused", Code::FailedPrecondition, "Suspended").await;

    e.edit(NS, "db", |r| {
        r.stored.state.pending_deletion = Some(keyward::state::PendingDeletion {
            scheduled_at: jiff::Timestamp::now(),
            destroy_at: "2999-01-01T00:00:00Z".parse().unwrap(),
        })
    });
    refused_mount(
        &e,
        "- key: db",
        Code::FailedPrecondition,
        "pending deletion",
    )
    .await;
    refused_mount(
        &e,
        "- key: db\n  version: 1",
        Code::FailedPrecondition,
        "spec.deletion",
    )
    .await;
}

#[tokio::test]
async fn every_bad_input_is_refused_and_nothing_is_returned() {
    let e = env().await;
    let cases: &[(&str, Code, &str)] = &[
        (
            "- key: missing",
            Code::NotFound,
            "ManagedKey team-a/missing not found",
        ),
        (
            "- key: db\n- key: missing\n  fileName: m",
            Code::NotFound,
            "team-a/missing",
        ),
        (
            "- key: Other-NS/db",
            Code::InvalidArgument,
            "must be a namespace",
        ),
        ("- key: [db", Code::InvalidArgument, "not a valid YAML"),
        (
            "- key: db\n  format: rot13",
            Code::InvalidArgument,
            "unknown format \"rot13\"",
        ),
        (
            "- key: db\n  format: jwks",
            Code::FailedPrecondition,
            "symmetric keys have no public part",
        ),
        (
            "- key: db\n  fileName: /etc/shadow",
            Code::InvalidArgument,
            "absolute",
        ),
        (
            "- key: db\n  fileName: ../../escape",
            Code::InvalidArgument,
            "\"..\"",
        ),
        ("- key: db\n- key: db", Code::InvalidArgument, "used twice"),
        (
            "- key: db\n  version: all\n- key: db\n  fileName: db.v1",
            Code::InvalidArgument,
            "written twice",
        ),
        ("", Code::InvalidArgument, "lists no object"),
        ("[]", Code::InvalidArgument, "lists no object"),
        (
            "- key: db\n  mode: \"0888\"",
            Code::InvalidArgument,
            "octal",
        ),
    ];
    for (objects, code, needle) in cases {
        refused(e.mount(&ok_attrs(objects)).await, *code, needle);
    }
    // Token expired according to the driver's own timestamp: refused before any call.
    let mut a = ok_attrs("- key: db");
    a["csi.storage.k8s.io/serviceAccount.tokens"] =
        serde_json::json!({"keyward": {"token": TOKEN, "expirationTimestamp": "2020-01-01T00:00:00Z"}})
            .to_string()
            .into();
    refused(
        e.mount(&a).await,
        Code::Unauthenticated,
        "expired at 2020-01-01",
    );
    // The same token delivered in `secrets` (serviceAccountTokenInSecrets) works.
    let mut a = attrs(NS, SA, "web-0", None, "- key: db");
    let tokens = serde_json::json!({"keyward": {"token": TOKEN, "expirationTimestamp": "2999-01-01T00:00:00Z"}}).to_string();
    let mut c = CsiDriverProviderClient::new(uds_channel(&e.socket).await);
    a["secretProviderClass"] = "keys".into();
    let r = c
        .mount(keyward::proto::csi::MountRequest {
            attributes: a.to_string(),
            secrets: serde_json::json!({"csi.storage.k8s.io/serviceAccount.tokens": tokens})
                .to_string(),
            target_path: String::new(),
            permission: "256".into(),
            current_object_version: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.files[0].mode, 0o400);
}

/// A public-only grant on a symmetric key, and a public format of one: the user must change the
/// grant, the format or the algorithm, so the code is FailedPrecondition, never Internal.
#[tokio::test]
async fn public_forms_of_a_symmetric_key_are_failed_precondition() {
    let e = env().await;
    for objects in [
        "- key: db\n  format: public-jwk",
        "- key: db\n  format: public-pem",
    ] {
        refused_mount(
            &e,
            objects,
            Code::FailedPrecondition,
            "object \"db\": symmetric keys have no public part; use raw, base64, hex or jwk",
        )
        .await;
    }
    e.edit(NS, "db", |r| {
        r.key.spec.access.service_accounts[0].public_only = true;
    });
    refused_mount(&e, "- key: db\n  format: public-jwk", Code::FailedPrecondition, "team-a/db is a symmetric aes-256 key: a public-only grant cannot mount it; grant full access or use an asymmetric algorithm").await;
}

#[tokio::test]
async fn formats_and_file_names() {
    let e = env().await;
    let r = e
        .mount(&ok_attrs("- key: db\n  format: hex\n  fileName: keys/db.hex\n- key: db\n  format: base64\n  fileName: db.b64\n- key: db"))
        .await
        .unwrap();
    let m = material(NS, "db", 1);
    assert_eq!(r.files[0].path, "keys/db.hex");
    assert_eq!(&r.files[0].contents[..], hex::encode(&m).as_bytes());
    use base64::Engine;
    assert_eq!(
        &r.files[1].contents[..],
        base64::engine::general_purpose::STANDARD
            .encode(&m)
            .as_bytes()
    );
    assert_eq!(&r.files[2].contents[..], &m[..]);
    let ids: Vec<&str> = r.object_version.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["keys/db.hex", "db.b64", "db"]);
}

#[tokio::test]
async fn each_key_is_read_once_per_mount() {
    let e = env().await;
    let before = e.source.gets.load(Ordering::SeqCst);
    e.mount(&ok_attrs("- key: db\n- key: db\n  format: hex\n  fileName: a\n- key: db\n  version: all\n  fileName: b"))
        .await
        .unwrap();
    assert_eq!(e.source.gets.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn token_cache_skips_repeat_token_reviews_but_not_refusals() {
    let e = Env::start(Duration::from_secs(30)).await;
    e.add_token(TOKEN, NS, SA, "web-0", &["keyward"], 3600);
    own_key(&e, "db", KeyBuilder::default().with(Active, 10)).await;
    e.mount(&ok_attrs("- key: db")).await.unwrap();
    let after_first = e.reviewer.calls.load(Ordering::SeqCst);
    assert_eq!(after_first, 2, "provider and pod token reviewed once each");
    for _ in 0..5 {
        e.mount(&ok_attrs("- key: db")).await.unwrap();
    }
    assert_eq!(e.reviewer.calls.load(Ordering::SeqCst), after_first);
    // Access is still checked on every Mount: revoking the SA takes effect at once.
    e.edit(NS, "db", |r| r.key.spec.access.service_accounts.clear());
    refused_mount(&e, "- key: db", Code::PermissionDenied, "spec.access").await;
}

#[tokio::test]
async fn stale_socket_is_replaced_and_removed_on_shutdown() {
    let e = env().await;
    let sock = e.dir.path().join("stale/keyward.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let stop = e.start_provider(e.client(PROVIDER_TOKEN), &sock);
    wait_for_socket(&sock).await;
    assert!(mount_on(&sock, &ok_attrs("- key: db")).await.is_ok());
    stop.send(()).unwrap();
    for _ in 0..100 {
        if !sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!sock.exists(), "socket removed after shutdown");
    // A regular file in the way is not deleted.
    let f = e.dir.path().join("file.sock");
    std::fs::write(&f, b"x").unwrap();
    let err = keyward::provider::bind_socket(&f).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
}

#[tokio::test]
async fn plaintext_key_service_needs_the_insecure_flag_and_tls_needs_a_ca() {
    use keyward::provider::{CallerToken, ClientConfig, KeyServiceClient};
    let mut cfg = ClientConfig {
        url: "http://127.0.0.1:1".into(),
        ca_pem: None,
        server_name: None,
        client_identity: None,
        insecure: false,
        timeout: Duration::from_secs(1),
    };
    let err = KeyServiceClient::new(&cfg, CallerToken::Static("t".into()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("--insecure-key-service"), "{err}");
    cfg.insecure = true;
    assert!(KeyServiceClient::new(&cfg, CallerToken::Static("t".into())).is_ok());
    cfg.url = "https://localhost:1".into();
    let err = KeyServiceClient::new(&cfg, CallerToken::Static("t".into()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("--key-service-ca-file"), "{err}");
}

#[tokio::test]
async fn a_key_service_with_an_untrusted_certificate_is_refused() {
    let e = env().await;
    let other = certs();
    let client = keyward::provider::KeyServiceClient::new(
        &keyward::provider::ClientConfig {
            url: e.key_service_url.clone(),
            ca_pem: Some(other.ca_pem.into_bytes()),
            server_name: None,
            client_identity: None,
            insecure: false,
            timeout: Duration::from_secs(5),
        },
        keyward::provider::CallerToken::Static(PROVIDER_TOKEN.into()),
    )
    .unwrap();
    let sock = e.dir.path().join("untrusted.sock");
    let _stop = e.start_provider(client, &sock);
    wait_for_socket(&sock).await;
    refused(
        mount_on(&sock, &ok_attrs("- key: db")).await,
        Code::Unavailable,
        "key service unreachable",
    );
}

/// The DaemonSet's probe (`keyward provider-probe`) answers for a live provider and fails,
/// naming the socket, when nothing listens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_probe_calls_version_over_the_socket() {
    let e = env().await;
    let run = |socket: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["provider-probe", "--timeout-seconds", "2", "--socket"])
            .arg(socket)
            .output()
            .unwrap()
    };
    let sock = e.socket.clone();
    let ok = tokio::task::spawn_blocking(move || run(&sock))
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: keyward provider "));
    let missing = e.dir.path().join("nobody.sock");
    let m = missing.clone();
    let bad = tokio::task::spawn_blocking(move || run(&m)).await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nobody.sock"), "{err}");
}

/// What reached the key service: TokenReviews and key reads.
fn key_service_calls(e: &Env) -> (usize, usize) {
    (
        e.reviewer.calls.load(Ordering::SeqCst),
        e.source.gets.load(Ordering::SeqCst),
    )
}

/// Hostile SecretProviderClasses and volume attributes are refused by the provider itself,
/// fast, naming the field, before the key service is called.
#[tokio::test]
async fn hostile_mounts_are_refused_by_the_provider_before_the_key_service_is_called() {
    let e = env().await;
    let before = key_service_calls(&e);
    // Billion laughs: 700 bytes that expand to 10^9 nodes.
    let mut laughs = String::from("- key: a\n  version: &l0 [\"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("- key: a{i}\n  version: &l{i} [{refs}]\n"));
    }
    let t = std::time::Instant::now();
    refused_mount(
        &e,
        &laughs,
        Code::InvalidArgument,
        "YAML anchors (&) and aliases (*) are not accepted",
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let many: String = (0..65).map(|i| format!("- key: k{i}\n")).collect();
    refused_mount(
        &e,
        &many,
        Code::InvalidArgument,
        "65 objects, above the limit of 64",
    )
    .await;
    let mut a = ok_attrs("- key: db");
    a["csi.storage.k8s.io/pod.name"] = "web-0\n{\"forged\":true}".into();
    refused(
        e.mount(&a).await,
        Code::InvalidArgument,
        "attribute csi.storage.k8s.io/pod.name contains the control character U+000A",
    );
    let mut a = ok_attrs("- key: db");
    a["csi.storage.k8s.io/pod.name"] = "x".repeat(1 << 20).into();
    refused(
        e.mount(&a).await,
        Code::OutOfRange,
        "decoded message length too large",
    );
    let mut a = ok_attrs("- key: db");
    a["padding"] = "p".repeat(200 * 1024).into();
    refused(
        e.mount(&a).await,
        Code::InvalidArgument,
        "above the provider's limit of 131072",
    );
    assert_eq!(key_service_calls(&e), before, "the key service was called");
    // The provider still serves.
    assert!(e.mount(&ok_attrs("- key: db")).await.is_ok());
}

/// A caller that reaches the key service port directly: oversized requests are refused before
/// decoding, and nothing of an unauthenticated or out-of-bounds request is written to the
/// audit file.
#[tokio::test]
async fn the_key_service_writes_nothing_to_the_audit_file_for_hostile_requests() {
    use keyward::keyservice::{CachingReviewer, KeyService, Settings, VersionIdKey};
    use keyward::proto::keyservice::{FetchRequest, KeyRequest};
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let audit = std::sync::Arc::new(keyward::audit::Audit::open(&audit_path, None, 0).unwrap());
    let svc = KeyService::new(
        CachingReviewer::new(SharedReviewer(e.reviewer.clone()), Duration::ZERO, 16),
        std::sync::Arc::new(SharedSource(e.source.clone())),
        e.keyring.clone(),
        VersionIdKey::new(keyward::crypto::SecretBytes::from_slice(&[7; 32])),
        Settings {
            audience: "keyward".into(),
            provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
            provider_audience: None,
        },
    )
    .with_audit(audit);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(keyward::keyservice::serve_on(
        listener,
        std::sync::Arc::new(svc),
        None,
        async {
            let _ = rx.await;
        },
    ));
    let client = |token: &str| {
        keyward::provider::KeyServiceClient::new(
            &keyward::provider::ClientConfig {
                url: format!("http://127.0.0.1:{port}"),
                ca_pem: None,
                server_name: None,
                client_identity: None,
                insecure: true,
                timeout: Duration::from_secs(10),
            },
            keyward::provider::CallerToken::Static(token.into()),
        )
        .unwrap()
    };
    let req = |pod_name: String, keys: usize| FetchRequest {
        pod_token: TOKEN.into(),
        pod_namespace: NS.into(),
        pod_name,
        pod_uid: String::new(),
        service_account: SA.into(),
        keys: (0..keys)
            .map(|i| KeyRequest {
                key: if i == 0 { "db".into() } else { format!("k{i}") },
                selector: None,
            })
            .collect(),
        pod_token_expiration: String::new(),
    };
    let fetch = |token: &'static str, r: FetchRequest| {
        let c = client(token);
        async move { c.fetch(r).await.map_err(tonic::Status::from) }
    };
    let audit_len = || std::fs::read(&audit_path).map_or(0, |b| b.len());
    // 1 MiB pod name: refused before it is decoded, whoever asks.
    for token in ["nobody", PROVIDER_TOKEN] {
        refused(
            fetch(token, req("x".repeat(1 << 20), 1)).await,
            Code::OutOfRange,
            "the limit is: 65536 bytes",
        );
    }
    // 60 KiB fits the request cap: an unauthenticated caller is refused and nothing recorded.
    refused(
        fetch("nobody", req("x".repeat(60 * 1024), 1)).await,
        Code::Unauthenticated,
        "provider's credentials",
    );
    // The provider itself, with a forged line in the pod name or too many keys.
    refused(
        fetch(PROVIDER_TOKEN, req("web-0\n{\"forged\":1}".into(), 1)).await,
        Code::InvalidArgument,
        "pod_name contains the control character U+000A",
    );
    refused(
        fetch(PROVIDER_TOKEN, req("x".repeat(254), 1)).await,
        Code::InvalidArgument,
        "pod_name is 254 bytes, above the limit of 253",
    );
    refused(
        fetch(PROVIDER_TOKEN, req("web-0".into(), 65)).await,
        Code::InvalidArgument,
        "asks for 65 keys, above the limit of 64",
    );
    assert_eq!(
        audit_len(),
        0,
        "a refused hostile request reached the audit file"
    );
    assert_eq!(e.source.gets.load(Ordering::SeqCst), 0);
    // A well-formed mount is served and recorded.
    let r = fetch(PROVIDER_TOKEN, req("web-0".into(), 1)).await.unwrap();
    assert_eq!(r.keys.len(), 1);
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        log.contains("team-a/web-0") && log.lines().count() == 1,
        "{log}"
    );
    let _ = stop.send(());
}
