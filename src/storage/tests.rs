use super::*;
use crate::state::{StoredVersion, Transition};

fn loc() -> StorageLocation {
    StorageLocation {
        namespace: "keyward-system".into(),
        mac: StateMacKey::new(SecretBytes::from_slice(&[9; 32])),
    }
}

fn id() -> KeyIdentity {
    KeyIdentity {
        namespace: "team-a".into(),
        name: "db".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
    }
}

fn version(v: u32, state: KeyState) -> StoredVersion {
    let at: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    StoredVersion {
        version: v,
        state,
        created: at,
        activated: None,
        deactivated: None,
        expires: None,
        destroyed: None,
        fingerprint: format!("fp{v}"),
        kek: None,
        public_key: None,
        transitions: vec![Transition {
            from: KeyState::PreActivation,
            to: state,
            at,
            reason: "test".into(),
        }],
        transitions_pruned: 0,
    }
}

/// Version 1 Compromised, version 2 Active, with material for both; generation 5.
fn stored() -> Stored {
    let mut s = Stored::default();
    s.state.generation = 5;
    s.state.versions = vec![
        version(1, KeyState::Compromised),
        version(2, KeyState::Active),
    ];
    s.envelopes.insert(1, vec![1; 40]);
    s.envelopes.insert(2, vec![2; 40]);
    s
}

fn secret(s: &Stored) -> Secret {
    to_secret(&loc(), &id(), s).unwrap()
}

fn detail(e: StorageError) -> String {
    match e {
        StorageError::Integrity { detail, .. } => detail,
        other => panic!("not an integrity error: {other}"),
    }
}

/// Re-encode `state.json` and MAC it again: what a writer holding the MAC key (a buggy one,
/// or one with a forged key) could store.
fn edit_state_with_valid_mac(sec: &mut Secret, f: impl FnOnce(&mut serde_json::Value)) {
    edit_state(sec, f);
    let data = sec.data.as_mut().unwrap();
    let envelopes: BTreeMap<u32, Vec<u8>> = data
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix('v')?.parse().ok()?, v.0.clone())))
        .collect();
    let tag = loc().mac.tag(&id(), &data[STATE_ENTRY].0, &envelopes);
    data.insert(MAC_ENTRY.into(), ByteString(hex::encode(tag).into_bytes()));
}

/// Re-encode `state.json` as a tenant with write access would edit it, keeping the old MAC.
fn edit_state(sec: &mut Secret, f: impl FnOnce(&mut serde_json::Value)) {
    let data = sec.data.as_mut().unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&data[STATE_ENTRY].0).unwrap();
    f(&mut v);
    data.insert(
        STATE_ENTRY.into(),
        ByteString(serde_json::to_vec(&v).unwrap()),
    );
}

#[test]
fn round_trip_authenticates() {
    let s = stored();
    let back = parse(&secret(&s), &id(), &loc().mac, 5).unwrap();
    assert_eq!(back.state, s.state);
    assert_eq!(back.envelopes, s.envelopes);
    assert_eq!(
        secret_name(&id().uid),
        "keyward-mk-11111111-2222-3333-4444-555555555555"
    );
    let sec = secret(&s);
    let labels = sec.metadata.labels.unwrap();
    assert!(
        labels.values().all(|v| v.len() <= 63),
        "labels hold only bounded values"
    );
    let ann = sec.metadata.annotations.unwrap();
    assert_eq!(ann[NAME_ANNOTATION], "db");
}

#[test]
fn a_compromised_version_flipped_back_to_active_is_refused() {
    let mut sec = secret(&stored());
    edit_state(&mut sec, |v| v["versions"][0]["state"] = "Active".into());
    assert!(detail(parse(&sec, &id(), &loc().mac, 0).unwrap_err()).contains("MAC does not match"));
}

