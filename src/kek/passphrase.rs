//! KEK derived from an operator-held passphrase (Argon2id by default, PBKDF2-HMAC-SHA256 as
//! the FIPS-friendly alternative).
//!
//! Every envelope records the KDF, its cost parameters and a random salt in its `params`
//! field, which is part of the authenticated header. So the costs can be raised later and
//! envelopes made under the old costs still unwrap, and a modified parameter block fails the
//! integrity check like any other header change.
//!
//! * The backend derives one KEK per process for the configured parameters under a fresh
//!   16-byte salt; wraps reuse it. Unwraps look the derived key up in a small cache keyed by
//!   the whole parameter block (KDF, costs, salt), so a derivation runs once per distinct
//!   parameter block, not once per call. Derivations run on the blocking pool, one at a time
//!   (so a burst of unwraps never holds more than one Argon2 memory block).
//! * `kek_version` is an id of the KDF + costs (not the salt): every replica and every
//!   restart with the same flags reports the same version, so the Keyring only rewraps when
//!   the costs change.
//! * `rotate()` raises the costs one step (Argon2id: one more pass; PBKDF2: +25 % iterations)
//!   and switches to a fresh salt; it returns the new version. The change lives in this
//!   process: set the matching flags (`--argon2-time-cost`, `--pbkdf2-iterations`) so a
//!   restart keeps it (the new values are logged). Changing the passphrase itself is a
//!   migration: run the old passphrase as the secondary backend under another `kek_id`.
//! * The costs an envelope may name are capped by configuration ([`KdfLimits`]: by default
//!   the configured costs themselves, raised by the `--argon2-max-*` / `--pbkdf2-max-iterations`
//!   flags). An envelope above a ceiling is refused before any derivation with
//!   [`KekError::KdfCostRefused`] naming the parameter, so an edited envelope cannot make the
//!   controller allocate gigabytes or spin for minutes.

use super::{KekBackend, KekError};
use crate::crypto::module;
use crate::crypto::{Algorithm, CryptoError, Envelope, KeyContext, SecretBytes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

const KIND: &str = "passphrase";
const PARAMS_FORMAT: u8 = 1;
const SALT_LEN: usize = 16;
/// Fewest PBKDF2-HMAC-SHA256 iterations accepted (OWASP 2023 guidance).
pub const PBKDF2_MIN_ITERATIONS: u32 = 600_000;
const PBKDF2_MAX_ITERATIONS: u32 = 100_000_000;
/// Smallest Argon2id memory cost accepted, KiB (19 MiB, the OWASP minimum).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 19 * 1024;
const ARGON2_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const ARGON2_MAX_TIME: u32 = 64;
const ARGON2_MAX_LANES: u32 = 16;
/// Shortest passphrase accepted, bytes (14 in the fips build: the module approves PBKDF2
/// only for passwords of at least 112 bits).
pub const MIN_PASSPHRASE_LEN: usize = if cfg!(feature = "fips") { 14 } else { 12 };
const CACHE_MAX: usize = 64;
const DEFAULT_ARGON2_MEMORY_KIB: u32 = 64 * 1024;
const DEFAULT_ARGON2_TIME_COST: u32 = 3;

/// KDF and its cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kdf {
    /// Argon2id (RFC 9106).
    Argon2id {
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Number of passes.
        time_cost: u32,
        /// Lanes.
        parallelism: u32,
    },
    /// PBKDF2-HMAC-SHA256.
    Pbkdf2Sha256 {
        /// Iteration count (>= 600,000).
        iterations: u32,
    },
}

impl Default for Kdf {
    /// Argon2id with m = 64 MiB, t = 3, p = 1; PBKDF2-HMAC-SHA256 with 600,000 iterations in
    /// the fips build (which does not offer Argon2id).
    fn default() -> Self {
        if cfg!(feature = "fips") {
            return Self::Pbkdf2Sha256 {
                iterations: PBKDF2_MIN_ITERATIONS,
            };
        }
        Self::Argon2id {
            memory_kib: DEFAULT_ARGON2_MEMORY_KIB,
            time_cost: DEFAULT_ARGON2_TIME_COST,
            parallelism: 1,
        }
    }
}

