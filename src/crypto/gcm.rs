//! AES-256-GCM with 96-bit random nonces and associated data.

use super::{CryptoError, SecretBytes};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

/// Nonce length (96 bits, the only length SP 800-38D recommends for random nonces).
pub const NONCE_LEN: usize = 12;
/// Tag length appended to the ciphertext.
pub const TAG_LEN: usize = 16;

fn cipher(key: &[u8]) -> Result<Aes256Gcm, CryptoError> {
    if key.len() != 32 {
        return Err(CryptoError::Length {
            what: "AES-256-GCM key",
            detail: format!("must be 32 bytes, got {}", key.len()),
        });
    }
    Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Integrity)
}

/// Fresh random 96-bit nonce.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// Encrypt with an explicit nonce (tests and vectors); returns ciphertext || tag.
pub fn seal_with_nonce(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Length {
            what: "GCM nonce",
            detail: format!("must be {NONCE_LEN} bytes, got {}", nonce.len()),
        });
    }
    cipher(key)?
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Integrity)
}

/// Encrypt under a fresh random nonce; returns (nonce, ciphertext || tag).
pub fn seal(
    key: &[u8],
    aad: &[u8],
    plaintext: &SecretBytes,
) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
    let nonce = random_nonce();
    let ct = seal_with_nonce(key, &nonce, aad, plaintext.expose())?;
    Ok((nonce, ct))
}

/// Decrypt and authenticate ciphertext || tag.
pub fn open(key: &[u8], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Result<SecretBytes, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Length {
            what: "GCM nonce",
            detail: format!("must be {NONCE_LEN} bytes, got {}", nonce.len()),
        });
    }
    if ct.len() < TAG_LEN {
        return Err(CryptoError::Length {
            what: "GCM ciphertext",
            detail: format!(
                "must hold at least the {TAG_LEN}-byte tag, got {}",
                ct.len()
            ),
        });
    }
    cipher(key)?
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(SecretBytes::new)
        .map_err(|_| CryptoError::Integrity)
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
}
