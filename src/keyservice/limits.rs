//! Bounds on a key-service request, checked before any of its strings reach a log, the audit
//! trail or the API server. A request comes from the network: without these, one caller could
//! send megabytes of pod name (tonic accepts 4 MiB by default) and have them copied into every
//! record, or a newline that forges a line in the stdout audit stream.
//!
//! The limits are Kubernetes' own (a namespace is a DNS label of at most 63 characters, pod,
//! service-account and ManagedKey names are DNS subdomains of at most 253), so no real pod is
//! refused by them.

use crate::proto::keyservice::FetchRequest;

/// Largest Fetch the key service decodes (tonic `max_decoding_message_size`). A legitimate
/// request is a token (a few KiB) plus at most [`MAX_KEYS_PER_MOUNT`] names of 253 bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most keys one Fetch (one Mount) may ask for. Documented in docs/provider.md.
pub const MAX_KEYS_PER_MOUNT: usize = 64;
/// Most ManagedKey lookups one Fetch runs at the same time.
pub const MAX_CONCURRENT_LOOKUPS: usize = 8;
/// Most ManagedKey lookups the whole key service runs at the same time, across requests.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 64;
/// Largest pod token accepted (service-account JWTs are one to two KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest namespace (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// Longest pod, service-account or ManagedKey name (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Longest pod UID (a UUID is 36 characters).
pub const MAX_UID: usize = 128;
/// Longest `pod_token_expiration` (an RFC 3339 timestamp is about 30).
pub const MAX_TIMESTAMP: usize = 64;

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// Above the field's limit.
    #[error("is {len} bytes, above the limit of {max}")]
    TooLong {
        /// Length sent.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character (newline, NUL, escape...): never part of a Kubernetes name.
    #[error("contains the control character U+{code:04X} at byte {at}")]
    Control {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// A required field is empty.
    #[error("is empty")]
    Empty,
    /// Not the Kubernetes name syntax (lowercase letters, digits, '-' and, for subdomains,
    /// '.'; starting and ending with a letter or digit).
    #[error("is not a {0}")]
    Syntax(&'static str),
}

/// A Fetch refused before authentication of the pod: the field, what is wrong, and the fix.
/// The message never repeats the offending value (it may be huge or hold control characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// One string field is out of bounds.
    #[error(
        "request field {field} {problem}; the provider must send the pod's Kubernetes identity ({hint})"
    )]
    Field {
        /// The protobuf field name.
        field: &'static str,
        /// What is wrong.
        problem: FieldProblem,
        /// What a valid value looks like.
        hint: &'static str,
    },
    /// Too many keys in one request.
    #[error(
        "request asks for {count} keys, above the limit of {MAX_KEYS_PER_MOUNT} per mount; split the objects over several SecretProviderClasses"
    )]
    TooManyKeys {
        /// Keys asked for.
        count: usize,
    },
}

impl RequestError {
    /// The field at fault (`keys` for the count).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Field { field, .. } => field,
            Self::TooManyKeys { .. } => "keys",
        }
    }
}

/// The first control character of `s`, as (code point, byte offset).
pub fn first_control(s: &str) -> Option<(u32, usize)> {
    s.char_indices()
        .find(|(_, c)| c.is_control())
        .map(|(i, c)| (c as u32, i))
}

/// Length and control characters; `max` in bytes.
pub fn check_text(s: &str, max: usize) -> Result<(), FieldProblem> {
    if s.len() > max {
        return Err(FieldProblem::TooLong { len: s.len(), max });
    }
    if let Some((code, at)) = first_control(s) {
        return Err(FieldProblem::Control { code, at });
    }
    Ok(())
}

fn dns_chars(s: &str, dots: bool) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A namespace: DNS label, at most 63 bytes.
pub fn check_namespace(s: &str) -> Result<(), FieldProblem> {
    check_text(s, MAX_NAMESPACE)?;
    if s.is_empty() {
        return Err(FieldProblem::Empty);
    }
    if !dns_chars(s, false) {
        return Err(FieldProblem::Syntax("DNS label"));
    }
    Ok(())
}

/// A pod or service-account name: DNS subdomain, at most 253 bytes.
pub fn check_name(s: &str) -> Result<(), FieldProblem> {
    check_text(s, MAX_NAME)?;
    if s.is_empty() {
        return Err(FieldProblem::Empty);
    }
    if !dns_chars(s, true) {
        return Err(FieldProblem::Syntax("DNS subdomain"));
    }
    Ok(())
}

/// Check every string field and the key count of `req`. Pure and cheap: it runs on every
/// request before anything is logged or sent to the API server.
pub fn check_request(req: &FetchRequest) -> Result<(), RequestError> {
    let field = |field: &'static str, hint: &'static str| {
        move |problem| RequestError::Field {
            field,
            problem,
            hint,
        }
    };
    check_text(&req.pod_token, MAX_TOKEN_BYTES).map_err(field(
        "pod_token",
        "a service-account token of at most 16 KiB",
    ))?;
    check_namespace(&req.pod_namespace).map_err(field(
        "pod_namespace",
        "a DNS label of at most 63 characters",
    ))?;
    // Pod name and UID are optional claims (checked against a bound token when present).
    if !req.pod_name.is_empty() {
        check_name(&req.pod_name).map_err(field(
            "pod_name",
            "a DNS subdomain of at most 253 characters",
        ))?;
    }
    check_text(&req.pod_uid, MAX_UID).map_err(field("pod_uid", "a UUID"))?;
    check_name(&req.service_account).map_err(field(
        "service_account",
        "a DNS subdomain of at most 253 characters",
    ))?;
    check_text(&req.pod_token_expiration, MAX_TIMESTAMP)
        .map_err(field("pod_token_expiration", "an RFC 3339 timestamp"))?;
    if req.keys.len() > MAX_KEYS_PER_MOUNT {
        return Err(RequestError::TooManyKeys {
            count: req.keys.len(),
        });
    }
    for k in &req.keys {
        // Names themselves are checked (and refused naming the fix) by `check_key_name`;
        // here only what must never reach a log.
        check_text(&k.key, MAX_NAME).map_err(field(
            "keys.key",
            "ManagedKey names of at most 253 characters",
        ))?;
    }
    Ok(())
}

