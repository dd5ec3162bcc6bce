//! The cryptographic module: the one place keyward's cryptographic operations are carried out.
//!
//! Every hash, MAC, KDF, random byte, AES key wrap, AES-GCM operation, asymmetric key
//! generation and audit signature goes through this module, so the `fips` build can route all
//! of them through a FIPS 140-3 validated module (AWS-LC's FIPS module, via aws-lc-rs) by
//! swapping one backend. The default build uses the RustCrypto crates. What the FIPS module does
//! not approve is refused here with [`NotApproved`], never silently done another way.
//! Encoding (DER, PEM, JWK, base64) stays outside: it is not a cryptographic service.

#[cfg(feature = "fips")]
mod awslc;
#[cfg(feature = "fips")]
use awslc as imp;
#[cfg(not(feature = "fips"))]
mod rustcrypto;
#[cfg(not(feature = "fips"))]
use rustcrypto as imp;

#[cfg(test)]
mod tests;

use super::SecretBytes;
use zeroize::Zeroizing;

/// Which module this build uses, for `--version`, `/metrics`, the compliance report and the
/// start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The module's name as it reports itself (e.g. "AWS-LC FIPS").
    pub name: &'static str,
    /// The module's version string.
    pub version: String,
    /// True when the module runs in FIPS mode (only in the `fips` build).
    pub fips: bool,
}

impl std::fmt::Display for ModuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.name,
            self.version,
            if self.fips { "FIPS mode" } else { "not FIPS" }
        )
    }
}

/// A request the FIPS build does not carry out because the module does not approve it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not approved in keyward's FIPS build; {instead}")]
pub struct NotApproved {
    /// What was asked for.
    pub what: &'static str,
    /// The approved alternative to use instead.
    pub instead: &'static str,
}

/// The start-up check failed: the build promises FIPS mode and the module is not in it.
#[derive(Debug, thiserror::Error)]
#[error("the cryptographic module is not in FIPS mode: {0}")]
pub struct ModuleError(pub String);

/// The module in use. Cheap; the version is read from the module each call.
pub fn info() -> ModuleInfo {
    imp::info()
}

/// keyward's version and the module it was built with, for `--version`.
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| format!("{} (crypto: {})", env!("CARGO_PKG_VERSION"), info()))
}

/// Adds `<prefix>_crypto_module_info{name,version,fips} 1` to a metrics registry, so a
/// scrape shows which module a process runs (and alerts can require `fips="true"`).
pub fn register_info(registry: &mut prometheus_client::registry::Registry) {
    let i = info();
    registry.register(
        "crypto_module",
        "The cryptographic module this process uses",
        prometheus_client::metrics::info::Info::new(vec![
            ("name", i.name.to_string()),
            ("version", i.version),
            ("fips", i.fips.to_string()),
        ]),
    );
}

/// Run at process start: in the `fips` build, fails unless the module is in FIPS mode (its
/// power-on self tests passed and the integrity check of the module matched).
pub fn self_check() -> Result<ModuleInfo, ModuleError> {
    imp::self_check()?;
    Ok(info())
}

/// Fills `buf` from the module's approved random generator (the OS CSPRNG in the default build).
pub fn fill_random(buf: &mut [u8]) {
    imp::fill_random(buf)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// Incremental SHA-256, for inputs fed in parts.
pub struct Sha256(imp::Sha256);

impl Sha256 {
    /// A fresh hash.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(imp::Sha256::new())
    }
    /// Feeds more input.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finish()
    }
}

/// Incremental HMAC-SHA256 under a key of any length.
pub struct HmacSha256(imp::HmacSha256);

impl HmacSha256 {
    /// A MAC keyed with `key`.
    pub fn new(key: &[u8]) -> Self {
        Self(imp::HmacSha256::new(key))
    }
    /// Feeds more input.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    /// The tag.
    pub fn finish(self) -> [u8; 32] {
        self.0.finish()
    }
}

/// Smallest salt the FIPS build accepts for PBKDF2 (SP 800-132 §5.1: at least 128 bits).
pub const PBKDF2_MIN_SALT: usize = 16;
/// Shortest PBKDF2 password the FIPS build accepts (112 bits, the module's rule).
pub const PBKDF2_MIN_PASSWORD: usize = 14;
/// Fewest PBKDF2 iterations the FIPS build accepts (SP 800-132 §5.2: at least 1,000).
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;

/// PBKDF2-HMAC-SHA256 (SP 800-132) into `out`.
pub fn pbkdf2_hmac_sha256(
    passphrase: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) -> Result<(), NotApproved> {
    if iterations == 0 {
        return Err(NotApproved {
            what: "PBKDF2 with 0 iterations",
            instead: "use at least 1,000 iterations",
        });
    }
    imp::pbkdf2_hmac_sha256(passphrase, salt, iterations, out)
}

/// Argon2id (RFC 9106). Not a FIPS-approved KDF: the FIPS build refuses it.
pub fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    out: &mut [u8],
) -> Result<(), Argon2Error> {
    imp::argon2id(passphrase, salt, memory_kib, iterations, parallelism, out)
}