#[test]
fn swapped_material_another_key_or_another_mac_key_is_refused() {
    let s = stored();
    let mut sec = secret(&s);
    sec.data
        .as_mut()
        .unwrap()
        .insert("v2".into(), ByteString(vec![3; 40]));
    assert!(detail(parse(&sec, &id(), &loc().mac, 0).unwrap_err()).contains("MAC"));
    // A destroyed version brought back (its envelope re-added) is refused too.
    let mut sec = secret(&s);
    sec.data
        .as_mut()
        .unwrap()
        .insert("v9".into(), ByteString(vec![9; 40]));
    assert!(parse(&sec, &id(), &loc().mac, 0).is_err());
    // The same bytes presented as another key (a re-created key with the same name has
    // another UID) fail on the identity, and with the annotations rewritten, on the MAC.
    let mut other = id();
    other.uid = "99999999-2222-3333-4444-555555555555".into();
    assert!(
        detail(parse(&secret(&s), &other, &loc().mac, 0).unwrap_err()).contains(UID_ANNOTATION)
    );
    let mut sec = secret(&s);
    sec.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(UID_ANNOTATION.into(), other.uid.clone());
    assert!(detail(parse(&sec, &other, &loc().mac, 0).unwrap_err()).contains("MAC"));
    let wrong = StateMacKey::new(SecretBytes::from_slice(&[8; 32]));
    assert!(parse(&secret(&s), &id(), &wrong, 0).is_err());
}

#[test]
fn an_older_generation_is_a_rollback() {
    let s = stored();
    let e = detail(parse(&secret(&s), &id(), &loc().mac, 6).unwrap_err());
    assert!(e.contains("rolled-back"), "{e}");
    assert!(parse(&secret(&s), &id(), &loc().mac, 5).is_ok());
}

#[test]
fn invariant_violations_are_refused_even_with_a_valid_mac() {
    // What a buggy writer (or a forged MAC key) could store: each is refused, none panics.
    let mut dup = stored();
    dup.state.versions.push(version(2, KeyState::Deactivated));
    assert!(detail(parse(&secret(&dup), &id(), &loc().mac, 0).unwrap_err()).contains("twice"));
    let mut two = stored();
    two.state.versions[0].state = KeyState::Active;
    assert!(detail(parse(&secret(&two), &id(), &loc().mac, 0).unwrap_err()).contains("Active"));
    let mut ts = secret(&stored());
    edit_state_with_valid_mac(&mut ts, |v| {
        v["versions"][1]["created"] = "yesterday".into()
    });
    let e = detail(parse(&ts, &id(), &loc().mac, 0).unwrap_err());
    assert!(
        e.contains(STATE_ENTRY) && e.contains("versions[1].created:") && e.contains("year"),
        "{e}"
    );
    let mut pd = secret(&stored());
    edit_state_with_valid_mac(&mut pd, |v| {
        v["pendingDeletion"] =
            serde_json::json!({"scheduledAt": "2026-01-01T00:00:00Z", "destroyAt": "soon"})
    });
    let e = detail(parse(&pd, &id(), &loc().mac, 0).unwrap_err());
    assert!(
        e.contains(STATE_ENTRY) && e.contains("pendingDeletion.destroyAt:") && e.contains("year"),
        "{e}"
    );
    // The re-MAC itself is sound: an unedited copy re-MACed this way still parses.
    let mut same = secret(&stored());
    edit_state_with_valid_mac(&mut same, |_| {});
    assert!(parse(&same, &id(), &loc().mac, 0).is_ok());
    let mut gone = stored();
    gone.state.versions[0].state = KeyState::Destroyed;
    assert!(
        detail(parse(&secret(&gone), &id(), &loc().mac, 0).unwrap_err())
            .contains("still has material")
    );
    let mut missing = stored();
    missing.envelopes.remove(&2);
    assert!(
        detail(parse(&secret(&missing), &id(), &loc().mac, 0).unwrap_err()).contains("no material")
    );
}

#[test]
fn names_up_to_253_characters_fit() {
    let mut long = id();
    long.name = "k".repeat(253);
    let sec = to_secret(&loc(), &long, &stored()).unwrap();
    assert!(sec.metadata.name.unwrap().len() <= 63);
    assert!(
        parse(
            &to_secret(&loc(), &long, &stored()).unwrap(),
            &long,
            &loc().mac,
            0
        )
        .is_ok()
    );
}