impl Kdf {
    fn id(self) -> u8 {
        match self {
            Self::Argon2id { .. } => 1,
            Self::Pbkdf2Sha256 { .. } => 2,
        }
    }

    /// Short name for status and logs, e.g. `argon2id(m=65536,t=3,p=1)`.
    pub fn describe(self) -> String {
        match self {
            Self::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => format!("argon2id(m={memory_kib},t={time_cost},p={parallelism})"),
            Self::Pbkdf2Sha256 { iterations } => format!("pbkdf2-sha256(i={iterations})"),
        }
    }

    /// The cheapest Argon2id parameters [`Kdf::validate`] accepts (OWASP minimum memory, one
    /// pass, one lane): what tests and benchmarks use so a derivation stays fast.
    pub const ARGON2ID_FLOOR: Kdf = Kdf::Argon2id {
        memory_kib: ARGON2_MIN_MEMORY_KIB,
        time_cost: 1,
        parallelism: 1,
    };

    /// Refuse parameters below the floor or above the ceiling. `setting` names the flag.
    pub fn validate(self) -> Result<(), KekError> {
        let bad = |setting: &'static str, detail: String| {
            Err(KekError::Misconfigured { setting, detail })
        };
        match self {
            Self::Argon2id { .. } if cfg!(feature = "fips") => {
                bad("--kdf", module::ARGON2ID_REFUSED.to_string())
            }
            Self::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => {
                if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&memory_kib) {
                    return bad(
                        "--argon2-memory-kib",
                        format!(
                            "{memory_kib} KiB is outside {ARGON2_MIN_MEMORY_KIB}..={ARGON2_MAX_MEMORY_KIB}"
                        ),
                    );
                }
                if !(1..=ARGON2_MAX_TIME).contains(&time_cost) {
                    return bad(
                        "--argon2-time-cost",
                        format!("{time_cost} is outside 1..={ARGON2_MAX_TIME}"),
                    );
                }
                if !(1..=ARGON2_MAX_LANES).contains(&parallelism) {
                    return bad(
                        "--argon2-parallelism",
                        format!("{parallelism} is outside 1..={ARGON2_MAX_LANES}"),
                    );
                }
                Ok(())
            }
            Self::Pbkdf2Sha256 { iterations } => {
                if iterations < PBKDF2_MIN_ITERATIONS {
                    return bad(
                        "--pbkdf2-iterations",
                        format!(
                            "{iterations} iterations is too few: PBKDF2-HMAC-SHA256 needs at least {PBKDF2_MIN_ITERATIONS}"
                        ),
                    );
                }
                if iterations > PBKDF2_MAX_ITERATIONS {
                    return bad(
                        "--pbkdf2-iterations",
                        format!("{iterations} is above {PBKDF2_MAX_ITERATIONS}"),
                    );
                }
                Ok(())
            }
        }
    }

    /// The next cost step, used by `rotate()`.
    pub fn raised(self) -> Self {
        match self {
            Self::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => Self::Argon2id {
                memory_kib,
                time_cost: (time_cost + 1).min(ARGON2_MAX_TIME),
                parallelism,
            },
            Self::Pbkdf2Sha256 { iterations } => Self::Pbkdf2Sha256 {
                iterations: iterations
                    .saturating_add(iterations / 4)
                    .min(PBKDF2_MAX_ITERATIONS),
            },
        }
    }

    /// The KEK version for this parameter set: 31 bits of SHA-256 over the KDF id and costs
    /// (never 0). Deterministic, so every replica and restart agrees.
    pub fn version_id(self) -> u32 {
        let mut h = module::Sha256::new();
        h.update(b"keyward-passphrase-params-v1\0");
        h.update(&self.cost_bytes());
        let d = h.finish();
        (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff).max(1)
    }

    fn cost_bytes(self) -> Vec<u8> {
        let mut b = vec![self.id()];
        match self {
            Self::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => {
                b.extend_from_slice(&memory_kib.to_be_bytes());
                b.extend_from_slice(&time_cost.to_be_bytes());
                b.extend_from_slice(&parallelism.to_be_bytes());
            }
            Self::Pbkdf2Sha256 { iterations } => b.extend_from_slice(&iterations.to_be_bytes()),
        }
        b
    }

    fn derive(self, passphrase: &[u8], salt: &[u8]) -> Result<SecretBytes, KekError> {
        let mut out = Zeroizing::new(vec![0u8; 32]);
        match self {
            Self::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => {
                module::argon2id(
                    passphrase,
                    salt,
                    memory_kib,
                    time_cost,
                    parallelism,
                    &mut out,
                )
                .map_err(|e| match e {
                    module::Argon2Error::NotApproved(n) => KekError::Misconfigured {
                        setting: "--kdf",
                        detail: n.to_string(),
                    },
                    module::Argon2Error::Params(d) => KekError::Misconfigured {
                        setting: "--argon2-memory-kib/--argon2-time-cost/--argon2-parallelism",
                        detail: d,
                    },
                })?;
            }
            Self::Pbkdf2Sha256 { iterations } => {
                module::pbkdf2_hmac_sha256(passphrase, salt, iterations, &mut out).map_err(
                    |n| KekError::Misconfigured {
                        setting: "--pbkdf2-iterations",
                        detail: n.to_string(),
                    },
                )?;
            }
        }
        Ok(SecretBytes::new(std::mem::take(&mut *out)))
    }
}

