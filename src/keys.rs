//! Key generation per algorithm and the output formats workloads consume: raw, base64, hex,
//! PEM (PKCS#8 private / SPKI public), JWK and JWKS.
//!
//! Material is what the envelope stores: random bytes for AES/HMAC, PKCS#8 DER for asymmetric
//! keys. Private forms are returned in zeroizing buffers; public forms may be shown anywhere.

use crate::crd::KeyAlgorithm;
use crate::crypto::SecretBytes;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::rngs::OsRng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Errors when generating or converting keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Stored material does not parse for its algorithm (wrong algorithm or damage).
    #[error("stored {0} material is not a valid key")]
    Invalid(&'static str),
    /// The format does not exist for this algorithm.
    #[error("format {format} is not available for {algorithm} keys: {hint}")]
    Unsupported {
        /// Requested format.
        format: String,
        /// Key algorithm.
        algorithm: &'static str,
        /// What to use instead.
        hint: &'static str,
    },
}

// RFC 8410 fixed DER prefixes for 32-byte X25519 / Ed25519 keys.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Generate material. RSA takes up to seconds: call from a blocking thread.
pub fn generate(alg: KeyAlgorithm) -> SecretBytes {
    use KeyAlgorithm::*;
    match alg {
        Aes256 | HmacSha256 => SecretBytes::random(32),
        HmacSha384 => SecretBytes::random(48),
        HmacSha512 => SecretBytes::random(64),
        Rsa2048 | Rsa3072 | Rsa4096 => {
            let bits = match alg {
                Rsa2048 => 2048,
                Rsa3072 => 3072,
                _ => 4096,
            };
            let k = rsa::RsaPrivateKey::new(&mut OsRng, bits).expect("RSA generation");
            SecretBytes::from_slice(k.to_pkcs8_der().expect("PKCS#8").as_bytes())
        }
        EcdsaP256 => SecretBytes::from_slice(
            p256::SecretKey::random(&mut OsRng)
                .to_pkcs8_der()
                .expect("PKCS#8")
                .as_bytes(),
        ),
        EcdsaP384 => SecretBytes::from_slice(
            p384::SecretKey::random(&mut OsRng)
                .to_pkcs8_der()
                .expect("PKCS#8")
                .as_bytes(),
        ),
        Ed25519 => {
            // PKCS#8 v1 (RFC 8410): v2 with the embedded public key is not read by every
            // OpenSSL 3 release.
            let k = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let mut der = ED25519_PKCS8_PREFIX.to_vec();
            der.extend_from_slice(k.as_bytes());
            SecretBytes::new(der)
        }
        X25519 => {
            let k = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let mut der = X25519_PKCS8_PREFIX.to_vec();
            der.extend_from_slice(k.as_bytes());
            SecretBytes::new(der)
        }
    }
}

