//! The key-service request: arbitrary field contents, lengths and key counts, and arbitrary
//! wire bytes. Properties: `check_request` accepts exactly the requests an independent oracle
//! of the Kubernetes limits accepts, names a field that really is at fault, never repeats the
//! value; and no request that is unauthenticated or out of bounds reaches the audit file.

use keyward::crypto::{Algorithm, SecretBytes};
use keyward::kek::{Keyring, local::LocalKek};
use keyward::keyservice::limits::{self, RequestError, check_request};
use keyward::keyservice::{
    AuthError, CachingReviewer, FetchError, Identity, KeyRecord, KeyService, KeySource, Settings,
    SourceError, TokenReviewer, VersionIdKey,
};
use keyward::proto::keyservice::{FetchRequest, KeyRequest};
use proptest::prelude::*;
use std::sync::Arc;

/// Strings near the limits: Kubernetes-name characters, other ASCII, control characters and
/// non-ASCII, at lengths around every cap.
fn text(max: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => prop::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789-.".to_vec()).prop_map(char::from),
        1 => prop::sample::select(b"ABZ_/ :\"\\{}".to_vec()).prop_map(char::from),
        1 => prop::sample::select(vec!['\n', '\r', '\0', '\u{1b}', '\u{7f}', '\u{85}', 'é', '\u{202e}']),
    ];
    prop_oneof![
        prop::collection::vec(ch.clone(), 0..8).prop_map(String::from_iter),
        prop::collection::vec(ch, max.saturating_sub(2)..max + 3).prop_map(String::from_iter),
        (1usize..4).prop_map(move |k| "a".repeat(max + k)),
    ]
}

fn request() -> impl Strategy<Value = FetchRequest> {
    (
        text(limits::MAX_TOKEN_BYTES),
        text(limits::MAX_NAMESPACE),
        text(limits::MAX_NAME),
        text(limits::MAX_UID),
        text(limits::MAX_NAME),
        prop::collection::vec(text(limits::MAX_NAME), 0..3),
        prop_oneof![0usize..4, 62usize..68],
        text(limits::MAX_TIMESTAMP),
    )
        .prop_map(|(tok, ns, pod, uid, sa, keys, n, exp)| {
            let mut ks: Vec<KeyRequest> = keys
                .into_iter()
                .map(|key| KeyRequest {
                    key,
                    selector: None,
                })
                .collect();
            ks.extend((ks.len()..n).map(|i| KeyRequest {
                key: format!("k{i}"),
                selector: None,
            }));
            FetchRequest {
                pod_token: tok,
                pod_namespace: ns,
                pod_name: pod,
                pod_uid: uid,
                service_account: sa,
                keys: ks,
                pod_token_expiration: exp,
            }
        })
}

/// The oracle, written from the Kubernetes rules rather than from `limits`.
fn clean(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

fn dns(s: &str, max: usize, dots: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-') || (dots && *c == b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Which fields the oracle finds at fault.
fn faults(r: &FetchRequest) -> Vec<&'static str> {
    let mut f = Vec::new();
    if !clean(&r.pod_token, 16 * 1024) {
        f.push("pod_token");
    }
    if !dns(&r.pod_namespace, 63, false) {
        f.push("pod_namespace");
    }
    if !r.pod_name.is_empty() && !dns(&r.pod_name, 253, true) {
        f.push("pod_name");
    }
    if !clean(&r.pod_uid, 128) {
        f.push("pod_uid");
    }
    if !dns(&r.service_account, 253, true) {
        f.push("service_account");
    }
    if !clean(&r.pod_token_expiration, 64) {
        f.push("pod_token_expiration");
    }
    if r.keys.len() > 64 {
        f.push("keys");
    }
    if r.keys.iter().any(|k| !clean(&k.key, 253)) {
        f.push("keys.key");
    }
    f
}

fn check_against_oracle(r: &FetchRequest) -> Result<(), TestCaseError> {
    let want = faults(r);
    match check_request(r) {
        Ok(()) => prop_assert!(want.is_empty(), "accepted although {want:?} are at fault"),
        Err(e) => {
            prop_assert!(
                want.contains(&e.field()),
                "refused naming {} but the faults are {want:?}: {e}",
                e.field()
            );
            let msg = e.to_string();
            prop_assert!(msg.len() < 400, "{} bytes of message", msg.len());
            prop_assert!(!msg.chars().any(char::is_control), "{msg:?}");
            prop_assert!(msg.contains(e.field()), "{msg}");
            let s = tonic::Status::from(FetchError::from(e));
            prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config("keyservice_request_fields"))]
    #[test]
    fn keyservice_request_fields(r in request()) {
        check_against_oracle(&r)?;
    }
}

proptest! {
    #![proptest_config(crate::config("keyservice_request_wire_bytes"))]
    #[test]
    fn keyservice_request_wire_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        // Whatever prost makes of arbitrary bytes, validation agrees with the oracle.
        if let Ok(r) = FetchRequest::decode(&bytes[..]) {
            check_against_oracle(&r)?;
        }
    }
}