/// Why an Argon2id derivation did not run.
#[derive(Debug, thiserror::Error)]
pub enum Argon2Error {
    /// The FIPS build does not offer Argon2id.
    #[error(transparent)]
    NotApproved(#[from] NotApproved),
    /// The parameters are out of Argon2's range.
    #[error("argon2id parameters: {0}")]
    Params(String),
}

/// AES key-wrap failures. Carry no bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The KEK length is not offered by this build.
    #[error(transparent)]
    NotApproved(#[from] NotApproved),
    /// Integrity check failed or the input was refused by the algorithm.
    #[error("integrity check failed")]
    Integrity,
}

/// Refuses a KEK length this build does not offer for AES key wrap (the FIPS module has no
/// AES-192 key wrap).
pub fn kw_kek_offered(len: usize) -> Result<(), NotApproved> {
    if cfg!(feature = "fips") && len == 24 {
        return Err(AES192_KW_REFUSED);
    }
    Ok(())
}

const AES192_KW_REFUSED: NotApproved = NotApproved {
    what: "AES-192 key wrap",
    instead: "use a 128- or 256-bit key-encryption key",
};

/// The fips build's refusal of Argon2id (the KDF call and the passphrase flag check say it).
pub const ARGON2ID_REFUSED: NotApproved = NotApproved {
    what: "Argon2id",
    instead: "use --kdf pbkdf2 (PBKDF2-HMAC-SHA256, SP 800-132)",
};

/// The fips build's refusal of X25519 keys.
pub const X25519_REFUSED: NotApproved = NotApproved {
    what: "X25519",
    instead: "use ecdsa-p256 or ecdsa-p384 (ECDH on NIST curves is approved)",
};

/// AES-KW wrap (SP 800-38F W). Lengths are checked by the caller (`crypto::kw`).
pub fn aes_kw_wrap(kek: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    imp::aes_kw_wrap(kek, plaintext)
}

/// AES-KW unwrap (SP 800-38F W⁻¹ with ICV1 check).
pub fn aes_kw_unwrap(kek: &[u8], ciphertext: &[u8]) -> Result<SecretBytes, WrapError> {
    imp::aes_kw_unwrap(kek, ciphertext)
}

/// AES-KWP wrap (SP 800-38F KWP-AE).
pub fn aes_kwp_wrap(kek: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    imp::aes_kwp_wrap(kek, plaintext)
}

/// AES-KWP unwrap (SP 800-38F KWP-AD).
pub fn aes_kwp_unwrap(kek: &[u8], ciphertext: &[u8]) -> Result<SecretBytes, WrapError> {
    imp::aes_kwp_unwrap(kek, ciphertext)
}

/// GCM nonce length (96 bits).
pub const GCM_NONCE_LEN: usize = 12;

/// AES-256-GCM seal under a nonce the module draws (SP 800-38D §8.2.2 RBG construction);
/// returns (nonce, ciphertext || tag). `key` is 32 bytes (checked by the caller).
pub fn aes256_gcm_seal(
    key: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; GCM_NONCE_LEN], Vec<u8>), WrapError> {
    imp::aes256_gcm_seal(key, aad, plaintext)
}

/// AES-256-GCM seal under a caller-chosen nonce: test vectors only. The FIPS module does not
/// approve it (the nonce must come from inside the module), so the FIPS build refuses it.
pub fn aes256_gcm_seal_with_nonce(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, WrapError> {
    imp::aes256_gcm_seal_with_nonce(key, nonce, aad, plaintext)
}

/// AES-256-GCM open of ciphertext || tag.
pub fn aes256_gcm_open(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, WrapError> {
    imp::aes256_gcm_open(key, nonce, aad, ciphertext)
}

/// The asymmetric key families keyward generates, as the module sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asymmetric {
    /// RSA with the modulus size in bits (2048, 3072, 4096).
    Rsa(u32),
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// Ed25519 (FIPS 186-5).
    Ed25519,
    /// X25519 (RFC 7748): not approved in the FIPS build.
    X25519,
}

/// Why an asymmetric operation did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsymmetricError {
    /// The FIPS build does not offer this algorithm.
    #[error(transparent)]
    NotApproved(#[from] NotApproved),
    /// The stored PKCS#8 does not parse as this family's private key.
    #[error("not a valid private key of this algorithm")]
    Invalid,
}

/// A fresh private key as PKCS#8 v1 DER (RFC 5958 / RFC 8410). RSA takes up to seconds.
pub fn generate_pkcs8(kind: Asymmetric) -> Result<SecretBytes, AsymmetricError> {
    imp::generate_pkcs8(kind)
}

/// The SubjectPublicKeyInfo DER of a PKCS#8 private key, computed by the module.
pub fn public_spki(kind: Asymmetric, pkcs8: &[u8]) -> Result<Vec<u8>, AsymmetricError> {
    imp::public_spki(kind, pkcs8)
}

/// An Ed25519 signing key (the audit log's signer); the seed zeroizes on drop.
pub struct Ed25519Signer(imp::Ed25519Signer);

impl Ed25519Signer {
    /// A fresh key from the module's random generator.
    pub fn generate() -> Self {
        Self(imp::Ed25519Signer::generate())
    }
    /// The key of a 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(imp::Ed25519Signer::from_seed(seed))
    }
    /// The seed, for writing the key file.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        self.0.seed()
    }
    /// The 32-byte public key.
    pub fn public_key(&self) -> Ed25519PublicKey {
        Ed25519PublicKey(self.0.public_key())
    }
    /// A 64-byte signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg)
    }
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519Signer([redacted])")
    }
}

/// An Ed25519 public key that was checked to be a valid point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ed25519PublicKey([u8; 32]);

impl Ed25519PublicKey {
    /// Parses 32 bytes; None when they are not a valid Ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        imp::ed25519_point_ok(bytes).then_some(Self(*bytes))
    }
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// True when `sig` is this key's signature over `msg` (RFC 8032 verification).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        imp::ed25519_verify(&self.0, msg, sig)
    }
}

/// RFC 8410 PKCS#8 v1 prefix of a 32-byte Ed25519 private key (the seed follows).
pub const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
