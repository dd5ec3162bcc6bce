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

/// A log of 10 events with a checkpoint every 4 (seq 1, 6 and 11 are checkpoints: every file
/// opens with one); returns (text, public key).
fn sample() -> (String, VerifyingKey) {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_keypair(&dir.path().join("audit")).unwrap();
    let path = dir.path().join("audit.log");
    let a = Audit::open(&path, Some(&sk), 4).unwrap();
    for i in 1..=10 {
        a.record(ev(i)).unwrap();
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
            records: 13,
            checkpoints: 3,
            unsigned_tail: 2,
            first_seq: 1,
            last_seq: 13,
            ..Default::default()
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
    assert_eq!(
        e.seq, 6,
        "the first checkpoint after the edit is record 6: {e}"
    );
    assert!(e.problem.contains("signature"), "{e}");
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    Audit::open(&path, None, 0).unwrap().record(ev(1)).unwrap();
    Audit::open(&path, None, 0).unwrap().record(ev(2)).unwrap();
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

/// Re-chain records as an attacker would: recompute every `prev` from the genesis value.
fn rechain(recs: &mut [Record]) -> String {
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for r in recs {
        r.prev = prev.clone();
        let line = serde_json::to_string(r).unwrap();
        prev = line_hash(&line);
        out.push(line);
    }
    out.join("\n")
}

fn parse(t: &str) -> Vec<Record> {
    t.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_edit_with_every_checkpoint_deleted_and_the_chain_recomputed_fails() {
    // The attack in issue #17: edit a record, delete every checkpoint, recompute the hashes.
    let (t, pk) = sample();
    let mut recs: Vec<Record> = parse(&t)
        .into_iter()
        .filter(|r| r.kind != kind::CHECKPOINT)
        .collect();
    recs[1].event.as_mut().unwrap().reason = "forged".into();
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
    }
    let e = verify(&rechain(&mut recs), Some(&pk)).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    assert!(
        e.problem.contains("does not open with a signed checkpoint"),
        "{e}"
    );
}

#[test]
fn dropping_the_later_checkpoints_breaks_the_signed_cadence() {
    // Keep the opening checkpoint (its signature still holds), drop the others, re-chain.
    let (t, pk) = sample();
    let mut recs: Vec<Record> = parse(&t)
        .into_iter()
        .filter(|r| r.kind != kind::CHECKPOINT || r.seq == 1)
        .collect();
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
    }
    let e = verify(&rechain(&mut recs), Some(&pk)).unwrap_err();
    assert_eq!(
        e.seq, 6,
        "the fifth event after a checkpoint signed 'every 4': {e}"
    );
    assert!(e.problem.contains("more than the 4 it signed"), "{e}");
}

/// A signed log in `dir` and the anchor of its newest checkpoint.
fn anchored(dir: &Path, events: u32) -> (Audit, VerifyingKey, PathBuf) {
    let (sk, pk) = generate_keypair(&dir.join("audit")).unwrap();
    let path = dir.join("audit.log");
    let a = Audit::open(&path, Some(&sk), 4).unwrap();
    for i in 1..=events {
        a.record(ev(i)).unwrap();
    }
    (a, load_public_key(&pk).unwrap(), path)
}

#[test]
fn a_cut_tail_fails_against_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let (a, pk, path) = anchored(dir.path(), 10);
    let anchor = a
        .anchors()
        .borrow()
        .clone()
        .expect("a checkpoint was anchored");
    assert_eq!(anchor.seq, 11);
    let t = std::fs::read_to_string(&path).unwrap();
    let file = |text: String| LogFile {
        name: "audit.log".into(),
        text,
    };
    let s = verify_files(&[file(t.clone())], Some(&pk), Some(&anchor)).unwrap();
    assert!(s.anchored);
    // Cut everything from seq 8 on: the chain alone still verifies, the anchor does not.
    let cut = lines(&t)[..7].join("\n");
    assert!(verify(&cut, Some(&pk)).is_ok());
    let e = verify_files(&[file(cut)], Some(&pk), Some(&anchor)).unwrap_err();
    assert!(e.problem.contains("the tail was cut"), "{e}");
    // Replace the anchored checkpoint by a re-signed-looking copy: not the anchored line.
    let mut l = lines(&t);
    l[10] = l[10].replace("\"time\":\"", "\"time\":\"1");
    let e = verify_files(&[file(l.join("\n"))], Some(&pk), Some(&anchor)).unwrap_err();
    assert!(e.problem.contains("anchor"), "{e}");
}

