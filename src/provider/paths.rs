//! The file paths the Secrets Store CSI Driver will write, checked by keyward before it answers.
//!
//! The driver, not the provider, writes `MountResponse.files` (v1.6.0 `provider_client.go`
//! `MountContent` -> `pkg/util/fileutil/writer.go` `WritePayloads`). A path its writer refuses
//! fails the mount with the opaque reason `FileWriteError`, and on a remount the driver masks
//! the error and keeps serving old files. So keyward refuses such a set itself, with
//! InvalidArgument naming the object and the fix. Rules (v1.6.0):
//! - `atomic_writer.go` `validatePath`: not empty, not absolute, at most 4096 bytes, no element
//!   longer than 255 bytes, no `..` element, first element not starting with `..`;
//! - `writer.go` `Validate`: `filepath.Clean(p) == p` (no `//`, no trailing `/`, no `./`);
//! - `.` passes both checks but makes `cleanupProviderFiles` remove the whole target directory;
//! - `filesystem.go` `GetMountedFiles` skips top-level entries starting with `..`, so such names
//!   would never reach a synced Secret: keyward refuses a leading `..` in every element;
//! - `atomic_writer.go` `writePayloadToDir`: a file `a` beside `a/b` cannot be written (one
//!   needs `a` to be a directory); `writer.go` keeps only the last of two equal paths.

use std::collections::BTreeSet;

/// `atomic_writer.go` `maxPathLength`.
pub const MAX_PATH_BYTES: usize = 4096;
/// `atomic_writer.go` `maxFileNameLength`.
pub const MAX_ELEMENT_BYTES: usize = 255;

/// Why the driver would refuse (or mangle) one path; `None` when it writes it as asked.
pub fn path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("is empty".into());
    }
    if path.starts_with('/') {
        return Some("is absolute; use a relative name such as \"db.key\"".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Some(format!("is longer than {MAX_PATH_BYTES} bytes"));
    }
    if path == "." {
        return Some("is \".\", which would make the driver wipe the whole volume".into());
    }
    for element in path.split('/') {
        if element.is_empty() {
            return Some(
                "has an empty element (\"//\" or a trailing \"/\"); the driver only writes clean paths"
                    .into(),
            );
        }
        if element == "." {
            return Some("has a \".\" element; the driver only writes clean paths".into());
        }
        if element.starts_with("..") {
            return Some(format!(
                "has an element {element:?} starting with \"..\", which the driver refuses or hides"
            ));
        }
        if element.len() > MAX_ELEMENT_BYTES {
            return Some(format!(
                "has an element longer than {MAX_ELEMENT_BYTES} bytes"
            ));
        }
    }
    None
}

/// Why the driver could not write this whole set of paths: a duplicate, or a file that another
/// path needs as a directory (`a` beside `a/b`). Paths are assumed to pass [`path_problem`].
pub fn set_problem<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<(String, String)> {
    let mut seen = BTreeSet::new();
    for p in paths {
        if !seen.insert(p) {
            return Some((p.to_string(), "is written twice".into()));
        }
    }
    // Check every proper directory prefix of every path (at most 4096 bytes each).
    for p in &seen {
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            let dir = &p[..at + i];
            if seen.contains(dir) {
                return Some((
                    dir.to_string(),
                    format!("is a file, but {p:?} needs it to be a directory"),
                ));
            }
            at += i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_paths_follow_the_driver_writer() {
        for ok in ["a", "a/b", "db.key.v1", "sign/jwt.pem", "a-b_c.d"] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        let long_element = "x".repeat(256);
        let long_path = vec!["y".repeat(200); 21].join("/");
        assert!(long_path.len() > MAX_PATH_BYTES);
        for (bad, why) in [
            ("", "empty"),
            ("/x", "absolute"),
            (".", "wipe"),
            ("..", "starting with"),
            ("..foo", "starting with"),
            ("a/..foo", "starting with"),
            ("a/../b", "starting with"),
            ("a//b", "empty element"),
            ("a/", "empty element"),
            ("./a", "\".\" element"),
            (long_element.as_str(), "255"),
            (long_path.as_str(), "4096"),
        ] {
            let p = path_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
        assert_eq!(path_problem(&"z".repeat(255)), None);
    }

    #[test]
    fn sets_with_duplicates_or_file_directory_clashes_are_refused() {
        assert_eq!(set_problem(["a", "b", "c/d", "c/e"]), None);
        assert_eq!(set_problem(["ab", "a/b"]), None);
        let (p, why) = set_problem(["a", "x", "a"]).unwrap();
        assert_eq!((p.as_str(), why.as_str()), ("a", "is written twice"));
        let (p, why) = set_problem(["a/b/c", "a/b"]).unwrap();
        assert_eq!(p, "a/b");
        assert!(why.contains("a/b/c"), "{why}");
        let (p, _) = set_problem(["x/y", "x"]).unwrap();
        assert_eq!(p, "x");
    }
}
