use super::*;

fn ev(i: u32) -> AuditEvent {
    AuditEvent {
        actor: "controller".into(),
        action: "rotate".into(),
        key: "team-a/payments".into(),
        version: Some(i),
        outcome: "ok".into(),
        reason: "rotation period elapsed".into(),
        ..Default::default()
    }
}

/// A log of 10 events with a checkpoint every 4; returns (text, public key).
fn sample() -> (String, VerifyingKey) {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_keypair(&dir.path().join("audit")).unwrap();
    let path = dir.path().join("audit.log");
    let a = Audit::open(&path, Some(&sk), 4).unwrap();
    for i in 1..=10 {
        a.record(ev(i));
    }
    (
        std::fs::read_to_string(&path).unwrap(),
        load_public_key(&pk).unwrap(),
    )
}

fn lines(t: &str) -> Vec<String> {
    t.lines().map(String::from).collect()
}

#[test]
fn an_untouched_chain_verifies() {
    let (t, pk) = sample();
    let s = verify(&t, Some(&pk)).unwrap();
    assert_eq!(
        s,
        VerifySummary {
            records: 12,
            checkpoints: 2,
            unsigned_tail: 2
        }
    );
}

#[test]
fn an_edited_record_is_found_at_the_next_line() {
    let (t, pk) = sample();
    let mut l = lines(&t);
    l[2] = l[2].replace("rotation period elapsed", "nothing to see");
    let e = verify(&l.join("\n"), Some(&pk)).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.problem.contains("edited"), "{e}");
}

#[test]
fn a_removed_record_is_named() {
    let (t, pk) = sample();
    let mut l = lines(&t);
    l.remove(5);
    let e = verify(&l.join("\n"), Some(&pk)).unwrap_err();
    assert_eq!(e.line, 6);
    assert!(e.problem.contains("missing"), "{e}");
}

#[test]
fn reordered_records_are_found() {
    let (t, pk) = sample();
    let mut l = lines(&t);
    l.swap(1, 2);
    let e = verify(&l.join("\n"), Some(&pk)).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(
        e.problem.contains("missing") || e.problem.contains("reordered"),
        "{e}"
    );
}

#[test]
fn a_rechained_log_fails_at_the_signed_checkpoint() {
    // An attacker edits record 2 and recomputes every later hash: the chain is consistent,
    // but the checkpoint's signature no longer matches.
    let (t, pk) = sample();
    let mut recs: Vec<Record> = t
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    recs[1].event.as_mut().unwrap().reason = "forged".into();
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for r in &mut recs {
        r.prev = prev.clone();
        let line = serde_json::to_string(r).unwrap();
        prev = line_hash(&line);
        out.push(line);
    }
    let e = verify(&out.join("\n"), Some(&pk)).unwrap_err();
    assert_eq!(e.seq, 5, "first checkpoint is record 5: {e}");
    assert!(e.problem.contains("signature"), "{e}");
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    Audit::open(&path, None, 0).unwrap().record(ev(1));
    Audit::open(&path, None, 0).unwrap().record(ev(2));
    let t = std::fs::read_to_string(&path).unwrap();
    assert_eq!(verify(&t, None).unwrap().records, 2);
}

#[test]
fn records_hold_no_key_bytes_fields() {
    let (t, _) = sample();
    for l in t.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(e) = v.get("event") {
            let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert!(
                keys.iter().all(|k| [
                    "actor", "action", "key", "version", "outcome", "reason", "pod", "node"
                ]
                .contains(k)),
                "{keys:?}"
            );
        }
    }
}
