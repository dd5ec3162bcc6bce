//! KEK backends against real counterparts: the passphrase KDFs, SoftHSM2 through PKCS#11,
//! and AWS KMS as implemented by moto. The tests start SoftHSM2 tokens and moto servers
//! themselves; a missing tool is a failure that says to run `tests/setup.sh`.

mod fixture;

use fixture::kek::*;
use keyward::crypto::{Algorithm, CryptoError, KeyContext, SecretBytes};
use keyward::kek::awskms::AwsKmsKek;
use keyward::kek::config::{BackendKind, KdfKind, KekArgs, build_keyring};
use keyward::kek::local::LocalKek;
use keyward::kek::passphrase::{ARGON2_MIN_MEMORY_KIB, Kdf, PassphraseKek};
use keyward::kek::pkcs11::Pkcs11Kek;
use keyward::kek::{KekBackend, KekError, Keyring};
use std::sync::Arc;
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// shared checks

/// Round trip, wrong context, tampered ciphertext and header, for any backend.
async fn check_round_trip(b: &dyn KekBackend) {
    let ctx = KeyContext::new("team-a", "payments", 3);
    let dek = SecretBytes::random(32);
    let env = b.wrap(&ctx, &dek).await.unwrap();
    assert_eq!(env.backend, b.kind());
    assert_eq!(env.kek_id, b.kek_id());
    assert_eq!(env.kek_version, b.kek_version());
    assert_ne!(env.ciphertext, dek.expose());
    assert_eq!(b.unwrap(&env, &ctx).await.unwrap(), dek);
    // The encoded form survives a round trip too.
    let decoded = keyward::crypto::Envelope::decode(&env.encode().unwrap()).unwrap();
    assert_eq!(b.unwrap(&decoded, &ctx).await.unwrap(), dek);

    for other in [
        KeyContext::new("team-b", "payments", 3),
        KeyContext::new("team-a", "billing", 3),
        KeyContext::new("team-a", "payments", 4),
    ] {
        assert!(b.unwrap(&env, &other).await.is_err(), "{other:?}");
        // Header rewritten to claim the other context: the backend's binding refuses it.
        let mut moved = env.clone();
        moved.key_id = other.key_id();
        moved.key_version = other.version;
        let e = b.unwrap(&moved, &other).await.unwrap_err();
        assert!(
            matches!(e, KekError::Crypto(CryptoError::Integrity)),
            "{}: {e}",
            b.kind()
        );
    }
    let mut flipped = env.clone();
    let mid = flipped.ciphertext.len() / 2;
    flipped.ciphertext[mid] ^= 0x01;
    assert!(matches!(
        b.unwrap(&flipped, &ctx).await,
        Err(KekError::Crypto(_))
    ));
    // Another DEK length also round-trips.
    let long = SecretBytes::random(64);
    let e2 = b.wrap(&ctx, &long).await.unwrap();
    assert_eq!(b.unwrap(&e2, &ctx).await.unwrap(), long);
}

/// rotate(): new version, old envelopes unwrap, Keyring::rewrap moves them.
async fn check_rotate_and_rewrap(b: Arc<dyn KekBackend>) {
    let ctx = KeyContext::new("ns", "rot", 1);
    let dek = SecretBytes::random(32);
    let old = b.wrap(&ctx, &dek).await.unwrap();
    let v0 = b.kek_version();
    let v1 = b.rotate().await.unwrap();
    assert_ne!(v0, v1);
    assert_eq!(b.kek_version(), v1);
    assert_eq!(
        b.unwrap(&old, &ctx).await.unwrap(),
        dek,
        "old version unwraps"
    );
    let ring = Keyring::new(b.clone());
    assert!(ring.needs_rewrap(&old));
    let moved = ring.rewrap(&old, &ctx).await.unwrap();
    assert_eq!(moved.kek_version, v1);
    assert!(!ring.needs_rewrap(&moved));
    assert_eq!(ring.unwrap(&moved, &ctx).await.unwrap(), dek);
}