#[test]
fn a_forged_anchor_is_refused_and_an_unsigned_check_still_needs_the_anchored_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, pk, path) = anchored(dir.path(), 10);
    let mut anchor = a.anchors().borrow().clone().unwrap();
    let files = [LogFile {
        name: String::new(),
        text: std::fs::read_to_string(&path).unwrap(),
    }];
    assert!(verify_files(&files, None, Some(&anchor)).unwrap().anchored);
    anchor.seq = 6;
    let e = verify_files(&files, None, Some(&anchor)).unwrap_err();
    assert!(
        e.problem.contains("not the checkpoint the anchor recorded"),
        "{e}"
    );
    let e = verify_files(&files, Some(&pk), Some(&anchor)).unwrap_err();
    assert!(e.problem.contains("signature is invalid"), "{e}");
}

#[test]
fn files_rotate_at_the_size_limit_and_the_chain_continues_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_keypair(&dir.path().join("audit")).unwrap();
    let pk = load_public_key(&pk).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let mut o = AuditOptions::new(&logs.join("audit.log"));
    o.signing_key = Some(sk);
    o.checkpoint_every = 50;
    o.max_file_bytes = MIN_FILE_BYTES;
    o.max_files = 3;
    let a = Audit::with_options(o).unwrap();
    for i in 0..2000 {
        a.record(ev(i)).unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let mut total = 0;
    for n in &names {
        let len = std::fs::metadata(logs.join(n)).unwrap().len();
        assert!(len <= MIN_FILE_BYTES, "{n}: {len}");
        total += len;
        let first: Record = serde_json::from_str(
            std::fs::read_to_string(logs.join(n))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first.kind, kind::CHECKPOINT, "{n} opens with a checkpoint");
    }
    assert!(total <= 3 * MIN_FILE_BYTES);
    let files = read_log_files(std::slice::from_ref(&logs)).unwrap();
    let s = verify_files(&files, Some(&pk), a.anchors().borrow().as_ref()).unwrap();
    assert!(s.first_seq > 1, "the oldest files were rotated away: {s:?}");
    assert!(s.anchored);
    assert_eq!(s.last_seq - s.first_seq + 1, s.records);
    // A rotated file removed from the middle is named.
    std::fs::remove_file(logs.join("audit.log.1")).unwrap();
    let files = read_log_files(std::slice::from_ref(&logs)).unwrap();
    let e = verify_files(&files, Some(&pk), None).unwrap_err();
    assert!(e.problem.contains("missing"), "{e}");
    // Reopening continues the chain in the current file.
    drop(a);
}

#[test]
fn a_failed_write_is_counted_refused_when_closed_and_declared_by_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    let (a, pk, path) = anchored(dir.path(), 3);
    // A real ENOSPC: point the open file at /dev/full.
    a.lock().file = Some(
        std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap(),
    );
    let before = a.lock().seq;
    let e = a.record(ev(4)).unwrap_err();
    assert!(e.to_string().contains("--audit-failure=closed"), "{e}");
    assert!(a.write_failures() >= 1);
    assert_eq!(
        a.lock().seq,
        before,
        "no sequence number is used by a failed write"
    );
    assert_eq!(a.pending_lost(), 1);
    // Writing works again (the broken handle was dropped and the file reopened).
    a.record(ev(5)).unwrap();
    let t = std::fs::read_to_string(&path).unwrap();
    let recs = parse(&t);
    let gap = recs
        .iter()
        .find(|r| r.kind == kind::GAP)
        .expect("a gap record");
    assert_eq!(gap.lost, Some(1));
    let s = verify(&t, Some(&pk)).unwrap();
    assert_eq!((s.gaps, s.lost), (1, 1));
    assert_eq!(a.pending_lost(), 0);
}

#[test]
fn with_failure_open_a_failed_write_is_counted_but_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = AuditOptions::new(&dir.path().join("audit.log"));
    o.failure = FailureMode::Open;
    o.checkpoint_every = 0;
    let a = Audit::with_options(o).unwrap();
    a.lock().file = Some(
        std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap(),
    );
    a.record(ev(1)).unwrap();
    assert_eq!(a.write_failures(), 1);
    assert_eq!(a.pending_lost(), 1);
}

#[test]
fn the_failure_metric_has_its_documented_name() {
    let a = Audit::stdout_only();
    let mut r = prometheus_client::registry::Registry::with_prefix("keyward");
    a.register_metrics(&mut r);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    assert!(
        out.contains("keyward_audit_write_failures_total 0"),
        "{out}"
    );
}

fn hostile() -> AuditEvent {
    AuditEvent {
        actor: "a\nkeyward::audit: {\"forged\":true}".into(),
        action: "mount\r\n".into(),
        key: "ns/k\u{0}\u{1b}[2J".into(),
        version: Some(1),
        outcome: "ok\u{2028}".into(),
        reason: "x\n".repeat(3),
        pod: Some("p\nod".into()),
        node: Some("\t".into()),
    }
}

