use super::*;
use crate::crypto::Algorithm;
use crate::kek::KekBackend;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An in-memory KEK with versions, rotation, an off switch and a call counter: the behaviour
/// the plugin relies on, without a token or a network.
struct TestKek {
    keys: Mutex<Vec<SecretBytes>>,
    down: AtomicBool,
    calls: AtomicUsize,
}

impl TestKek {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            keys: Mutex::new(vec![SecretBytes::random(32)]),
            down: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        })
    }

    fn up(&self) -> Result<(), KekError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(KekError::Unavailable {
                backend: "test",
                setting: "--test",
                detail: "switched off".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl KekBackend for TestKek {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn kek_id(&self) -> String {
        "kek".into()
    }
    fn kek_version(&self) -> u32 {
        self.keys.lock().unwrap().len() as u32
    }
    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        self.up()?;
        let v = self.kek_version();
        let kek = self.keys.lock().unwrap()[v as usize - 1].clone();
        Ok(
            Envelope::for_context(Algorithm::Aes256Kwp, "test", "kek", v, ctx)
                .seal_with_raw_kek(&kek, dek)?,
        )
    }
    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        self.up()?;
        crate::kek::check_owner(env, "test", "kek")?;
        let kek = self
            .keys
            .lock()
            .unwrap()
            .get((env.kek_version as usize).wrapping_sub(1))
            .cloned()
            .ok_or_else(|| KekError::unknown_kek(env))?;
        Ok(env.open_with_raw_kek(&kek, ctx)?)
    }
    async fn health(&self) -> Result<(), KekError> {
        self.up()
    }
    async fn rotate(&self) -> Result<u32, KekError> {
        let mut k = self.keys.lock().unwrap();
        k.push(SecretBytes::random(32));
        Ok(k.len() as u32)
    }
}

fn plugin(kek: &Arc<TestKek>) -> KmsPlugin {
    KmsPlugin::new(
        Keyring::new(kek.clone()),
        Duration::from_secs(60),
        Duration::from_millis(1),
    )
}

#[tokio::test]
async fn a_seed_round_trips_and_the_ciphertext_fits_the_apiservers_limits() {
    let kek = TestKek::new();
    let p = plugin(&kek);
    let seed = [7u8; 32];
    let s = p.encrypt(&seed).await.unwrap();
    assert_eq!(s.key_id, "keyward:test/kek@1");
    assert_eq!(s.key_id, p.key_id(), "Encrypt's key id must equal Status's");
    assert!(
        s.ciphertext.len() <= CIPHERTEXT_MAX,
        "{}",
        s.ciphertext.len()
    );
    assert!(check_annotations(&s.annotations).is_ok());
    assert!(
        !s.ciphertext.windows(32).any(|w| w == seed),
        "plaintext visible"
    );
    let back = p
        .decrypt(&s.ciphertext, &s.key_id, &s.annotations)
        .await
        .unwrap();
    assert_eq!(back.expose(), &seed);
    // Two encryptions of the same seed differ (fresh data key and nonce).
    let again = p.encrypt(&seed).await.unwrap();
    assert_ne!(again.ciphertext, s.ciphertext);
}

