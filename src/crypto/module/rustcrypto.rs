//! The default build's backend: the RustCrypto crates (not a validated module).

use super::{
    Argon2Error, Asymmetric, AsymmetricError, GCM_NONCE_LEN, ModuleError, ModuleInfo, NotApproved,
    WrapError,
};
use crate::crypto::SecretBytes;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_kw::{KekAes128, KekAes192, KekAes256};
use hmac::Mac;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Digest;
use zeroize::Zeroizing;

pub(super) fn info() -> ModuleInfo {
    ModuleInfo {
        name: "RustCrypto",
        version: "aes-kw 0.2, aes-gcm 0.10, sha2 0.10, ed25519-dalek 2".into(),
        fips: false,
    }
}

pub(super) fn self_check() -> Result<(), ModuleError> {
    Ok(())
}

pub(super) fn fill_random(buf: &mut [u8]) {
    OsRng.fill_bytes(buf)
}

pub(super) struct Sha256(sha2::Sha256);

impl Sha256 {
    pub(super) fn new() -> Self {
        Self(sha2::Sha256::new())
    }
    pub(super) fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub(super) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

pub(super) struct HmacSha256(hmac::Hmac<sha2::Sha256>);

impl HmacSha256 {
    pub(super) fn new(key: &[u8]) -> Self {
        Self(
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
                .expect("HMAC takes any key length"),
        )
    }
    pub(super) fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub(super) fn finish(self) -> [u8; 32] {
        self.0.finalize().into_bytes().into()
    }
}

pub(super) fn pbkdf2_hmac_sha256(
    passphrase: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) -> Result<(), NotApproved> {
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(passphrase, salt, iterations, out);
    Ok(())
}

pub(super) fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    out: &mut [u8],
) -> Result<(), Argon2Error> {
    let params = argon2::Params::new(memory_kib, iterations, parallelism, Some(out.len()))
        .map_err(|e| Argon2Error::Params(e.to_string()))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, salt, out)
        .map_err(|e| Argon2Error::Params(e.to_string()))
}

enum Kek {
    A128(KekAes128),
    A192(KekAes192),
    A256(KekAes256),
}

fn kek(key: &[u8]) -> Result<Kek, WrapError> {
    let k = match key.len() {
        16 => KekAes128::try_from(key).map(Kek::A128),
        24 => KekAes192::try_from(key).map(Kek::A192),
        32 => KekAes256::try_from(key).map(Kek::A256),
        _ => return Err(WrapError::Integrity),
    };
    k.map_err(|_| WrapError::Integrity)
}

pub(super) fn aes_kw_wrap(kek_bytes: &[u8], pt: &[u8]) -> Result<Vec<u8>, WrapError> {
    let r = match kek(kek_bytes)? {
        Kek::A128(k) => k.wrap_vec(pt),
        Kek::A192(k) => k.wrap_vec(pt),
        Kek::A256(k) => k.wrap_vec(pt),
    };
    r.map_err(|_| WrapError::Integrity)
}

pub(super) fn aes_kw_unwrap(kek_bytes: &[u8], ct: &[u8]) -> Result<SecretBytes, WrapError> {
    let r = match kek(kek_bytes)? {
        Kek::A128(k) => k.unwrap_vec(ct),
        Kek::A192(k) => k.unwrap_vec(ct),
        Kek::A256(k) => k.unwrap_vec(ct),
    };
    r.map(SecretBytes::new).map_err(|_| WrapError::Integrity)
}

pub(super) fn aes_kwp_wrap(kek_bytes: &[u8], pt: &[u8]) -> Result<Vec<u8>, WrapError> {
    let r = match kek(kek_bytes)? {
        Kek::A128(k) => k.wrap_with_padding_vec(pt),
        Kek::A192(k) => k.wrap_with_padding_vec(pt),
        Kek::A256(k) => k.wrap_with_padding_vec(pt),
    };
    r.map_err(|_| WrapError::Integrity)
}

pub(super) fn aes_kwp_unwrap(kek_bytes: &[u8], ct: &[u8]) -> Result<SecretBytes, WrapError> {
    let r = match kek(kek_bytes)? {
        Kek::A128(k) => k.unwrap_with_padding_vec(ct),
        Kek::A192(k) => k.unwrap_with_padding_vec(ct),
        Kek::A256(k) => k.unwrap_with_padding_vec(ct),
    };
    r.map(SecretBytes::new).map_err(|_| WrapError::Integrity)
}

