//! The `fips` build's backend: AWS-LC's FIPS module through aws-lc-rs (FIPS 140-3, AWS-LC
//! FIPS module 4). Requests the module does not approve are refused with [`NotApproved`].

use super::{
    Argon2Error, Asymmetric, AsymmetricError, GCM_NONCE_LEN, ModuleError, ModuleInfo, NotApproved,
    PBKDF2_MIN_ITERATIONS, PBKDF2_MIN_PASSWORD, PBKDF2_MIN_SALT, WrapError,
};
use crate::crypto::SecretBytes;
use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrap, KeyWrapPadded};
use aws_lc_rs::signature::{self, KeyPair};
use std::num::NonZeroU32;
use zeroize::Zeroizing;

pub(super) fn info() -> ModuleInfo {
    ModuleInfo {
        name: "AWS-LC FIPS",
        version: match aws_lc_rs::fips_version() {
            Some(m) => format!("{} (FIPS module {m})", aws_lc_rs::awslc_version()),
            None => aws_lc_rs::awslc_version().to_string(),
        },
        fips: aws_lc_rs::try_fips_mode().is_ok(),
    }
}

pub(super) fn self_check() -> Result<(), ModuleError> {
    aws_lc_rs::try_fips_mode().map_err(|e| ModuleError(e.to_string()))
}

pub(super) fn fill_random(buf: &mut [u8]) {
    // The module's CTR-DRBG; it fails only if the module is in an error state, which a key
    // manager must not run on.
    aws_lc_rs::rand::fill(buf).expect("the FIPS module's DRBG failed");
}

pub(super) struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    pub(super) fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
    pub(super) fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub(super) fn finish(self) -> [u8; 32] {
        self.0
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

pub(super) struct HmacSha256(aws_lc_rs::hmac::Context);

impl HmacSha256 {
    pub(super) fn new(key: &[u8]) -> Self {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        Self(aws_lc_rs::hmac::Context::with_key(&k))
    }
    pub(super) fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub(super) fn finish(self) -> [u8; 32] {
        self.0
            .sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }
}

pub(super) fn pbkdf2_hmac_sha256(
    passphrase: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) -> Result<(), NotApproved> {
    // The module's service indicator approves PBKDF2 only with a password of at least 112
    // bits, a salt of at least 128 bits (SP 800-132 §5.1), at least 1,000 iterations (§5.2)
    // and at least 112 bits of output.
    if passphrase.len() < PBKDF2_MIN_PASSWORD {
        return Err(NotApproved {
            what: "PBKDF2 with a password under 14 bytes",
            instead: "use a passphrase of at least 14 bytes",
        });
    }
    if salt.len() < PBKDF2_MIN_SALT {
        return Err(NotApproved {
            what: "PBKDF2 with a salt under 16 bytes",
            instead: "use a salt of at least 16 bytes",
        });
    }
    if iterations < PBKDF2_MIN_ITERATIONS {
        return Err(NotApproved {
            what: "PBKDF2 with under 1,000 iterations",
            instead: "use at least 1,000 iterations",
        });
    }
    if out.len() < 14 {
        return Err(NotApproved {
            what: "PBKDF2 output under 112 bits",
            instead: "derive at least 14 bytes",
        });
    }
    let i = NonZeroU32::new(iterations).expect("checked above");
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        i,
        salt,
        passphrase,
        out,
    );
    Ok(())
}

pub(super) fn argon2id(
    _passphrase: &[u8],
    _salt: &[u8],
    _memory_kib: u32,
    _iterations: u32,
    _parallelism: u32,
    _out: &mut [u8],
) -> Result<(), Argon2Error> {
    Err(super::ARGON2ID_REFUSED.into())
}

fn kek(key: &[u8]) -> Result<AesKek, WrapError> {
    super::kw_kek_offered(key.len())?;
    let cipher = match key.len() {
        16 => &AES_128,
        32 => &AES_256,
        _ => return Err(WrapError::Integrity),
    };
    AesKek::new(cipher, key).map_err(|_| WrapError::Integrity)
}

pub(super) fn aes_kw_wrap(kek_bytes: &[u8], pt: &[u8]) -> Result<Vec<u8>, WrapError> {
    let k = kek(kek_bytes)?;
    let mut out = vec![0u8; pt.len() + 8];
    let n = k
        .wrap(pt, &mut out)
        .map_err(|_| WrapError::Integrity)?
        .len();
    out.truncate(n);
    Ok(out)
}

pub(super) fn aes_kw_unwrap(kek_bytes: &[u8], ct: &[u8]) -> Result<SecretBytes, WrapError> {
    let k = kek(kek_bytes)?;
    let mut out = Zeroizing::new(vec![0u8; ct.len()]);
    let n = k
        .unwrap(ct, &mut out)
        .map_err(|_| WrapError::Integrity)?
        .len();
    out.truncate(n);
    Ok(SecretBytes::new(std::mem::take(&mut *out)))
}

pub(super) fn aes_kwp_wrap(kek_bytes: &[u8], pt: &[u8]) -> Result<Vec<u8>, WrapError> {
    let k = kek(kek_bytes)?;
    let mut out = vec![0u8; pt.len().div_ceil(8) * 8 + 8];
    let n = k
        .wrap_with_padding(pt, &mut out)
        .map_err(|_| WrapError::Integrity)?
        .len();
    out.truncate(n);
    Ok(out)
}

