//! The wrapped-DEK envelope: versioned, self-describing, and bound to the key it belongs to.
//!
//! Byte layout (all integers big-endian), format version 1:
//!
//! | field            | size            | notes                                        |
//! |------------------|-----------------|----------------------------------------------|
//! | magic            | 4               | `KWRD`                                       |
//! | format version   | 1               | `1`                                          |
//! | algorithm        | 1               | 1 = AES-256-KWP, 2 = AES-256-KW, 3 = AES-256-GCM |
//! | backend length   | 1               | then backend kind, ASCII (`local`, `pkcs11`) |
//! | KEK id length    | 1               | then KEK id, UTF-8                           |
//! | KEK version      | 4               |                                              |
//! | key id length    | 2               | then `namespace/name`, UTF-8                 |
//! | key version      | 4               |                                              |
//! | nonce length     | 1               | then nonce (12 for GCM, 0 for KW/KWP)        |
//! | params length    | 2               | then backend parameters (e.g. KDF salt)      |
//! | ciphertext length| 4               | then ciphertext (GCM: ciphertext || tag)     |
//!
//! Everything before the ciphertext length is the *header*. The header is authenticated:
//! for GCM it is the associated data; for KW/KWP the wrapping key is derived from the KEK
//! and the header (HMAC-SHA256), so a changed header derives another key and the integrity
//! check fails. Because the header holds the key id (namespace/name) and version, an envelope
//! copied to another ManagedKey or version does not unwrap. Trailing bytes are refused.

use super::{CryptoError, SecretBytes, gcm, hmac_sha256, kw};

/// Longest backend kind (`passphrase` is the longest today).
pub const MAX_BACKEND: usize = 32;
/// Longest KEK id (a KMS key ARN, `<token>/<label>`, `ns/secret`); the length prefix is 1 byte.
pub const MAX_KEK_ID: usize = 255;
/// Longest key id: `namespace/name` is at most 63 + 1 + 253 bytes in Kubernetes.
pub const MAX_KEY_ID: usize = 512;
/// Longest backend parameter block (the passphrase backend's is about 31 bytes).
pub const MAX_PARAMS: usize = 1024;
/// Longest ciphertext: the largest wrapped plaintext plus room for a KMS ciphertext blob.
pub const MAX_CIPHERTEXT: usize = kw::MAX_PLAINTEXT + 1024;
/// Longest encoded envelope: every field at its maximum. Longer input is refused before it
/// is parsed, and every field is copied only after its bytes are known to be present, so no
/// length field can make the decoder allocate more than the input it was given.
pub const MAX_ENVELOPE: usize = 4
    + 1
    + 1
    + (1 + MAX_BACKEND)
    + (1 + MAX_KEK_ID)
    + 4
    + (2 + MAX_KEY_ID)
    + 4
    + (1 + gcm::NONCE_LEN)
    + (2 + MAX_PARAMS)
    + (4 + MAX_CIPHERTEXT);

const MAGIC: &[u8; 4] = b"KWRD";
/// Current envelope format version.
pub const FORMAT_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"keyward-envelope-v1\0";
const KW_SUBKEY_LABEL: &[u8] = b"keyward-kw-subkey-v1";

/// Wrapping algorithm recorded in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// AES-256 key wrap with padding (SP 800-38F KWP); any DEK length.
    Aes256Kwp = 1,
    /// AES-256 key wrap (SP 800-38F KW); DEK length >= 16 and a multiple of 8.
    Aes256Kw = 2,
    /// AES-256-GCM with a random 96-bit nonce and the header as AAD.
    Aes256Gcm = 3,
}

impl Algorithm {
    fn from_u8(v: u8) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(Self::Aes256Kwp),
            2 => Ok(Self::Aes256Kw),
            3 => Ok(Self::Aes256Gcm),
            _ => Err(CryptoError::Malformed(format!("unknown algorithm {v}"))),
        }
    }

    /// Stable name for flags and status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Kwp => "aes-256-kwp",
            Self::Aes256Kw => "aes-256-kw",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Parse a flag value such as `aes-256-gcm`.
    pub fn parse(s: &str) -> Result<Self, UnknownAlgorithm> {
        match s {
            "aes-256-kwp" => Ok(Self::Aes256Kwp),
            "aes-256-kw" => Ok(Self::Aes256Kw),
            "aes-256-gcm" => Ok(Self::Aes256Gcm),
            o => Err(UnknownAlgorithm(o.into())),
        }
    }
}