fn gcm(key: &[u8]) -> Result<Aes256Gcm, WrapError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| WrapError::Integrity)
}

pub(super) fn aes256_gcm_seal(
    key: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<([u8; GCM_NONCE_LEN], Vec<u8>), WrapError> {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    fill_random(&mut nonce);
    Ok((nonce, aes256_gcm_seal_with_nonce(key, &nonce, aad, pt)?))
}

pub(super) fn aes256_gcm_seal_with_nonce(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    pt: &[u8],
) -> Result<Vec<u8>, WrapError> {
    gcm(key)?
        .encrypt(Nonce::from_slice(nonce), Payload { msg: pt, aad })
        .map_err(|_| WrapError::Integrity)
}

pub(super) fn aes256_gcm_open(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    ct: &[u8],
) -> Result<SecretBytes, WrapError> {
    gcm(key)?
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(SecretBytes::new)
        .map_err(|_| WrapError::Integrity)
}

// RFC 8410 fixed DER prefixes for 32-byte X25519 / Ed25519 keys.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

pub(super) fn generate_pkcs8(kind: Asymmetric) -> Result<SecretBytes, AsymmetricError> {
    let der = match kind {
        Asymmetric::Rsa(bits) => rsa::RsaPrivateKey::new(&mut OsRng, bits as usize)
            .map_err(|_| AsymmetricError::Invalid)?
            .to_pkcs8_der(),
        Asymmetric::P256 => p256::SecretKey::random(&mut OsRng).to_pkcs8_der(),
        Asymmetric::P384 => p384::SecretKey::random(&mut OsRng).to_pkcs8_der(),
        Asymmetric::Ed25519 => {
            // PKCS#8 v1 (RFC 8410): v2 with the embedded public key is not read by every
            // OpenSSL 3 release.
            let k = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let mut der = super::ED25519_PKCS8_PREFIX.to_vec();
            der.extend_from_slice(k.as_bytes());
            return Ok(SecretBytes::new(der));
        }
        Asymmetric::X25519 => {
            let k = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let mut der = X25519_PKCS8_PREFIX.to_vec();
            der.extend_from_slice(k.as_bytes());
            return Ok(SecretBytes::new(der));
        }
    };
    Ok(SecretBytes::from_slice(
        der.map_err(|_| AsymmetricError::Invalid)?.as_bytes(),
    ))
}

pub(super) fn public_spki(kind: Asymmetric, pkcs8: &[u8]) -> Result<Vec<u8>, AsymmetricError> {
    let bad = |_| AsymmetricError::Invalid;
    let der = match kind {
        Asymmetric::Rsa(_) => rsa::RsaPrivateKey::from_pkcs8_der(pkcs8)
            .map_err(bad)?
            .to_public_key()
            .to_public_key_der(),
        Asymmetric::P256 => p256::SecretKey::from_pkcs8_der(pkcs8)
            .map_err(bad)?
            .public_key()
            .to_public_key_der(),
        Asymmetric::P384 => p384::SecretKey::from_pkcs8_der(pkcs8)
            .map_err(bad)?
            .public_key()
            .to_public_key_der(),
        Asymmetric::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8)
            .map_err(bad)?
            .verifying_key()
            .to_public_key_der(),
        Asymmetric::X25519 => {
            if pkcs8.len() != 48 || pkcs8[..16] != X25519_PKCS8_PREFIX {
                return Err(AsymmetricError::Invalid);
            }
            let mut raw = Zeroizing::new([0u8; 32]);
            raw.copy_from_slice(&pkcs8[16..]);
            let p = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*raw));
            let mut der = X25519_SPKI_PREFIX.to_vec();
            der.extend_from_slice(p.as_bytes());
            return Ok(der);
        }
    };
    Ok(der.map_err(|_| AsymmetricError::Invalid)?.into_vec())
}

pub(super) struct Ed25519Signer(ed25519_dalek::SigningKey);

impl Ed25519Signer {
    pub(super) fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }
    pub(super) fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }
    pub(super) fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
    pub(super) fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub(super) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(msg).to_bytes()
    }
}

pub(super) fn ed25519_point_ok(pk: &[u8; 32]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(pk).is_ok()
}

pub(super) fn ed25519_verify(pk: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    use ed25519_dalek::Verifier;
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    ed25519_dalek::VerifyingKey::from_bytes(pk).is_ok_and(|k| k.verify(msg, &sig).is_ok())
}