/// The most KDF work a stored envelope may ask for. The params block beside an envelope is
/// attacker-reachable data (whoever can edit the stored Secret), and a derivation has to run
/// before the envelope can be authenticated, so the costs are checked against these ceilings
/// first. Costs only go up over a deployment's life, so by default the ceilings are the
/// configured costs: every older (cheaper) envelope passes, anything dearer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    /// Largest Argon2id memory cost, KiB (`--argon2-max-memory-kib`).
    pub argon2_memory_kib: u32,
    /// Most Argon2id passes (`--argon2-max-time-cost`).
    pub argon2_time_cost: u32,
    /// Most Argon2id lanes (`--argon2-max-parallelism`).
    pub argon2_parallelism: u32,
    /// Most PBKDF2 iterations (`--pbkdf2-max-iterations`).
    pub pbkdf2_iterations: u32,
}

impl KdfLimits {
    /// Ceilings equal to `kdf`'s costs for its own KDF, and the default costs of the other KDF
    /// (Argon2id m = 64 MiB, t = 3, p = 1; PBKDF2 600,000 iterations).
    pub fn at(kdf: Kdf) -> Self {
        let base = Self {
            argon2_memory_kib: DEFAULT_ARGON2_MEMORY_KIB,
            argon2_time_cost: DEFAULT_ARGON2_TIME_COST,
            argon2_parallelism: 1,
            pbkdf2_iterations: PBKDF2_MIN_ITERATIONS,
        };
        match kdf {
            Kdf::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => Self {
                argon2_memory_kib: memory_kib,
                argon2_time_cost: time_cost,
                argon2_parallelism: parallelism,
                ..base
            },
            Kdf::Pbkdf2Sha256 { iterations } => Self {
                pbkdf2_iterations: iterations,
                ..base
            },
        }
    }

    /// These ceilings, raised where `kdf` costs more (the current costs after `rotate()`).
    pub fn allowing(self, kdf: Kdf) -> Self {
        let at = Self::at(kdf);
        match kdf {
            Kdf::Argon2id { .. } => Self {
                argon2_memory_kib: self.argon2_memory_kib.max(at.argon2_memory_kib),
                argon2_time_cost: self.argon2_time_cost.max(at.argon2_time_cost),
                argon2_parallelism: self.argon2_parallelism.max(at.argon2_parallelism),
                ..self
            },
            Kdf::Pbkdf2Sha256 { .. } => Self {
                pbkdf2_iterations: self.pbkdf2_iterations.max(at.pbkdf2_iterations),
                ..self
            },
        }
    }

