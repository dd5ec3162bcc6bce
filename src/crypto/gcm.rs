//! AES-256-GCM with 96-bit random nonces and associated data.

use super::module;
use super::{CryptoError, SecretBytes};

/// Nonce length (96 bits, the only length SP 800-38D recommends for random nonces).
pub const NONCE_LEN: usize = 12;
/// Tag length appended to the ciphertext.
pub const TAG_LEN: usize = 16;

fn check_key(key: &[u8]) -> Result<(), CryptoError> {
    if key.len() != 32 {
        return Err(CryptoError::Length {
            what: "AES-256-GCM key",
            detail: format!("must be 32 bytes, got {}", key.len()),
        });
    }
    Ok(())
}

fn check_nonce(nonce: &[u8]) -> Result<&[u8; NONCE_LEN], CryptoError> {
    nonce.try_into().map_err(|_| CryptoError::Length {
        what: "GCM nonce",
        detail: format!("must be {NONCE_LEN} bytes, got {}", nonce.len()),
    })
}

/// Fresh random 96-bit nonce.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    module::fill_random(&mut n);
    n
}

/// Encrypt with an explicit nonce (tests and vectors); returns ciphertext || tag. The `fips`
/// build refuses it: the module approves GCM encryption only under nonces it generates.
pub fn seal_with_nonce(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = check_nonce(nonce)?;
    check_key(key)?;
    Ok(module::aes256_gcm_seal_with_nonce(
        key, nonce, aad, plaintext,
    )?)
}

/// Encrypt under a fresh random nonce; returns (nonce, ciphertext || tag).
pub fn seal(
    key: &[u8],
    aad: &[u8],
    plaintext: &SecretBytes,
) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
    check_key(key)?;
    Ok(module::aes256_gcm_seal(key, aad, plaintext.expose())?)
}

/// Decrypt and authenticate ciphertext || tag.
pub fn open(key: &[u8], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Result<SecretBytes, CryptoError> {
    let nonce = check_nonce(nonce)?;
    if ct.len() < TAG_LEN {
        return Err(CryptoError::Length {
            what: "GCM ciphertext",
            detail: format!(
                "must hold at least the {TAG_LEN}-byte tag, got {}",
                ct.len()
            ),
        });
    }
    check_key(key)?;
    Ok(module::aes256_gcm_open(key, nonce, aad, ct)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_round_trip_and_wrong_aad_fails() {
        let k = SecretBytes::random(32);
        let pt = SecretBytes::random(40);
        let (n, ct) = seal(k.expose(), b"aad-1", &pt).unwrap();
        assert_eq!(open(k.expose(), &n, b"aad-1", &ct).unwrap(), pt);
        assert_eq!(
            open(k.expose(), &n, b"aad-2", &ct),
            Err(CryptoError::Integrity)
        );
    }

    fn length_error(r: Result<impl std::fmt::Debug, CryptoError>) -> &'static str {
        match r {
            Err(CryptoError::Length { what, .. }) => what,
            other => panic!("expected a length error, got {other:?}"),
        }
    }

    #[test]
    fn only_a_256_bit_key_is_taken_by_every_entry_point() {
        let pt = SecretBytes::random(8);
        for len in [0, 16, 24, 31, 33] {
            let k = vec![7u8; len];
            assert_eq!(length_error(seal(&k, b"", &pt)), "AES-256-GCM key");
            assert_eq!(
                length_error(open(&k, &[0; NONCE_LEN], b"", &[0; TAG_LEN])),
                "AES-256-GCM key"
            );
            // Checked before the fips build's refusal of caller nonces.
            assert_eq!(
                length_error(seal_with_nonce(&k, &[0; NONCE_LEN], b"", b"x")),
                "AES-256-GCM key"
            );
        }
    }

    #[test]
    fn a_ciphertext_shorter_than_the_tag_is_refused_before_decryption() {
        let k = [1u8; 32];
        for len in [0, 1, TAG_LEN - 1] {
            assert_eq!(
                length_error(open(&k, &[0; NONCE_LEN], b"", &vec![0; len])),
                "GCM ciphertext"
            );
        }
        // Exactly a tag (an empty plaintext) is a ciphertext: it fails authentication only.
        assert_eq!(
            open(&k, &[0; NONCE_LEN], b"", &[0; TAG_LEN]),
            Err(CryptoError::Integrity)
        );
        assert_eq!(length_error(open(&k, &[0; 11], b"", &[0; 32])), "GCM nonce");
    }

    #[test]
    fn random_nonces_are_random() {
        let a = random_nonce();
        let b = random_nonce();
        assert_ne!(a, b, "two draws of 96 bits collided");
        assert_ne!(a, [0; NONCE_LEN]);
        assert_ne!(a, [1; NONCE_LEN]);
    }
}
