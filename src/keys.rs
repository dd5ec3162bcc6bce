//! Key generation per algorithm and the output formats workloads consume: raw, base64, hex,
//! PEM (PKCS#8 private / SPKI public), JWK and JWKS.
//!
//! Material is what the envelope stores: random bytes for AES/HMAC, PKCS#8 DER for asymmetric
//! keys. Private forms are returned in zeroizing buffers; public forms may be shown anywhere.

use crate::crd::KeyAlgorithm;
use crate::crypto::SecretBytes;
use crate::crypto::module;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Errors when generating or converting keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Stored material does not parse for its algorithm (wrong algorithm or damage).
    #[error("stored {0} material is not a valid key")]
    Invalid(&'static str),
    /// The `fips` build does not offer this algorithm.
    #[error(transparent)]
    NotApproved(#[from] module::NotApproved),
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
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl From<module::AsymmetricError> for KeyError {
    fn from(e: module::AsymmetricError) -> Self {
        match e {
            module::AsymmetricError::NotApproved(n) => Self::NotApproved(n),
            module::AsymmetricError::Invalid => Self::Invalid("private key"),
        }
    }
}

fn asymmetric(alg: KeyAlgorithm) -> Option<module::Asymmetric> {
    use KeyAlgorithm::*;
    use module::Asymmetric as A;
    Some(match alg {
        Aes256 | HmacSha256 | HmacSha384 | HmacSha512 => return None,
        Rsa2048 => A::Rsa(2048),
        Rsa3072 => A::Rsa(3072),
        Rsa4096 => A::Rsa(4096),
        EcdsaP256 => A::P256,
        EcdsaP384 => A::P384,
        Ed25519 => A::Ed25519,
        X25519 => A::X25519,
    })
}

/// Generate material in the cryptographic module. RSA takes up to seconds: call from a
/// blocking thread. The `fips` build refuses algorithms FIPS 140-3 does not approve (X25519).
pub fn generate(alg: KeyAlgorithm) -> Result<SecretBytes, KeyError> {
    use KeyAlgorithm::*;
    Ok(match alg {
        Aes256 | HmacSha256 => SecretBytes::random(32),
        HmacSha384 => SecretBytes::random(48),
        HmacSha512 => SecretBytes::random(64),
        _ => module::generate_pkcs8(asymmetric(alg).expect("asymmetric"))?,
    })
}

/// Public key as SPKI DER (None for symmetric keys), computed by the cryptographic module.
pub fn public_spki_der(alg: KeyAlgorithm, m: &SecretBytes) -> Result<Option<Vec<u8>>, KeyError> {
    let Some(kind) = asymmetric(alg) else {
        return Ok(None);
    };
    match module::public_spki(kind, m.expose()) {
        Ok(der) => Ok(Some(der)),
        Err(module::AsymmetricError::Invalid) => Err(KeyError::Invalid(alg.as_str())),
        Err(e) => Err(e.into()),
    }
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
    let d = module::sha256(format!("keyward-kid-v1\0{namespace}/{name}\0{version}").as_bytes());
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
        _ if !private => {
            // The public half comes from the module (it derives the public key); what
            // follows only decodes DER.
            let spki = public_spki_der(alg, m)?.expect("asymmetric");
            return public_jwk_from_spki(alg, &spki, kid);
        }
        Rsa2048 | Rsa3072 | Rsa4096 => {
            // Every JWK member is a field of the PKCS#1 RSAPrivateKey: decoded, not computed.
            // Two-prime keys only (what `generate` makes; JWK's p/q/dp/dq/qi assume it).
            let bad = || KeyError::Invalid(alg.as_str());
            let info = pkcs8::PrivateKeyInfo::try_from(m.expose()).map_err(|_| bad())?;
            let k = rsa::pkcs1::RsaPrivateKey::try_from(info.private_key).map_err(|_| bad())?;
            if k.other_prime_infos.is_some() {
                return Err(bad());
            }
            let u = |i: rsa::pkcs1::UintRef<'_>| b64u(i.as_bytes());
            json!({"kty": "RSA", "n": u(k.modulus), "e": u(k.public_exponent), "alg": "RS256", "use": "sig",
                   "d": u(k.private_exponent), "p": u(k.prime1), "q": u(k.prime2),
                   "dp": u(k.exponent1), "dq": u(k.exponent2), "qi": u(k.coefficient)})
        }
        EcdsaP256 | EcdsaP384 => {
            let (size, a) = if alg == EcdsaP256 {
                (32, "ES256")
            } else {
                (48, "ES384")
            };
            let bad = || KeyError::Invalid(alg.as_str());
            let info = pkcs8::PrivateKeyInfo::try_from(m.expose()).map_err(|_| bad())?;
            let k = sec1::EcPrivateKey::try_from(info.private_key).map_err(|_| bad())?;
            if k.private_key.len() != size {
                return Err(bad());
            }
            let spki = public_spki_der(alg, m)?.expect("asymmetric");
            let mut j: Value =
                serde_json::from_str(&public_jwk_from_spki(alg, &spki, kid)?).expect("jwk json");
            j["d"] = b64u(k.private_key).into();
            j["alg"] = a.into();
            j
        }
        Ed25519 | X25519 => {
            let spki = public_spki_der(alg, m)?.expect("asymmetric");
            let mut j: Value =
                serde_json::from_str(&public_jwk_from_spki(alg, &spki, kid)?).expect("jwk json");
            // RFC 8410 v1 PKCS#8 (what `generate` makes): fixed prefix, then the 32-byte key.
            let prefix = if alg == Ed25519 {
                module::ED25519_PKCS8_PREFIX
            } else {
                X25519_PKCS8_PREFIX
            };
            let b = m.expose();
            if b.len() != 48 || b[..16] != prefix {
                return Err(KeyError::Invalid(alg.as_str()));
            }
            j["d"] = b64u(&b[16..]).into();
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
            let point: &[u8; 32] = spki[12..].try_into().expect("44 - 12 bytes");
            if alg == Ed25519 && module::Ed25519PublicKey::from_bytes(point).is_none() {
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
            let m = match generate(alg) {
                Ok(m) => m,
                Err(KeyError::NotApproved(n)) => {
                    // Only the fips build refuses, and only what FIPS 140-3 does not approve.
                    assert!(cfg!(feature = "fips") && alg == X25519, "{alg:?}: {n}");
                    assert_eq!(n, module::X25519_REFUSED);
                    continue;
                }
                Err(e) => panic!("{alg:?}: {e}"),
            };
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
        let ed = public_spki_der(Ed25519, &generate(Ed25519).unwrap())
            .unwrap()
            .unwrap();
        // An X25519 public key (built by hand: the fips build cannot make X25519 keys).
        let mut x = X25519_SPKI_PREFIX.to_vec();
        x.extend_from_slice(&[9u8; 32]);
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
            .find(|b| module::Ed25519PublicKey::from_bytes(b).is_none())
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
        let m = generate(EcdsaP256).unwrap();
        assert!(matches!(
            public_spki_der(Ed25519, &m),
            Err(KeyError::Invalid("ed25519"))
        ));
    }

    /// The fips build refuses X25519 with the approved alternative named; the default build
    /// makes X25519 keys whose JWK and PEM carry the public value.
    #[test]
    fn x25519_is_refused_only_by_the_fips_build() {
        match (generate(X25519), cfg!(feature = "fips")) {
            (Ok(m), false) => {
                assert!(
                    jwk(X25519, &m, "k", true)
                        .unwrap()
                        .contains("\"crv\":\"X25519\"")
                );
            }
            (Err(e @ KeyError::NotApproved(_)), true) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("X25519") && msg.contains("ecdsa-p256"),
                    "{msg}"
                );
            }
            (other, fips) => panic!("fips={fips}: {:?}", other.map(|_| ())),
        }
    }

    /// Private JWK members are the PKCS#8 fields: the RSA CRT values decoded from the key
    /// satisfy their definitions (checked with big-integer arithmetic here, in the test).
    #[test]
    fn rsa_private_jwk_members_are_consistent() {
        use base64::Engine;
        let m = generate(Rsa2048).unwrap();
        let j: Value = serde_json::from_str(&jwk(Rsa2048, &m, "k", true).unwrap()).unwrap();
        let n = |f: &str| {
            rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(j[f].as_str().unwrap()).unwrap())
        };
        let one = rsa::BigUint::from(1u8);
        assert_eq!(n("p") * n("q"), n("n"));
        assert_eq!(n("d") % (n("p") - &one), n("dp"));
        assert_eq!(n("d") % (n("q") - &one), n("dq"));
        assert_eq!((n("qi") * n("q")) % n("p"), one);
        let public: Value = serde_json::from_str(&jwk(Rsa2048, &m, "k", false).unwrap()).unwrap();
        assert_eq!(public["n"], j["n"]);
        assert_eq!(public["e"], j["e"]);
    }
}
