//! Tamper-evident audit log: one JSON line per key-material access, rotation, state change,
//! deletion or KEK rotation.
//!
//! Each line carries the SHA-256 of the previous line (`prev`) and a sequence number, so an
//! edited, removed or reordered line breaks the chain at that point. Every `checkpoint_every`
//! records a checkpoint line is appended, signed with an Ed25519 audit key that is held apart
//! from data keys: whoever holds the log file cannot re-forge the chain up to a checkpoint
//! without that key, and `keyward audit verify` checks both. Records never hold key bytes.
//!
//! Limit: dropping records *after* the last checkpoint is only visible against an external
//! copy (log shipping) or the next checkpoint; verify reports how many records trail it.

pub mod report;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Genesis value of `prev` for the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// Who: `controller`, or `system:serviceaccount:ns:name` (+ pod) for a mount.
    pub actor: String,
    /// `mount`, `unwrap`, `rotate`, `transition`, `schedule-deletion`, `destroy`, `kek-rotate`...
    pub action: String,
    /// `namespace/name` of the ManagedKey (empty for KEK events).
    pub key: String,
    /// Key version, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// `ok` or `denied` / `error`.
    pub outcome: String,
    /// Why (never key material).
    pub reason: String,
    /// Pod and node for mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Node name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// `event` or `checkpoint`.
    #[serde(rename = "type")]
    pub kind: String,
    /// SHA-256 (hex) of the previous line's bytes.
    pub prev: String,
    /// The event (absent on checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AuditEvent>,
    /// Checkpoint: Ed25519 signature (hex) over `seq || prev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    let mut m = b"keyward-audit-checkpoint-v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev.as_bytes());
    m
}

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File I/O.
    #[error("audit log {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The signing or verifying key is unusable.
    #[error("audit key: {0}")]
    Key(String),
}

struct Chain {
    seq: u64,
    prev: String,
    file: Option<std::fs::File>,
    since_checkpoint: u64,
}

/// The audit sink. Cheap to share (`Arc<Audit>`); writes are serialised by a short lock.
pub struct Audit {
    chain: Mutex<Chain>,
    path: Option<PathBuf>,
    key: Option<SigningKey>,
    checkpoint_every: u64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("path", &self.path)
            .field("signing", &self.key.is_some())
            .finish()
    }
}

/// Read an Ed25519 key file (32 bytes as 64 hex characters).
fn read_key_hex(path: &Path) -> Result<[u8; 32], AuditError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| AuditError::Key(format!("cannot read {}: {e}", path.display())))?,
    );
    let raw =
        zeroize::Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
            AuditError::Key(format!("{} must hold 64 hex characters", path.display()))
        })?);
    raw.as_slice()
        .try_into()
        .map_err(|_| AuditError::Key(format!("{} must hold 32 bytes", path.display())))
}

/// Generate an audit key pair; writes `<prefix>.key` (secret, mode 0600) and `<prefix>.pub`.
pub fn generate_keypair(prefix: &Path) -> Result<(PathBuf, PathBuf), AuditError> {
    let sk = SigningKey::generate(&mut rand::rngs::OsRng);
    let sec = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let io = |path: &Path, e| AuditError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let secret_hex = zeroize::Zeroizing::new(hex::encode(sk.to_bytes()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&sec)
            .map_err(|e| io(&sec, e))?;
        f.write_all(secret_hex.as_bytes())
            .map_err(|e| io(&sec, e))?;
    }
    std::fs::write(&public, hex::encode(sk.verifying_key().to_bytes()))
        .map_err(|e| io(&public, e))?;
    Ok((sec, public))
}

impl Audit {
    /// Log only to the `keyward::audit` tracing target (stdout), unchained.
    pub fn stdout_only() -> Self {
        Self {
            chain: Mutex::new(Chain {
                seq: 0,
                prev: GENESIS.into(),
                file: None,
                since_checkpoint: 0,
            }),
            path: None,
            key: None,
            checkpoint_every: 0,
        }
    }

