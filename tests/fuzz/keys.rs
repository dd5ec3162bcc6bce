//! Key output formats (PEM, JWK, JWKS) for every algorithm, read back by parsers keyward's
//! writer does not use for that purpose: the PEM/PKCS#8/SPKI and JWK readers of `p256`, `p384`,
//! `rsa`, `ed25519-dalek`, and generic `pkcs8`/`spki` DER for X25519 (which keyward writes by
//! hand). Property: every form of one key names the same key pair; public forms carry no
//! private member; arbitrary stored material or SPKI is refused with a typed error.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward::crd::KeyAlgorithm::{self, *};
use keyward::crypto::SecretBytes;
use keyward::keys::{self, KeyError};
use pkcs8::{DecodePrivateKey, DecodePublicKey};
use proptest::prelude::*;
use serde_json::Value;
use std::sync::OnceLock;

const ALL: [KeyAlgorithm; 11] = [
    Aes256, HmacSha256, HmacSha384, HmacSha512, Rsa2048, Rsa3072, Rsa4096, EcdsaP256, EcdsaP384,
    Ed25519, X25519,
];

/// Material for `alg`: fresh for every case, except RSA, generated once per size per run
/// (seconds each in a debug build; the formats, not the generator, are under test).
fn material(alg: KeyAlgorithm) -> SecretBytes {
    static RSA: [OnceLock<SecretBytes>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    match alg {
        Rsa2048 => RSA[0].get_or_init(|| keys::generate(alg).unwrap()).clone(),
        Rsa3072 => RSA[1].get_or_init(|| keys::generate(alg).unwrap()).clone(),
        Rsa4096 => RSA[2].get_or_init(|| keys::generate(alg).unwrap()).clone(),
        _ => keys::generate(alg).unwrap(),
    }
}

fn b64u(v: &Value, member: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(
            v[member]
                .as_str()
                .unwrap_or_else(|| panic!("no {member} in {v}")),
        )
        .unwrap()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// Only the EC members of a JWK: the `elliptic-curve` JWK reader refuses members it does not
/// know (`alg`, `use`, `kid`, which RFC 7517 allows and keyward writes).
fn ec_members(j: &Value) -> String {
    let mut out = serde_json::Map::new();
    for m in ["kty", "crv", "x", "y", "d"] {
        if let Some(v) = j.get(m) {
            out.insert(m.into(), v.clone());
        }
    }
    Value::Object(out).to_string()
}

/// Check every output form of `m` against the independent parsers.
fn check_forms(alg: KeyAlgorithm, m: &SecretBytes, kid: &str) -> Result<(), TestCaseError> {
    if alg.is_symmetric() {
        let pem = keys::private_pem(alg, m);
        prop_assert!(
            matches!(pem, Err(KeyError::Unsupported { .. })),
            "private PEM of a symmetric key"
        );
        prop_assert!(keys::public_pem(alg, m).unwrap().is_none());
        let public = keys::jwk(alg, m, kid, false);
        prop_assert!(
            matches!(public, Err(KeyError::Unsupported { .. })),
            "public JWK of a symmetric key"
        );
        let j = json(&keys::jwk(alg, m, kid, true).unwrap());
        prop_assert_eq!(&j["kty"], "oct");
        prop_assert_eq!(&j["kid"], kid);
        prop_assert_eq!(b64u(&j, "k"), m.expose().to_vec());
        return Ok(());
    }
    let priv_pem = keys::private_pem(alg, m).unwrap();
    let pub_pem = keys::public_pem(alg, m).unwrap().unwrap();
    let pub_jwk = json(&keys::jwk(alg, m, kid, false).unwrap());
    let priv_jwk = json(&keys::jwk(alg, m, kid, true).unwrap());
    prop_assert_eq!(&pub_jwk["kid"], kid);
    prop_assert_eq!(&priv_jwk["kid"], kid);
    for secret in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        prop_assert!(pub_jwk.get(secret).is_none(), "public JWK has {}", secret);
    }
    match alg {
        EcdsaP256 => {
            let sk = p256::SecretKey::from_pkcs8_pem(&priv_pem).unwrap();
            let pk = p256::PublicKey::from_public_key_pem(&pub_pem).unwrap();
            prop_assert_eq!(sk.public_key(), pk);
            prop_assert_eq!(
                p256::PublicKey::from_jwk_str(&ec_members(&pub_jwk)).unwrap(),
                pk
            );
            let from_jwk = p256::SecretKey::from_jwk_str(&ec_members(&priv_jwk)).unwrap();
            prop_assert!(from_jwk.to_bytes() == sk.to_bytes());
        }
        EcdsaP384 => {
            let sk = p384::SecretKey::from_pkcs8_pem(&priv_pem).unwrap();
            let pk = p384::PublicKey::from_public_key_pem(&pub_pem).unwrap();
            prop_assert_eq!(sk.public_key(), pk);
            prop_assert_eq!(
                p384::PublicKey::from_jwk_str(&ec_members(&pub_jwk)).unwrap(),
                pk
            );
            let from_jwk = p384::SecretKey::from_jwk_str(&ec_members(&priv_jwk)).unwrap();
            prop_assert!(from_jwk.to_bytes() == sk.to_bytes());
        }
        Rsa2048 | Rsa3072 | Rsa4096 => {
            use rsa::BigUint;
            use rsa::traits::{PrivateKeyParts, PublicKeyParts};
            let sk = rsa::RsaPrivateKey::from_pkcs8_pem(&priv_pem).unwrap();
            let pk = rsa::RsaPublicKey::from_public_key_pem(&pub_pem).unwrap();
            prop_assert_eq!(sk.to_public_key(), pk.clone());
            let bits = match alg {
                Rsa2048 => 2048,
                Rsa3072 => 3072,
                _ => 4096,
            };
            prop_assert_eq!(pk.n().bits(), bits);
            let big = |j: &Value, member: &str| BigUint::from_bytes_be(&b64u(j, member));
            let from_jwk = rsa::RsaPublicKey::new(big(&pub_jwk, "n"), big(&pub_jwk, "e")).unwrap();
            prop_assert_eq!(from_jwk, pk);
            let (p, q, d) = (
                big(&priv_jwk, "p"),
                big(&priv_jwk, "q"),
                big(&priv_jwk, "d"),
            );
            let one = BigUint::from(1u8);
            prop_assert_eq!(big(&priv_jwk, "dp"), &d % (&p - &one));
            prop_assert_eq!(big(&priv_jwk, "dq"), &d % (&q - &one));
            prop_assert_eq!((big(&priv_jwk, "qi") * &q) % &p, one);
            let rebuilt = rsa::RsaPrivateKey::from_components(
                big(&priv_jwk, "n"),
                big(&priv_jwk, "e"),
                d,
                vec![p, q],
            )
            .unwrap();
            prop_assert!(rebuilt.d() == sk.d() && rebuilt.n() == sk.n());
        }
        Ed25519 => {
            use ed25519_dalek::{Signer, Verifier};
            let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(&priv_pem).unwrap();
            let vk = ed25519_dalek::VerifyingKey::from_public_key_pem(&pub_pem).unwrap();
            prop_assert_eq!(sk.verifying_key(), vk);
            prop_assert_eq!(&pub_jwk["crv"], "Ed25519");
            let x: [u8; 32] = b64u(&pub_jwk, "x").try_into().unwrap();
            let vk_jwk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
            let d: [u8; 32] = b64u(&priv_jwk, "d").try_into().unwrap();
            let sk_jwk = ed25519_dalek::SigningKey::from_bytes(&d);
            // A signature by the JWK's private key verifies under the PEM's public key and the
            // other way round.
            let msg = b"keyward fuzz";
            prop_assert!(vk.verify(msg, &sk_jwk.sign(msg)).is_ok());
            prop_assert!(vk_jwk.verify(msg, &sk.sign(msg)).is_ok());
        }
        X25519 => {
            // Generic PKCS#8 / SPKI readers: algorithm OID 1.3.101.110 (RFC 8410), the private
            // key as an OCTET STRING inside the PKCS#8 privateKey, the public key as the bit
            // string.
            let oid = pkcs8::ObjectIdentifier::new_unwrap("1.3.101.110");
            let (label, doc) = pkcs8::SecretDocument::from_pem(&priv_pem).unwrap();
            prop_assert_eq!(label, "PRIVATE KEY");
            let info = pkcs8::PrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
            prop_assert_eq!(info.algorithm.oid, oid);
            let inner = info.private_key;
            prop_assert_eq!(&inner[..2], &[0x04, 0x20]);
            let d: [u8; 32] = inner[2..].try_into().unwrap();
            let (label, spki_doc) = spki::Document::from_pem(&pub_pem).unwrap();
            prop_assert_eq!(label, "PUBLIC KEY");
            let spki = spki::SubjectPublicKeyInfoRef::try_from(spki_doc.as_bytes()).unwrap();
            prop_assert_eq!(spki.algorithm.oid, oid);
            let expected = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(d));
            prop_assert_eq!(spki.subject_public_key.raw_bytes(), expected.as_bytes());
            prop_assert_eq!(b64u(&pub_jwk, "x"), expected.as_bytes().to_vec());
            prop_assert_eq!(b64u(&priv_jwk, "d"), d.to_vec());
        }
        _ => unreachable!("symmetric handled above"),
    }
    // The public-only path (from the stored SPKI, without the private key) gives the same
    // JWK, and a JWKS of this version holds exactly it.
    let spki = keys::public_spki_der(alg, m).unwrap().unwrap();
    let from_spki = json(&keys::public_jwk_from_spki(alg, &spki, kid).unwrap());
    prop_assert_eq!(&from_spki, &pub_jwk);
    let set = json(&keys::jwks(alg, &[(kid.to_string(), m)]).unwrap());
    prop_assert_eq!(&set["keys"][0], &pub_jwk);
    prop_assert_eq!(set["keys"].as_array().map(Vec::len), Some(1));
    Ok(())
}

