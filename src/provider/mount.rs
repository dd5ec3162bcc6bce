//! One Mount: parsed request -> one key-service Fetch -> files and object versions.

use super::error::MountError;
use super::format::{AnswerError, encode};
use super::params::{MountParams, ObjectSpec};
use crate::keyservice::Selector;
use crate::proto::csi::{File, MountResponse, ObjectVersion};
use crate::proto::keyservice::{
    FetchRequest, FetchResponse, KeyRequest, KeyResult, VersionSelector, version_selector,
};
use std::collections::HashMap;

/// Largest total the driver should receive (the Kubernetes Secret size limit).
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

fn wire_selector(s: Selector) -> VersionSelector {
    use version_selector::Select;
    VersionSelector {
        select: Some(match s {
            Selector::Current => Select::Current(true),
            Selector::Previous => Select::Previous(true),
            Selector::All => Select::All(true),
            Selector::Number(n) => Select::Number(n),
        }),
    }
}

/// The Fetch for a Mount: each distinct (key, selector) once; returns, per object, the
/// index of its answer in the response.
pub fn fetch_request(p: &MountParams) -> (FetchRequest, Vec<usize>) {
    let mut index: HashMap<(&str, Selector), usize> = HashMap::new();
    let mut keys = Vec::new();
    let mut map = Vec::with_capacity(p.objects.len());
    for o in &p.objects {
        let i = *index
            .entry((o.key.as_str(), o.selector))
            .or_insert_with(|| {
                keys.push(KeyRequest {
                    key: o.key.clone(),
                    selector: Some(wire_selector(o.selector)),
                });
                keys.len() - 1
            });
        map.push(i);
    }
    (
        FetchRequest {
            pod_token: p.token.token.clone(),
            pod_namespace: p.namespace.clone(),
            pod_name: p.pod_name.clone(),
            pod_uid: p.pod_uid.clone(),
            service_account: p.service_account.clone(),
            keys,
            pod_token_expiration: p.token.expiration_raw.clone(),
        },
        map,
    )
}

/// JWK `kid`: the key service's opaque, stable version id (reveals nothing about the key).
fn kid(_o: &ObjectSpec, version_id: &str) -> String {
    crate::keyservice::version_id::jwk_kid(version_id)
}