/// A DEK wrapped by `from` moves to `to` through a Keyring with `from` as secondary.
async fn check_migration(from: Arc<dyn KekBackend>, to: Arc<dyn KekBackend>) {
    let ctx = KeyContext::new("ns", "mig", 2);
    let dek = SecretBytes::random(32);
    let env = Keyring::new(from.clone()).wrap(&ctx, &dek).await.unwrap();
    // Without the secondary the new ring cannot read it, and says which KEK it needs.
    let e = Keyring::new(to.clone())
        .unwrap(&env, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, KekError::UnknownKek { .. }), "{e}");
    let ring = Keyring::new(to.clone()).with_secondary(from.clone());
    assert!(ring.needs_rewrap(&env));
    assert_eq!(ring.unwrap(&env, &ctx).await.unwrap(), dek);
    let moved = ring.rewrap(&env, &ctx).await.unwrap();
    assert_eq!(moved.backend, to.kind());
    assert!(!ring.needs_rewrap(&moved));
    // After the migration the old backend is no longer needed.
    assert_eq!(Keyring::new(to).unwrap(&moved, &ctx).await.unwrap(), dek);
}

// ---------------------------------------------------------------------------------------
// passphrase

#[tokio::test]
async fn passphrase_round_trip_both_kdfs() {
    kek_env();
    for (kdf, alg) in [
        (Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Gcm),
        (Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Kwp),
        (
            Kdf::Pbkdf2Sha256 {
                iterations: 600_000,
            },
            Algorithm::Aes256Kw,
        ),
    ] {
        let t = Instant::now();
        let b = PassphraseKek::new("pp", pass(), kdf, alg).await.unwrap();
        eprintln!("MEASURE {} derive: {:?}", kdf.describe(), t.elapsed());
        check_round_trip(&b).await;
    }
}

#[tokio::test]
async fn passphrase_rotate_and_raised_params_keep_old_envelopes() {
    kek_env();
    let b: Arc<dyn KekBackend> = Arc::new(
        PassphraseKek::new("pp", pass(), Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Gcm)
            .await
            .unwrap(),
    );
    check_rotate_and_rewrap(b).await;

    // Raising the configured costs (a restart with new flags): old envelopes still unwrap,
    // and the Keyring flags them for rewrap.
    let ctx = KeyContext::new("ns", "raise", 1);
    let dek = SecretBytes::random(32);
    let weak = PassphraseKek::new("pp", pass(), Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Kwp)
        .await
        .unwrap();
    let env_old = weak.wrap(&ctx, &dek).await.unwrap();
    let strong: Arc<dyn KekBackend> = Arc::new(
        PassphraseKek::new(
            "pp",
            pass(),
            Kdf::Argon2id {
                memory_kib: ARGON2_MIN_MEMORY_KIB,
                time_cost: 2,
                parallelism: 1,
            },
            Algorithm::Aes256Kwp,
        )
        .await
        .unwrap(),
    );
    let ring = Keyring::new(strong.clone());
    assert!(ring.needs_rewrap(&env_old));
    let moved = ring.rewrap(&env_old, &ctx).await.unwrap();
    assert_eq!(moved.kek_version, strong.kek_version());
    assert_eq!(strong.unwrap(&moved, &ctx).await.unwrap(), dek);
}

#[tokio::test]
async fn passphrase_config_errors_name_the_flag() {
    kek_env();
    let mut a = KekArgs {
        kek_backend: BackendKind::Passphrase,
        passphrase_file: Some(kek_env().dir.join("no-such-passphrase")),
        ..KekArgs::default()
    };
    let e = keyring_refusal(&a).await;
    assert!(e.contains("--passphrase-file"), "{e}");

    a.passphrase_file = Some(write_file("pp-ok", "a long enough passphrase\n"));
    a.kdf = KdfKind::Pbkdf2;
    a.pbkdf2_iterations = 599_999;
    let e = keyring_refusal(&a).await;
    assert!(e.contains("--pbkdf2-iterations"), "{e}");

    a.kdf = KdfKind::Argon2id;
    a.argon2_memory_kib = 1024;
    let e = keyring_refusal(&a).await;
    assert!(e.contains("--argon2-memory-kib"), "{e}");
}