proptest! {
    #![proptest_config(crate::config("keys_output_round_trips"))]

    /// Generate, serialise to every format, parse back independently: the same key.
    #[test]
    fn keys_output_round_trips(
        alg in prop::sample::select(ALL.to_vec()),
        ns in "[a-z0-9-]{1,63}",
        name in "[a-z0-9.-]{1,253}",
        version in 1u32..1_000_000,
    ) {
        let m = material(alg);
        let kid = keys::kid(&ns, &name, version);
        prop_assert_eq!(kid.len(), 16);
        check_forms(alg, &m, &kid)?;
    }
}

proptest! {
    #![proptest_config(crate::config("keys_arbitrary_material_and_spki"))]

    /// Stored material or an SPKI that is not a key of the algorithm: refused with
    /// `KeyError::Invalid` naming the algorithm (never a panic); whatever is accepted is
    /// self-consistent (the JWK from the SPKI equals the JWK from the material).
    #[test]
    fn keys_arbitrary_material_and_spki(
        alg in prop::sample::select(ALL.to_vec()),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        valid_prefix in any::<bool>(),
    ) {
        // Material and SPKI inputs: arbitrary bytes, or a real encoding of this algorithm
        // with up to four bytes overwritten, so the parsers get past their first checks.
        let (material_bytes, bytes) = if valid_prefix && !alg.is_symmetric() {
            let real = material(alg);
            let corrupt = |mut v: Vec<u8>| {
                for pair in bytes.chunks_exact(2).take(4) {
                    let i = pair[0] as usize * v.len() / 256;
                    v[i] = pair[1];
                }
                v
            };
            (
                corrupt(real.expose().to_vec()),
                corrupt(keys::public_spki_der(alg, &real).unwrap().unwrap()),
            )
        } else {
            (bytes.clone(), bytes)
        };
        let m = SecretBytes::from_slice(&material_bytes);
        if alg.is_symmetric() {
            prop_assert!(keys::public_spki_der(alg, &m).unwrap().is_none());
        } else {
            match keys::public_spki_der(alg, &m) {
                Err(KeyError::Invalid(a)) => prop_assert_eq!(a, alg.as_str()),
                Ok(spki) => {
                    let spki = spki.unwrap();
                    let a = json(&keys::public_jwk_from_spki(alg, &spki, "k").unwrap());
                    let b = json(&keys::jwk(alg, &m, "k", false).unwrap());
                    prop_assert_eq!(a, b);
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
        match keys::public_jwk_from_spki(alg, &bytes, "k") {
            Ok(j) => {
                prop_assert!(!alg.is_symmetric());
                let j = json(&j);
                prop_assert!(j.get("d").is_none());
                // Accepted only if an independent parser reads the same public key.
                match alg {
                    EcdsaP256 => prop_assert!(p256::PublicKey::from_public_key_der(&bytes).is_ok()),
                    EcdsaP384 => prop_assert!(p384::PublicKey::from_public_key_der(&bytes).is_ok()),
                    Rsa2048 | Rsa3072 | Rsa4096 => {
                        prop_assert!(rsa::RsaPublicKey::from_public_key_der(&bytes).is_ok())
                    }
                    Ed25519 => prop_assert!(
                        ed25519_dalek::VerifyingKey::from_public_key_der(&bytes).is_ok()
                    ),
                    _ => {
                        let x25519 = spki::SubjectPublicKeyInfoRef::try_from(&bytes[..])
                            .is_ok_and(|s| {
                                s.algorithm.oid
                                    == pkcs8::ObjectIdentifier::new_unwrap("1.3.101.110")
                                    && s.subject_public_key.raw_bytes().len() == 32
                            });
                        prop_assert!(x25519, "accepted SPKI is not an X25519 SPKI");
                    }
                }
            }
            Err(KeyError::Invalid(a)) => prop_assert_eq!(a, alg.as_str()),
            Err(KeyError::Unsupported { .. }) => prop_assert!(alg.is_symmetric()),
            Err(KeyError::NotApproved(n)) => prop_assert!(false, "only decoding here: {}", n),
        }
    }
}