#[test]
fn stdout_records_are_one_escaped_json_line() {
    let line = hostile().to_json_line();
    assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    let back: AuditEvent = serde_json::from_str(&line).unwrap();
    assert_eq!(back, hostile());
    // The stdout record is this line as one tracing field (`record = %line` in `record`): one
    // line whatever the fields hold. (Capturing tracing output in a unit test is not reliable:
    // callsite interest is process-wide and other tests run in parallel.)
    assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
}

#[test]
fn a_huge_field_is_cut_so_one_record_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let a = Audit::open(&path, None, 0).unwrap();
    let mut e = ev(1);
    e.reason = "é".repeat(1 << 20);
    e.pod = Some("p".repeat(1 << 20));
    a.record(e).unwrap();
    let t = std::fs::read_to_string(&path).unwrap();
    assert!(t.len() < 4 * MAX_FIELD, "{}", t.len());
    let r = &parse(&t)[0];
    assert!(
        r.event
            .as_ref()
            .unwrap()
            .reason
            .ends_with(&format!("[cut, {} bytes]", 2 << 20))
    );
}

#[test]
fn bad_bounds_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = AuditOptions::new(&dir.path().join("audit.log"));
    o.max_file_bytes = 10;
    let e = Audit::with_options(o.clone()).unwrap_err();
    assert!(e.to_string().contains("--audit-max-file-bytes"), "{e}");
    o.max_file_bytes = MIN_FILE_BYTES;
    o.max_files = 1;
    let e = Audit::with_options(o).unwrap_err();
    assert!(e.to_string().contains("--audit-max-files"), "{e}");
    assert!(!dir.path().join("audit.log").exists(), "nothing written");
}

#[test]
fn a_partial_last_line_is_cut_on_reopen_and_the_chain_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (a, pk, path) = anchored(dir.path(), 3);
    drop(a);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"seq\":99,\"ti").unwrap();
    drop(f);
    let sk = dir.path().join("audit.key");
    let a = Audit::open(&path, Some(&sk), 4).unwrap();
    a.record(ev(4)).unwrap();
    let t = std::fs::read_to_string(&path).unwrap();
    assert!(!t.contains("\"seq\":99"));
    // Checkpoint, 3 events, the new event, and the checkpoint its cadence (4) calls for.
    assert_eq!(verify(&t, Some(&pk)).unwrap().records, 6);
}

#[test]
fn without_a_signing_key_the_anchor_still_finds_a_rewritten_log() {
    // Unsigned checkpoints at the cadence; the attacker edits, drops checkpoints, re-chains.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let a = Audit::open(&path, None, 4).unwrap();
    for i in 1..=10 {
        a.record(ev(i)).unwrap();
    }
    let anchor = a.anchors().borrow().clone().unwrap();
    assert_eq!((anchor.seq, anchor.sig.is_none()), (11, true));
    let t = std::fs::read_to_string(&path).unwrap();
    let one = |text: String| {
        [LogFile {
            name: String::new(),
            text,
        }]
    };
    assert!(
        verify_files(&one(t.clone()), None, Some(&anchor))
            .unwrap()
            .anchored
    );
    let mut recs: Vec<Record> = parse(&t)
        .into_iter()
        .filter(|r| r.kind != kind::CHECKPOINT)
        .collect();
    recs[1].event.as_mut().unwrap().reason = "forged".into();
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
    }
    let forged = rechain(&mut recs);
    assert!(verify(&forged, None).is_ok(), "the chain alone cannot tell");
    assert!(verify_files(&one(forged), None, Some(&anchor)).is_err());
}

/// Found by tests/fuzz/audit.rs (`Insert { at: 0, line: "" }`): an inserted empty line was
/// skipped, so a changed file verified.
#[test]
fn regression_an_inserted_empty_line_fails() {
    let (t, pk) = sample();
    let e = verify(&format!("\n{t}"), Some(&pk)).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.problem.contains("empty line"), "{e}");
    let mut l = lines(&t);
    l.insert(4, String::new());
    assert!(verify(&l.join("\n"), Some(&pk)).is_err());
}

#[test]
fn a_signing_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = generate_keypair(&dir.path().join("audit")).unwrap();
    assert!(read_signing_key(&key).is_ok(), "0600 as generated");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_signing_key(&key).unwrap_err().to_string();
    assert!(e.contains("--audit-signing-key"), "{e}");
}

#[test]
fn a_duplicated_record_is_named_as_such() {
    let (t, pk) = sample();
    let mut l = lines(&t);
    let again = l[2].clone();
    l.insert(3, again);
    let e = verify(&l.join("\n"), Some(&pk)).unwrap_err();
    assert_eq!((e.line, e.seq), (4, 3), "{e}");
    assert!(e.problem.contains("reordered or duplicated"), "{e}");
    assert!(e.problem.contains("where 4 was expected"), "{e}");
}

