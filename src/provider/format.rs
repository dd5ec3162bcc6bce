//! Writing material into file contents. The extension point for key formats: a new
//! [`Format`] variant (pem, jwk, jwks) gets its encoder here, with the key's algorithm.

use super::params::Format;
use base64::Engine;
use zeroize::Zeroizing;

/// A key that cannot be written in the requested format: the user changes `format`, the grant
/// or the key's algorithm.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A private format under a public-only grant.
    #[error(
        "this service account has a public-only grant: use format public-pem, public-jwk or jwks"
    )]
    PublicOnlyGrant,
    /// A public format of a symmetric key.
    #[error("symmetric keys have no public part; use raw, base64, hex or jwk")]
    NoPublicPart,
    /// The format does not exist for the key's algorithm (e.g. `pem` of an AES key).
    #[error(transparent)]
    Unsupported(crate::keys::KeyError),
}

/// The key service's answer cannot be turned into files: a keyward bug or version skew
/// between provider and key service, nothing the user can fix.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The answer has another number of keys than requested.
    #[error("key service answered {answered} keys for {requested} requested")]
    Count {
        /// Keys in the answer.
        answered: usize,
        /// Keys requested.
        requested: usize,
    },
    /// An answer entry is for another key, or empty.
    #[error("key service answer for {0:?} does not match the request")]
    Mismatch(String),
    /// A version the answer names is missing from it.
    #[error("key service answer for {key:?} lacks version {version}")]
    MissingVersion {
        /// ManagedKey name.
        key: String,
        /// Version number.
        version: u32,
    },
    /// The answer names an algorithm this provider does not know.
    #[error("unknown key algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// The material does not parse for its algorithm.
    #[error(transparent)]
    Material(crate::keys::KeyError),
    /// Base64 output did not fit (cannot happen with the computed length).
    #[error("base64 encoding: {0}")]
    Base64(#[from] base64::EncodeSliceError),
    /// Hex output did not fit (cannot happen with the computed length).
    #[error("hex encoding: {0}")]
    Hex(#[from] hex::FromHexError),
    /// A per-version JWK is not JSON (cannot happen with our encoder).
    #[error("JWK is not JSON: {0}")]
    Jwk(#[from] serde_json::Error),
    /// One of the above, for a named object.
    #[error("object {key:?}: {source}")]
    Object {
        /// ManagedKey name.
        key: String,
        /// The failure.
        source: Box<AnswerError>,
    },
}

/// Why [`encode`] failed: the user's choice of format, or the answer it was given.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The key cannot be written in this format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The material or algorithm from the key service is unusable.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

impl From<crate::keys::KeyError> for EncodeError {
    fn from(e: crate::keys::KeyError) -> Self {
        match e {
            crate::keys::KeyError::Unsupported { .. } | crate::keys::KeyError::NotApproved(_) => {
                FormatError::Unsupported(e).into()
            }
            crate::keys::KeyError::Invalid(_) => AnswerError::Material(e).into(),
        }
    }
}

impl From<base64::EncodeSliceError> for EncodeError {
    fn from(e: base64::EncodeSliceError) -> Self {
        AnswerError::from(e).into()
    }
}

impl From<hex::FromHexError> for EncodeError {
    fn from(e: hex::FromHexError) -> Self {
        AnswerError::from(e).into()
    }
}

/// Encode `material` of a key of `algorithm` (e.g. "aes-256") into file contents, in
/// zeroizing storage. `kid` names the version in JWK output. When `public_only`, `material`
/// is the SPKI DER public key and only public formats are allowed.
pub fn encode(
    format: Format,
    algorithm: &str,
    material: &[u8],
    kid: &str,
    public_only: bool,
) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
    if public_only && !format.is_public() {
        return Err(FormatError::PublicOnlyGrant.into());
    }
    Ok(match format {
        Format::Raw => Zeroizing::new(material.to_vec()),
        Format::Base64 => {
            let mut out = Zeroizing::new(vec![
                0u8;
                base64::encoded_len(material.len(), true)
                    .unwrap_or(0)
            ]);
            let n =
                base64::engine::general_purpose::STANDARD.encode_slice(material, &mut out[..])?;
            out.truncate(n);
            out
        }
        Format::Hex => {
            let mut out = Zeroizing::new(vec![0u8; material.len() * 2]);
            hex::encode_to_slice(material, &mut out[..])?;
            out
        }
        Format::Pem | Format::Jwk | Format::PublicPem | Format::PublicJwk | Format::Jwks => {
            let alg = algorithm_of(algorithm)?;
            if format.is_public() && alg.is_symmetric() {
                return Err(FormatError::NoPublicPart.into());
            }
            let text: Zeroizing<String> = if public_only {
                public_forms(format, alg, material, kid)?
            } else {
                let m = crate::crypto::SecretBytes::from_slice(material);
                match format {
                    Format::Pem => crate::keys::private_pem(alg, &m)?,
                    Format::Jwk => crate::keys::jwk(alg, &m, kid, true)?,
                    Format::PublicJwk | Format::Jwks => crate::keys::jwk(alg, &m, kid, false)?,
                    _ => Zeroizing::new(
                        crate::keys::public_pem(alg, &m)?.ok_or(FormatError::NoPublicPart)?,
                    ),
                }
            };
            Zeroizing::new(text.as_bytes().to_vec())
        }
    })
}

fn algorithm_of(name: &str) -> Result<crate::crd::KeyAlgorithm, AnswerError> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map_err(|_| AnswerError::UnknownAlgorithm(name.into()))
}

