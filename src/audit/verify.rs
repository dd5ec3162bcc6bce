//! `keyward audit verify`: the chain across a set of (rotated) files, the signed checkpoints
//! and their cadence, and the anchor kept outside the files.

use super::anchor::Anchor;
use super::{AuditError, GENESIS, Record, checkpoint_message, kind, line_hash};
use crate::crypto::module::Ed25519PublicKey as VerifyingKey;
use std::path::{Path, PathBuf};

/// One file of a log, as read.
#[derive(Debug, Clone)]
pub struct LogFile {
    /// Name shown in errors.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Valid signed checkpoints.
    pub checkpoints: u64,
    /// Records after the last checkpoint (protected by the chain only).
    pub unsigned_tail: u64,
    /// Gap records (writes that failed and were then declared).
    pub gaps: u64,
    /// Events lost, summed over the gap records.
    pub lost: u64,
    /// Sequence number of the first record given (above 1 when older files rotated away).
    pub first_seq: u64,
    /// Sequence number of the last record.
    pub last_seq: u64,
    /// The anchor's checkpoint was found in the log.
    pub anchored: bool,
}

/// The first problem in a log.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}line {line} (seq {seq}): {problem}")]
pub struct VerifyError {
    /// `name: ` of the file, or empty for a single text.
    pub file: String,
    /// 1-based line number in that file (0: not about one line).
    pub line: usize,
    /// Sequence number found (or expected).
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// Verify a single log text (see [`verify_files`]).
pub fn verify(text: &str, public_key: Option<&VerifyingKey>) -> Result<VerifySummary, VerifyError> {
    verify_files(
        &[LogFile {
            name: String::new(),
            text: text.into(),
        }],
        public_key,
        None,
    )
}

/// Read the files of a log: each path is a file, or a directory whose regular files are all
/// taken. Files are put in chain order by their first record's sequence number (not by name),
/// so `audit.log.3 audit.log.2 audit.log.1 audit.log` or `dir/` give the same result.
pub fn read_log_files(paths: &[PathBuf]) -> Result<Vec<LogFile>, AuditError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| AuditError::Io { path: p, source: e }
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io(p))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io(&f))?;
        out.push(LogFile {
            name: f.display().to_string(),
            text,
        });
    }
    out.sort_by_key(|f| {
        f.text
            .lines()
            .find(|l| !l.is_empty())
            .and_then(|l| serde_json::from_str::<Record>(l).ok())
            .map_or(0, |r| r.seq)
    });
    Ok(out)
}

