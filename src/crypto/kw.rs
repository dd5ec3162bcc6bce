//! AES key wrap: KW (RFC 3394) and KWP (RFC 5649), per SP 800-38F.
//!
//! Length rules are enforced here before the library is called, because some implementations
//! accept inputs SP 800-38F forbids (an empty key wraps to the same bytes under every KEK).

use super::module;
use super::{CryptoError, SecretBytes};

/// Largest plaintext keyward wraps (a 4096-bit RSA PKCS#8 key is ~2.4 KiB).
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// The KEK is checked first, so a KEK size this build does not offer (AES-192 in the `fips`
/// build) is the error reported whatever else is wrong.
fn check_kek(key: &[u8]) -> Result<(), CryptoError> {
    if !matches!(key.len(), 16 | 24 | 32) {
        return Err(CryptoError::Length {
            what: "KEK",
            detail: format!("must be 16, 24 or 32 bytes, got {}", key.len()),
        });
    }
    Ok(module::kw_kek_offered(key.len())?)
}

fn check_kw_plaintext(len: usize) -> Result<(), CryptoError> {
    if len < 16 || !len.is_multiple_of(8) || len > MAX_PLAINTEXT {
        return Err(CryptoError::Length {
            what: "KW plaintext",
            detail: format!(
                "must be at least 16 bytes, a multiple of 8 and at most {MAX_PLAINTEXT}, got {len}"
            ),
        });
    }
    Ok(())
}

fn check_kw_ciphertext(len: usize) -> Result<(), CryptoError> {
    if len < 24 || !len.is_multiple_of(8) || len > MAX_PLAINTEXT + 8 {
        return Err(CryptoError::Length {
            what: "KW ciphertext",
            detail: format!("must be at least 24 bytes and a multiple of 8, got {len}"),
        });
    }
    Ok(())
}

/// AES-KW wrap (RFC 3394, SP 800-38F W with ICV1).
pub fn wrap(kek_bytes: &[u8], plaintext: &SecretBytes) -> Result<Vec<u8>, CryptoError> {
    check_kek(kek_bytes)?;
    check_kw_plaintext(plaintext.len())?;
    Ok(module::aes_kw_wrap(kek_bytes, plaintext.expose())?)
}

/// AES-KW unwrap; fails on any integrity or length error.
pub fn unwrap(kek_bytes: &[u8], ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
    check_kek(kek_bytes)?;
    check_kw_ciphertext(ciphertext.len())?;
    Ok(module::aes_kw_unwrap(kek_bytes, ciphertext)?)
}

/// AES-KWP wrap (RFC 5649, SP 800-38F KWP-AE). Plaintext 1..=MAX_PLAINTEXT bytes.
pub fn wrap_pad(kek_bytes: &[u8], plaintext: &SecretBytes) -> Result<Vec<u8>, CryptoError> {
    check_kek(kek_bytes)?;
    let len = plaintext.len();
    if len == 0 || len > MAX_PLAINTEXT {
        return Err(CryptoError::Length {
            what: "KWP plaintext",
            detail: format!("must be 1 to {MAX_PLAINTEXT} bytes, got {len}"),
        });
    }
    Ok(module::aes_kwp_wrap(kek_bytes, plaintext.expose())?)
}