/// Public forms from an SPKI DER public key (public-only grants never see private parts).
fn public_forms(
    format: Format,
    alg: crate::crd::KeyAlgorithm,
    spki: &[u8],
    kid: &str,
) -> Result<Zeroizing<String>, EncodeError> {
    use base64::engine::general_purpose::STANDARD;
    match format {
        Format::PublicPem => {
            let b64 = STANDARD.encode(spki);
            let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
            for c in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(c).expect("ascii"));
                out.push('\n');
            }
            out.push_str("-----END PUBLIC KEY-----\n");
            Ok(Zeroizing::new(out))
        }
        _ => Ok(crate::keys::public_jwk_from_spki(alg, spki, kid)?),
    }
}

/// A JWKS document from per-version JWKs (current first).
pub fn jwks(keys: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, AnswerError> {
    let parsed = keys
        .iter()
        .map(|k| serde_json::from_slice::<serde_json::Value>(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Zeroizing::new(
        serde_json::json!({ "keys": parsed })
            .to_string()
            .into_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let m = [0x00, 0xff, 0x10, 0x7e];
        assert_eq!(
            &encode(Format::Raw, "aes-256", &m, "kid", false).unwrap()[..],
            &m
        );
        assert_eq!(
            &encode(Format::Hex, "aes-256", &m, "kid", false).unwrap()[..],
            b"00ff107e"
        );
        assert_eq!(
            &encode(Format::Base64, "aes-256", &m, "kid", false).unwrap()[..],
            b"AP8Qfg=="
        );
        let k = [9u8; 32];
        let b = encode(Format::Base64, "aes-256", &k, "kid", false).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&b[..])
                .unwrap(),
            k
        );
    }

    #[test]
    fn key_formats_and_public_only_grants() {
        use crate::crd::KeyAlgorithm;
        let m = crate::keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = encode(Format::Pem, "ecdsa-p256", m.expose(), "k1", false).unwrap();
        assert!(pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        let jwk: serde_json::Value = serde_json::from_slice(
            &encode(Format::Jwk, "ecdsa-p256", m.expose(), "k1", false).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                jwk["kid"].as_str(),
                jwk["alg"].as_str(),
                jwk["d"].is_string()
            ),
            (Some("k1"), Some("ES256"), true)
        );
        // A public-only grant holds the SPKI only and can never produce private forms.
        let spki = crate::keys::public_spki_der(KeyAlgorithm::EcdsaP256, &m)
            .unwrap()
            .unwrap();
        for f in [Format::Raw, Format::Pem, Format::Jwk, Format::Hex] {
            assert!(encode(f, "ecdsa-p256", &spki, "k1", true).is_err(), "{f:?}");
        }
        let public: serde_json::Value = serde_json::from_slice(
            &encode(Format::PublicJwk, "ecdsa-p256", &spki, "k1", true).unwrap(),
        )
        .unwrap();
        assert!(public.get("d").is_none());
        assert_eq!(public["x"], jwk["x"]);
        let ppem = encode(Format::PublicPem, "ecdsa-p256", &spki, "k1", true).unwrap();
        assert_eq!(
            std::str::from_utf8(&ppem).unwrap(),
            crate::keys::public_pem(KeyAlgorithm::EcdsaP256, &m)
                .unwrap()
                .unwrap()
        );
        let set =
            jwks(&[encode(Format::PublicJwk, "ecdsa-p256", &spki, "k1", true).unwrap()]).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&set).unwrap()["keys"][0]["kid"],
            "k1"
        );
        // Symmetric keys have no public forms; an unknown algorithm is the answer's fault.
        assert!(matches!(
            encode(Format::PublicPem, "aes-256", &[1u8; 32], "k", false),
            Err(EncodeError::Format(FormatError::NoPublicPart))
        ));
        assert!(matches!(
            encode(Format::Pem, "aes-256", &[1u8; 32], "k", false),
            Err(EncodeError::Format(FormatError::Unsupported(_)))
        ));
        assert!(matches!(
            encode(Format::Jwk, "rot13", &[1u8; 32], "k", false),
            Err(EncodeError::Answer(AnswerError::UnknownAlgorithm(_)))
        ));
    }
}