pub(super) fn aes_kwp_unwrap(kek_bytes: &[u8], ct: &[u8]) -> Result<SecretBytes, WrapError> {
    let k = kek(kek_bytes)?;
    let mut out = Zeroizing::new(vec![0u8; ct.len()]);
    let n = k
        .unwrap_with_padding(ct, &mut out)
        .map_err(|_| WrapError::Integrity)?
        .len();
    out.truncate(n);
    Ok(SecretBytes::new(std::mem::take(&mut *out)))
}

fn gcm(key: &[u8]) -> Result<RandomizedNonceKey, WrapError> {
    RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| WrapError::Integrity)
}

pub(super) fn aes256_gcm_seal(
    key: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<([u8; GCM_NONCE_LEN], Vec<u8>), WrapError> {
    let mut buf = pt.to_vec();
    let nonce = gcm(key)?
        .seal_in_place_append_tag(Aad::from(aad), &mut buf)
        .map_err(|_| WrapError::Integrity)?;
    Ok((*nonce.as_ref(), buf))
}

pub(super) fn aes256_gcm_seal_with_nonce(
    _key: &[u8],
    _nonce: &[u8; GCM_NONCE_LEN],
    _aad: &[u8],
    _pt: &[u8],
) -> Result<Vec<u8>, WrapError> {
    Err(NotApproved {
        what: "AES-GCM encryption under a caller-supplied nonce",
        instead: "seal with a nonce the module generates (crypto::gcm::seal)",
    }
    .into())
}

pub(super) fn aes256_gcm_open(
    key: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    ct: &[u8],
) -> Result<SecretBytes, WrapError> {
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = gcm(key)?
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| WrapError::Integrity)?
        .len();
    buf.truncate(n);
    Ok(SecretBytes::new(std::mem::take(&mut *buf)))
}

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn x25519_refused() -> AsymmetricError {
    super::X25519_REFUSED.into()
}

fn ecdsa_alg(kind: Asymmetric) -> &'static signature::EcdsaSigningAlgorithm {
    if kind == Asymmetric::P384 {
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING
    }
}

pub(super) fn generate_pkcs8(kind: Asymmetric) -> Result<SecretBytes, AsymmetricError> {
    fn bad<E>(_: E) -> AsymmetricError {
        AsymmetricError::Invalid
    }
    let der: Vec<u8> = match kind {
        Asymmetric::Rsa(bits) => {
            let size = match bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                _ => return Err(AsymmetricError::Invalid),
            };
            let k = aws_lc_rs::rsa::KeyPair::generate(size).map_err(bad)?;
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&k)
                .map_err(bad)?
                .as_ref()
                .to_vec()
        }
        Asymmetric::P256 | Asymmetric::P384 => signature::EcdsaKeyPair::generate(ecdsa_alg(kind))
            .map_err(bad)?
            .to_pkcs8v1()
            .map_err(bad)?
            .as_ref()
            .to_vec(),
        Asymmetric::Ed25519 => signature::Ed25519KeyPair::generate()
            .map_err(bad)?
            .to_pkcs8v1()
            .map_err(bad)?
            .as_ref()
            .to_vec(),
        Asymmetric::X25519 => return Err(x25519_refused()),
    };
    Ok(SecretBytes::new(der))
}

pub(super) fn public_spki(kind: Asymmetric, pkcs8: &[u8]) -> Result<Vec<u8>, AsymmetricError> {
    fn bad<E>(_: E) -> AsymmetricError {
        AsymmetricError::Invalid
    }
    Ok(match kind {
        Asymmetric::Rsa(_) => {
            let k = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8).map_err(bad)?;
            AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(k.public_key())
                .map_err(bad)?
                .as_ref()
                .to_vec()
        }
        Asymmetric::P256 | Asymmetric::P384 => {
            let k = signature::EcdsaKeyPair::from_pkcs8(ecdsa_alg(kind), pkcs8).map_err(bad)?;
            AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(k.public_key())
                .map_err(bad)?
                .as_ref()
                .to_vec()
        }
        Asymmetric::Ed25519 => {
            let k = signature::Ed25519KeyPair::from_pkcs8(pkcs8).map_err(bad)?;
            let mut der = ED25519_SPKI_PREFIX.to_vec();
            der.extend_from_slice(k.public_key().as_ref());
            der
        }
        Asymmetric::X25519 => return Err(x25519_refused()),
    })
}

pub(super) struct Ed25519Signer {
    seed: Zeroizing<[u8; 32]>,
    pair: signature::Ed25519KeyPair,
}

impl Ed25519Signer {
    pub(super) fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(&mut seed[..]);
        Self::from_seed(&seed)
    }
    pub(super) fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("every 32-byte string is an Ed25519 seed");
        Self {
            seed: Zeroizing::new(*seed),
            pair,
        }
    }
    pub(super) fn seed(&self) -> Zeroizing<[u8; 32]> {
        self.seed.clone()
    }
    pub(super) fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes")
    }
    pub(super) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.pair
            .sign(msg)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes")
    }
}

/// Point decoding is input validation of a public value, not a cryptographic service; the
/// module offers no such check for Ed25519, so the encoding check of ed25519-dalek is used.
/// Verification itself runs in the module.
pub(super) fn ed25519_point_ok(pk: &[u8; 32]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(pk).is_ok()
}

pub(super) fn ed25519_verify(pk: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(msg, sig)
        .is_ok()
}