#[test]
fn old_layout_keys_are_named() {
    let mut mk = ManagedKey::new("db", Default::default());
    mk.metadata.namespace = Some("team-a".into());
    assert!(old_layout_keys(std::slice::from_ref(&mk)).is_empty());
    mk.status = Some(crate::crd::ManagedKeyStatus {
        version_count: 2,
        ..Default::default()
    });
    assert_eq!(old_layout_keys(std::slice::from_ref(&mk)), ["team-a/db"]);
    mk.status.as_mut().unwrap().storage_generation = Some(3);
    assert!(old_layout_keys(&[mk]).is_empty());
}

/// Each structural invariant added for #17, broken in a copy with a valid MAC (what a buggy
/// writer or a forged MAC key could store): a typed integrity error naming what is wrong, never
/// a panic or a plan on it.
#[test]
fn structural_invariants_are_checked_on_load() {
    let refused = |s: &Stored| check_invariants(&s.state, &s.envelopes).unwrap_err();
    // Out of order.
    let mut s = stored();
    s.state.versions.swap(0, 1);
    assert_eq!(
        refused(&s),
        InvariantError::NotIncreasing { after: 2, found: 1 }
    );
    // Two Suspended versions.
    let mut s = stored();
    s.state.versions[0].state = KeyState::Suspended;
    s.state.versions[1].state = KeyState::Suspended;
    assert_eq!(refused(&s), InvariantError::SeveralSuspended(vec![1, 2]));
    // More versions with material than any algorithm's limit.
    let mut s = Stored::default();
    for v in 1..=crate::rotation::MAX_MATERIAL_LIMIT + 1 {
        s.state.versions.push(version(v, KeyState::Deactivated));
        s.envelopes.insert(v, vec![1]);
    }
    assert!(matches!(
        refused(&s),
        InvariantError::TooMany {
            what: "versions with material",
            ..
        }
    ));
    // Too many transitions on one version.
    let mut s = stored();
    let step = s.state.versions[1].transitions[0].clone();
    s.state.versions[1].transitions = vec![step; 11];
    assert!(matches!(
        refused(&s),
        InvariantError::TooMany { count: 11, .. }
    ));
    // Over-long texts.
    let mut s = stored();
    s.state.versions[1].fingerprint = "f".repeat(10_000);
    assert!(matches!(
        refused(&s),
        InvariantError::TooLong {
            field: "fingerprint",
            version: 2,
            ..
        }
    ));
    let mut s = stored();
    s.state.last_rotate_request = Some("r".repeat(254));
    assert!(matches!(
        refused(&s),
        InvariantError::TooLong {
            field: "lastRotateRequest",
            ..
        }
    ));
    // A pruned summary that claims a listed number.
    let mut s = stored();
    s.state.pruned = Some(crate::state::Pruned {
        versions: 1,
        through_version: 2,
    });
    assert!(matches!(refused(&s), InvariantError::Pruned { .. }));
    // The untouched copy passes.
    assert_eq!(
        check_invariants(&stored().state, &stored().envelopes),
        Ok(())
    );
}

/// A destroyAt less than 7 days after scheduledAt (e.g. set to scheduledAt, which would
/// destroy at once) is refused on load: nothing is destroyed on it. An unparsable one is
/// refused by the typed timestamp (see `invariant_violations_are_refused_even_with_a_valid_mac`).
#[test]
fn a_deletion_window_shorter_than_7_days_is_refused() {
    let at: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for (days, ok) in [
        (0, false),
        (6, false),
        (7, true),
        (30, true),
        (3650, true),
        (-3, false),
    ] {
        let mut s = stored();
        s.state.pending_deletion = Some(crate::state::PendingDeletion {
            scheduled_at: at,
            destroy_at: at + jiff::SignedDuration::from_hours(24 * days),
        });
        let mut sec = secret(&s);
        edit_state_with_valid_mac(&mut sec, |_| {});
        let r = parse(&sec, &id(), &loc().mac, 0);
        assert_eq!(r.is_ok(), ok, "{days} days: {:?}", r.err());
        if !ok {
            assert!(
                detail(r.unwrap_err()).contains("less than 7 days"),
                "{days}"
            );
        }
    }
}

