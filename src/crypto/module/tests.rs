//! Known answers for every entry point in both builds; in the `fips` build, each entry point
//! is also checked with the module's own service indicator (`FIPS_service_indicator_*`):
//! a call counts as approved only when the module says so.

use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[cfg(feature = "fips")]
fn approved<T>(f: impl FnOnce() -> T) -> (T, bool) {
    // The module counts approved services per thread; a change over the call means the
    // service that ran was approved (AWS-LC's FIPS_service_indicator_before/after_call).
    let before = unsafe { aws_lc_fips_sys::FIPS_service_indicator_before_call() };
    let r = f();
    let after = unsafe { aws_lc_fips_sys::FIPS_service_indicator_after_call() };
    (r, before != after)
}

/// In the default build there is no indicator: run the call, report "approved" so the same
/// test body checks the known answers in both builds.
#[cfg(not(feature = "fips"))]
fn approved<T>(f: impl FnOnce() -> T) -> (T, bool) {
    (f(), true)
}

#[test]
fn module_reports_itself_and_passes_its_start_check() {
    let i = self_check().unwrap();
    assert_eq!(i.fips, cfg!(feature = "fips"));
    if cfg!(feature = "fips") {
        assert_eq!(i.name, "AWS-LC FIPS");
        assert!(i.version.contains("FIPS module"), "{}", i.version);
    }
    assert!(version_line().contains(i.name));
}