/// Verify a log across its files (in chain order): every record parses, `seq` has no gaps,
/// each `prev` is the hash of the line before (across files), checkpoints carry valid
/// signatures (with `public_key`). With a key it also requires what the writer guarantees:
/// every file opens with a checkpoint and no run of records is longer than the cadence the
/// checkpoint signed, so removing checkpoints (and recomputing the chain) fails. With an
/// `anchor` (the newest checkpoint, kept outside the files; its signature checked with the
/// key) the log must reach it and hold exactly that checkpoint line, whose hash commits to
/// every record before it, so a cut tail or a rewritten log fails. Names the first problem.
pub fn verify_files(
    files: &[LogFile],
    public_key: Option<&VerifyingKey>,
    anchor: Option<&Anchor>,
) -> Result<VerifySummary, VerifyError> {
    let mut s = VerifySummary::default();
    let mut prev: Option<String> = None;
    let mut every: Option<u64> = None;
    let (mut run, mut last_file) = (0u64, String::new());
    if let (Some(a), Some(pk)) = (anchor, public_key)
        && !signature_ok(pk, a.seq, a.every, &a.prev, a.sig.as_deref())
    {
        return Err(VerifyError {
            file: String::new(),
            line: 0,
            seq: a.seq,
            problem: "the anchor's signature is invalid (forged anchor or wrong public key)".into(),
        });
    }
    for f in files {
        let file = if f.name.is_empty() {
            String::new()
        } else {
            format!("{}: ", f.name)
        };
        last_file = file.clone();
        let mut first_in_file = true;
        for (i, line) in f.text.lines().enumerate() {
            let err = |seq: u64, problem: String| VerifyError {
                file: file.clone(),
                line: i + 1,
                seq,
                problem,
            };
            let expected = prev.as_ref().map_or(1, |_| s.last_seq + 1);
            if line.is_empty() {
                // The writer never writes one: an inserted line, however empty, is a change.
                return Err(err(
                    expected,
                    "empty line (never written by keyward)".into(),
                ));
            }
            let rec: Record = serde_json::from_str(line)
                .map_err(|e| err(expected, format!("not a valid record ({e})")))?;
            check_shape(&rec).map_err(|p| err(rec.seq, p))?;
            match &prev {
                None => {
                    s.first_seq = rec.seq;
                    if rec.seq == 1
                        && !crate::crypto::ct_eq(rec.prev.as_bytes(), GENESIS.as_bytes())
                    {
                        return Err(err(1, "the first record does not start the chain (prev is not the genesis value): records before it were removed".into()));
                    }
                    if rec.seq == 0 {
                        return Err(err(0, "sequence numbers start at 1".into()));
                    }
                }
                Some(p) => {
                    let problem = match rec.seq.cmp(&expected) {
                        std::cmp::Ordering::Equal => None,
                        std::cmp::Ordering::Greater => Some(format!(
                            "records {expected}..{} are missing (removed)",
                            rec.seq - 1
                        )),
                        std::cmp::Ordering::Less => Some(format!(
                            "sequence {} appears where {expected} was expected (reordered or duplicated)",
                            rec.seq
                        )),
                    };
                    if let Some(problem) = problem {
                        return Err(err(rec.seq, problem));
                    }
                    if !crate::crypto::ct_eq(rec.prev.as_bytes(), p.as_bytes()) {
                        return Err(err(
                            rec.seq,
                            "hash chain broken: the previous record was edited".into(),
                        ));
                    }
                }
            }
            let is_checkpoint = rec.kind == kind::CHECKPOINT;
            if public_key.is_some() && first_in_file && !is_checkpoint {
                return Err(err(
                    rec.seq,
                    "this file does not open with a signed checkpoint (every file does): checkpoints were removed or the file was cut".into(),
                ));
            }
            first_in_file = false;
            if is_checkpoint {
                let n = rec.every.unwrap_or(0);
                if let Some(pk) = public_key
                    && !signature_ok(pk, rec.seq, n, &rec.prev, rec.sig.as_deref())
                {
                    return Err(err(
                        rec.seq,
                        "checkpoint signature invalid (forged or re-chained log)".into(),
                    ));
                }
                every = Some(n);
                run = 0;
                s.checkpoints += 1;
            } else {
                run += 1;
                if let Some(n) = every.filter(|n| *n > 0)
                    && run > n
                {
                    return Err(err(
                        rec.seq,
                        format!(
                            "{run} records since the last checkpoint, more than the {n} it signed: a checkpoint was removed"
                        ),
                    ));
                }
                if rec.kind == kind::GAP {
                    s.gaps += 1;
                    s.lost = s.lost.saturating_add(rec.lost.unwrap_or(0));
                }
            }
            let hash = line_hash(line);
            if let Some(a) = anchor
                && a.seq == rec.seq
            {
                let same = is_checkpoint
                    && crate::crypto::ct_eq(a.hash.as_bytes(), hash.as_bytes())
                    && crate::crypto::ct_eq(a.prev.as_bytes(), rec.prev.as_bytes());
                if !same {
                    return Err(err(
                        rec.seq,
                        "this is not the checkpoint the anchor recorded: the log was rewritten"
                            .into(),
                    ));
                }
                s.anchored = true;
            }
            s.records += 1;
            s.last_seq = rec.seq;
            prev = Some(hash);
        }
    }
    s.unsigned_tail = run;
    if let Some(a) = anchor
        && !s.anchored
    {
        let problem = if s.records == 0 || s.last_seq < a.seq {
            format!(
                "the log ends at seq {} but the anchor proves a checkpoint at seq {}: the tail was cut",
                s.last_seq, a.seq
            )
        } else {
            format!(
                "the anchor (seq {}) is older than the first record given (seq {}): pass the older files or a newer anchor",
                a.seq, s.first_seq
            )
        };
        return Err(VerifyError {
            file: last_file,
            line: 0,
            seq: s.last_seq,
            problem,
        });
    }
    Ok(s)
}

/// The fields each record type must (and must not) carry.
fn check_shape(r: &Record) -> Result<(), String> {
    let ok = match r.kind.as_str() {
        kind::EVENT => r.event.is_some() && r.sig.is_none() && r.lost.is_none(),
        kind::CHECKPOINT => r.event.is_none() && r.every.is_some() && r.lost.is_none(),
        kind::GAP => r.event.is_none() && r.sig.is_none() && r.lost.is_some_and(|n| n > 0),
        other => return Err(format!("unknown record type {other:?}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("malformed {} record", r.kind))
    }
}

fn signature_ok(pk: &VerifyingKey, seq: u64, every: u64, prev: &str, sig: Option<&str>) -> bool {
    sig.and_then(|s| hex::decode(s).ok())
        .is_some_and(|sig| pk.verify(&checkpoint_message(seq, every, prev), &sig))
}