/// Regression (found by `tests/fuzz/state.rs`): bytes after the JSON document were accepted
/// once decoding went through `serde_path_to_error` without `Deserializer::end`.
#[test]
fn trailing_bytes_after_the_state_are_refused() {
    let s = stored();
    let mut json = serde_json::to_vec(&s.state).unwrap();
    assert!(decode_state(&json).is_ok());
    json.extend_from_slice(b" x");
    let e = decode_state(&json).unwrap_err();
    assert!(e.contains("trailing"), "{e}");
    let sec = sealed(&loc(), &id(), json, &s.envelopes);
    assert!(detail(parse(&sec, &id(), &loc().mac, 0).unwrap_err()).contains("trailing"));
}

#[test]
fn backup_tags_depend_on_key_and_body_and_differ_from_storage_tags() {
    let a = StateMacKey::new(SecretBytes::from_slice(&[9; 32]));
    let b = StateMacKey::new(SecretBytes::from_slice(&[8; 32]));
    let body = br#"{"format":"keyward-backup-v1"}"#;
    let t = a.backup_tag(body);
    // The value HMAC-SHA256 gives for the domain and the body, length-prefixed.
    assert_eq!(t, hmac_sha256(&[9; 32], &[b"keyward-backup-v1", body]));
    assert_eq!(t, a.backup_tag(body), "deterministic");
    assert_ne!(t, b.backup_tag(body), "another key");
    assert_ne!(t, a.backup_tag(b"{}"), "another body");
    assert_ne!(t, hmac_sha256(&[9; 32], &[body]), "domain-separated");
}

/// Integrity failures (a copy that fails its checks, or one missing although saved) are told
/// apart from every other storage error: only they become the StorageIntegrity condition.
#[test]
fn only_tampering_and_loss_are_integrity_failures() {
    let integrity = StorageError::Integrity {
        name: "s".into(),
        detail: "d".into(),
    };
    let missing = StorageError::Missing {
        name: "s".into(),
        generation: 3,
    };
    let material = StorageError::Material {
        key: "a/k".into(),
        version: 1,
        detail: "d".into(),
    };
    assert!(integrity.is_integrity());
    assert!(missing.is_integrity());
    assert!(!material.is_integrity());
}

/// A storage Secret names its key (annotations), carries the label the controller selects
/// storage by, and loses its identity when an annotation is missing.
#[test]
fn a_storage_secret_names_its_key_and_is_selected_by_the_label() {
    let s = secret(&stored());
    assert_eq!(KeyIdentity::of_storage(&s), Some(id()));
    assert_eq!(s.metadata.namespace.as_deref(), Some("keyward-system"));
    let (k, v) = label_selector()
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .unwrap();
    assert_eq!(s.metadata.labels.as_ref().and_then(|l| l.get(&k)), Some(&v));
    assert_eq!(label_selector(), "keyward.io/storage=managed-key");
    for a in [NAMESPACE_ANNOTATION, NAME_ANNOTATION, UID_ANNOTATION] {
        let mut partial = s.clone();
        partial.metadata.annotations.as_mut().unwrap().remove(a);
        assert_eq!(KeyIdentity::of_storage(&partial), None, "{a}");
    }
}

/// An unreadable orphan gets its removal time in an annotation, by an optimistic replace of
/// the Secret (data untouched); the sweeper reads it back.
#[tokio::test]
async fn an_orphan_is_marked_with_its_removal_time() {
    use http_body_util::BodyExt;
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(svc, "default");
    let mut orphan = secret(&stored());
    orphan.metadata.resource_version = Some("5".into());
    assert_eq!(orphan_deadline(&orphan), None);
    let at: jiff::Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::PUT);
        assert_eq!(
            req.uri().path(),
            format!(
                "/api/v1/namespaces/keyward-system/secrets/{}",
                secret_name(&id().uid)
            )
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(body.to_vec()))
                .unwrap(),
        );
        serde_json::from_slice::<Secret>(&body).unwrap()
    });
    mark_orphan(&loc(), &client, &orphan, at).await.unwrap();
    drop(client);
    let sent = server.await.unwrap();
    assert_eq!(orphan_deadline(&sent), Some(at));
    assert_eq!(
        sent.metadata.resource_version.as_deref(),
        Some("5"),
        "optimistic"
    );
    assert_eq!(sent.data, orphan.data, "data untouched");
    let mut garbled = sent.clone();
    garbled
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ORPHAN_DEADLINE_ANNOTATION.into(), "soon".into());
    assert_eq!(orphan_deadline(&garbled), None);
}