#[test]
fn sha256_known_answer_is_approved() {
    // FIPS 180-4 example "abc".
    let (d, ok) = approved(|| sha256(b"abc"));
    assert!(ok);
    assert_eq!(
        d.to_vec(),
        h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
}

#[test]
fn hmac_sha256_known_answer_is_approved() {
    // RFC 4231 test case 2.
    let (t, ok) = approved(|| {
        let mut m = HmacSha256::new(b"Jefe");
        m.update(b"what do ya want ");
        m.update(b"for nothing?");
        m.finish()
    });
    assert!(ok);
    assert_eq!(
        t.to_vec(),
        h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

#[test]
fn pbkdf2_known_answer_is_approved() {
    let mut out = [0u8; 40];
    let (r, ok) = approved(|| {
        pbkdf2_hmac_sha256(
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            &mut out,
        )
    });
    r.unwrap();
    assert!(ok);
    assert_eq!(
        out.to_vec(),
        h("348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9")
    );
}

#[test]
fn aes_kw_and_kwp_known_answers_are_approved() {
    // RFC 3394 §4.6 (256-bit KEK, 256-bit key) and RFC 5649 §6 (192-bit KEK there; the
    // round trip below covers KWP under AES-256).
    let kek = h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
    let key = h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
    let want =
        h("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
    let (w, ok) = approved(|| aes_kw_wrap(&kek, &key));
    assert!(ok);
    assert_eq!(w.unwrap(), want);
    let (u, ok) = approved(|| aes_kw_unwrap(&kek, &want));
    assert!(ok);
    assert_eq!(u.unwrap().expose(), &key[..]);
    let (w, ok) = approved(|| aes_kwp_wrap(&kek, &key[..13]));
    assert!(ok);
    let w = w.unwrap();
    assert_eq!(w.len(), 24);
    let (u, ok) = approved(|| aes_kwp_unwrap(&kek, &w));
    assert!(ok);
    assert_eq!(u.unwrap().expose(), &key[..13]);
    let mut bad = w.clone();
    bad[3] ^= 1;
    assert_eq!(
        aes_kwp_unwrap(&kek, &bad).unwrap_err(),
        WrapError::Integrity
    );
}

#[test]
fn aes_gcm_open_known_answer_and_seal_are_approved() {
    // NIST GCM test case 16 (AES-256, 96-bit IV, AAD).
    let key = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
    let iv: [u8; 12] = h("cafebabefacedbaddecaf888").try_into().unwrap();
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let pt = h(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    );
    let ct = h(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
76fc6ece0f4e1768cddf8853bb2d551b",
    );
    let (o, ok) = approved(|| aes256_gcm_open(&key, &iv, &aad, &ct));
    assert!(ok);
    assert_eq!(o.unwrap().expose(), &pt[..]);
    let ((nonce, sealed), ok) = {
        let (r, ok) = approved(|| aes256_gcm_seal(&key, &aad, &pt));
        (r.unwrap(), ok)
    };
    assert!(ok);
    assert_eq!(
        aes256_gcm_open(&key, &nonce, &aad, &sealed)
            .unwrap()
            .expose(),
        &pt[..]
    );
    assert_eq!(
        aes256_gcm_open(&key, &nonce, b"other aad", &sealed).unwrap_err(),
        WrapError::Integrity
    );
    // Under a caller-chosen nonce: the default build reproduces the vector, the fips build
    // refuses (the module approves GCM encryption only under nonces it draws).
    match (
        aes256_gcm_seal_with_nonce(&key, &iv, &aad, &pt),
        cfg!(feature = "fips"),
    ) {
        (Ok(c), false) => assert_eq!(c, ct),
        (Err(WrapError::NotApproved(n)), true) => {
            assert!(n.to_string().contains("nonce"), "{n}")
        }
        (other, fips) => panic!("fips={fips}: {other:?}"),
    }
}

#[test]
fn ed25519_known_answer_is_approved() {
    // RFC 8032 §7.1 test 1.
    let seed: [u8; 32] = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        .try_into()
        .unwrap();
    let want = h(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    );
    let k = Ed25519Signer::from_seed(&seed);
    assert_eq!(
        k.public_key().as_bytes().to_vec(),
        h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    );
    let (sig, ok) = approved(|| k.sign(b""));
    assert!(ok);
    assert_eq!(sig.to_vec(), want);
    let (v, ok) = approved(|| k.public_key().verify(b"", &sig));
    assert!(ok && v);
    assert!(!k.public_key().verify(b"x", &sig));
    assert!(!k.public_key().verify(b"", &sig[..63]));
    assert_eq!(*k.seed(), seed);
    assert_eq!(format!("{k:?}"), "Ed25519Signer([redacted])");
    let fresh = Ed25519Signer::generate();
    assert!(fresh.public_key().verify(b"m", &fresh.sign(b"m")));
}

#[test]
fn key_generation_is_approved_and_public_keys_come_from_the_module() {
    for kind in [
        Asymmetric::P256,
        Asymmetric::P384,
        Asymmetric::Ed25519,
        Asymmetric::Rsa(2048),
    ] {
        let (k, ok) = approved(|| generate_pkcs8(kind));
        let k = k.unwrap();
        assert!(ok, "{kind:?} generation not approved");
        let spki = public_spki(kind, k.expose()).unwrap();
        assert!(spki.len() > 40, "{kind:?}");
        // Another family's parser refuses it.
        let other = if kind == Asymmetric::P256 {
            Asymmetric::P384
        } else {
            Asymmetric::P256
        };
        assert_eq!(
            public_spki(other, k.expose()).unwrap_err(),
            AsymmetricError::Invalid
        );
    }
}

/// An X25519 public key is computed only from an exact RFC 8410 v1 private key: another
/// algorithm's 48 bytes, or the right prefix with a key one byte short or long, are refused
/// (the fips build refuses X25519 altogether).
#[test]
fn x25519_public_key_needs_an_exact_rfc8410_private_key() {
    let prefix = h("302e020100300506032b656e04220420");
    let ed = generate_pkcs8(Asymmetric::Ed25519).unwrap();
    assert_eq!(ed.len(), 48);
    assert!(public_spki(Asymmetric::X25519, ed.expose()).is_err());
    for len in [31, 33] {
        let mut k = prefix.clone();
        k.extend(std::iter::repeat_n(7u8, len));
        assert!(public_spki(Asymmetric::X25519, &k).is_err(), "{len}");
    }
    let mut k = prefix.clone();
    k.extend([7u8; 32]);
    assert_eq!(
        public_spki(Asymmetric::X25519, &k).is_ok(),
        !cfg!(feature = "fips")
    );
}

#[test]
fn random_bytes_differ() {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    let ((), ok) = approved(|| fill_random(&mut a));
    assert!(ok, "random bytes not from an approved DRBG");
    fill_random(&mut b);
    assert_ne!(a, b);
    assert_ne!(a, [0u8; 32]);
}

/// What FIPS 140-3 does not approve is refused by the fips build with the alternative named,
/// and done by the default build.
#[test]
fn non_approved_requests_are_refused_only_by_the_fips_build() {
    let kek192 = [7u8; 24];
    let r = aes_kw_wrap(&kek192, &[1u8; 32]);
    let mut out = [0u8; 32];
    let a = argon2id(b"pass", &[1u8; 16], 19 * 1024, 1, 1, &mut out);
    let x = generate_pkcs8(Asymmetric::X25519);
    let mut p = [0u8; 32];
    let short_salt = pbkdf2_hmac_sha256(b"a long passphrase", b"8 bytes!", 1000, &mut p);
    if cfg!(feature = "fips") {
        let msg = |e: &dyn std::error::Error| e.to_string();
        assert!(msg(&r.unwrap_err()).contains("128- or 256-bit"));
        assert!(msg(&a.unwrap_err()).contains("--kdf pbkdf2"));
        assert!(msg(&x.unwrap_err()).contains("ecdsa-p256"));
        assert!(msg(&short_salt.unwrap_err()).contains("16 bytes"));
    } else {
        assert_eq!(r.unwrap().len(), 40);
        a.unwrap();
        x.unwrap();
        short_salt.unwrap();
    }
    // Zero iterations is refused by both builds (no KDF at all).
    assert!(pbkdf2_hmac_sha256(b"pass", &[1u8; 16], 0, &mut p).is_err());
}

/// The fips build's PBKDF2 refusals match the module: the same request made straight to the
/// module is one its indicator does not approve.
#[cfg(feature = "fips")]
#[test]
fn pbkdf2_refusals_match_the_modules_indicator() {
    let derive = |pass: &[u8], salt: &[u8], i: u32| {
        let mut out = [0u8; 32];
        let direct = approved(|| {
            aws_lc_rs::pbkdf2::derive(
                aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
                std::num::NonZeroU32::new(i).unwrap(),
                salt,
                pass,
                &mut out,
            )
        })
        .1;
        let ours = pbkdf2_hmac_sha256(pass, salt, i, &mut out).is_ok();
        assert_eq!(direct, ours, "keyward's rule and the module's differ");
        direct
    };
    let long = b"fourteen bytes";
    assert!(derive(long, &[1u8; 16], 1000));
    assert!(!derive(&long[..13], &[1u8; 16], 1000), "short password");
    assert!(!derive(long, &[1u8; 15], 1000), "short salt");
    assert!(!derive(long, &[1u8; 16], 999), "too few iterations");
}