const PROVIDER: &str = "provider-token";

struct Reviewer;

#[async_trait::async_trait]
impl TokenReviewer for Reviewer {
    async fn review(&self, token: &str, _: Option<&str>) -> Result<Identity, AuthError> {
        if token != PROVIDER {
            return Err(AuthError::Rejected("invalid bearer token".into()));
        }
        Ok(Identity {
            namespace: "keyward-system".into(),
            service_account: "keyward-csi-provider".into(),
            pod_name: None,
            pod_uid: None,
        })
    }
}

struct NoKeys;

#[async_trait::async_trait]
impl KeySource for NoKeys {
    async fn get(&self, _: &str, _: &str) -> Result<Option<KeyRecord>, SourceError> {
        Ok(None)
    }
}

proptest! {
    #![proptest_config(crate::config("keyservice_audit_before_authentication"))]
    /// Through `KeyService::fetch` with a real audit file: an unauthenticated caller, or the
    /// provider with an out-of-bounds request, writes nothing, and is refused with its code.
    #[test]
    fn keyservice_audit_before_authentication(r in request(), provider in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Arc::new(keyward::audit::Audit::open(&path, None, 0).unwrap());
        let svc = KeyService::new(
            CachingReviewer::new(Reviewer, std::time::Duration::ZERO, 4),
            Arc::new(NoKeys),
            Keyring::new(Arc::new(
                LocalKek::in_memory("t", SecretBytes::from_slice(&[1; 32]), Algorithm::Aes256Kwp)
                    .unwrap(),
            )),
            VersionIdKey::new(SecretBytes::from_slice(&[2; 32])),
            Settings {
                audience: "keyward".into(),
                provider_sa: ("keyward-system".into(), "keyward-csi-provider".into()),
                provider_audience: None,
            },
        )
        .with_audit(audit);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let caller = if provider { PROVIDER } else { "forged" };
        let out = rt.block_on(svc.fetch(Some(caller), &r, None));
        let bounded = faults(&r).is_empty();
        let written = std::fs::read(&path).map_or(0, |b| b.len());
        if !provider {
            prop_assert!(matches!(out, Err(FetchError::CallerUnauthenticated(_))));
            prop_assert_eq!(written, 0);
        } else if !bounded {
            prop_assert!(matches!(out, Err(FetchError::Request(_))), "{:?}", out.err());
            prop_assert_eq!(written, 0);
        } else {
            // In bounds: the pod token is refused (no pod identity) or no key is found; either
            // way the refusal is recorded, with bounded fields.
            prop_assert!(out.is_err());
            let log = std::fs::read_to_string(&path).unwrap();
            prop_assert!(log.lines().count() == 1 && log.len() < 4096, "{}", log.len());
        }
        if let Err(FetchError::Request(RequestError::TooManyKeys { count })) = &out {
            prop_assert!(*count > limits::MAX_KEYS_PER_MOUNT);
        }
    }
}
