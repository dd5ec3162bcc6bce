//! Envelope crypto core: key-material types, AES key wrap (KW/KWP), AES-256-GCM, and the
//! self-describing envelope that stores a wrapped DEK.
//!
//! Key hierarchy: a root key-encryption key (KEK, held by a `kek` backend) wraps every
//! data-encryption key (DEK). DEKs are generated here, stored only inside envelopes, and
//! unwrapped only in memory that is zeroized on drop.

pub mod envelope;
pub mod gcm;
pub mod kw;
pub mod material;
pub mod module;

pub use envelope::{Algorithm, Envelope, KeyContext};
pub use material::SecretBytes;

/// Errors of the crypto core. Messages never carry key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Input length is outside what the algorithm permits.
    #[error("{what}: {detail}")]
    Length {
        /// Which input was wrong.
        what: &'static str,
        /// What is allowed.
        detail: String,
    },
    /// Authentication or integrity check failed: wrong key, wrong context, or tampering.
    #[error(
        "integrity check failed: wrong key, wrong key context (namespace/name/version), or modified data"
    )]
    Integrity,
    /// The envelope bytes are not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The `fips` build does not carry out this request (e.g. AES-192 key wrap).
    #[error(transparent)]
    NotApproved(#[from] module::NotApproved),
}

impl From<module::WrapError> for CryptoError {
    fn from(e: module::WrapError) -> Self {
        match e {
            module::WrapError::NotApproved(n) => Self::NotApproved(n),
            module::WrapError::Integrity => Self::Integrity,
        }
    }
}

/// SHA-256 fingerprint of key material, truncated to 16 bytes hex, for status and logs.
///
/// A fingerprint identifies a version without revealing the key: it is a one-way hash over a
/// domain-separated input, so it cannot be confused with any other hash of the key.
pub fn fingerprint(material: &SecretBytes) -> String {
    let mut h = module::Sha256::new();
    h.update(b"keyward-fingerprint-v1\0");
    h.update(material.expose());
    let d = h.finish();
    format!("sha256:{}", hex::encode(&d[..16]))
}

/// HMAC-SHA256 helper used for key derivation and opaque version ids.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = module::HmacSha256::new(key);
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finish()
}

/// Constant-time equality for tags and checks keyward itself compares.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint is stored in status and compared on every serve, so its definition is a
    /// format: SHA-256 over "keyward-fingerprint-v1\0" || material, first 16 bytes, hex
    /// (expected value from Python's hashlib for material 00..1f).
    #[test]
    fn fingerprint_is_the_documented_hash() {
        let m = SecretBytes::from_slice(&(0u8..32).collect::<Vec<_>>());
        assert_eq!(fingerprint(&m), "sha256:21bddae0cbf34dc387197b8270169751");
        let other = SecretBytes::from_slice(&[0u8; 32]);
        assert_ne!(fingerprint(&other), fingerprint(&m));
    }
}