/// Resident set size of this process, KiB (Linux `/proc/self/status`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// An edited envelope (the params block beside the wrapped key is reachable by whoever can
/// write the storage Secret) claiming 4 GiB of Argon2id memory: refused with the parameter
/// named, in well under a derivation's time, and without the process growing.
#[tokio::test]
async fn passphrase_envelope_claiming_4_gib_argon2_memory_is_refused_before_derivation() {
    kek_env();
    let b = PassphraseKek::new("pp", pass(), Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Gcm)
        .await
        .unwrap();
    let ctx = KeyContext::new("ns", "k", 1);
    let env = b.wrap(&ctx, &SecretBytes::random(32)).await.unwrap();
    let four_gib = 4 * 1024 * 1024;
    let mut evil = env.clone();
    // params: format (1), KDF id (1 = Argon2id), memory KiB (u32 BE), passes, lanes, salt.
    assert_eq!(&evil.params[..2], &[1, 1]);
    evil.params[2..6].copy_from_slice(&u32::to_be_bytes(four_gib));
    // The KEK version matches the claimed costs, so only the cost ceiling stands in the way.
    evil.kek_version = Kdf::Argon2id {
        memory_kib: four_gib,
        time_cost: 1,
        parallelism: 1,
    }
    .version_id();
    // As stored: through the encoded form.
    let evil = keyward::crypto::Envelope::decode(&evil.encode().unwrap()).unwrap();
    let rss_before = rss_kib();
    let derivations = b.derivations();
    let t = Instant::now();
    let e = b.unwrap(&evil, &ctx).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(b.derivations(), derivations, "a derivation ran");
    let grew_kib = rss_kib().saturating_sub(rss_before);
    eprintln!("MEASURE 4 GiB Argon2 claim refused in {took:?}, RSS +{grew_kib} KiB");
    assert!(
        matches!(
            e,
            KekError::KdfCostRefused {
                parameter: "Argon2id memory (KiB)",
                value: 4_194_304,
                max: ARGON2_MIN_MEMORY_KIB,
                setting: "--argon2-max-memory-kib",
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("before key derivation"), "{e}");
    // No derivation ran (counted above); a 4 GiB one would take many seconds.
    assert!(took < std::time::Duration::from_millis(500), "{took:?}");
    // Other tests of this process may derive (<= 64 MiB each) meanwhile; 4 GiB would not fit.
    assert!(grew_kib < 256 * 1024, "RSS grew by {grew_kib} KiB");
    // The genuine envelope still unwraps: nothing was poisoned.
    assert!(b.unwrap(&env, &ctx).await.is_ok());
}

/// Default production parameters (m = 64 MiB, t = 3, p = 1): one derivation at start-up,
/// then unwraps hit the cache.
#[tokio::test]
async fn passphrase_default_params_derive_once() {
    kek_env();
    let a = KekArgs {
        kek_backend: BackendKind::Passphrase,
        passphrase_file: Some(write_file("pp-default", "a long enough passphrase\n")),
        ..KekArgs::default()
    };
    let t = Instant::now();
    let ring = build_keyring(&a, None, "ns").await.unwrap();
    let derive = t.elapsed();
    let ctx = KeyContext::new("ns", "k", 1);
    let dek = SecretBytes::random(32);
    let env = ring.wrap(&ctx, &dek).await.unwrap();
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(ring.unwrap(&env, &ctx).await.unwrap(), dek);
    }
    let per_unwrap = t.elapsed() / 10;
    eprintln!("MEASURE argon2id m=64MiB t=3 p=1 derive: {derive:?}; cached unwrap: {per_unwrap:?}");
    assert!(per_unwrap < derive / 5, "unwrap must not re-derive");
}

// ---------------------------------------------------------------------------------------
// PKCS#11 (SoftHSM2)

#[tokio::test]
async fn pkcs11_round_trip_and_binding() {
    let _turn = hsm_turn().await;
    kek_env();
    let b = Pkcs11Kek::connect(pkcs11_cfg("rt")).await.unwrap();
    assert_eq!(b.kek_id(), "keyward/rt");
    assert_eq!(b.kek_version(), 1);
    check_round_trip(&b).await;
    // A second connect finds the existing key instead of creating another.
    let again = Pkcs11Kek::connect(pkcs11_cfg("rt")).await.unwrap();
    assert_eq!(again.versions().await.unwrap(), vec![1]);
    let ctx = KeyContext::new("ns", "k", 1);
    let dek = SecretBytes::random(32);
    let env = b.wrap(&ctx, &dek).await.unwrap();
    assert_eq!(again.unwrap(&env, &ctx).await.unwrap(), dek);

    let t = Instant::now();
    for _ in 0..50 {
        let e = b.wrap(&ctx, &dek).await.unwrap();
        b.unwrap(&e, &ctx).await.unwrap();
    }
    eprintln!("MEASURE softhsm2 wrap+unwrap: {:?}", t.elapsed() / 50);
}

#[tokio::test]
async fn pkcs11_key_is_sensitive_and_not_extractable() {
    let _turn = hsm_turn().await;
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    kek_env();
    let _b = Pkcs11Kek::connect(pkcs11_cfg("nx")).await.unwrap();
    on_token(|s| {
        let h = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(b"nx-v1".to_vec()),
            ])
            .unwrap();
        assert_eq!(h.len(), 1);
        let attrs = s
            .get_attributes(
                h[0],
                &[
                    AttributeType::Value,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::ValueLen,
                ],
            )
            .unwrap();
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "CKA_VALUE of the KEK was readable"
        );
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Token(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::ValueLen(32.into())), "{attrs:?}");
        // Asking for CKA_VALUE alone: the token refuses (CKR_ATTRIBUTE_SENSITIVE), cryptoki
        // drops the attribute.
        let v = s.get_attributes(h[0], &[AttributeType::Value]).unwrap();
        assert!(v.is_empty(), "CKA_VALUE returned");
    })
    .await;
}

