//! Reading files that hold secrets (local root key, passphrase, PKCS#11 PIN, TLS private keys).
//!
//! A key file readable by other users, writable by the group, executable, or carrying the
//! setuid/setgid/sticky bits was set up wrongly (or tampered with): keyward refuses it and
//! says how to fix the mode, instead of using a secret others may have read or replaced.
//! Group *read* is accepted because Kubernetes delivers Secret volumes as `root:<fsGroup>`
//! with `defaultMode: 0440` (the chart's setting), so the process reads its keys through the
//! group. Only regular files are read (a FIFO or `/dev/zero` would block or never end), and at
//! most [`MAX_KEY_FILE`] bytes. The mode is checked on the opened file, so a swap between
//! check and read cannot slip another file in.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Largest key file read (an RSA-4096 PKCS#8 PEM is about 3.3 KiB).
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Mode bits a key file must not have: setuid, setgid, sticky, any execute bit, group write,
/// and any access for others.
const FORBIDDEN: u32 = 0o7000 | 0o111 | 0o020 | 0o007;

/// Why a key file was refused. Messages name the flag and the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened or read.
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        /// Flag or variable that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file's mode gives access it must not.
    #[error(
        "{setting}: {path} has mode {mode:04o}, which {problem}; a key file must be readable by its owner (and group) only: chmod 0600 (or 0400/0440) it"
    )]
    Mode {
        /// Flag or variable that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The permission bits found.
        mode: u32,
        /// What is wrong with them.
        problem: &'static str,
    },
    /// Not a regular file (directory, FIFO, device).
    #[error("{setting}: {path} is not a regular file")]
    NotRegular {
        /// Flag or variable that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Larger than any key file keyward reads.
    #[error("{setting}: {path} is larger than {MAX_KEY_FILE} bytes; it is not a key file")]
    TooLarge {
        /// Flag or variable that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
}

impl KeyFileError {
    /// The flag or variable that names the refused file.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Read { setting, .. }
            | Self::Mode { setting, .. }
            | Self::NotRegular { setting, .. }
            | Self::TooLarge { setting, .. } => setting,
        }
    }
}

impl From<KeyFileError> for std::io::Error {
    /// For callers whose error type wraps `io::Error`; the message is kept whole.
    fn from(e: KeyFileError) -> Self {
        let kind = match &e {
            KeyFileError::Read { source, .. } => source.kind(),
            KeyFileError::Mode { .. } => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// What is wrong with permission bits `mode` for a key file, if anything.
pub fn mode_problem(mode: u32) -> Option<&'static str> {
    let mode = mode & 0o7777;
    if mode & 0o7000 != 0 {
        Some("has the setuid, setgid or sticky bit")
    } else if mode & 0o111 != 0 {
        Some("is executable")
    } else if mode & 0o007 != 0 {
        Some("gives other users access")
    } else if mode & 0o020 != 0 {
        Some("lets the group write it")
    } else {
        debug_assert_eq!(mode & FORBIDDEN, 0);
        None
    }
}

/// Read the key file `path` (named by `setting` in errors) into zeroizing memory, after
/// checking on the opened file that it is a regular file of acceptable mode and size.
pub fn read_key_file(
    path: &Path,
    setting: &'static str,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        setting,
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotRegular {
            setting,
            path: path.into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if let Some(problem) = mode_problem(mode) {
        return Err(KeyFileError::Mode {
            setting,
            path: path.into(),
            mode,
            problem,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyFileError::TooLarge {
            setting,
            path: path.into(),
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    // The file may grow after the check: read at most one byte past the limit.
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(KeyFileError::TooLarge {
            setting,
            path: path.into(),
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b"0123456789abcdef0123456789abcdef").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn owner_only_and_group_read_modes_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o440, 0o640] {
            let p = file_with_mode(dir.path(), &format!("ok{mode:o}"), mode);
            assert_eq!(
                &read_key_file(&p, "--flag").unwrap()[..],
                b"0123456789abcdef0123456789abcdef",
                "{mode:o}"
            );
        }
    }

    #[test]
    fn exec_special_group_write_and_other_modes_are_refused_naming_flag_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, problem) in [
            (0o700, "executable"),
            (0o610, "executable"),
            (0o601, "executable"),
            (0o4600, "setuid"),
            (0o2600, "setgid"),
            (0o1600, "sticky"),
            (0o644, "other users"),
            (0o604, "other users"),
            (0o602, "other users"),
            (0o660, "group write"),
        ] {
            let p = file_with_mode(dir.path(), &format!("bad{mode:o}"), mode);
            let e = read_key_file(&p, "--local-kek-file").unwrap_err();
            assert!(
                matches!(e, KeyFileError::Mode { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("--local-kek-file")
                    && msg.contains(&p.display().to_string())
                    && msg.contains(&format!("{mode:04o}"))
                    && msg.contains(problem)
                    && msg.contains("chmod 0600"),
                "{msg}"
            );
            assert!(!msg.contains("0123456789abcdef"), "content leaked: {msg}");
        }
    }

    #[test]
    fn non_regular_missing_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            read_key_file(dir.path(), "--f"),
            Err(KeyFileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_key_file(&dir.path().join("missing"), "--f"),
            Err(KeyFileError::Read { .. })
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_KEY_FILE as usize + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_key_file(&big, "--f"),
            Err(KeyFileError::TooLarge { .. })
        ));
        // /dev/zero never ends: refused before reading.
        assert!(matches!(
            read_key_file(Path::new("/dev/zero"), "--f"),
            Err(KeyFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn io_error_conversion_keeps_the_message() {
        let e = KeyFileError::Mode {
            setting: "--key-service-tls-key-file",
            path: "/k".into(),
            mode: 0o644,
            problem: "gives other users access",
        };
        let msg = e.to_string();
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(io.to_string(), msg);
    }
}