fn x25519_secret(m: &SecretBytes) -> Result<x25519_dalek::StaticSecret, KeyError> {
    let b = m.expose();
    if b.len() != 48 || b[..16] != X25519_PKCS8_PREFIX {
        return Err(KeyError::Invalid("x25519"));
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    raw.copy_from_slice(&b[16..]);
    Ok(x25519_dalek::StaticSecret::from(*raw))
}

/// Public key as SPKI DER (None for symmetric keys).
pub fn public_spki_der(alg: KeyAlgorithm, m: &SecretBytes) -> Result<Option<Vec<u8>>, KeyError> {
    use KeyAlgorithm::*;
    let der = match alg {
        Aes256 | HmacSha256 | HmacSha384 | HmacSha512 => return Ok(None),
        Rsa2048 | Rsa3072 | Rsa4096 => rsa::RsaPrivateKey::from_pkcs8_der(m.expose())
            .map_err(|_| KeyError::Invalid(alg.as_str()))?
            .to_public_key()
            .to_public_key_der(),
        EcdsaP256 => p256::SecretKey::from_pkcs8_der(m.expose())
            .map_err(|_| KeyError::Invalid("ecdsa-p256"))?
            .public_key()
            .to_public_key_der(),
        EcdsaP384 => p384::SecretKey::from_pkcs8_der(m.expose())
            .map_err(|_| KeyError::Invalid("ecdsa-p384"))?
            .public_key()
            .to_public_key_der(),
        Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_der(m.expose())
            .map_err(|_| KeyError::Invalid("ed25519"))?
            .verifying_key()
            .to_public_key_der(),
        X25519 => {
            let p = x25519_dalek::PublicKey::from(&x25519_secret(m)?);
            let mut der = X25519_SPKI_PREFIX.to_vec();
            der.extend_from_slice(p.as_bytes());
            return Ok(Some(der));
        }
    };
    Ok(Some(
        der.map_err(|_| KeyError::Invalid(alg.as_str()))?.into_vec(),
    ))
}

fn pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Public key PEM (SPKI), for status and public-only mounts.
pub fn public_pem(alg: KeyAlgorithm, m: &SecretBytes) -> Result<Option<String>, KeyError> {
    Ok(public_spki_der(alg, m)?.map(|d| pem("PUBLIC KEY", &d).to_string()))
}

/// Private key PEM (PKCS#8). Symmetric keys have no PEM form.
pub fn private_pem(alg: KeyAlgorithm, m: &SecretBytes) -> Result<Zeroizing<String>, KeyError> {
    if alg.is_symmetric() {
        return Err(KeyError::Unsupported {
            format: "pem".into(),
            algorithm: alg.as_str(),
            hint: "use raw, base64, hex or jwk",
        });
    }
    Ok(pem("PRIVATE KEY", m.expose()))
}

/// Stable key id of a key version: reveals nothing about the key, same on every mount.
pub fn kid(namespace: &str, name: &str, version: u32) -> String {
    let d = Sha256::digest(format!("keyward-kid-v1\0{namespace}/{name}\0{version}").as_bytes());
    URL_SAFE_NO_PAD.encode(&d[..12])
}

fn b64u(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// JWK of a version. `private` includes secret members (d, k, ...) and is then zeroizing.
pub fn jwk(
    alg: KeyAlgorithm,
    m: &SecretBytes,
    kid: &str,
    private: bool,
) -> Result<Zeroizing<String>, KeyError> {
    use KeyAlgorithm::*;
    let mut v: Value = match alg {
        Aes256 | HmacSha256 | HmacSha384 | HmacSha512 => {
            if !private {
                return Err(KeyError::Unsupported {
                    format: "public jwk".into(),
                    algorithm: alg.as_str(),
                    hint: "symmetric keys have no public part",
                });
            }
            let a = match alg {
                Aes256 => "A256GCM",
                HmacSha256 => "HS256",
                HmacSha384 => "HS384",
                _ => "HS512",
            };
            json!({"kty": "oct", "k": b64u(m.expose()), "alg": a, "use": if alg == Aes256 { "enc" } else { "sig" }})
        }
        Rsa2048 | Rsa3072 | Rsa4096 => {
            use rsa::traits::{PrivateKeyParts, PublicKeyParts};
            let k = rsa::RsaPrivateKey::from_pkcs8_der(m.expose())
                .map_err(|_| KeyError::Invalid(alg.as_str()))?;
            let mut j = json!({"kty": "RSA", "n": b64u(&k.n().to_bytes_be()), "e": b64u(&k.e().to_bytes_be()), "alg": "RS256", "use": "sig"});
            if private {
                // Two-prime keys only (what `generate` makes; JWK's p/q/dp/dq/qi assume it).
                let [p, q] = k.primes() else {
                    return Err(KeyError::Invalid(alg.as_str()));
                };
                let one = rsa::BigUint::from(1u8);
                let dp = k.d() % (p - &one);
                let dq = k.d() % (q - &one);
                let qi = k.crt_coefficient().ok_or(KeyError::Invalid(alg.as_str()))?;
                j["d"] = b64u(&k.d().to_bytes_be()).into();
                j["p"] = b64u(&p.to_bytes_be()).into();
                j["q"] = b64u(&q.to_bytes_be()).into();
                j["dp"] = b64u(&dp.to_bytes_be()).into();
                j["dq"] = b64u(&dq.to_bytes_be()).into();
                j["qi"] = b64u(&qi.to_bytes_be()).into();
            }
            j
        }
        EcdsaP256 => {
            let k = p256::SecretKey::from_pkcs8_der(m.expose())
                .map_err(|_| KeyError::Invalid("ecdsa-p256"))?;
            let mut j: Value = if private {
                serde_json::from_str(&k.to_jwk_string()).expect("jwk json")
            } else {
                serde_json::from_str(&k.public_key().to_jwk_string()).expect("jwk json")
            };
            j["alg"] = "ES256".into();
            j["use"] = "sig".into();
            j
        }
        EcdsaP384 => {
            let k = p384::SecretKey::from_pkcs8_der(m.expose())
                .map_err(|_| KeyError::Invalid("ecdsa-p384"))?;
            let mut j: Value = if private {
                serde_json::from_str(&k.to_jwk_string()).expect("jwk json")
            } else {
                serde_json::from_str(&k.public_key().to_jwk_string()).expect("jwk json")
            };
            j["alg"] = "ES384".into();
            j["use"] = "sig".into();
            j
        }
        Ed25519 => {
            let k = ed25519_dalek::SigningKey::from_pkcs8_der(m.expose())
                .map_err(|_| KeyError::Invalid("ed25519"))?;
            let mut j = json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(k.verifying_key().as_bytes()), "alg": "EdDSA", "use": "sig"});
            if private {
                j["d"] = b64u(k.as_bytes()).into();
            }
            j
        }
        X25519 => {
            let s = x25519_secret(m)?;
            let p = x25519_dalek::PublicKey::from(&s);
            let mut j = json!({"kty": "OKP", "crv": "X25519", "x": b64u(p.as_bytes()), "alg": "ECDH-ES", "use": "enc"});
            if private {
                j["d"] = b64u(s.as_bytes()).into();
            }
            j
        }
    };
    v["kid"] = kid.into();
    Ok(Zeroizing::new(v.to_string()))
}