    /// Append to `path`, continuing its chain; sign a checkpoint every `checkpoint_every`
    /// records with the key in `signing_key` (64 hex characters).
    pub fn open(
        path: &Path,
        signing_key: Option<&Path>,
        checkpoint_every: u64,
    ) -> Result<Self, AuditError> {
        let io = |e| AuditError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let (mut seq, mut prev) = (0u64, GENESIS.to_string());
        if path.exists() {
            let f = std::fs::File::open(path).map_err(io)?;
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(io)?;
                if line.is_empty() {
                    continue;
                }
                if let Ok(r) = serde_json::from_str::<Record>(&line) {
                    seq = r.seq;
                }
                prev = line_hash(&line);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let key = signing_key
            .map(|p| read_key_hex(p).map(|b| SigningKey::from_bytes(&b)))
            .transpose()?;
        Ok(Self {
            chain: Mutex::new(Chain {
                seq,
                prev,
                file: Some(file),
                since_checkpoint: 0,
            }),
            path: Some(path.to_path_buf()),
            key,
            checkpoint_every,
        })
    }

    /// Record an event. Never fails the caller's operation: a write error is logged loudly.
    pub fn record(&self, event: AuditEvent) {
        tracing::info!(
            target: "keyward::audit",
            actor = %event.actor, action = %event.action, key = %event.key,
            version = event.version, outcome = %event.outcome, reason = %event.reason,
            pod = event.pod.as_deref().unwrap_or(""),
        );
        self.write_chained(event);
    }

    fn write_chained(&self, event: AuditEvent) {
        let mut c = self.chain.lock().expect("audit lock");
        if c.file.is_none() {
            return;
        }
        let rec = Record {
            seq: c.seq + 1,
            time: jiff::Timestamp::now().to_string(),
            kind: "event".into(),
            prev: c.prev.clone(),
            event: Some(event),
            sig: None,
        };
        self.append(&mut c, &rec);
        c.since_checkpoint += 1;
        if self.key.is_some()
            && self.checkpoint_every > 0
            && c.since_checkpoint >= self.checkpoint_every
        {
            self.checkpoint_locked(&mut c);
        }
    }

    /// Append to the chained file only (for callers that already log the event on the
    /// `keyward::audit` tracing target themselves).
    pub fn append_only(&self, event: AuditEvent) {
        self.write_chained(event);
    }

    /// Append a signed checkpoint now (also done every `checkpoint_every` records).
    pub fn checkpoint(&self) {
        let mut c = self.chain.lock().expect("audit lock");
        self.checkpoint_locked(&mut c);
    }

    fn checkpoint_locked(&self, c: &mut Chain) {
        let Some(key) = &self.key else { return };
        let seq = c.seq + 1;
        let sig = key.sign(&checkpoint_message(seq, &c.prev));
        let rec = Record {
            seq,
            time: jiff::Timestamp::now().to_string(),
            kind: "checkpoint".into(),
            prev: c.prev.clone(),
            event: None,
            sig: Some(hex::encode(sig.to_bytes())),
        };
        self.append(c, &rec);
        c.since_checkpoint = 0;
    }

    fn append(&self, c: &mut Chain, rec: &Record) {
        let line = serde_json::to_string(rec).expect("record serializes");
        if let Some(f) = c.file.as_mut()
            && let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush())
        {
            tracing::error!(path = ?self.path, error = %e, "AUDIT WRITE FAILED");
            return;
        }
        c.seq = rec.seq;
        c.prev = line_hash(&line);
    }
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Valid signed checkpoints.
    pub checkpoints: u64,
    /// Records after the last checkpoint (protected by the chain only).
    pub unsigned_tail: u64,
}

/// The first problem in a log.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (seq {seq}): {problem}")]
pub struct VerifyError {
    /// 1-based line number.
    pub line: usize,
    /// Sequence number found (or expected).
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// Verify a log's chain and checkpoints; names the first broken, edited, removed or
/// reordered record.
pub fn verify(text: &str, public_key: Option<&VerifyingKey>) -> Result<VerifySummary, VerifyError> {
    let mut prev = GENESIS.to_string();
    let (mut records, mut checkpoints, mut tail) = (0u64, 0u64, 0u64);
    for (expected, (i, line)) in
        (1u64..).zip(text.lines().enumerate().filter(|(_, l)| !l.is_empty()))
    {
        let n = i + 1;
        let rec: Record = serde_json::from_str(line).map_err(|e| VerifyError {
            line: n,
            seq: expected,
            problem: format!("not a valid record ({e})"),
        })?;
        if rec.seq != expected {
            let problem = if rec.seq > expected {
                format!("records {expected}..{} are missing (removed)", rec.seq - 1)
            } else {
                format!(
                    "sequence {} appears where {expected} was expected (reordered or duplicated)",
                    rec.seq
                )
            };
            return Err(VerifyError {
                line: n,
                seq: rec.seq,
                problem,
            });
        }
        if !crate::crypto::ct_eq(rec.prev.as_bytes(), prev.as_bytes()) {
            return Err(VerifyError {
                line: n,
                seq: rec.seq,
                problem: "hash chain broken: the previous record was edited".into(),
            });
        }
        if rec.kind == "checkpoint" {
            if let Some(pk) = public_key {
                let sig = rec
                    .sig
                    .as_deref()
                    .and_then(|s| hex::decode(s).ok())
                    .and_then(|b| Signature::from_slice(&b).ok())
                    .ok_or_else(|| VerifyError {
                        line: n,
                        seq: rec.seq,
                        problem: "checkpoint without a readable signature".into(),
                    })?;
                pk.verify(&checkpoint_message(rec.seq, &rec.prev), &sig)
                    .map_err(|_| VerifyError {
                        line: n,
                        seq: rec.seq,
                        problem: "checkpoint signature invalid (forged or re-chained log)".into(),
                    })?;
            }
            checkpoints += 1;
            tail = 0;
        } else {
            tail += 1;
        }
        records += 1;
        prev = line_hash(line);
    }
    Ok(VerifySummary {
        records,
        checkpoints,
        unsigned_tail: tail,
    })
}

/// Load a verifying key (64 hex characters).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let b = read_key_hex(path)?;
    VerifyingKey::from_bytes(&b).map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