/// `s` for a log line: at most `max` characters, control characters and quotes escaped, and
/// the original length when cut. For refusals before authentication, where nothing else of
/// the request is trusted.
pub fn preview(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_default).collect();
    if s.chars().nth(max).is_some() {
        out.push_str(&format!("...({} bytes)", s.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keyservice::KeyRequest;

    fn ok() -> FetchRequest {
        FetchRequest {
            pod_token: "t".into(),
            pod_namespace: "team-a".into(),
            pod_name: "web-0".into(),
            pod_uid: "0b8a4f6e-1f0c-4f3e-9d7e-2a4c8b1d9e00".into(),
            service_account: "web".into(),
            keys: vec![KeyRequest {
                key: "db".into(),
                selector: None,
            }],
            pod_token_expiration: "2030-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_real_request_passes_and_limits_are_kubernetes_ones() {
        check_request(&ok()).unwrap();
        let mut r = ok();
        r.pod_namespace = "a".repeat(63);
        r.pod_name = format!("{}.b", "a".repeat(251));
        r.service_account = "a".repeat(253);
        check_request(&r).unwrap();
        r.pod_name = String::new();
        check_request(&r).unwrap();
    }

    #[test]
    fn a_newline_in_a_pod_name_is_refused_naming_the_field() {
        let mut r = ok();
        r.pod_name = "web-0\n{\"forged\":true}".into();
        let e = check_request(&r).unwrap_err();
        assert_eq!(e.field(), "pod_name");
        assert_eq!(
            e,
            RequestError::Field {
                field: "pod_name",
                problem: FieldProblem::Control { code: 10, at: 5 },
                hint: "a DNS subdomain of at most 253 characters",
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("pod_name contains the control character U+000A at byte 5"));
        assert!(!msg.contains("forged") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn every_field_is_bounded() {
        let big = "a".repeat(1 << 20);
        type Edit<'a> = Box<dyn Fn(&mut FetchRequest) + 'a>;
        let cases: Vec<(&str, Edit)> = vec![
            ("pod_token", Box::new(|r| r.pod_token = big.clone())),
            (
                "pod_namespace",
                Box::new(|r| r.pod_namespace = "a".repeat(64)),
            ),
            ("pod_name", Box::new(|r| r.pod_name = "a".repeat(254))),
            ("pod_uid", Box::new(|r| r.pod_uid = "a".repeat(129))),
            (
                "service_account",
                Box::new(|r| r.service_account = big.clone()),
            ),
            (
                "pod_token_expiration",
                Box::new(|r| r.pod_token_expiration = "1".repeat(65)),
            ),
            ("keys.key", Box::new(|r| r.keys[0].key = "a".repeat(254))),
        ];
        for (field, f) in cases {
            let mut r = ok();
            f(&mut r);
            let e = check_request(&r).unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(matches!(
                e,
                RequestError::Field {
                    problem: FieldProblem::TooLong { .. },
                    ..
                }
            ));
            assert!(e.to_string().len() < 300, "{e}");
        }
    }

    #[test]
    fn names_must_be_kubernetes_names() {
        for (f, v, problem) in [
            ("pod_namespace", "", FieldProblem::Empty),
            ("pod_namespace", "Team", FieldProblem::Syntax("DNS label")),
            ("pod_namespace", "a.b", FieldProblem::Syntax("DNS label")),
            ("service_account", "", FieldProblem::Empty),
            (
                "service_account",
                "-x",
                FieldProblem::Syntax("DNS subdomain"),
            ),
            ("pod_name", "a b", FieldProblem::Syntax("DNS subdomain")),
        ] {
            let mut r = ok();
            match f {
                "pod_namespace" => r.pod_namespace = v.into(),
                "service_account" => r.service_account = v.into(),
                _ => r.pod_name = v.into(),
            }
            match check_request(&r).unwrap_err() {
                RequestError::Field {
                    field, problem: p, ..
                } => assert_eq!((field, p), (f, problem), "{v:?}"),
                e => panic!("{e}"),
            }
        }
        let mut r = ok();
        r.pod_uid = "uid\u{1b}[2J".into();
        assert_eq!(check_request(&r).unwrap_err().field(), "pod_uid");
    }

    #[test]
    fn more_keys_than_the_cap_are_refused() {
        let mut r = ok();
        r.keys = (0..MAX_KEYS_PER_MOUNT)
            .map(|i| KeyRequest {
                key: format!("k{i}"),
                selector: None,
            })
            .collect();
        check_request(&r).unwrap();
        r.keys.push(KeyRequest {
            key: "one-more".into(),
            selector: None,
        });
        let e = check_request(&r).unwrap_err();
        assert_eq!(e, RequestError::TooManyKeys { count: 65 });
        assert!(e.to_string().contains("limit of 64 per mount"), "{e}");
    }

    #[test]
    fn preview_is_bounded_and_escaped() {
        assert_eq!(preview("web-0", 64), "web-0");
        assert_eq!(preview("a\nb\"", 64), "a\\nb\\\"");
        let p = preview(&"x".repeat(1 << 20), 8);
        assert_eq!(p, "xxxxxxxx...(1048576 bytes)");
    }
}