/// One event record and one checkpoint record of a real log.
fn an_event_and_a_checkpoint() -> (Record, Record) {
    let (t, _) = sample();
    let recs = parse(&t);
    let of = |k: &str| recs.iter().find(|r| r.kind == k).unwrap().clone();
    (of(kind::EVENT), of(kind::CHECKPOINT))
}

/// Each record type carries exactly its fields: every field that must be there, and every
/// field that must not, is checked on its own.
#[test]
fn each_record_type_has_exactly_its_fields() {
    let (event, checkpoint) = an_event_and_a_checkpoint();
    let gap = Record {
        kind: kind::GAP.into(),
        event: None,
        lost: Some(1),
        ..event.clone()
    };
    // Verify a log of (checkpoint, r) with the chain recomputed: only r's shape can fail.
    let check = |r: &Record| {
        let mut log = vec![checkpoint.clone(), r.clone()];
        log[0].seq = 1;
        log[1].seq = 2;
        verify(&rechain(&mut log), None)
    };
    for ok in [&event, &checkpoint, &gap] {
        assert!(check(ok).is_ok(), "{} record refused", ok.kind);
    }
    let sig = Some("00".to_string());
    let bad: Vec<(&str, Record)> = vec![
        (
            "event without its event",
            Record {
                event: None,
                ..event.clone()
            },
        ),
        (
            "event with a signature",
            Record {
                sig: sig.clone(),
                ..event.clone()
            },
        ),
        (
            "event with a loss count",
            Record {
                lost: Some(1),
                ..event.clone()
            },
        ),
        (
            "checkpoint with an event",
            Record {
                event: event.event.clone(),
                ..checkpoint.clone()
            },
        ),
        (
            "checkpoint without cadence",
            Record {
                every: None,
                ..checkpoint.clone()
            },
        ),
        (
            "checkpoint with a loss count",
            Record {
                lost: Some(1),
                ..checkpoint.clone()
            },
        ),
        (
            "gap with an event",
            Record {
                event: event.event.clone(),
                ..gap.clone()
            },
        ),
        ("gap with a signature", Record { sig, ..gap.clone() }),
        (
            "gap without a loss count",
            Record {
                lost: None,
                ..gap.clone()
            },
        ),
        (
            "gap that lost nothing",
            Record {
                lost: Some(0),
                ..gap.clone()
            },
        ),
    ];
    for (what, r) in bad {
        let e = check(&r).expect_err(what);
        assert_eq!(e.problem, format!("malformed {} record", r.kind), "{what}");
        assert_eq!(e.seq, 2, "{what}");
    }
    let e = check(&Record {
        kind: "note".into(),
        ..event.clone()
    })
    .unwrap_err();
    assert_eq!(e.problem, "unknown record type \"note\"");
}

/// A checkpoint that signed no cadence (`every: 0`) limits nothing; one that signed 2 allows
/// exactly 2 records before the next.
#[test]
fn the_signed_cadence_is_exact_and_zero_means_none() {
    let (event, checkpoint) = an_event_and_a_checkpoint();
    let log = |every: u64, events: usize| {
        let mut l = vec![Record {
            every: Some(every),
            ..checkpoint.clone()
        }];
        l.extend(std::iter::repeat_n(event.clone(), events));
        for (i, r) in l.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        verify(&rechain(&mut l), None)
    };
    assert_eq!(log(0, 5).unwrap().unsigned_tail, 5);
    assert!(log(2, 2).is_ok());
    let e = log(2, 3).unwrap_err();
    assert_eq!(e.seq, 4, "{e}");
    assert!(e.problem.contains("more than the 2 it signed"), "{e}");
}

/// An anchor older than the first record given is told apart from a cut tail.
#[test]
fn an_anchor_older_than_the_files_given_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _pk, path) = anchored(dir.path(), 10);
    let old = a.anchors().borrow().clone().unwrap();
    assert_eq!(old.seq, 11);
    for i in 11..=20 {
        a.record(ev(i)).unwrap();
    }
    let t = std::fs::read_to_string(&path).unwrap();
    // Only the records after the anchor's checkpoint (as if older files were not passed).
    let later = lines(&t)[11..].join("\n");
    let e = verify_files(
        &[LogFile {
            name: "audit.log".into(),
            text: later,
        }],
        None,
        Some(&old),
    )
    .unwrap_err();
    assert!(
        e.problem
            .contains("is older than the first record given (seq 12)"),
        "{e}"
    );
    // Nothing at all given: the tail was cut.
    let e = verify_files(&[], None, Some(&old)).unwrap_err();
    assert!(e.problem.contains("the tail was cut"), "{e}");
}
