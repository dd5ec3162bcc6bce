//! Tamper-evident audit log: one JSON line per key-material access, rotation, state change,
//! deletion or KEK rotation.
//!
//! Each line carries the SHA-256 of the previous line (`prev`) and a sequence number, so an
//! edited, removed or reordered line breaks the chain at that point. Every file opens with a
//! checkpoint and a checkpoint follows at most every `checkpoint_every` records; with an
//! Ed25519 audit key (held apart from data keys) checkpoints are signed, so whoever holds the
//! files cannot re-forge the chain without that key, and dropping checkpoints is itself
//! visible (a run of records longer than the signed cadence). Each checkpoint is also
//! published as an [`anchor::Anchor`] outside the file (a ConfigMap in the controller's
//! namespace): its hash commits to the whole chain before it, so a cut tail or a rewritten
//! log fails against it, signed or not.
//!
//! Bounded: files rotate at `max_file_bytes` and at most `max_files` are kept, the chain
//! continuing across them; every string field is capped. A failed write is counted
//! (`keyward_audit_write_failures_total`), logged, and followed by a `gap` record naming how
//! many events were lost once writing works again; sequence numbers never skip.
//! Records never hold key bytes.

pub mod anchor;
pub mod report;
mod verify;

pub use verify::{LogFile, VerifyError, VerifySummary, read_log_files, verify, verify_files};

use crate::crypto::module::{Ed25519PublicKey as VerifyingKey, Ed25519Signer as SigningKey};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Genesis value of `prev` for the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest string field kept in a record (bytes); longer values are cut and marked, so one
/// record (and so one line) stays a few KiB whatever a caller passes.
pub const MAX_FIELD: usize = 1024;

/// Smallest `--audit-max-file-bytes`: room for many capped records per file.
pub const MIN_FILE_BYTES: u64 = 64 * 1024;

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

impl AuditEvent {
    /// Cap every string field at [`MAX_FIELD`] bytes (at a character boundary, marked), so
    /// no caller can make one record arbitrarily large.
    pub fn bounded(mut self) -> Self {
        for f in [
            &mut self.actor,
            &mut self.action,
            &mut self.key,
            &mut self.outcome,
            &mut self.reason,
        ] {
            cap(f);
        }
        for f in [&mut self.pod, &mut self.node].into_iter().flatten() {
            cap(f);
        }
        self
    }

    /// The event as one JSON line (control characters and newlines escaped): what stdout
    /// carries, so no field can start a forged line.
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn cap(s: &mut String) {
    if s.len() <= MAX_FIELD {
        return;
    }
    let cut_from = s.len();
    let mut cut = MAX_FIELD - 32;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("...[cut, {cut_from} bytes]"));
}

/// Record types.
pub mod kind {
    /// An [`super::AuditEvent`].
    pub const EVENT: &str = "event";
    /// A checkpoint (every file starts with one), signed when a signing key is set.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Events were lost to failed writes; `lost` says how many.
    pub const GAP: &str = "gap";
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, from 1, without gaps (across rotated files).
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// `event`, `checkpoint` or `gap` (see [`kind`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// SHA-256 (hex) of the previous line's bytes.
    pub prev: String,
    /// The event (absent on checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AuditEvent>,
    /// Checkpoint: the most records that may follow before the next checkpoint (signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Checkpoint: Ed25519 signature (hex) over `seq || every || prev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Gap: events lost to failed writes just before this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

/// SHA-256 (hex) of one line, as the next record's `prev` holds it.
pub fn line_hash(line: &str) -> String {
    hex::encode(crate::crypto::module::sha256(line.as_bytes()))
}

/// The bytes a checkpoint signs: the domain, its sequence number, the cadence it promises,
/// and the hash of the line before it.
pub fn checkpoint_message(seq: u64, every: u64, prev: &str) -> Vec<u8> {
    let mut m = b"keyward-audit-checkpoint-v2\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&every.to_be_bytes());
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
    /// A setting is out of range.
    #[error("{flag}: {problem}")]
    Config {
        /// The flag to fix.
        flag: &'static str,
        /// What is wrong and the fix.
        problem: String,
    },
    /// `--audit-failure=closed` and the log cannot be written: nothing that must be audited
    /// may happen now.
    #[error(
        "audit log cannot be written ({0}); with --audit-failure=closed no key is served until it can"
    )]
    Unavailable(String),
}