/// One JWKS file from every version of the answer: current first, then the pre-published
/// next one, then older ones, newest first (verifiers that try keys in order find the signing
/// key first; JWKS has no standard member for "next", so the order marks it).
fn jwks_file(o: &ObjectSpec, r: &KeyResult) -> Result<(File, ObjectVersion), MountError> {
    let mut order: Vec<&crate::proto::keyservice::ServedVersion> = r.versions.iter().collect();
    order.sort_by_key(|v| {
        (
            v.version != r.current,
            v.version != r.next,
            std::cmp::Reverse(v.version),
        )
    });
    let keys = order
        .iter()
        .map(|v| {
            encode(
                super::params::Format::PublicJwk,
                &r.algorithm,
                &v.material,
                &kid(o, &v.version_id),
                r.public_only,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MountError::encode(&o.key, e))?;
    let contents = super::format::jwks(&keys)?;
    // The set changes when any member changes: version = the member ids joined.
    let version = order
        .iter()
        .map(|v| v.version_id.as_str())
        .collect::<Vec<_>>()
        .join(".");
    Ok((
        File {
            path: o.file_name.clone(),
            mode: o.mode as i32,
            contents: bytes::Bytes::from_owner(contents),
        },
        ObjectVersion {
            id: o.file_name.clone(),
            version,
        },
    ))
}

fn file(
    o: &ObjectSpec,
    r: &KeyResult,
    path: String,
    version: u32,
) -> Result<(File, ObjectVersion), MountError> {
    let v = r
        .versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| AnswerError::MissingVersion {
            key: o.key.clone(),
            version,
        })?;
    let contents = encode(
        o.format,
        &r.algorithm,
        &v.material,
        &kid(o, &v.version_id),
        r.public_only,
    )
    .map_err(|e| MountError::encode(&o.key, e))?;
    Ok((
        File {
            path: path.clone(),
            mode: o.mode as i32,
            contents: bytes::Bytes::from_owner(contents),
        },
        ObjectVersion {
            id: path,
            version: v.version_id.clone(),
        },
    ))
}

/// Turn the key service's answer into the driver's response. All or nothing: any problem
/// returns an error and no file.
pub fn build_response(
    p: &MountParams,
    map: &[usize],
    resp: &FetchResponse,
    n_requested: usize,
) -> Result<MountResponse, MountError> {
    if resp.keys.len() != n_requested {
        return Err(AnswerError::Count {
            answered: resp.keys.len(),
            requested: n_requested,
        }
        .into());
    }
    let mut files = Vec::new();
    let mut versions = Vec::new();
    // Which object each file came from, for error messages.
    let mut owners: Vec<String> = Vec::new();
    for (o, &i) in p.objects.iter().zip(map) {
        let r = &resp.keys[i];
        if r.key != o.key || r.versions.is_empty() {
            return Err(AnswerError::Mismatch(o.key.clone()).into());
        }
        let mut push = |path: String, v: u32| -> Result<(), MountError> {
            let (f, ov) = file(o, r, path, v)?;
            files.push(f);
            versions.push(ov);
            owners.push(o.key.clone());
            Ok(())
        };
        if o.format == super::params::Format::Jwks {
            let (f, ov) = jwks_file(o, r)?;
            files.push(f);
            versions.push(ov);
            owners.push(o.key.clone());
            continue;
        }
        match o.selector {
            Selector::All => {
                for v in &r.versions {
                    push(format!("{}.v{}", o.file_name, v.version), v.version)?;
                }
                if r.current != 0 {
                    push(o.file_name.clone(), r.current)?;
                }
                // Staged rotation: the version that becomes current next, under a fixed name.
                if r.next != 0 {
                    push(format!("{}.next", o.file_name), r.next)?;
                }
            }
            _ => push(o.file_name.clone(), r.versions[0].version)?,
        }
    }
    // The driver writes these paths (v1.6.0 `fileutil.WritePayloads`); refuse what its writer
    // would refuse, naming the object, instead of letting the mount fail as `FileWriteError`.
    let owner = |path: &str| {
        files
            .iter()
            .zip(&owners)
            .find(|(f, _)| f.path == path)
            .map_or_else(|| "?".to_string(), |(_, k)| k.clone())
    };
    for f in &files {
        if let Some(problem) = super::paths::path_problem(&f.path) {
            return Err(MountError::Path {
                key: owner(&f.path),
                path: f.path.clone(),
                problem,
            });
        }
    }
    if let Some((path, problem)) = super::paths::set_problem(files.iter().map(|f| f.path.as_str()))
    {
        return Err(MountError::PathClash {
            key: owner(&path),
            path,
            problem,
        });
    }
    let total: usize = files.iter().map(|f| f.contents.len()).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(MountError::TooLarge { total });
    }
    Ok(MountResponse {
        object_version: versions,
        error: None,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keyservice::ServedVersion;
    use crate::provider::params::{Format, PodToken, parse_objects};

    fn params(objects: &str) -> MountParams {
        MountParams {
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            service_account: "sa".into(),
            token: PodToken {
                token: "t".into(),
                expires: None,
                expiration_raw: String::new(),
            },
            objects: parse_objects(objects, 0o644).unwrap(),
        }
    }

    /// The key service's answer for `key` (an AES key, full grant).
    fn answer(key: &str, versions: Vec<ServedVersion>, current: u32) -> KeyResult {
        KeyResult {
            public_only: false,
            key: key.into(),
            algorithm: "aes-256".into(),
            versions,
            current,
            next: 0,
        }
    }

    /// The driver's view of the refusal of a mount of `objects` answered with `keys`.
    fn refusal(objects: &str, keys: Vec<KeyResult>) -> tonic::Status {
        let p = params(objects);
        let (req, map) = fetch_request(&p);
        let resp = FetchResponse { keys };
        tonic::Status::from(build_response(&p, &map, &resp, req.keys.len()).unwrap_err())
    }

    fn sv(v: u32, byte: u8) -> ServedVersion {
        ServedVersion {
            version: v,
            state: "Active".into(),
            material: bytes::Bytes::from(vec![byte; 4]),
            fingerprint: String::new(),
            version_id: format!("id{v}"),
        }
    }

    #[test]
    fn one_fetch_entry_per_distinct_key_and_selector() {
        let p = params(
            "- key: a\n- key: a\n  fileName: a2\n  format: hex\n- key: b\n- key: a\n  version: all\n  fileName: aa",
        );
        let (req, map) = fetch_request(&p);
        assert_eq!(req.keys.len(), 3);
        assert_eq!(map, vec![0, 0, 1, 2]);
        assert_eq!(req.pod_token, "t");
    }

    #[test]
    fn files_modes_and_versions() {
        let p = params(
            "- key: a\n  mode: \"0400\"\n- key: a\n  version: all\n  fileName: all/a\n  format: hex",
        );
        let (req, map) = fetch_request(&p);
        let resp = FetchResponse {
            keys: vec![
                answer("a", vec![sv(2, 2)], 2),
                answer("a", vec![sv(1, 1), sv(2, 2)], 2),
            ],
        };
        let r = build_response(&p, &map, &resp, req.keys.len()).unwrap();
        let got: Vec<(&str, i32, &[u8])> = r
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode, &f.contents[..]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 0o400, &[2u8; 4][..]),
                ("all/a.v1", 0o644, &b"01010101"[..]),
                ("all/a.v2", 0o644, &b"02020202"[..]),
                ("all/a", 0o644, &b"02020202"[..]),
            ]
        );
        let ov: Vec<(&str, &str)> = r
            .object_version
            .iter()
            .map(|o| (o.id.as_str(), o.version.as_str()))
            .collect();
        assert_eq!(
            ov,
            vec![
                ("a", "id2"),
                ("all/a.v1", "id1"),
                ("all/a.v2", "id2"),
                ("all/a", "id2")
            ]
        );
        assert_eq!(p.objects[1].format, Format::Hex);
    }

    /// Staged rotation: `all` writes the pre-published version as `<file>.next` besides its
    /// numbered file (the JWKS order is proven with PyJWT in tests/staged_rotation.rs).
    #[test]
    fn the_pre_published_version_is_marked_next() {
        let mut staged = sv(3, 3);
        staged.state = "PreActivation".into();
        let resp = FetchResponse {
            keys: vec![KeyResult {
                next: 3,
                ..answer("a", vec![sv(1, 1), sv(2, 2), staged], 2)
            }],
        };
        let p = params("- key: a\n  version: all\n  format: hex");
        let (req, map) = fetch_request(&p);
        let r = build_response(&p, &map, &resp, req.keys.len()).unwrap();
        let got: Vec<(&str, &[u8])> = r
            .files
            .iter()
            .map(|f| (f.path.as_str(), &f.contents[..]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.v1", &b"01010101"[..]),
                ("a.v2", &b"02020202"[..]),
                ("a.v3", &b"03030303"[..]),
                ("a", &b"02020202"[..]),
                ("a.next", &b"03030303"[..]),
            ]
        );
    }

    #[test]
    fn all_without_current_omits_the_base_file() {
        let p = params("- key: a\n  version: all");
        let (req, map) = fetch_request(&p);
        let resp = FetchResponse {
            keys: vec![answer("a", vec![sv(1, 1)], 0)],
        };
        let r = build_response(&p, &map, &resp, req.keys.len()).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].path, "a.v1");
    }

    #[test]
    fn expanded_collisions_and_oversize_are_refused() {
        let e = refusal(
            "- key: a\n  version: all\n- key: b\n  fileName: a.v1",
            vec![
                answer("a", vec![sv(1, 1)], 1),
                answer("b", vec![sv(1, 1)], 1),
            ],
        );
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("a.v1"), "{}", e.message());

        let mut big = sv(1, 1);
        big.material = bytes::Bytes::from(vec![1u8; 600 * 1024]);
        let e = refusal("- key: a\n  format: hex", vec![answer("a", vec![big], 1)]);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("1 MiB"), "{}", e.message());
    }

    #[test]
    fn an_answer_that_does_not_fit_the_request_is_internal() {
        for (objects, keys, needle) in [
            ("- key: a", vec![], "answered 0 keys for 1 requested"),
            (
                "- key: a",
                vec![answer("b", vec![sv(1, 1)], 1)],
                "does not match",
            ),
            ("- key: a", vec![answer("a", vec![], 1)], "does not match"),
            (
                "- key: a\n  format: jwk",
                vec![KeyResult {
                    algorithm: "rot13".into(),
                    ..answer("a", vec![sv(1, 1)], 1)
                }],
                "object \"a\": unknown key algorithm \"rot13\"",
            ),
        ] {
            let e = refusal(objects, keys);
            assert_eq!(e.code(), tonic::Code::Internal, "{}", e.message());
            assert!(e.message().contains(needle), "{}", e.message());
        }
    }

    #[test]
    fn a_file_that_another_object_needs_as_a_directory_is_refused_naming_it() {
        let e = refusal(
            "- key: a\n  fileName: x\n- key: b\n  fileName: x/y",
            vec![
                answer("a", vec![sv(1, 1)], 1),
                answer("b", vec![sv(1, 1)], 1),
            ],
        );
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("object \"a\"") && e.message().contains("x/y"),
            "{}",
            e.message()
        );
    }
}