/// Run `f` in a logged-in R/W session on [`TOKEN`] opened directly through cryptoki, as an
/// operator (or an attacker with the PIN) would.
async fn on_token<T: Send + 'static>(
    f: impl FnOnce(&cryptoki::session::Session) -> T + Send + 'static,
) -> T {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let module = kek_env().module.clone();
    tokio::task::spawn_blocking(move || {
        let ctx = Pkcs11::new(&module).unwrap();
        // Possibly already initialised by a backend in this process.
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN)
            .unwrap();
        let s = ctx.open_rw_session(slot).unwrap();
        let _ = s.login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from(PIN)),
        );
        f(&s)
    })
    .await
    .unwrap()
}

/// Attributes of an AES-256 KEK as keyward generates it, for `label`, with `changes` applied
/// (same attribute type replaced, others appended).
fn kek_template(
    label: &str,
    changes: Vec<cryptoki::object::Attribute>,
) -> Vec<cryptoki::object::Attribute> {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(format!("keyward-kek:{label}").into_bytes()),
    ];
    for c in changes {
        t.retain(|a| a.attribute_type() != c.attribute_type());
        t.push(c);
    }
    t
}

/// Objects that carry a KEK label but are not AES-256 keys keyward generated inside the token
/// as sensitive and non-extractable are refused, naming the object and the failing attribute,
/// both at start-up and when planted next to a working KEK.
#[tokio::test]
async fn pkcs11_foreign_objects_with_the_kek_label_are_refused_by_name() {
    let _turn = hsm_turn().await;
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    kek_env();
    // (KEK label, how the object is made, the attribute that must be named)
    let cases: Vec<(&str, Vec<Attribute>, bool, &str)> = vec![
        // An extractable AES key (the finding): generated, but its value can leave the token.
        (
            "fx-extractable",
            vec![Attribute::Extractable(true), Attribute::Sensitive(false)],
            true,
            "CKA_EXTRACTABLE",
        ),
        // Right attributes, but not marked by keyward.
        ("fx-unmarked", vec![Attribute::Id(vec![])], true, "CKA_ID"),
        // AES-128.
        (
            "fx-short",
            vec![Attribute::ValueLen(16.into())],
            true,
            "CKA_VALUE_LEN",
        ),
        // Imported key material (C_CreateObject): sensitive and non-extractable now, but its
        // value existed outside the token.
        (
            "fx-imported",
            vec![Attribute::Value(vec![7; 32])],
            false,
            "CKA_LOCAL",
        ),
    ];
    for (key_label, changes, generate, attribute) in cases {
        let label = format!("{key_label}-v1");
        let template = kek_template(&label, changes);
        on_token(move |s| {
            if generate {
                s.generate_key(&Mechanism::AesKeyGen, &template).unwrap();
            } else {
                let t: Vec<_> = template
                    .into_iter()
                    .filter(|a| !matches!(a, Attribute::ValueLen(_)))
                    .collect();
                s.create_object(&t).unwrap();
            }
        })
        .await;
        let e = Pkcs11Kek::connect(pkcs11_cfg(key_label)).await.unwrap_err();
        match &e {
            KekError::ForeignKeyObject {
                object,
                attribute: a,
                ..
            } => {
                assert!(object.contains(&format!("{TOKEN}/{label}")), "{e}");
                assert_eq!(*a, attribute, "{e}");
            }
            other => panic!("{key_label}: expected ForeignKeyObject, got {other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&label) && msg.contains(attribute) && msg.contains("--pkcs11-key-label"),
            "{msg}"
        );
    }

    // A working KEK, then an extractable impostor planted under the same label: wraps,
    // unwraps and health refuse to use either rather than pick one, and say which object.
    let b = Pkcs11Kek::connect(pkcs11_cfg("fx-planted")).await.unwrap();
    let ctx = KeyContext::new("ns", "k", 1);
    let env = b.wrap(&ctx, &SecretBytes::random(32)).await.unwrap();
    let template = kek_template("fx-planted-v1", vec![Attribute::Extractable(true)]);
    on_token(move |s| s.generate_key(&Mechanism::AesKeyGen, &template).map(|_| ()))
        .await
        .unwrap();
    for e in [
        b.unwrap(&env, &ctx).await.unwrap_err(),
        b.wrap(&ctx, &SecretBytes::random(32)).await.unwrap_err(),
        b.health().await.unwrap_err(),
        Pkcs11Kek::connect(pkcs11_cfg("fx-planted"))
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                &e,
                KekError::ForeignKeyObject {
                    attribute: "CKA_EXTRACTABLE",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("fx-planted-v1"), "{e}");
    }
}

#[tokio::test]
async fn pkcs11_rotate_keeps_old_versions() {
    let _turn = hsm_turn().await;
    kek_env();
    let b = Arc::new(Pkcs11Kek::connect(pkcs11_cfg("rot")).await.unwrap());
    check_rotate_and_rewrap(b.clone()).await;
    assert_eq!(b.versions().await.unwrap(), vec![1, 2]);
    // A restart picks the highest version.
    let again = Pkcs11Kek::connect(pkcs11_cfg("rot")).await.unwrap();
    assert_eq!(again.kek_version(), 2);
}

#[tokio::test]
async fn pkcs11_startup_errors_name_the_setting() {
    let _turn = hsm_turn().await;
    kek_env();
    let pin_file = write_file("pin-ok", PIN);
    let base = KekArgs {
        kek_backend: BackendKind::Pkcs11,
        pkcs11_module: Some(kek_env().module.clone()),
        pkcs11_token_label: Some(PIN_TOKEN.into()),
        pkcs11_pin_file: Some(pin_file),
        pkcs11_key_label: "startup".into(),
        ..KekArgs::default()
    };
    let e = keyring_refusal(&KekArgs {
        pkcs11_module: Some("/nonexistent/libpkcs11.so".into()),
        ..base.clone()
    })
    .await;
    assert!(e.contains("--pkcs11-module"), "{e}");

    let e = keyring_refusal(&KekArgs {
        pkcs11_module: Some(write_file("not-a-module.so", "garbage")),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--pkcs11-module") && e.contains("cannot load"),
        "{e}"
    );

    let e = keyring_refusal(&KekArgs {
        pkcs11_token_label: Some("no-such-token".into()),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--pkcs11-token-label") && e.contains(TOKEN),
        "{e}"
    );

    let e = keyring_refusal(&KekArgs {
        pkcs11_pin_file: Some(write_file("pin-bad", "9999")),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--pkcs11-pin-file") && e.contains("PinIncorrect"),
        "{e}"
    );
    assert!(!e.contains("9999"), "the PIN leaked into the error: {e}");

    let e = keyring_refusal(&KekArgs {
        pkcs11_pin_file: Some(kek_env().dir.join("no-pin-file")),
        ..base.clone()
    })
    .await;
    assert!(e.contains("--pkcs11-pin-file"), "{e}");

    // Nothing was created by the failed attempts; the good config then works.
    let ring = build_keyring(&base, None, "ns").await.unwrap();
    assert_eq!(ring.describe(), format!("pkcs11/{PIN_TOKEN}/startup@1"));
}

// ---------------------------------------------------------------------------------------
// AWS KMS (moto)

#[tokio::test]
async fn awskms_round_trip_and_binding() {
    kek_env();
    let moto = Moto::start();
    let arn = moto.create_key().await;
    let b = AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap();
    assert_eq!(b.kek_id(), arn);
    assert_eq!(b.kek_version(), 1);
    check_round_trip(&b).await;

    // An alias resolves to the same ARN.
    moto.client()
        .call(
            "CreateAlias",
            &serde_json::json!({"AliasName": "alias/keyward", "TargetKeyId": arn}),
        )
        .await
        .unwrap();
    let by_alias = AwsKmsKek::connect(moto.cfg("alias/keyward")).await.unwrap();
    assert_eq!(by_alias.kek_id(), arn);

    let ctx = KeyContext::new("ns", "k", 1);
    let dek = SecretBytes::random(32);
    let t = Instant::now();
    for _ in 0..20 {
        let e = b.wrap(&ctx, &dek).await.unwrap();
        assert_eq!(by_alias.unwrap(&e, &ctx).await.unwrap(), dek);
    }
    eprintln!(
        "MEASURE moto Encrypt+Decrypt round trip: {:?}",
        t.elapsed() / 20
    );
}

#[tokio::test]
async fn awskms_rotate_persists_version_tag() {
    kek_env();
    let moto = Moto::start();
    let arn = moto.create_key().await;
    let b = Arc::new(AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap());
    check_rotate_and_rewrap(b.clone()).await;
    // The version lives on the KMS key: a restart (or another replica) sees it.
    let again = AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap();
    assert_eq!(again.kek_version(), 2);
}

#[tokio::test]
async fn awskms_down_is_a_clear_error_and_nothing_changes() {
    kek_env();
    let mut moto = Moto::start();
    let arn = moto.create_key().await;
    let kms: Arc<dyn KekBackend> = Arc::new(AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap());
    let local: Arc<dyn KekBackend> = Arc::new(
        LocalKek::in_memory("old", SecretBytes::random(32), Algorithm::Aes256Kwp).unwrap(),
    );
    let ring = Keyring::new(kms.clone()).with_secondary(local.clone());
    let ctx = KeyContext::new("ns", "down", 1);
    let dek = SecretBytes::random(32);
    let old = local.wrap(&ctx, &dek).await.unwrap();
    let old_bytes = old.encode().unwrap();
    let in_kms = kms.wrap(&ctx, &dek).await.unwrap();

    moto.stop();
    for e in [
        ring.rewrap(&old, &ctx).await.unwrap_err(),
        ring.unwrap(&in_kms, &ctx).await.unwrap_err(),
        ring.health().await.unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                KekError::Unavailable {
                    backend: "awskms",
                    ..
                }
            ),
            "{e}"
        );
        let s = e.to_string();
        assert!(s.contains("--aws-endpoint-url"), "{s}");
    }
    assert_eq!(kms.kek_version(), 1);
    // The source envelope is untouched and still readable from the secondary.
    assert_eq!(old.encode().unwrap(), old_bytes);
    assert_eq!(ring.unwrap(&old, &ctx).await.unwrap(), dek);
}

#[tokio::test]
async fn awskms_startup_errors_name_the_setting() {
    kek_env();
    let moto = Moto::start();
    let base = KekArgs {
        kek_backend: BackendKind::Awskms,
        aws_kms_key_id: Some(moto.create_key().await),
        aws_region: Some("us-east-1".into()),
        aws_endpoint_url: Some(moto.url.clone()),
        aws_timeout_seconds: 5,
        ..KekArgs::default()
    };
    // moto not running on that port.
    let e = keyring_refusal(&KekArgs {
        aws_endpoint_url: Some(format!("http://127.0.0.1:{}", free_port())),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--aws-endpoint-url") && e.contains("unavailable"),
        "{e}"
    );

    let e = keyring_refusal(&KekArgs {
        aws_kms_key_id: Some("alias/does-not-exist".into()),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--aws-kms-key-id") && e.contains("NotFound"),
        "{e}"
    );

    let e = keyring_refusal(&KekArgs {
        aws_kms_key_id: None,
        ..base.clone()
    })
    .await;
    assert!(e.contains("--aws-kms-key-id"), "{e}");

    // Disabled key.
    let (disabled, bare_id) = moto.create_key_ids().await;
    moto.client()
        .call("DisableKey", &serde_json::json!({"KeyId": bare_id}))
        .await
        .unwrap();
    let e = keyring_refusal(&KekArgs {
        aws_kms_key_id: Some(disabled),
        ..base.clone()
    })
    .await;
    assert!(
        e.contains("--aws-kms-key-id") && e.contains("Disabled"),
        "{e}"
    );

    let ring = build_keyring(&base, None, "ns").await.unwrap();
    assert!(
        ring.describe().starts_with("awskms/arn:aws:kms:us-east-1:"),
        "{}",
        ring.describe()
    );
}

// ---------------------------------------------------------------------------------------
// migration between backends

#[tokio::test]
async fn migrate_passphrase_to_pkcs11_to_awskms() {
    let _turn = hsm_turn().await;
    kek_env();
    let pp: Arc<dyn KekBackend> = Arc::new(
        PassphraseKek::new("pp", pass(), Kdf::ARGON2ID_FLOOR, Algorithm::Aes256Kwp)
            .await
            .unwrap(),
    );
    let hsm: Arc<dyn KekBackend> = Arc::new(Pkcs11Kek::connect(pkcs11_cfg("mig")).await.unwrap());
    check_migration(pp, hsm.clone()).await;
    let moto = Moto::start();
    let arn = moto.create_key().await;
    let kms: Arc<dyn KekBackend> = Arc::new(AwsKmsKek::connect(moto.cfg(&arn)).await.unwrap());
    check_migration(hsm, kms.clone()).await;
    let local: Arc<dyn KekBackend> = Arc::new(
        LocalKek::in_memory("root", SecretBytes::random(32), Algorithm::Aes256Gcm).unwrap(),
    );
    check_migration(local, kms).await;
}

/// The same migration configured through flags: primary pkcs11, secondary passphrase.
#[tokio::test]
async fn build_keyring_with_secondary_migrates() {
    let _turn = hsm_turn().await;
    kek_env();
    let pp_file = write_file("pp-mig", "a long enough passphrase\n");
    let src = KekArgs {
        kek_backend: BackendKind::Passphrase,
        passphrase_file: Some(pp_file.clone()),
        argon2_memory_kib: ARGON2_MIN_MEMORY_KIB,
        argon2_time_cost: 1,
        ..KekArgs::default()
    };
    let ctx = KeyContext::new("ns", "flags", 1);
    let dek = SecretBytes::random(32);
    let env_pp = build_keyring(&src, None, "ns")
        .await
        .unwrap()
        .wrap(&ctx, &dek)
        .await
        .unwrap();

    let both = KekArgs {
        kek_backend: BackendKind::Pkcs11,
        secondary_kek_backend: Some(BackendKind::Passphrase),
        pkcs11_module: Some(kek_env().module.clone()),
        pkcs11_token_label: Some(TOKEN.into()),
        pkcs11_pin_file: Some(write_file("pin-mig", PIN)),
        pkcs11_key_label: "flags".into(),
        ..src
    };
    let ring = build_keyring(&both, None, "ns").await.unwrap();
    assert!(ring.needs_rewrap(&env_pp));
    let moved = ring.rewrap(&env_pp, &ctx).await.unwrap();
    assert_eq!(moved.backend, "pkcs11");
    assert_eq!(ring.unwrap(&moved, &ctx).await.unwrap(), dek);
}