/// A key may keep 256 versions with material plus 16 destroyed records (272 in all), not
/// one more: the bound is the sum, to the record.
#[test]
fn the_version_record_bound_is_material_plus_destroyed_records() {
    let mut s = Stored::default();
    for v in 1..=16 {
        s.state.versions.push(version(v, KeyState::Destroyed));
    }
    for v in 17..=272 {
        s.state.versions.push(version(v, KeyState::Deactivated));
        s.envelopes.insert(v, vec![1; 40]);
    }
    assert_eq!(check_invariants(&s.state, &s.envelopes), Ok(()));
    s.state.versions.insert(0, version(0, KeyState::Destroyed));
    assert_eq!(
        check_invariants(&s.state, &s.envelopes),
        Err(InvariantError::TooMany {
            what: "version records",
            count: 273,
            limit: 272
        })
    );
}

/// Text and transition bounds accept a value at the limit and refuse one past it.
#[test]
fn field_bounds_are_inclusive_limits() {
    use crate::state::TRANSITIONS_KEPT;
    let mut s = stored();
    s.state.last_rotate_request = Some("r".repeat(253));
    assert_eq!(check_invariants(&s.state, &s.envelopes), Ok(()));
    s.state.last_rotate_request = Some("r".repeat(254));
    assert!(matches!(
        check_invariants(&s.state, &s.envelopes),
        Err(InvariantError::TooLong {
            field: "lastRotateRequest",
            len: 254,
            limit: 253,
            ..
        })
    ));
    let mut s = stored();
    let t = s.state.versions[0].transitions[0].clone();
    s.state.versions[0].transitions = vec![t.clone(); 2 + TRANSITIONS_KEPT];
    assert_eq!(check_invariants(&s.state, &s.envelopes), Ok(()));
    s.state.versions[0].transitions.push(t);
    assert!(matches!(
        check_invariants(&s.state, &s.envelopes),
        Err(InvariantError::TooMany {
            what: "transitions of one version",
            ..
        })
    ));
}

/// A pruned-records summary cannot claim more dropped versions than numbers below its
/// highest one; fewer (some numbers never existed or are still listed later) is fine.
#[test]
fn a_pruned_summary_counts_at_most_its_highest_number() {
    use crate::state::Pruned;
    let mut s = Stored::default();
    s.state.versions = vec![version(10, KeyState::Active)];
    s.envelopes.insert(10, vec![1; 40]);
    for (versions, through, ok) in [(5, 9, true), (9, 9, true), (10, 9, false)] {
        s.state.pruned = Some(Pruned {
            versions,
            through_version: through,
        });
        assert_eq!(
            check_invariants(&s.state, &s.envelopes).is_ok(),
            ok,
            "{versions} through {through}"
        );
    }
}

/// Reading storage: none yet is a fresh start, unless the controller already saved a
/// generation (then it was deleted outside keyward: an integrity failure); a stored copy is
/// parsed and authenticated.
#[tokio::test]
async fn load_tells_a_fresh_key_from_lost_storage() {
    use http_body_util::BodyExt;
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(svc, "default");
    let saved = secret(&stored());
    let server = tokio::spawn(async move {
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404});
        for reply in [
            (404, not_found.clone()),
            (404, not_found),
            (200, serde_json::to_value(&saved).unwrap()),
        ] {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(
                req.uri().path(),
                format!(
                    "/api/v1/namespaces/keyward-system/secrets/{}",
                    secret_name(&id().uid)
                )
            );
            let _ = req.into_body().collect().await;
            send.send_response(
                http::Response::builder()
                    .status(reply.0)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply.1).unwrap(),
                    ))
                    .unwrap(),
            );
        }
    });
    let fresh = load(&loc(), &client, &id(), 0).await.unwrap();
    assert!(fresh.state.versions.is_empty() && fresh.resource_version.is_none());
    assert!(matches!(
        load(&loc(), &client, &id(), 1).await,
        Err(StorageError::Missing { generation: 1, .. })
    ));
    let read = load(&loc(), &client, &id(), 5).await.unwrap();
    assert_eq!(read.state, stored().state);
    assert_eq!(read.envelopes, stored().envelopes);
    drop(client);
    server.await.unwrap();
}