#[tokio::test]
async fn any_change_to_ciphertext_key_id_or_annotations_is_refused() {
    let kek = TestKek::new();
    let p = plugin(&kek);
    let s = p.encrypt(&[1u8; 32]).await.unwrap();
    for i in 0..s.ciphertext.len() {
        let mut ct = s.ciphertext.clone();
        ct[i] ^= 0x01;
        assert!(
            p.decrypt(&ct, &s.key_id, &s.annotations).await.is_err(),
            "flipped byte {i} accepted"
        );
    }
    let e = p
        .decrypt(&s.ciphertext, "keyward:test/kek@2", &s.annotations)
        .await
        .unwrap_err();
    assert!(matches!(e, KmsError::Integrity), "{e}");
    let mut a = s.annotations.clone();
    a.insert(FORMAT_ANNOTATION.into(), b"2".to_vec());
    assert!(matches!(
        p.decrypt(&s.ciphertext, &s.key_id, &a).await.unwrap_err(),
        KmsError::Integrity
    ));
    let mut a = s.annotations.clone();
    a.insert("extra.example.com".into(), b"x".to_vec());
    assert!(matches!(
        p.decrypt(&s.ciphertext, &s.key_id, &a).await.unwrap_err(),
        KmsError::Integrity
    ));
    assert!(matches!(
        p.decrypt(&s.ciphertext, &s.key_id, &BTreeMap::new())
            .await
            .unwrap_err(),
        KmsError::Integrity
    ));
    // Truncations never panic and never decrypt.
    for n in 0..s.ciphertext.len() {
        assert!(
            p.decrypt(&s.ciphertext[..n], &s.key_id, &s.annotations)
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_ciphertext_made_for_a_managed_key_cannot_stand_in() {
    // An envelope the KEK made for a ManagedKey version, spliced into a KMS ciphertext.
    let kek = TestKek::new();
    let p = plugin(&kek);
    let s = p.encrypt(&[3u8; 32]).await.unwrap();
    let foreign = kek
        .wrap(
            &KeyContext::new("default", "app", 1),
            &SecretBytes::random(32),
        )
        .await
        .unwrap()
        .encode()
        .unwrap();
    let n = u16::from_be_bytes([s.ciphertext[5], s.ciphertext[6]]) as usize;
    let mut ct = s.ciphertext[..5].to_vec();
    ct.extend_from_slice(&(foreign.len() as u16).to_be_bytes());
    ct.extend_from_slice(&foreign);
    ct.extend_from_slice(&s.ciphertext[7 + n..]);
    assert!(matches!(
        p.decrypt(&ct, &s.key_id, &s.annotations).await.unwrap_err(),
        KmsError::Integrity
    ));
}

#[tokio::test]
async fn a_kek_rotation_changes_the_key_id_and_old_ciphertexts_still_decrypt() {
    let kek = TestKek::new();
    let p = plugin(&kek);
    let old = p.encrypt(&[4u8; 32]).await.unwrap();
    kek.rotate().await.unwrap();
    assert_eq!(p.status().await.key_id, "keyward:test/kek@2");
    let new = p.encrypt(&[5u8; 32]).await.unwrap();
    assert_eq!(new.key_id, "keyward:test/kek@2");
    assert_eq!(
        p.decrypt(&old.ciphertext, &old.key_id, &old.annotations)
            .await
            .unwrap()
            .expose(),
        &[4u8; 32]
    );
    assert_eq!(
        p.decrypt(&new.ciphertext, &new.key_id, &new.annotations)
            .await
            .unwrap()
            .expose(),
        &[5u8; 32]
    );
}

#[tokio::test]
async fn status_is_a_cached_kek_round_trip_and_says_what_failed() {
    let kek = TestKek::new();
    let p = KmsPlugin::new(
        Keyring::new(kek.clone()),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let st = p.status().await;
    assert_eq!((st.version.as_str(), st.healthz.as_str()), ("v2", "ok"));
    let calls = kek.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 2, "one wrap and one unwrap");
    for _ in 0..100 {
        p.status().await;
    }
    assert_eq!(
        kek.calls.load(Ordering::SeqCst),
        calls,
        "polls are answered from cache"
    );

    // Down: a fresh plugin (no cached answer) reports it; Encrypt fails cleanly.
    kek.down.store(true, Ordering::SeqCst);
    let p = plugin(&kek);
    let st = p.status().await;
    assert!(
        st.healthz.starts_with("keyward KEK backend unhealthy: "),
        "{}",
        st.healthz
    );
    assert!(st.healthz.contains("switched off"), "{}", st.healthz);
    let e = p.encrypt(&[1u8; 32]).await.unwrap_err();
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    // Back up: the short negative TTL lets the next poll see it.
    kek.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(p.status().await.healthz, "ok");
}

#[tokio::test]
async fn bounds_are_checked_before_the_kek_is_asked() {
    let kek = TestKek::new();
    let p = plugin(&kek);
    let s = p.encrypt(&[1u8; 32]).await.unwrap();
    let before = kek.calls.load(Ordering::SeqCst);
    let long_id = "k".repeat(KEY_ID_MAX + 1);
    for (ct, id, a) in [
        (s.ciphertext.clone(), "", s.annotations.clone()),
        (
            s.ciphertext.clone(),
            long_id.as_str(),
            s.annotations.clone(),
        ),
        (
            vec![0u8; CIPHERTEXT_MAX + 1],
            s.key_id.as_str(),
            s.annotations.clone(),
        ),
        (b"nope".to_vec(), s.key_id.as_str(), s.annotations.clone()),
        (
            s.ciphertext.clone(),
            s.key_id.as_str(),
            BTreeMap::from([("Not_A_Domain".to_string(), vec![])]),
        ),
        (
            s.ciphertext.clone(),
            s.key_id.as_str(),
            BTreeMap::from([("big.example.com".to_string(), vec![0u8; ANNOTATIONS_MAX])]),
        ),
    ] {
        let e = p.decrypt(&ct, id, &a).await.unwrap_err();
        assert!(matches!(e, KmsError::Invalid { .. }), "{e}");
    }
    assert_eq!(kek.calls.load(Ordering::SeqCst), before);
    // An empty or oversized plaintext is refused too.
    assert!(matches!(
        p.encrypt(&[]).await.unwrap_err(),
        KmsError::Invalid { .. }
    ));
    assert!(matches!(
        p.encrypt(&[0u8; 2048]).await.unwrap_err(),
        KmsError::Invalid { .. }
    ));
}

#[test]
fn fqdn_rules_follow_upstream() {
    for ok in ["version.kms.keyward.io", "a.b", "a-1.b-2.", "x.y.z"] {
        assert!(is_fqdn(ok), "{ok}");
    }
    for bad in [
        "single", "", ".a", "a..b", "-a.b", "a-.b", "A.b", "a_b.c", "a.b/c",
    ] {
        assert!(!is_fqdn(bad), "{bad}");
    }
}

#[test]
fn the_in_cluster_local_backend_is_refused() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct A {
        #[command(flatten)]
        kek: KekArgs,
    }
    let a = A::parse_from(["x", "--kek-backend", "local"]);
    let e = check_backend(&a.kek).unwrap_err().to_string();
    assert!(e.contains("--local-kek-file"), "{e}");
    let a = A::parse_from(["x", "--kek-backend", "local", "--local-kek-file", "/k"]);
    assert!(check_backend(&a.kek).is_ok());
    let a = A::parse_from([
        "x",
        "--kek-backend",
        "passphrase",
        "--secondary-kek-backend",
        "local",
    ]);
    assert!(check_backend(&a.kek).is_err());
}