/// What happens to key service requests while the audit log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailureMode {
    /// No key is served while a record cannot be written (the default: key material never
    /// leaves unaudited).
    #[default]
    Closed,
    /// Serve anyway; failures are counted and a gap record follows.
    Open,
}

/// Where and how the chained log is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The current file; rotated copies are `<path>.1` (newest) .. `<path>.<max_files-1>`.
    pub path: PathBuf,
    /// Ed25519 key (64 hex characters) that signs checkpoints.
    pub signing_key: Option<PathBuf>,
    /// Most records between two checkpoints (signed with a signing key; 0: none).
    pub checkpoint_every: u64,
    /// Rotate the current file before it passes this size.
    pub max_file_bytes: u64,
    /// Files kept, the current one included (at least 2).
    pub max_files: u32,
    /// Closed or open on a failed write.
    pub failure: FailureMode,
}

impl AuditOptions {
    /// Defaults for `path`: 100 records per checkpoint, 64 MiB x 4 files, closed.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            signing_key: None,
            checkpoint_every: 100,
            max_file_bytes: 64 * 1024 * 1024,
            max_files: 4,
            failure: FailureMode::Closed,
        }
    }

    fn check(&self) -> Result<(), AuditError> {
        if self.max_file_bytes < MIN_FILE_BYTES {
            return Err(AuditError::Config {
                flag: "--audit-max-file-bytes",
                problem: format!(
                    "{} is below the minimum {MIN_FILE_BYTES}; raise it",
                    self.max_file_bytes
                ),
            });
        }
        if !(2..=1000).contains(&self.max_files) {
            return Err(AuditError::Config {
                flag: "--audit-max-files",
                problem: format!(
                    "{} is outside 2..=1000 (the current file and at least one rotated copy)",
                    self.max_files
                ),
            });
        }
        if self.signing_key.is_some() && self.checkpoint_every == 0 {
            return Err(AuditError::Config {
                flag: "--audit-checkpoint-every",
                problem:
                    "0 with a signing key: give the most records between checkpoints (e.g. 100)"
                        .into(),
            });
        }
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }
}

struct Chain {
    seq: u64,
    prev: String,
    file: Option<std::fs::File>,
    /// Bytes of whole records in the current file (a partial write is cut back to this).
    file_bytes: u64,
    since_checkpoint: u64,
    /// Events not written since the last successful write.
    lost: u64,
}

/// The audit sink. Cheap to share (`Arc<Audit>`); writes are serialised by a short lock.
pub struct Audit {
    chain: Mutex<Chain>,
    opts: Option<AuditOptions>,
    key: Option<SigningKey>,
    failures: Counter,
    anchor: tokio::sync::watch::Sender<Option<anchor::Anchor>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("path", &self.opts.as_ref().map(|o| &o.path))
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
    parse_key_hex(path, &text)
}

/// The signing key: read through the key-file checks (mode, type, size) every secret file
/// passes, so a world-readable or executable key file is refused at start.
fn read_signing_key(path: &Path) -> Result<[u8; 32], AuditError> {
    let raw = crate::kek::keyfile::read_key_file(path, "--audit-signing-key")
        .map_err(|e| AuditError::Key(e.to_string()))?;
    let text =
        zeroize::Zeroizing::new(String::from_utf8(raw.to_vec()).map_err(|_| {
            AuditError::Key(format!("{} must hold 64 hex characters", path.display()))
        })?);
    parse_key_hex(path, &text)
}

fn parse_key_hex(path: &Path, text: &str) -> Result<[u8; 32], AuditError> {
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
    let sk = SigningKey::generate();
    let sec = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let io = |path: &Path, e| AuditError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let secret_hex = zeroize::Zeroizing::new(hex::encode(*sk.seed()));
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
    std::fs::write(&public, hex::encode(sk.public_key().as_bytes())).map_err(|e| io(&public, e))?;
    Ok((sec, public))
}