    /// Refuse ceilings outside the absolute bounds or below the configured costs `kdf`.
    pub fn validate(self, kdf: Kdf) -> Result<(), KekError> {
        let bad = |setting: &'static str, detail: String| {
            Err(KekError::Misconfigured { setting, detail })
        };
        let ceilings = [
            (
                "--argon2-max-memory-kib",
                self.argon2_memory_kib,
                ARGON2_MIN_MEMORY_KIB,
                ARGON2_MAX_MEMORY_KIB,
            ),
            (
                "--argon2-max-time-cost",
                self.argon2_time_cost,
                1,
                ARGON2_MAX_TIME,
            ),
            (
                "--argon2-max-parallelism",
                self.argon2_parallelism,
                1,
                ARGON2_MAX_LANES,
            ),
            (
                "--pbkdf2-max-iterations",
                self.pbkdf2_iterations,
                PBKDF2_MIN_ITERATIONS,
                PBKDF2_MAX_ITERATIONS,
            ),
        ];
        for (setting, v, lo, hi) in ceilings {
            if !(lo..=hi).contains(&v) {
                return bad(setting, format!("{v} is outside {lo}..={hi}"));
            }
        }
        if let Err(KekError::KdfCostRefused {
            value,
            max,
            setting,
            ..
        }) = self.check(kdf)
        {
            return bad(
                setting,
                format!(
                    "{max} is below the configured cost {value}: the ceiling must be at least the cost new envelopes use"
                ),
            );
        }
        Ok(())
    }

    /// Refuse `kdf` when any of its costs is above its ceiling, naming the parameter.
    pub fn check(self, kdf: Kdf) -> Result<(), KekError> {
        let over = |parameter, value, max, setting| {
            if value > max {
                Err(KekError::KdfCostRefused {
                    parameter,
                    value,
                    max,
                    setting,
                })
            } else {
                Ok(())
            }
        };
        match kdf {
            Kdf::Argon2id {
                memory_kib,
                time_cost,
                parallelism,
            } => {
                over(
                    "Argon2id memory (KiB)",
                    memory_kib,
                    self.argon2_memory_kib,
                    "--argon2-max-memory-kib",
                )?;
                over(
                    "Argon2id time cost",
                    time_cost,
                    self.argon2_time_cost,
                    "--argon2-max-time-cost",
                )?;
                over(
                    "Argon2id parallelism",
                    parallelism,
                    self.argon2_parallelism,
                    "--argon2-max-parallelism",
                )
            }
            Kdf::Pbkdf2Sha256 { iterations } => over(
                "PBKDF2 iterations",
                iterations,
                self.pbkdf2_iterations,
                "--pbkdf2-max-iterations",
            ),
        }
    }
}

/// The envelope's `params` block: format, KDF id + costs, salt.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamBlock {
    kdf: Kdf,
    salt: Vec<u8>,
}

impl ParamBlock {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![PARAMS_FORMAT];
        b.extend_from_slice(&self.kdf.cost_bytes());
        b.push(self.salt.len() as u8);
        b.extend_from_slice(&self.salt);
        b
    }

    /// Parse a params block and check its costs: first against `limits` (refused with
    /// [`KekError::KdfCostRefused`]), then against the absolute floors. Nothing is derived.
    fn decode(b: &[u8], limits: KdfLimits) -> Result<Self, KekError> {
        let bad =
            |d: &str| KekError::Crypto(CryptoError::Malformed(format!("passphrase params: {d}")));
        let u32_at = |i: usize| -> Result<u32, KekError> {
            b.get(i..i + 4)
                .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
                .ok_or_else(|| bad("truncated"))
        };
        if b.first() != Some(&PARAMS_FORMAT) {
            return Err(bad("unknown format"));
        }
        let (kdf, rest) = match b.get(1) {
            Some(1) => (
                Kdf::Argon2id {
                    memory_kib: u32_at(2)?,
                    time_cost: u32_at(6)?,
                    parallelism: u32_at(10)?,
                },
                14,
            ),
            Some(2) => (
                Kdf::Pbkdf2Sha256 {
                    iterations: u32_at(2)?,
                },
                6,
            ),
            _ => return Err(bad("unknown KDF")),
        };
        let n = *b.get(rest).ok_or_else(|| bad("truncated"))? as usize;
        let salt = b
            .get(rest + 1..rest + 1 + n)
            .ok_or_else(|| bad("truncated"))?;
        if rest + 1 + n != b.len() || n < SALT_LEN {
            return Err(bad("bad salt"));
        }
        // Bound what a stored envelope can make us spend, before anything is derived.
        limits.check(kdf)?;
        kdf.validate()
            .map_err(|e| bad(&format!("parameters out of bounds ({e})")))?;
        Ok(Self {
            kdf,
            salt: salt.to_vec(),
        })
    }
}