/// Public JWK from an SPKI DER public key (for public-only grants, which never see the
/// private key).
pub fn public_jwk_from_spki(
    alg: KeyAlgorithm,
    spki: &[u8],
    kid: &str,
) -> Result<Zeroizing<String>, KeyError> {
    use KeyAlgorithm::*;
    use pkcs8::DecodePublicKey;
    let mut v = match alg {
        Rsa2048 | Rsa3072 | Rsa4096 => {
            use rsa::traits::PublicKeyParts;
            let k = rsa::RsaPublicKey::from_public_key_der(spki)
                .map_err(|_| KeyError::Invalid(alg.as_str()))?;
            json!({"kty": "RSA", "n": b64u(&k.n().to_bytes_be()), "e": b64u(&k.e().to_bytes_be()), "alg": "RS256", "use": "sig"})
        }
        EcdsaP256 => {
            let k = p256::PublicKey::from_public_key_der(spki)
                .map_err(|_| KeyError::Invalid("ecdsa-p256"))?;
            let mut j: Value = serde_json::from_str(&k.to_jwk_string()).expect("jwk json");
            j["alg"] = "ES256".into();
            j["use"] = "sig".into();
            j
        }
        EcdsaP384 => {
            let k = p384::PublicKey::from_public_key_der(spki)
                .map_err(|_| KeyError::Invalid("ecdsa-p384"))?;
            let mut j: Value = serde_json::from_str(&k.to_jwk_string()).expect("jwk json");
            j["alg"] = "ES384".into();
            j["use"] = "sig".into();
            j
        }
        Ed25519 | X25519 => {
            // The whole SPKI is fixed but for the key: a 44-byte blob of another algorithm
            // (or garbage) must not come out as this algorithm's JWK.
            let prefix = if alg == Ed25519 {
                ED25519_SPKI_PREFIX
            } else {
                X25519_SPKI_PREFIX
            };
            if spki.len() != 44 || spki[..12] != prefix {
                return Err(KeyError::Invalid(alg.as_str()));
            }
            // An Ed25519 public key must be a point on the curve (every 32-byte string is a
            // valid X25519 public value, so X25519 needs no such check).
            if alg == Ed25519 && ed25519_dalek::VerifyingKey::from_public_key_der(spki).is_err() {
                return Err(KeyError::Invalid(alg.as_str()));
            }
            let (crv, a, u) = if alg == Ed25519 {
                ("Ed25519", "EdDSA", "sig")
            } else {
                ("X25519", "ECDH-ES", "enc")
            };
            json!({"kty": "OKP", "crv": crv, "x": b64u(&spki[12..]), "alg": a, "use": u})
        }
        _ => {
            return Err(KeyError::Unsupported {
                format: "public jwk".into(),
                algorithm: alg.as_str(),
                hint: "symmetric keys have no public part",
            });
        }
    };
    v["kid"] = kid.into();
    Ok(Zeroizing::new(v.to_string()))
}