impl Algorithm {
    /// The algorithms this build seals with under a raw (in-memory) KEK. The `fips` build has
    /// no AES-256-GCM here: the envelope header, nonce included, is GCM's AAD, so the nonce
    /// would have to be chosen outside the module, which FIPS 140-3 does not approve. It
    /// still opens GCM envelopes written before.
    pub fn sealable_with_raw_kek() -> &'static [Algorithm] {
        if cfg!(feature = "fips") {
            &[Algorithm::Aes256Kwp, Algorithm::Aes256Kw]
        } else {
            &[
                Algorithm::Aes256Kwp,
                Algorithm::Aes256Kw,
                Algorithm::Aes256Gcm,
            ]
        }
    }
}

/// A `--kek-wrap-algorithm` value that is not a wrap algorithm; the message lists the valid
/// ones (clap shows it as the flag's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown wrap algorithm {0:?}: use aes-256-kwp, aes-256-kw or aes-256-gcm")]
pub struct UnknownAlgorithm(pub String);

/// Which key version an envelope belongs to; bound into the envelope's header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyContext {
    /// ManagedKey namespace.
    pub namespace: String,
    /// ManagedKey name.
    pub name: String,
    /// Key version number.
    pub version: u32,
}

impl KeyContext {
    /// Build a context.
    pub fn new(namespace: &str, name: &str, version: u32) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            version,
        }
    }

    /// `namespace/name`, the key id stored in envelopes.
    pub fn key_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A wrapped DEK with everything needed to unwrap it (except the KEK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Wrapping algorithm.
    pub algorithm: Algorithm,
    /// Backend kind that holds the KEK (`local`, `passphrase`, `pkcs11`, `awskms`).
    pub backend: String,
    /// KEK identifier within the backend.
    pub kek_id: String,
    /// KEK version, so several KEK versions can coexist during rotation.
    pub kek_version: u32,
    /// `namespace/name` of the ManagedKey.
    pub key_id: String,
    /// Key version.
    pub key_version: u32,
    /// GCM nonce; empty for KW/KWP.
    pub nonce: Vec<u8>,
    /// Backend parameters (KDF salt and costs); authenticated with the header.
    pub params: Vec<u8>,
    /// The wrapped key.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// A header for `ctx`, to be completed by a backend's wrap.
    pub fn for_context(
        algorithm: Algorithm,
        backend: &str,
        kek_id: &str,
        kek_version: u32,
        ctx: &KeyContext,
    ) -> Self {
        Self {
            algorithm,
            backend: backend.into(),
            kek_id: kek_id.into(),
            kek_version,
            key_id: ctx.key_id(),
            key_version: ctx.version,
            nonce: Vec::new(),
            params: Vec::new(),
            ciphertext: Vec::new(),
        }
    }

    /// Header bytes (everything the ciphertext is bound to).
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.key_id.len() + self.params.len());
        b.extend_from_slice(MAGIC);
        b.push(FORMAT_VERSION);
        b.push(self.algorithm as u8);
        b.push(self.backend.len() as u8);
        b.extend_from_slice(self.backend.as_bytes());
        b.push(self.kek_id.len() as u8);
        b.extend_from_slice(self.kek_id.as_bytes());
        b.extend_from_slice(&self.kek_version.to_be_bytes());
        b.extend_from_slice(&(self.key_id.len() as u16).to_be_bytes());
        b.extend_from_slice(self.key_id.as_bytes());
        b.extend_from_slice(&self.key_version.to_be_bytes());
        b.push(self.nonce.len() as u8);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&(self.params.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.params);
        b
    }

    /// Associated data: a domain label and the header.
    pub fn aad(&self) -> Vec<u8> {
        let mut a = AAD_LABEL.to_vec();
        a.extend_from_slice(&self.header_bytes());
        a
    }

    /// Refuse field lengths outside the format's bounds (the same bounds [`Envelope::decode`]
    /// applies), so nothing is written that could not be read back.
    pub fn check_bounds(&self) -> Result<(), CryptoError> {
        let too_long = |what: &'static str, len: usize, max: usize| {
            Err(CryptoError::Length {
                what,
                detail: format!("at most {max} bytes, got {len}"),
            })
        };
        for (what, len, max) in [
            ("envelope backend", self.backend.len(), MAX_BACKEND),
            ("envelope KEK id", self.kek_id.len(), MAX_KEK_ID),
            ("envelope key id", self.key_id.len(), MAX_KEY_ID),
            ("envelope params", self.params.len(), MAX_PARAMS),
            ("envelope ciphertext", self.ciphertext.len(), MAX_CIPHERTEXT),
        ] {
            if len > max {
                return too_long(what, len, max);
            }
        }
        if !self.nonce.is_empty() && self.nonce.len() != gcm::NONCE_LEN {
            return Err(CryptoError::Length {
                what: "envelope nonce",
                detail: format!(
                    "must be empty or {} bytes, got {}",
                    gcm::NONCE_LEN,
                    self.nonce.len()
                ),
            });
        }
        Ok(())
    }

    /// Serialize to bytes; refuses fields outside the format's bounds.
    pub fn encode(&self) -> Result<Vec<u8>, CryptoError> {
        self.check_bounds()?;
        let mut b = self.header_bytes();
        b.extend_from_slice(&(self.ciphertext.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.ciphertext);
        Ok(b)
    }

    /// Parse bytes; refuses input longer than [`MAX_ENVELOPE`], unknown versions, fields
    /// outside their bounds, truncation and trailing bytes, naming the field. Never panics;
    /// allocates at most the input's length.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(CryptoError::Length {
                what: "envelope",
                detail: format!("at most {MAX_ENVELOPE} bytes, got {}", bytes.len()),
            });
        }
        let mut r = Reader { b: bytes, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(CryptoError::Malformed(
                "not a keyward envelope (bad magic)".into(),
            ));
        }
        let ver = r.u8("format version")?;
        if ver != FORMAT_VERSION {
            return Err(CryptoError::Malformed(format!(
                "envelope format version {ver} is not supported (this build reads {FORMAT_VERSION})"
            )));
        }
        let algorithm = Algorithm::from_u8(r.u8("algorithm")?)?;
        let n = r.u8("backend length")? as usize;
        let backend = r.string(n, MAX_BACKEND, "backend")?;
        let n = r.u8("KEK id length")? as usize;
        let kek_id = r.string(n, MAX_KEK_ID, "KEK id")?;
        let kek_version = r.u32("KEK version")?;
        let n = r.u16("key id length")? as usize;
        let key_id = r.string(n, MAX_KEY_ID, "key id")?;
        let key_version = r.u32("key version")?;
        let n = r.u8("nonce length")? as usize;
        if n != 0 && n != gcm::NONCE_LEN {
            return Err(CryptoError::Malformed(format!(
                "nonce must be empty or {} bytes, got {n}",
                gcm::NONCE_LEN
            )));
        }
        let nonce = r.take(n, "nonce")?.to_vec();
        let n = r.u16("params length")? as usize;
        let params = r.bounded(n, MAX_PARAMS, "params")?.to_vec();
        let n = r.u32("ciphertext length")? as usize;
        let ciphertext = r.bounded(n, MAX_CIPHERTEXT, "ciphertext")?.to_vec();
        if r.pos != bytes.len() {
            return Err(CryptoError::Malformed(format!(
                "{} trailing bytes after the ciphertext",
                bytes.len() - r.pos
            )));
        }
        Ok(Self {
            algorithm,
            backend,
            kek_id,
            kek_version,
            key_id,
            key_version,
            nonce,
            params,
            ciphertext,
        })
    }

    /// Refuse an envelope that belongs to another key or version.
    pub fn check_context(&self, ctx: &KeyContext) -> Result<(), CryptoError> {
        if self.key_id != ctx.key_id() || self.key_version != ctx.version {
            return Err(CryptoError::Integrity);
        }
        Ok(())
    }

    /// Wrap `dek` under raw KEK bytes (backends that hold the KEK in memory).
    /// `self` carries the header; nonce and ciphertext are filled in.
    pub fn seal_with_raw_kek(
        mut self,
        kek: &SecretBytes,
        dek: &SecretBytes,
    ) -> Result<Self, CryptoError> {
        // The header is the AAD: refuse one that could not be encoded before binding to it.
        self.check_bounds()?;
        match self.algorithm {
            Algorithm::Aes256Gcm => {
                self.nonce = gcm::random_nonce().to_vec();
                let aad = self.aad();
                self.ciphertext =
                    gcm::seal_with_nonce(kek.expose(), &self.nonce, &aad, dek.expose())?;
            }
            Algorithm::Aes256Kwp | Algorithm::Aes256Kw => {
                self.nonce.clear();
                let sub = self.kw_subkey(kek)?;
                self.ciphertext = if self.algorithm == Algorithm::Aes256Kwp {
                    kw::wrap_pad(sub.expose(), dek)?
                } else {
                    kw::wrap(sub.expose(), dek)?
                };
            }
        }
        Ok(self)
    }

    /// Unwrap under raw KEK bytes after checking the envelope belongs to `ctx`.
    pub fn open_with_raw_kek(
        &self,
        kek: &SecretBytes,
        ctx: &KeyContext,
    ) -> Result<SecretBytes, CryptoError> {
        self.check_context(ctx)?;
        self.check_bounds()?;
        match self.algorithm {
            Algorithm::Aes256Gcm => {
                gcm::open(kek.expose(), &self.nonce, &self.aad(), &self.ciphertext)
            }
            Algorithm::Aes256Kwp | Algorithm::Aes256Kw => {
                if !self.nonce.is_empty() {
                    return Err(CryptoError::Integrity);
                }
                let sub = self.kw_subkey(kek)?;
                if self.algorithm == Algorithm::Aes256Kwp {
                    kw::unwrap_pad(sub.expose(), &self.ciphertext)
                } else {
                    kw::unwrap(sub.expose(), &self.ciphertext)
                }
            }
        }
    }

    fn kw_subkey(&self, kek: &SecretBytes) -> Result<SecretBytes, CryptoError> {
        if kek.len() != 32 {
            return Err(CryptoError::Length {
                what: "KEK",
                detail: format!("must be 32 bytes, got {}", kek.len()),
            });
        }
        Ok(SecretBytes::from_slice(&hmac_sha256(
            kek.expose(),
            &[KW_SUBKEY_LABEL, &self.aad()],
        )))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes of field `what`, borrowed: nothing is allocated here.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CryptoError> {
        let left = self.b.len() - self.pos;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                CryptoError::Malformed(format!(
                    "truncated envelope: {what} needs {n} bytes, {left} left"
                ))
            })?;
        let s = self.b.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }
    /// Like `take`, refusing a declared length above `max` first.
    fn bounded(&mut self, n: usize, max: usize, what: &str) -> Result<&'a [u8], CryptoError> {
        if n > max {
            return Err(CryptoError::Malformed(format!(
                "{what} is {n} bytes, at most {max} allowed"
            )));
        }
        self.take(n, what)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CryptoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, CryptoError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, CryptoError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, CryptoError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn string(&mut self, n: usize, max: usize, what: &str) -> Result<String, CryptoError> {
        std::str::from_utf8(self.bounded(n, max, what)?)
            .map(str::to_owned)
            .map_err(|_| CryptoError::Malformed(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrap_algorithm_names_round_trip_and_unknown_ones_list_the_choices() {
        for a in [
            Algorithm::Aes256Kwp,
            Algorithm::Aes256Kw,
            Algorithm::Aes256Gcm,
        ] {
            assert_eq!(Algorithm::parse(a.name()), Ok(a));
        }
        let e = Algorithm::parse("des").unwrap_err();
        assert_eq!(e, UnknownAlgorithm("des".into()));
        assert!(
            e.to_string()
                .contains("use aes-256-kwp, aes-256-kw or aes-256-gcm"),
            "{e}"
        );
    }

    fn algs() -> impl Strategy<Value = Algorithm> {
        prop::sample::select(Algorithm::sealable_with_raw_kek())
    }

    /// The last of this build's sealable algorithms: AES-256-GCM, or KW in the fips build.
    fn last_sealable() -> Algorithm {
        *Algorithm::sealable_with_raw_kek().last().unwrap()
    }

    fn seal(alg: Algorithm, kek: &SecretBytes, ctx: &KeyContext, dek: &SecretBytes) -> Vec<u8> {
        Envelope::for_context(alg, "local", "root", 1, ctx)
            .seal_with_raw_kek(kek, dek)
            .unwrap()
            .encode()
            .unwrap()
    }

    fn open(bytes: &[u8], kek: &SecretBytes, ctx: &KeyContext) -> Result<SecretBytes, CryptoError> {
        Envelope::decode(bytes)?.open_with_raw_kek(kek, ctx)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn envelope_round_trips(alg in algs(), words in 2usize..8, ns in "[a-z]{1,10}", name in "[a-z0-9-]{1,20}", ver in 1u32..1000) {
            let kek = SecretBytes::random(32);
            let dek = SecretBytes::random(words * 8);
            let ctx = KeyContext::new(&ns, &name, ver);
            let bytes = seal(alg, &kek, &ctx, &dek);
            prop_assert_eq!(open(&bytes, &kek, &ctx).unwrap(), dek);
        }

        #[test]
        fn any_single_bit_flip_fails(alg in algs(), bit in any::<prop::sample::Index>()) {
            let kek = SecretBytes::random(32);
            let dek = SecretBytes::random(32);
            let ctx = KeyContext::new("team-a", "payments", 3);
            let mut bytes = seal(alg, &kek, &ctx, &dek);
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(open(&bytes, &kek, &ctx).is_err());
        }

        #[test]
        fn other_key_version_or_namespace_fails(alg in algs(), which in 0u8..3) {
            let kek = SecretBytes::random(32);
            let dek = SecretBytes::random(32);
            let ctx = KeyContext::new("team-a", "payments", 3);
            let bytes = seal(alg, &kek, &ctx, &dek);
            let other = match which {
                0 => KeyContext::new("team-b", "payments", 3),
                1 => KeyContext::new("team-a", "billing", 3),
                _ => KeyContext::new("team-a", "payments", 4),
            };
            prop_assert!(open(&bytes, &kek, &other).is_err());
            // Even with the header rewritten to claim the other context, the binding fails.
            let mut env = Envelope::decode(&bytes).unwrap();
            env.key_id = other.key_id();
            env.key_version = other.version;
            prop_assert_eq!(env.open_with_raw_kek(&kek, &other), Err(CryptoError::Integrity));
        }
    }

    #[test]
    fn wrong_kek_fails() {
        let ctx = KeyContext::new("a", "b", 1);
        let dek = SecretBytes::random(32);
        for &alg in Algorithm::sealable_with_raw_kek() {
            let bytes = seal(alg, &SecretBytes::random(32), &ctx, &dek);
            assert_eq!(
                open(&bytes, &SecretBytes::random(32), &ctx),
                Err(CryptoError::Integrity)
            );
        }
    }

    /// A header up to (excluding) the params length, for hand-made hostile envelopes.
    fn header_until_params(nonce_len: u8) -> Vec<u8> {
        let mut b = b"KWRD\x01\x03".to_vec();
        b.push(5);
        b.extend_from_slice(b"local");
        b.push(4);
        b.extend_from_slice(b"root");
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(b"a/b");
        b.extend_from_slice(&1u32.to_be_bytes());
        b.push(nonce_len);
        b.extend(std::iter::repeat_n(0u8, nonce_len as usize));
        b
    }

    #[test]
    fn length_fields_are_bounded_before_anything_is_copied() {
        // Ciphertext length u32::MAX with 10 bytes present: refused, naming the field.
        let mut b = header_until_params(12);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b.extend_from_slice(&[0; 10]);
        let e = Envelope::decode(&b).unwrap_err().to_string();
        assert!(e.contains("ciphertext") && e.contains("at most"), "{e}");
        // Params claiming 60,000 bytes.
        let mut b = header_until_params(0);
        b.extend_from_slice(&60_000u16.to_be_bytes());
        let e = Envelope::decode(&b).unwrap_err().to_string();
        assert!(e.contains("params is 60000 bytes"), "{e}");
        // Nonce of a length no algorithm uses.
        let e = Envelope::decode(&header_until_params(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nonce must be empty or 12"), "{e}");
        // Truncation names the field and what is left.
        let mut b = header_until_params(0);
        b.extend_from_slice(&4u16.to_be_bytes());
        b.push(1);
        let e = Envelope::decode(&b).unwrap_err().to_string();
        assert!(e.contains("params needs 4 bytes, 1 left"), "{e}");
        // Input longer than any envelope: refused before parsing.
        let e = Envelope::decode(&vec![0u8; MAX_ENVELOPE + 1]).unwrap_err();
        assert!(
            matches!(
                e,
                CryptoError::Length {
                    what: "envelope",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse_and_maximal_fields_round_trip() {
        let ctx = KeyContext::new("a", "b", 1);
        let mut env = Envelope::for_context(Algorithm::Aes256Gcm, "local", "root", 1, &ctx);
        env.backend = "x".repeat(MAX_BACKEND);
        env.kek_id = "k".repeat(MAX_KEK_ID);
        env.key_id = "i".repeat(MAX_KEY_ID);
        env.nonce = vec![1; gcm::NONCE_LEN];
        env.params = vec![2; MAX_PARAMS];
        env.ciphertext = vec![3; MAX_CIPHERTEXT];
        let bytes = env.encode().unwrap();
        assert_eq!(bytes.len(), MAX_ENVELOPE);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        for bad in [
            Envelope {
                backend: "x".repeat(MAX_BACKEND + 1),
                ..env.clone()
            },
            Envelope {
                key_id: "i".repeat(MAX_KEY_ID + 1),
                ..env.clone()
            },
            Envelope {
                params: vec![0; MAX_PARAMS + 1],
                ..env.clone()
            },
            Envelope {
                ciphertext: vec![0; MAX_CIPHERTEXT + 1],
                ..env.clone()
            },
            Envelope {
                nonce: vec![0; 8],
                ..env.clone()
            },
        ] {
            assert!(
                matches!(bad.encode(), Err(CryptoError::Length { .. })),
                "{bad:?}"
            );
            assert!(
                bad.clone()
                    .seal_with_raw_kek(&SecretBytes::random(32), &SecretBytes::random(32))
                    .is_err()
            );
        }
    }

    /// The ciphertext bound holds the largest key wrapped (64 KiB under KWP: 8 bytes more)
    /// and is 64 KiB + 1 KiB to the byte (room for a KMS blob's framing, no more).
    #[test]
    fn the_ciphertext_bound_holds_the_largest_wrap_and_is_exact() {
        let ctx = KeyContext::new("a", "b", 1);
        let largest = SecretBytes::random(kw::MAX_PLAINTEXT);
        let env = Envelope::for_context(Algorithm::Aes256Kwp, "local", "root", 1, &ctx)
            .seal_with_raw_kek(&SecretBytes::random(32), &largest)
            .unwrap();
        assert_eq!(env.ciphertext.len(), 65_536 + 8);
        assert!(env.encode().is_ok());
        let with = |len: usize| Envelope {
            ciphertext: vec![0; len],
            ..env.clone()
        };
        assert!(with(66_560).encode().is_ok());
        assert!(matches!(
            with(66_561).encode(),
            Err(CryptoError::Length { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_unknown_version_refused() {
        let ctx = KeyContext::new("a", "b", 1);
        let kek = SecretBytes::random(32);
        let mut bytes = seal(last_sealable(), &kek, &ctx, &SecretBytes::random(32));
        bytes.push(0);
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(CryptoError::Malformed(_))
        ));
        bytes.pop();
        bytes[4] = 2;
        let e = Envelope::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }
}