struct Current {
    block: ParamBlock,
    key: SecretBytes,
}

/// Passphrase-derived KEK.
pub struct PassphraseKek {
    id: String,
    algorithm: Algorithm,
    passphrase: Arc<SecretBytes>,
    limits: KdfLimits,
    current: Mutex<Arc<Current>>,
    cache: Mutex<HashMap<Vec<u8>, SecretBytes>>,
    derive_lock: tokio::sync::Mutex<()>,
    derivations: std::sync::atomic::AtomicU64,
}

/// Read a passphrase file, dropping one trailing newline (`\n` or `\r\n`). The file must be
/// a regular file readable by its owner (and group) only: see [`super::keyfile`].
pub fn read_passphrase_file(path: &std::path::Path) -> Result<SecretBytes, KekError> {
    read_secret_file(path, "--passphrase-file (KEYWARD_PASSPHRASE_FILE)")
}

/// Read a one-line secret (passphrase, PIN) from `path`, named `setting` in errors, dropping
/// one trailing newline. Mode, type and size are checked first ([`super::keyfile`]).
pub fn read_secret_file(
    path: &std::path::Path,
    setting: &'static str,
) -> Result<SecretBytes, KekError> {
    let mut raw = super::keyfile::read_key_file(path, setting)?;
    if raw.ends_with(b"\n") {
        raw.pop();
        if raw.ends_with(b"\r") {
            raw.pop();
        }
    }
    Ok(SecretBytes::from_slice(&raw))
}

impl PassphraseKek {
    /// Derive the current KEK from `passphrase` with `kdf` (blocks for one derivation).
    /// `id` names this passphrase in envelopes (use a different id for a new passphrase).
    /// Envelopes may name costs up to [`KdfLimits::at`]`(kdf)`.
    pub async fn new(
        id: &str,
        passphrase: SecretBytes,
        kdf: Kdf,
        algorithm: Algorithm,
    ) -> Result<Self, KekError> {
        Self::with_limits(id, passphrase, kdf, KdfLimits::at(kdf), algorithm).await
    }