/// JWKS with the public keys of the given versions (current first, then still-valid previous
/// ones), so verifiers accept both during a rotation's grace period.
pub fn jwks(alg: KeyAlgorithm, versions: &[(String, &SecretBytes)]) -> Result<String, KeyError> {
    let keys = versions
        .iter()
        .map(|(kid, m)| {
            jwk(alg, m, kid, false).map(|s| serde_json::from_str::<Value>(&s).expect("jwk json"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "keys": keys }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyAlgorithm::*;

    const ALL: [KeyAlgorithm; 11] = [
        Aes256, HmacSha256, HmacSha384, HmacSha512, Rsa2048, Rsa3072, Rsa4096, EcdsaP256,
        EcdsaP384, Ed25519, X25519,
    ];

    #[test]
    fn every_algorithm_generates_converts_and_hides_private_parts_in_public_forms() {
        for alg in ALL {
            if matches!(alg, Rsa3072 | Rsa4096) {
                continue; // slow in debug builds; covered by the openssl test
            }
            let m = generate(alg);
            let k = kid("ns", "k", 1);
            let public = jwk(alg, &m, &k, false);
            if alg.is_symmetric() {
                assert!(public.is_err());
                assert!(public_pem(alg, &m).unwrap().is_none());
                continue;
            }
            let public: Value = serde_json::from_str(&public.unwrap()).unwrap();
            assert!(
                public.get("d").is_none() && public.get("k").is_none(),
                "{alg:?}"
            );
            assert_eq!(public["kid"], k.as_str());
            let private: Value = serde_json::from_str(&jwk(alg, &m, &k, true).unwrap()).unwrap();
            assert!(private.get("d").is_some(), "{alg:?}");
            assert!(
                public_pem(alg, &m)
                    .unwrap()
                    .unwrap()
                    .starts_with("-----BEGIN PUBLIC KEY-----\n")
            );
        }
    }

    #[test]
    fn kid_is_stable_and_distinct_per_version() {
        assert_eq!(kid("a", "b", 1), kid("a", "b", 1));
        assert_ne!(kid("a", "b", 1), kid("a", "b", 2));
        assert_ne!(kid("a", "b", 1), kid("a", "c", 1));
    }

    #[test]
    fn public_jwk_from_spki_checks_the_whole_okp_prefix() {
        let ed = public_spki_der(Ed25519, &generate(Ed25519))
            .unwrap()
            .unwrap();
        let x = public_spki_der(X25519, &generate(X25519)).unwrap().unwrap();
        assert!(public_jwk_from_spki(Ed25519, &ed, "k").is_ok());
        assert!(public_jwk_from_spki(X25519, &x, "k").is_ok());
        // Same length, other algorithm: refused (it was accepted by length alone before).
        assert!(matches!(
            public_jwk_from_spki(Ed25519, &x, "k"),
            Err(KeyError::Invalid("ed25519"))
        ));
        assert!(matches!(
            public_jwk_from_spki(X25519, &[0u8; 44], "k"),
            Err(KeyError::Invalid("x25519"))
        ));
    }

    /// Found by tests/fuzz/keys.rs: an Ed25519 SPKI whose 32 key bytes are not a curve point
    /// came out as a JWK that no verifier can load.
    #[test]
    fn ed25519_spki_with_an_invalid_point_is_refused() {
        let bad_point = (0u8..=255)
            .map(|i| [i; 32])
            .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
            .expect("some 32-byte strings are not Ed25519 points");
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&bad_point);
        assert!(matches!(
            public_jwk_from_spki(Ed25519, &spki, "k"),
            Err(KeyError::Invalid("ed25519"))
        ));
    }

    /// Found by tests/fuzz/keys.rs: RSA refusals said `rsa` while every other algorithm's
    /// name the exact algorithm (`rsa-2048`), as the CRD spells it.
    #[test]
    fn invalid_rsa_material_names_the_exact_algorithm() {
        let junk = SecretBytes::from_slice(&[0, 0]);
        for alg in [Rsa2048, Rsa3072, Rsa4096] {
            assert!(matches!(
                public_spki_der(alg, &junk),
                Err(KeyError::Invalid(a)) if a == alg.as_str()
            ));
            assert!(matches!(
                jwk(alg, &junk, "k", true),
                Err(KeyError::Invalid(a)) if a == alg.as_str()
            ));
            assert!(matches!(
                public_jwk_from_spki(alg, &[0, 0], "k"),
                Err(KeyError::Invalid(a)) if a == alg.as_str()
            ));
        }
    }

    #[test]
    fn wrong_material_is_refused() {
        let m = generate(EcdsaP256);
        assert!(matches!(
            public_spki_der(Ed25519, &m),
            Err(KeyError::Invalid("ed25519"))
        ));
    }
}