/// AES-KWP unwrap; fails on any integrity, padding or length error.
pub fn unwrap_pad(kek_bytes: &[u8], ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
    check_kek(kek_bytes)?;
    let len = ciphertext.len();
    if len < 16 || !len.is_multiple_of(8) || len > MAX_PLAINTEXT + 16 {
        return Err(CryptoError::Length {
            what: "KWP ciphertext",
            detail: format!("must be at least 16 bytes and a multiple of 8, got {len}"),
        });
    }
    let out = module::aes_kwp_unwrap(kek_bytes, ciphertext)?;
    if out.is_empty() {
        return Err(CryptoError::Integrity);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kw_refuses_empty_and_eight_byte_keys() {
        let kek = [7u8; 32];
        assert!(wrap(&kek, &SecretBytes::new(vec![])).is_err());
        assert!(wrap(&kek, &SecretBytes::new(vec![1; 8])).is_err());
        assert!(wrap(&kek, &SecretBytes::new(vec![1; 20])).is_err());
        // the "empty key" ciphertext: just the default IV
        assert!(unwrap(&kek, &hex::decode("a6a6a6a6a6a6a6a6").unwrap()).is_err());
        assert!(unwrap(&kek, &[0u8; 16]).is_err());
    }

    #[test]
    fn kwp_refuses_empty_plaintext() {
        assert!(wrap_pad(&[7u8; 32], &SecretBytes::new(vec![])).is_err());
    }

    #[test]
    fn kw_and_kwp_round_trip() {
        let kek = SecretBytes::random(32);
        let dek = SecretBytes::random(32);
        let w = wrap(kek.expose(), &dek).unwrap();
        assert_eq!(unwrap(kek.expose(), &w).unwrap(), dek);
        let odd = SecretBytes::random(13);
        let w = wrap_pad(kek.expose(), &odd).unwrap();
        assert_eq!(unwrap_pad(kek.expose(), &w).unwrap(), odd);
    }

    /// The `aes` crate's `zeroize` feature (Cargo.toml) makes every AES key schedule wipe its
    /// round keys on drop; without the feature these types do not implement `ZeroizeOnDrop`
    /// and this test does not compile. `aes_kw::Kek` and `aes_gcm::Aes256Gcm` hold these types.
    #[cfg(not(feature = "fips"))]
    #[test]
    fn aes_round_keys_are_zeroized_on_drop() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() -> &'static str {
            std::any::type_name::<T>()
        }
        let names = [
            zeroized_on_drop::<aes::Aes128>(),
            zeroized_on_drop::<aes::Aes192>(),
            zeroized_on_drop::<aes::Aes256>(),
            zeroized_on_drop::<aes::Aes256Enc>(),
            zeroized_on_drop::<aes::Aes256Dec>(),
        ];
        assert!(names.iter().all(|n| n.starts_with("aes::")), "{names:?}");
    }

    #[test]
    fn errors_name_the_input_and_carry_no_bytes() {
        let e = wrap(&[1u8; 31], &SecretBytes::random(32)).unwrap_err();
        assert!(e.to_string().contains("KEK"), "{e}");
    }
    /// RFC 3394 §4.1, §4.2, §4.6 (KW) and RFC 5649 §6 (KWP) under every KEK size: 128 and 256
    /// bits in both builds; 192 bits in the default build only (the fips build refuses it,
    /// naming the sizes to use).
    #[test]
    fn every_kek_size_wraps_to_the_rfc_answers() {
        let h = |s: &str| hex::decode(s).unwrap();
        let key16 = SecretBytes::new(h("00112233445566778899AABBCCDDEEFF"));
        let key32 = SecretBytes::new(h(
            "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
        ));
        let cases = [
            (
                "000102030405060708090A0B0C0D0E0F",
                &key16,
                "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5",
            ),
            (
                "000102030405060708090A0B0C0D0E0F1011121314151617",
                &key16,
                "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D",
            ),
            (
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
                &key32,
                "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
            ),
        ];
        for (kek, key, want) in cases {
            let (kek, want) = (h(kek), h(want));
            match (wrap(&kek, key), cfg!(feature = "fips") && kek.len() == 24) {
                (Ok(w), false) => {
                    assert_eq!(w, want, "KEK of {} bytes", kek.len());
                    assert_eq!(&unwrap(&kek, &want).unwrap(), key);
                }
                (Err(CryptoError::NotApproved(n)), true) => {
                    assert!(n.to_string().contains("128- or 256-bit"), "{n}");
                    assert!(matches!(
                        unwrap(&kek, &want),
                        Err(CryptoError::NotApproved(_))
                    ));
                }
                (other, refused) => panic!("KEK {} bytes, refused={refused}: {other:?}", kek.len()),
            }
        }
        // RFC 5649 §6: 20 and 7 bytes under a 192-bit KEK.
        let kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        for (pt, want) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let pt = SecretBytes::new(h(pt));
            match (wrap_pad(&kek, &pt), cfg!(feature = "fips")) {
                (Ok(w), false) => {
                    assert_eq!(w, h(want));
                    assert_eq!(unwrap_pad(&kek, &w).unwrap(), pt);
                }
                (Err(CryptoError::NotApproved(_)), true) => {}
                (other, fips) => panic!("fips={fips}: {other:?}"),
            }
        }
    }
    /// The largest plaintext keyward wraps (64 KiB) wraps and unwraps; 8 bytes more is refused
    /// as a length error, before any crypto (KW and KWP, both directions).
    #[test]
    fn the_64_kib_bound_is_exact() {
        let kek = SecretBytes::random(32);
        // The documented bound, as a literal: the constant itself is under test.
        assert_eq!(MAX_PLAINTEXT, 65_536);
        let max = SecretBytes::random(65_536);
        let w = wrap(kek.expose(), &max).unwrap();
        assert_eq!(w.len(), MAX_PLAINTEXT + 8);
        assert_eq!(unwrap(kek.expose(), &w).unwrap(), max);
        let wp = wrap_pad(kek.expose(), &max).unwrap();
        assert_eq!(unwrap_pad(kek.expose(), &wp).unwrap(), max);
        let over = SecretBytes::random(MAX_PLAINTEXT + 8);
        let length = |r: Result<_, CryptoError>| matches!(r, Err(CryptoError::Length { .. }));
        assert!(length(wrap(kek.expose(), &over).map(|_| ())));
        assert!(length(wrap_pad(kek.expose(), &over).map(|_| ())));
        assert!(length(
            unwrap(kek.expose(), &vec![0u8; MAX_PLAINTEXT + 16]).map(|_| ())
        ));
        assert!(length(
            unwrap_pad(kek.expose(), &vec![0u8; MAX_PLAINTEXT + 24]).map(|_| ())
        ));
        // Below the smallest KWP ciphertext (16 bytes): a length error, not an integrity one.
        assert!(length(unwrap_pad(kek.expose(), &[0u8; 8]).map(|_| ())));
    }
}
