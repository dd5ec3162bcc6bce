//! Audit log harnesses: arbitrary bytes and lines into the verifier, random modifications of
//! a valid anchored log (which must never verify), and arbitrary event strings, which must
//! stay one escaped line and come back unchanged.

use keyward::audit::anchor::Anchor;
use keyward::audit::{Audit, AuditEvent, LogFile, Record, verify, verify_files};
use proptest::prelude::*;
use std::sync::OnceLock;

/// A valid signed log of 12 events with a checkpoint every 4, ending on a checkpoint, with
/// its anchor and public key.
fn valid() -> &'static (String, Anchor, keyward::crypto::module::Ed25519PublicKey) {
    static LOG: OnceLock<(String, Anchor, keyward::crypto::module::Ed25519PublicKey)> =
        OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = keyward::audit::generate_keypair(&dir.path().join("audit")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&path, Some(&sk), 4).unwrap();
        for i in 1..=12 {
            a.record(AuditEvent {
                actor: "controller".into(),
                action: "rotate".into(),
                key: format!("ns/key-{i}"),
                version: Some(i),
                outcome: "ok".into(),
                reason: "rotation period elapsed".into(),
                ..Default::default()
            })
            .unwrap();
        }
        let anchor = a.anchors().borrow().clone().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Record = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(
            last.seq, anchor.seq,
            "the log ends on its anchored checkpoint"
        );
        (text, anchor, keyward::audit::load_public_key(&pk).unwrap())
    })
}

fn check(text: &str) -> Result<keyward::audit::VerifySummary, keyward::audit::VerifyError> {
    let (_, anchor, pk) = valid();
    verify_files(
        &[LogFile {
            name: "fuzz".into(),
            text: text.into(),
        }],
        Some(pk),
        Some(anchor),
    )
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte { at: usize, xor: u8 },
    DeleteLine(usize),
    SwapLines(usize, usize),
    DuplicateLine(usize),
    Truncate(usize),
    Insert { at: usize, line: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Byte { at, xor }),
        any::<usize>().prop_map(Mutation::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), ".{0,200}").prop_map(|(at, line)| Mutation::Insert { at, line }),
    ]
}

fn apply(text: &str, m: &Mutation) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len();
    match m {
        Mutation::Byte { at, xor } => {
            let mut b = text.as_bytes().to_vec();
            let i = at % b.len();
            b[i] ^= xor;
            return b;
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::Truncate(i) => lines.truncate(i % n),
        Mutation::Insert { at, line } => lines.insert(at % (n + 1), line.clone()),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

fn event() -> impl Strategy<Value = AuditEvent> {
    let s = || any::<String>();
    (
        (s(), s(), s(), s(), s()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(s()),
        proptest::option::of(s()),
    )
        .prop_map(
            |((actor, action, key, outcome, reason), version, pod, node)| AuditEvent {
                actor,
                action,
                key,
                version,
                outcome,
                reason,
                pod,
                node,
            },
        )
}

proptest! {
    #![proptest_config(crate::config("audit_verify_arbitrary_bytes"))]

    /// Arbitrary bytes never panic the verifier, and what it accepts is consistent: one
    /// record per non-empty line, each a record, numbered without gaps.
    #[test]
    fn audit_verify_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let text = String::from_utf8_lossy(&bytes);
        let (_, _, pk) = valid();
        for key in [None, Some(pk)] {
            if let Ok(s) = verify(&text, key) {
                let lines: Vec<&str> = text.lines().collect();
                prop_assert!(lines.iter().all(|l| !l.is_empty()));
                prop_assert_eq!(s.records, lines.len() as u64);
                for l in &lines {
                    prop_assert!(serde_json::from_str::<Record>(l).is_ok());
                }
                if s.records > 0 {
                    prop_assert_eq!(s.last_seq - s.first_seq + 1, s.records);
                }
            }
        }
        prop_assert!(check(&text).is_err(), "arbitrary bytes never match the anchor");
    }
}

proptest! {
    #![proptest_config(crate::config("audit_modified_log_never_verifies"))]

    /// A valid anchored log verifies; any change to it (a byte, a line removed, swapped,
    /// duplicated, inserted, or the tail cut) does not.
    #[test]
    fn audit_modified_log_never_verifies(m in mutation()) {
        let (text, _, _) = valid();
        prop_assert!(check(text).is_ok());
        let changed = apply(text, &m);
        let changed = String::from_utf8_lossy(&changed);
        if changed.lines().collect::<Vec<_>>() != text.lines().collect::<Vec<_>>() {
            let r = check(&changed);
            prop_assert!(r.is_err(), "{:?} verified: {:?}", m, r);
        }
    }
}

proptest! {
    #![proptest_config(crate::config("audit_event_round_trip"))]

    /// Any event strings: stdout gets one line without a control character that comes back
    /// as the (capped) event; the chained file gets one record per event that verifies.
    #[test]
    fn audit_event_round_trip(events in proptest::collection::vec(event(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&path, None, 0).unwrap();
        for e in &events {
            let line = e.clone().bounded().to_json_line();
            prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
            let back: AuditEvent = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(&back, &e.clone().bounded());
            a.record(e.clone()).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        prop_assert_eq!(text.lines().count(), events.len());
        let s = verify(&text, None).unwrap();
        prop_assert_eq!(s.records, events.len() as u64);
        for (l, e) in text.lines().zip(&events) {
            let r: Record = serde_json::from_str(l).unwrap();
            prop_assert_eq!(r.event.as_ref(), Some(&e.clone().bounded()));
            prop_assert!(l.len() < 16 * 1024);
        }
    }
}