/// The last complete record of a file: (seq, hash of its line, records since the last
/// checkpoint, length of the complete lines). A partial last line (a write cut short) is
/// not counted, and is cut off before the next write.
fn scan(path: &Path) -> std::io::Result<Option<(u64, String, u64, u64)>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut r = std::io::BufReader::new(f);
    let (mut last, mut good, mut since) = (None, 0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        good += n as u64;
        let line = String::from_utf8_lossy(&buf[..n - 1]);
        if line.is_empty() {
            continue;
        }
        if let Ok(rec) = serde_json::from_str::<Record>(&line) {
            since = if rec.kind == kind::CHECKPOINT {
                0
            } else {
                since + 1
            };
            last = Some((rec.seq, line_hash(&line)));
        }
    }
    Ok(last.map(|(s, h)| (s, h, since, good)))
}

impl Audit {
    /// Log only to the `keyward::audit` tracing target (stdout), unchained.
    pub fn stdout_only() -> Self {
        Self {
            chain: Mutex::new(Chain {
                seq: 0,
                prev: GENESIS.into(),
                file: None,
                file_bytes: 0,
                since_checkpoint: 0,
                lost: 0,
            }),
            opts: None,
            key: None,
            failures: Counter::default(),
            anchor: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Append to `path` with default bounds (64 MiB x 4 files, fail closed), continuing its
    /// chain; sign a checkpoint every `checkpoint_every` records with `signing_key`.
    pub fn open(
        path: &Path,
        signing_key: Option<&Path>,
        checkpoint_every: u64,
    ) -> Result<Self, AuditError> {
        let mut o = AuditOptions::new(path);
        o.signing_key = signing_key.map(Path::to_path_buf);
        o.checkpoint_every = checkpoint_every;
        Self::with_options(o)
    }

    /// Open the chained log: continue the chain of the newest existing file (the current
    /// one, else the newest rotated copy), or start one with a signed checkpoint.
    pub fn with_options(opts: AuditOptions) -> Result<Self, AuditError> {
        opts.check()?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| AuditError::Io { path: p, source: e }
        };
        let key = opts
            .signing_key
            .as_deref()
            .map(|p| read_signing_key(p).map(|b| SigningKey::from_seed(&b)))
            .transpose()?;
        let mut chain = Chain {
            seq: 0,
            prev: GENESIS.into(),
            file: None,
            file_bytes: 0,
            since_checkpoint: 0,
            lost: 0,
        };
        let current = scan(&opts.path).map_err(io(&opts.path))?;
        let good = current.as_ref().map_or(0, |c| c.3);
        let found = match current {
            Some(c) => Some(c),
            None => scan(&opts.rotated(1))
                .map_err(io(&opts.rotated(1)))?
                .map(|(s, h, since, _)| (s, h, since, 0)),
        };
        if let Some((seq, prev, since, _)) = &found {
            chain.seq = *seq;
            chain.prev = prev.clone();
            chain.since_checkpoint = *since;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.path)
            .map_err(io(&opts.path))?;
        let len = file.metadata().map_err(io(&opts.path))?.len();

        if len != good {
            // A partial line from a write cut short: cut it so the chain stays whole.
            file.set_len(good).map_err(io(&opts.path))?;
        }
        chain.file_bytes = good;
        chain.file = Some(file);
        let a = Self {
            chain: Mutex::new(chain),
            opts: Some(opts),
            key,
            failures: Counter::default(),
            anchor: tokio::sync::watch::Sender::new(None),
        };
        {
            let mut c = a.lock();
            if c.file_bytes == 0 && a.checkpoints_on() {
                // Every file opens with a signed checkpoint.
                a.push(&mut c, Body::Checkpoint)
                    .map_err(|e| AuditError::Unavailable(e.to_string()))?;
            }
        }
        Ok(a)
    }

    /// `keyward_audit_write_failures_total`, for the controller's `/metrics`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "audit_write_failures",
            "Audit records (events, gaps, checkpoints) that could not be written",
            self.failures.clone(),
        );
    }

    /// Failed writes so far.
    pub fn write_failures(&self) -> u64 {
        self.failures.get()
    }

    /// Events lost since the last successful write (written as a gap record later).
    pub fn pending_lost(&self) -> u64 {
        self.lock().lost
    }

    /// The newest checkpoint as an anchor: changes at every checkpoint, for a task that
    /// copies it outside the file.
    pub fn anchors(&self) -> tokio::sync::watch::Receiver<Option<anchor::Anchor>> {
        self.anchor.subscribe()
    }

    /// Closed or open.
    pub fn failure_mode(&self) -> FailureMode {
        self.opts
            .as_ref()
            .map(|o| o.failure)
            .unwrap_or(FailureMode::Open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        // A panic while holding the lock leaves whole records only (see `push`).
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an event: one escaped JSON line on the `keyward::audit` target, then the chained
    /// file. `Err` only with `--audit-failure=closed` when the file could not be written (the
    /// failure is counted either way, and a gap record follows).
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let event = event.bounded();
        tracing::info!(target: "keyward::audit", record = %event.to_json_line(), "audit");
        self.write_chained(event)
    }

    /// Append to the chained file only (for callers that already log the event on the
    /// `keyward::audit` tracing target themselves). Errors as [`Audit::record`].
    pub fn append_only(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.write_chained(event.bounded())
    }

    /// Whether a record can be written now: writes a pending gap record (or checkpoint) if
    /// there is one. With `--audit-failure=open` always `Ok`.
    pub fn ensure_writable(&self) -> Result<(), AuditError> {
        let Some(_) = &self.opts else { return Ok(()) };
        let mut c = self.lock();
        if c.lost == 0 && c.file.is_some() {
            return Ok(());
        }
        let r = self.flush_pending(&mut c);
        self.outcome(r)
    }

    fn outcome(&self, r: std::io::Result<()>) -> Result<(), AuditError> {
        match (r, self.failure_mode()) {
            (Ok(()), _) | (Err(_), FailureMode::Open) => Ok(()),
            (Err(e), FailureMode::Closed) => Err(AuditError::Unavailable(e.to_string())),
        }
    }

    fn write_chained(&self, event: AuditEvent) -> Result<(), AuditError> {
        if self.opts.is_none() {
            return Ok(());
        }
        let mut c = self.lock();
        let r = self.flush_pending(&mut c).and_then(|()| {
            self.push(&mut c, Body::Event(&event))?;
            if self.checkpoint_due(&c) {
                // Best effort here: if it fails, the next write writes it first.
                let _ = self.push(&mut c, Body::Checkpoint);
            }
            Ok(())
        });
        if r.is_err() {
            c.lost += 1;
        }
        self.outcome(r)
    }

    fn checkpoints_on(&self) -> bool {
        self.opts.as_ref().is_some_and(|o| o.checkpoint_every > 0)
    }

    fn checkpoint_due(&self, c: &Chain) -> bool {
        let every = self.opts.as_ref().map_or(0, |o| o.checkpoint_every);
        every > 0 && c.since_checkpoint >= every
    }

    /// Before the next event: a gap record for the events lost since the last write.
    fn flush_pending(&self, c: &mut Chain) -> std::io::Result<()> {
        if c.lost > 0 {
            let lost = c.lost;
            self.push(c, Body::Gap(lost))?;
            tracing::warn!(lost, "audit log writable again; gap record written");
            c.lost = 0;
        }
        Ok(())
    }

    /// Append a signed checkpoint now (also done every `checkpoint_every` records), if any
    /// record followed the last one. The controller calls this on a timer so the unsigned
    /// tail stays short in time as well as in count.
    pub fn checkpoint(&self) {
        if !self.checkpoints_on() {
            return;
        }
        let mut c = self.lock();
        if c.since_checkpoint == 0 && c.lost == 0 {
            return;
        }
        let r = self
            .flush_pending(&mut c)
            .and_then(|()| self.push(&mut c, Body::Checkpoint));
        let _ = self.outcome(r);
    }

    /// Write one record (rotating first when it would not fit). On failure nothing of it
    /// stays in the file, `seq` does not move, and the failure is counted and logged.
    fn push(&self, c: &mut Chain, body: Body<'_>) -> std::io::Result<()> {
        let r = self.push_inner(c, body);
        if let Err(e) = &r {
            self.failures.inc();
            tracing::error!(
                path = ?self.opts.as_ref().map(|o| &o.path),
                error = %e,
                "AUDIT WRITE FAILED"
            );
        }
        r
    }

    fn push_inner(&self, c: &mut Chain, body: Body<'_>) -> std::io::Result<()> {
        let Some(opts) = &self.opts else {
            return Ok(());
        };
        let (_, line) = self.build(c, &body);
        if c.file_bytes > 0 && c.file_bytes + line.len() as u64 + 1 > opts.max_file_bytes {
            self.rotate(c, opts)?;
        }
        if !matches!(body, Body::Checkpoint)
            && ((c.file_bytes == 0 && self.checkpoints_on()) || self.checkpoint_due(c))
        {
            // Every file opens with a signed checkpoint, and no record goes past the signed
            // cadence (a checkpoint that failed earlier is written first).
            self.push_inner(c, Body::Checkpoint)?;
        }
        let built = self.build(c, &body);
        self.write_line(c, opts, &built)
    }

    fn build(&self, c: &Chain, body: &Body<'_>) -> (Record, String) {
        let seq = c.seq + 1;
        let mut rec = Record {
            seq,
            time: jiff::Timestamp::now().to_string(),
            kind: kind::EVENT.into(),
            prev: c.prev.clone(),
            event: None,
            every: None,
            sig: None,
            lost: None,
        };
        match body {
            Body::Event(e) => rec.event = Some((*e).clone()),
            Body::Gap(n) => {
                rec.kind = kind::GAP.into();
                rec.lost = Some(*n);
            }
            Body::Checkpoint => {
                let every = self.opts.as_ref().map_or(0, |o| o.checkpoint_every);
                rec.kind = kind::CHECKPOINT.into();
                rec.every = Some(every);
                if let Some(k) = &self.key {
                    let sig = k.sign(&checkpoint_message(seq, every, &c.prev));
                    rec.sig = Some(hex::encode(sig));
                }
            }
        }
        // A record of strings and integers always serializes.
        let line = serde_json::to_string(&rec).unwrap_or_default();
        (rec, line)
    }

    fn write_line(
        &self,
        c: &mut Chain,
        opts: &AuditOptions,
        (rec, line): &(Record, String),
    ) -> std::io::Result<()> {
        if c.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&opts.path)?;
            c.file = Some(f);
        }
        let Some(f) = c.file.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // Whole records only: cut back anything a failed write left, then append.
        let r = f
            .set_len(c.file_bytes)
            .and_then(|()| f.write_all(&bytes))
            .and_then(|()| f.flush());
        if let Err(e) = r {
            if f.set_len(c.file_bytes).is_err() {
                // Reopened (and cut back) on the next write.
                c.file = None;
            }
            return Err(e);
        }
        c.file_bytes += bytes.len() as u64;
        c.seq = rec.seq;
        c.prev = line_hash(line);
        if rec.kind == kind::CHECKPOINT {
            c.since_checkpoint = 0;
            self.anchor.send_replace(Some(anchor::Anchor {
                seq: rec.seq,
                prev: rec.prev.clone(),
                hash: c.prev.clone(),
                every: rec.every.unwrap_or(0),
                sig: rec.sig.clone(),
                time: rec.time.clone(),
            }));
        } else {
            c.since_checkpoint += 1;
        }
        Ok(())
    }

    /// `<path>` becomes `<path>.1`, `.1` becomes `.2`, ...; the oldest beyond `max_files`
    /// goes. The chain continues: the new file's first record links to the old file's last.
    fn rotate(&self, c: &mut Chain, opts: &AuditOptions) -> std::io::Result<()> {
        c.file = None;
        let oldest = opts.rotated(opts.max_files - 1);
        match std::fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for n in (1..opts.max_files - 1).rev() {
            match std::fs::rename(opts.rotated(n), opts.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(&opts.path, opts.rotated(1))?;
        c.file_bytes = 0;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.path)?;
        c.file = Some(f);
        c.file_bytes = 0;
        tracing::info!(path = %opts.path.display(), seq = c.seq, "audit log rotated");
        Ok(())
    }
}

enum Body<'a> {
    Event(&'a AuditEvent),
    Gap(u64),
    Checkpoint,
}

/// Load a verifying key (64 hex characters).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let b = read_key_hex(path)?;
    VerifyingKey::from_bytes(&b).ok_or_else(|| {
        AuditError::Key(format!(
            "{}: not a valid Ed25519 public key",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests;