/// Saving: a new key's storage is created, a known one replaced at the resourceVersion read;
/// the generation goes up by one, and a refused write (a lost race) leaves it as it was.
/// Deleting: only the copy read when a resourceVersion is given; already gone is done.
#[tokio::test]
async fn save_and_delete_write_optimistically() {
    use http_body_util::BodyExt;
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(svc, "default");
    let path = format!(
        "/api/v1/namespaces/keyward-system/secrets/{}",
        secret_name(&id().uid)
    );
    let status = |code: u16, reason: &str| {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code})
    };
    let expected = vec![
        (
            http::Method::POST,
            "/api/v1/namespaces/keyward-system/secrets".to_string(),
            201,
            None,
        ),
        (
            http::Method::PUT,
            path.clone(),
            409,
            Some(status(409, "Conflict")),
        ),
        (
            http::Method::DELETE,
            path.clone(),
            404,
            Some(status(404, "NotFound")),
        ),
        (
            http::Method::DELETE,
            path.clone(),
            409,
            Some(status(409, "Conflict")),
        ),
    ];
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (method, path, code, reply) in expected {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!((req.method(), req.uri().path()), (&method, path.as_str()));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let reply = reply.unwrap_or_else(|| {
                let mut created = json.clone();
                created["metadata"]["resourceVersion"] = "7".into();
                created
            });
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).unwrap(),
                    ))
                    .unwrap(),
            );
            bodies.push(json);
        }
        bodies
    });
    let mut s = stored();
    assert_eq!(save(&loc(), &client, &id(), &mut s).await.unwrap(), 6);
    assert_eq!(s.state.generation, 6);
    assert_eq!(s.resource_version.as_deref(), Some("7"));
    assert!(save(&loc(), &client, &id(), &mut s).await.is_err());
    assert_eq!(s.state.generation, 6, "a refused write changes nothing");
    delete(&loc(), &client, &id().uid, Some("7".into()))
        .await
        .unwrap();
    assert!(delete(&loc(), &client, &id().uid, None).await.is_err());
    // A request not made ends the mock server's wait instead of hanging the test.
    drop(client);
    let bodies = server.await.unwrap();
    let sent_state = |b: &serde_json::Value| -> u64 {
        let data = b["data"][STATE_ENTRY].as_str().unwrap();
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
        serde_json::from_slice::<StoredState>(&raw)
            .unwrap()
            .generation
    };
    assert_eq!(sent_state(&bodies[0]), 6);
    assert_eq!(
        bodies[1]["metadata"]["resourceVersion"], "7",
        "replace at the read copy"
    );
    assert_eq!(sent_state(&bodies[1]), 7);
    assert_eq!(bodies[2]["preconditions"]["resourceVersion"], "7");
    assert!(bodies[3].get("preconditions").is_none_or(|p| p.is_null()));
}

/// A key whose status lists versions but never recorded a storage generation still has its
/// versions in the old layout; one without versions, or with a generation, does not.
#[test]
fn old_layout_keys_are_those_with_versions_and_no_storage_generation() {
    use crate::crd::{ManagedKey, ManagedKeySpec, ManagedKeyStatus};
    let key = |name: &str, versions: u32, generation: Option<u64>| {
        let mut mk = ManagedKey::new(name, ManagedKeySpec::default());
        mk.metadata.namespace = Some("a".into());
        mk.status = Some(ManagedKeyStatus {
            version_count: versions,
            storage_generation: generation,
            ..Default::default()
        });
        mk
    };
    let keys = [
        key("old", 1, None),
        key("new", 0, None),
        key("saved", 2, Some(4)),
        ManagedKey::new("no-status", ManagedKeySpec::default()),
    ];
    assert_eq!(old_layout_keys(&keys), ["a/old"]);
}