    /// Like [`PassphraseKek::new`], with explicit ceilings for the costs a stored envelope may
    /// name (for envelopes made under costs above today's configuration).
    pub async fn with_limits(
        id: &str,
        passphrase: SecretBytes,
        kdf: Kdf,
        limits: KdfLimits,
        algorithm: Algorithm,
    ) -> Result<Self, KekError> {
        kdf.validate()?;
        limits.validate(kdf)?;
        if passphrase.len() < MIN_PASSPHRASE_LEN {
            return Err(KekError::Misconfigured {
                setting: "--passphrase-file (KEYWARD_PASSPHRASE_FILE) / KEYWARD_PASSPHRASE",
                detail: format!(
                    "the passphrase must be at least {MIN_PASSPHRASE_LEN} bytes, got {}",
                    passphrase.len()
                ),
            });
        }
        let passphrase = Arc::new(passphrase);
        let block = ParamBlock {
            kdf,
            salt: SecretBytes::random(SALT_LEN).expose().to_vec(),
        };
        let key = derive_blocking(passphrase.clone(), block.clone()).await?;
        Ok(Self {
            id: id.into(),
            algorithm,
            passphrase,
            limits,
            current: Mutex::new(Arc::new(Current { block, key })),
            cache: Mutex::new(HashMap::new()),
            derive_lock: tokio::sync::Mutex::new(()),
            derivations: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// How many key derivations this backend has run (start-up included). Each costs the
    /// configured KDF work, so tests and operators can see that refused or cached unwraps
    /// derived nothing.
    pub fn derivations(&self) -> u64 {
        self.derivations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The KDF new wraps use.
    pub fn kdf(&self) -> Kdf {
        self.current.lock().expect("lock").block.kdf
    }

    fn cur(&self) -> Arc<Current> {
        self.current.lock().expect("lock").clone()
    }

    async fn key_for(&self, block: &ParamBlock) -> Result<SecretBytes, KekError> {
        let enc = block.encode();
        let cur = self.cur();
        if cur.block == *block {
            return Ok(cur.key.clone());
        }
        if let Some(k) = self.cache.lock().expect("lock").get(&enc) {
            return Ok(k.clone());
        }
        let _one_at_a_time = self.derive_lock.lock().await;
        if let Some(k) = self.cache.lock().expect("lock").get(&enc) {
            return Ok(k.clone());
        }
        self.derivations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let key = derive_blocking(self.passphrase.clone(), block.clone()).await?;
        let mut cache = self.cache.lock().expect("lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(enc, key.clone());
        Ok(key)
    }
}

async fn derive_blocking(
    passphrase: Arc<SecretBytes>,
    block: ParamBlock,
) -> Result<SecretBytes, KekError> {
    tokio::task::spawn_blocking(move || block.kdf.derive(passphrase.expose(), &block.salt))
        .await
        .map_err(|e| KekError::Unavailable {
            backend: KIND,
            setting: "--kdf",
            detail: format!("key derivation task failed: {e}"),
        })?
}

#[async_trait::async_trait]
impl KekBackend for PassphraseKek {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn kek_id(&self) -> String {
        self.id.clone()
    }

    fn kek_version(&self) -> u32 {
        self.kdf().version_id()
    }

    async fn wrap(&self, ctx: &KeyContext, dek: &SecretBytes) -> Result<Envelope, KekError> {
        let cur = self.cur();
        let mut env = Envelope::for_context(
            self.algorithm,
            KIND,
            &self.id,
            cur.block.kdf.version_id(),
            ctx,
        );
        env.params = cur.block.encode();
        Ok(env.seal_with_raw_kek(&cur.key, dek)?)
    }

    async fn unwrap(&self, env: &Envelope, ctx: &KeyContext) -> Result<SecretBytes, KekError> {
        super::check_owner(env, KIND, &self.id)?;
        // Check the context before spending a derivation on it.
        env.check_context(ctx)?;
        // Costs above the configured ceilings are refused here, before any derivation.
        let limits = self.limits.allowing(self.kdf());
        let block = ParamBlock::decode(&env.params, limits)?;
        if block.kdf.version_id() != env.kek_version {
            return Err(CryptoError::Integrity.into());
        }
        let key = self.key_for(&block).await?;
        Ok(env.open_with_raw_kek(&key, ctx)?)
    }

    async fn health(&self) -> Result<(), KekError> {
        Ok(())
    }

    async fn rotate(&self) -> Result<u32, KekError> {
        let old = self.cur();
        let block = ParamBlock {
            kdf: old.block.kdf.raised(),
            salt: SecretBytes::random(SALT_LEN).expose().to_vec(),
        };
        self.derivations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let key = derive_blocking(self.passphrase.clone(), block.clone()).await?;
        let version = block.kdf.version_id();
        tracing::info!(
            kek_id = %self.id,
            kdf = %block.kdf.describe(),
            version,
            "passphrase KEK rotated: set the KDF flags to these costs so a restart keeps them"
        );
        // Keep the old key for unwraps without a new derivation.
        self.cache
            .lock()
            .expect("lock")
            .insert(old.block.encode(), old.key.clone());
        *self.current.lock().expect("lock") = Arc::new(Current { block, key });
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &[u8] = b"correct horse battery staple";

    fn pass() -> SecretBytes {
        SecretBytes::from_slice(PASS)
    }

    /// The cheapest KDF this build accepts, so unit tests stay fast (Argon2id is not offered
    /// by the fips build).
    const FAST: Kdf = if cfg!(feature = "fips") {
        Kdf::Pbkdf2Sha256 {
            iterations: PBKDF2_MIN_ITERATIONS,
        }
    } else {
        Kdf::ARGON2ID_FLOOR
    };

    /// This build's last raw-KEK algorithm: AES-256-GCM, or KW in the fips build.
    fn alt_alg() -> Algorithm {
        *Algorithm::sealable_with_raw_kek().last().unwrap()
    }

    /// A passphrase KEK with the cheapest accepted KDF, so unit tests stay fast.
    async fn fast_kek(passphrase: &[u8], alg: Algorithm) -> Result<PassphraseKek, KekError> {
        PassphraseKek::new("p", SecretBytes::from_slice(passphrase), FAST, alg).await
    }

    #[test]
    fn pbkdf2_below_600k_is_refused_naming_the_flag() {
        let e = Kdf::Pbkdf2Sha256 {
            iterations: 599_999,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--pbkdf2-iterations") && e.contains("600000"),
            "{e}"
        );
        assert!(
            Kdf::Pbkdf2Sha256 {
                iterations: 600_000
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn param_block_round_trips_and_bounds_costs() {
        let b = ParamBlock {
            kdf: Kdf::default(),
            salt: vec![7; SALT_LEN],
        };
        assert_eq!(
            ParamBlock::decode(&b.encode(), KdfLimits::at(Kdf::default())).unwrap(),
            b
        );
        let huge = ParamBlock {
            kdf: Kdf::Argon2id {
                memory_kib: u32::MAX,
                time_cost: 3,
                parallelism: 1,
            },
            salt: vec![7; SALT_LEN],
        };
        assert!(matches!(
            ParamBlock::decode(&huge.encode(), KdfLimits::at(Kdf::default())),
            Err(KekError::KdfCostRefused {
                setting: "--argon2-max-memory-kib",
                ..
            })
        ));
        let mut trailing = b.encode();
        trailing.push(0);
        assert!(ParamBlock::decode(&trailing, KdfLimits::at(Kdf::default())).is_err());
    }

    #[test]
    fn each_cost_above_its_ceiling_is_refused_naming_the_parameter_and_flag() {
        let limits = KdfLimits::at(Kdf::default());
        let over = [
            (
                Kdf::Argon2id {
                    memory_kib: 65537,
                    time_cost: 3,
                    parallelism: 1,
                },
                "Argon2id memory (KiB)",
                "--argon2-max-memory-kib",
            ),
            (
                Kdf::Argon2id {
                    memory_kib: 65536,
                    time_cost: 4,
                    parallelism: 1,
                },
                "Argon2id time cost",
                "--argon2-max-time-cost",
            ),
            (
                Kdf::Argon2id {
                    memory_kib: 65536,
                    time_cost: 3,
                    parallelism: 2,
                },
                "Argon2id parallelism",
                "--argon2-max-parallelism",
            ),
            (
                Kdf::Pbkdf2Sha256 {
                    iterations: 600_001,
                },
                "PBKDF2 iterations",
                "--pbkdf2-max-iterations",
            ),
        ];
        for (kdf, param, flag) in over {
            let block = ParamBlock {
                kdf,
                salt: vec![1; SALT_LEN],
            };
            match ParamBlock::decode(&block.encode(), limits) {
                Err(
                    e @ KekError::KdfCostRefused {
                        parameter, setting, ..
                    },
                ) => {
                    assert_eq!((parameter, setting), (param, flag));
                    let msg = e.to_string();
                    assert!(msg.contains(param) && msg.contains(flag), "{msg}");
                }
                other => panic!("{kdf:?}: {other:?}"),
            }
        }
        // Cheaper (older) costs pass; the configured costs pass.
        for ok in [
            Kdf::ARGON2ID_FLOOR,
            Kdf::default(),
            Kdf::Pbkdf2Sha256 {
                iterations: PBKDF2_MIN_ITERATIONS,
            },
        ] {
            limits.check(ok).unwrap();
        }
    }

    #[test]
    fn limits_are_validated_and_raised_by_rotation() {
        let kdf = Kdf::ARGON2ID_FLOOR;
        let at = KdfLimits::at(kdf);
        at.validate(kdf).unwrap();
        // A ceiling below the configured cost, or outside the absolute bounds, names its flag.
        let e = KdfLimits {
            argon2_time_cost: 1,
            ..at
        }
        .validate(Kdf::Argon2id {
            memory_kib: ARGON2_MIN_MEMORY_KIB,
            time_cost: 2,
            parallelism: 1,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--argon2-max-time-cost") && e.contains("below"),
            "{e}"
        );
        let e = KdfLimits {
            argon2_memory_kib: u32::MAX,
            ..at
        }
        .validate(kdf)
        .unwrap_err()
        .to_string();
        assert!(e.contains("--argon2-max-memory-kib"), "{e}");
        let raised = kdf.raised();
        assert!(at.check(raised).is_err());
        at.allowing(raised).check(raised).unwrap();
    }

    #[tokio::test]
    async fn rotated_costs_stay_unwrappable_within_the_process() {
        let k = fast_kek(PASS, alt_alg()).await.unwrap();
        k.rotate().await.unwrap();
        let ctx = KeyContext::new("ns", "k", 1);
        let dek = SecretBytes::random(32);
        // Wrapped under t = 2 while the configured ceiling was t = 1: the current costs count.
        let env = k.wrap(&ctx, &dek).await.unwrap();
        k.cache.lock().unwrap().clear();
        assert_eq!(k.unwrap(&env, &ctx).await.unwrap(), dek);
    }

    #[test]
    fn version_id_depends_on_costs_only() {
        assert_eq!(Kdf::default().version_id(), Kdf::default().version_id());
        assert_ne!(
            Kdf::default().version_id(),
            Kdf::default().raised().version_id()
        );
        assert_ne!(Kdf::default().version_id(), 0);
    }

    #[tokio::test]
    async fn round_trip_wrong_context_and_tampered_params_fail() {
        for kdf in [
            FAST,
            Kdf::Pbkdf2Sha256 {
                iterations: PBKDF2_MIN_ITERATIONS,
            },
        ] {
            let k = PassphraseKek::new("p", pass(), kdf, alt_alg())
                .await
                .unwrap();
            let ctx = KeyContext::new("ns", "k", 1);
            let dek = SecretBytes::random(32);
            let env = k.wrap(&ctx, &dek).await.unwrap();
            assert_eq!(
                ParamBlock::decode(&env.params, KdfLimits::at(kdf))
                    .unwrap()
                    .kdf,
                kdf
            );
            assert_eq!(k.unwrap(&env, &ctx).await.unwrap(), dek);
            assert!(
                k.unwrap(&env, &KeyContext::new("ns", "k", 2))
                    .await
                    .is_err()
            );
            // A flipped salt byte derives another key and changes the header: refused.
            let mut t = env.clone();
            let last = t.params.len() - 1;
            t.params[last] ^= 1;
            assert!(k.unwrap(&t, &ctx).await.is_err());
        }
    }

    #[tokio::test]
    async fn other_passphrase_cannot_unwrap() {
        let a = fast_kek(PASS, Algorithm::Aes256Kwp).await.unwrap();
        let b = fast_kek(b"another long passphrase", Algorithm::Aes256Kwp)
            .await
            .unwrap();
        let ctx = KeyContext::new("ns", "k", 1);
        let env = a.wrap(&ctx, &SecretBytes::random(32)).await.unwrap();
        assert!(matches!(
            b.unwrap(&env, &ctx).await,
            Err(KekError::Crypto(CryptoError::Integrity))
        ));
    }

    #[tokio::test]
    async fn short_passphrase_refused() {
        let e = fast_kek(b"short", alt_alg())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--passphrase-file"), "{e}");
        assert!(!e.contains("short\""), "{e}");
    }

    #[tokio::test]
    async fn unwrap_uses_the_cache_after_the_first_derivation() {
        let k = fast_kek(PASS, alt_alg()).await.unwrap();
        let ctx = KeyContext::new("ns", "k", 1);
        let dek = SecretBytes::random(32);
        let old = k.wrap(&ctx, &dek).await.unwrap();
        k.rotate().await.unwrap();
        // Old block moved to the cache on rotate: one entry, and unwraps don't add more.
        assert_eq!(k.cache.lock().unwrap().len(), 1);
        for _ in 0..3 {
            assert_eq!(k.unwrap(&old, &ctx).await.unwrap(), dek);
        }
        assert_eq!(k.cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn passphrase_file_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pp");
        std::fs::write(&p, "a passphrase here\r\n").unwrap();
        // Written with the umask's mode (typically 0644): refused, naming the flag.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_passphrase_file(&p).unwrap_err().to_string();
        assert!(e.contains("--passphrase-file") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_passphrase_file(&p).unwrap().expose(),
            b"a passphrase here"
        );
        let e = read_passphrase_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--passphrase-file"), "{e}");
    }
}
