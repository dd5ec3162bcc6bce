//! Writing material into file contents. The extension point for key formats: a new
//! [`Format`] variant (pem, jwk, jwks) gets its encoder here, with the key's algorithm.

use super::params::Format;
use base64::Engine;
use zeroize::Zeroizing;

/// Encode `material` of a key of `algorithm` (e.g. "aes-256") into file contents, in
/// zeroizing storage. `kid` names the version in JWK output. When `public_only`, `material`
/// is the SPKI DER public key and only public formats are allowed.
pub fn encode(
    format: Format,
    algorithm: &str,
    material: &[u8],
    kid: &str,
    public_only: bool,
) -> Result<Zeroizing<Vec<u8>>, String> {
    if public_only && !format.is_public() {
        return Err(
            "this service account has a public-only grant: use format public-pem, public-jwk or jwks"
                .into(),
        );
    }
    Ok(match format {
        Format::Raw => Zeroizing::new(material.to_vec()),
        Format::Base64 => {
            let mut out = Zeroizing::new(vec![
                0u8;
                base64::encoded_len(material.len(), true)
                    .unwrap_or(0)
            ]);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(material, &mut out[..])
                .map_err(|e| e.to_string())?;
            out.truncate(n);
            out
        }
        Format::Hex => {
            let mut out = Zeroizing::new(vec![0u8; material.len() * 2]);
            hex::encode_to_slice(material, &mut out[..]).map_err(|e| e.to_string())?;
            out
        }
        Format::Pem | Format::Jwk | Format::PublicPem | Format::PublicJwk | Format::Jwks => {
            let alg = algorithm_of(algorithm)?;
            let text: Zeroizing<String> = if public_only {
                public_forms(format, alg, material, kid)?
            } else {
                let m = crate::crypto::SecretBytes::from_slice(material);
                match format {
                    Format::Pem => crate::keys::private_pem(alg, &m).map_err(|e| e.to_string())?,
                    Format::Jwk => {
                        crate::keys::jwk(alg, &m, kid, true).map_err(|e| e.to_string())?
                    }
                    Format::PublicJwk | Format::Jwks => {
                        crate::keys::jwk(alg, &m, kid, false).map_err(|e| e.to_string())?
                    }
                    _ => Zeroizing::new(
                        crate::keys::public_pem(alg, &m)
                            .map_err(|e| e.to_string())?
                            .ok_or(
                                "symmetric keys have no public part; use raw, base64, hex or jwk",
                            )?,
                    ),
                }
            };
            Zeroizing::new(text.as_bytes().to_vec())
        }
    })
}

fn algorithm_of(name: &str) -> Result<crate::crd::KeyAlgorithm, String> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map_err(|_| format!("unknown key algorithm {name:?}"))
}

/// Public forms from an SPKI DER public key (public-only grants never see private parts).
fn public_forms(
    format: Format,
    alg: crate::crd::KeyAlgorithm,
    spki: &[u8],
    kid: &str,
) -> Result<Zeroizing<String>, String> {
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
        _ => crate::keys::public_jwk_from_spki(alg, spki, kid).map_err(|e| e.to_string()),
    }
}

/// A JWKS document from per-version JWKs (current first).
pub fn jwks(keys: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, String> {
    let parsed = keys
        .iter()
        .map(|k| serde_json::from_slice::<serde_json::Value>(k).map_err(|e| e.to_string()))
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
        let m = crate::keys::generate(KeyAlgorithm::EcdsaP256);
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
        // Symmetric keys have no public forms.
        assert!(encode(Format::PublicPem, "aes-256", &[1u8; 32], "k", false).is_err());
    }
}
