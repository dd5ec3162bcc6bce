//! The driver's Mount request as the provider parses it: the `attributes` JSON, `secrets`,
//! `permission` and the `objects` YAML, from arbitrary bytes and from near-valid structured
//! documents (anchors, aliases, nested values, long and control-character strings, too many
//! entries). Properties: a parse that succeeds satisfies every bound; a refusal is a typed
//! error the driver sees as InvalidArgument or Unauthenticated; a valid document round-trips;
//! any anchor or alias is refused as such.

use keyward::keyservice::Selector;
use keyward::keyservice::limits;
use keyward::keyservice::service::check_key_name;
use keyward::provider::MountError;
use keyward::provider::params::{
    self, Format, MAX_OBJECTS, MAX_OBJECTS_BYTES, MountParams, ObjectSpec, ParamError,
    check_file_name, parse_mount, parse_objects,
};
use proptest::prelude::*;
use std::time::SystemTime;

/// Every bound an accepted Mount must satisfy, checked independently of the parser.
fn bounds_hold(p: &MountParams) -> Result<(), TestCaseError> {
    prop_assert!(
        limits::check_namespace(&p.namespace).is_ok(),
        "{:?}",
        p.namespace
    );
    prop_assert!(limits::check_name(&p.pod_name).is_ok());
    prop_assert!(limits::check_name(&p.service_account).is_ok());
    prop_assert!(limits::check_text(&p.pod_uid, limits::MAX_UID).is_ok());
    prop_assert!(!p.token.token.is_empty() && p.token.token.len() <= limits::MAX_TOKEN_BYTES);
    objects_hold(&p.objects)
}

fn objects_hold(objects: &[ObjectSpec]) -> Result<(), TestCaseError> {
    prop_assert!(!objects.is_empty() && objects.len() <= MAX_OBJECTS);
    let mut names = std::collections::HashSet::new();
    for o in objects {
        prop_assert!(check_key_name(&o.key).is_ok(), "{:?}", o.key);
        prop_assert!(check_file_name(&o.file_name).is_ok(), "{:?}", o.file_name);
        prop_assert!(
            names.insert(o.file_name.clone()),
            "duplicate {:?}",
            o.file_name
        );
        prop_assert!(o.mode <= 0o777);
        prop_assert!(!matches!(o.selector, Selector::Number(0)));
    }
    Ok(())
}

/// A refusal of `objects` is a typed error the user fixes (InvalidArgument), with a bounded
/// message.
fn objects_refusal(e: ParamError, input_len: usize) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(msg.len() <= 2 * input_len + 1024, "{} bytes", msg.len());
    let s = tonic::Status::from(MountError::from(e));
    prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
    Ok(())
}

fn check_objects(yaml: &str) -> Result<(), TestCaseError> {
    match parse_objects(yaml, 0o644) {
        Ok(objects) => {
            prop_assert!(yaml.len() <= MAX_OBJECTS_BYTES);
            prop_assert!(
                !yaml.contains(['&', '*']),
                "an anchor or alias was accepted"
            );
            objects_hold(&objects)?;
        }
        Err(e) => {
            if yaml.len() <= MAX_OBJECTS_BYTES && yaml.contains(['&', '*']) {
                prop_assert!(matches!(e, ParamError::ObjectsAnchor { .. }), "{e}");
            }
            objects_refusal(e, yaml.len())?;
        }
    }
    Ok(())
}

/// YAML-ish text: indicators, names, numbers, quotes, newlines and control characters.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just(": ".to_string()),
        Just("key".to_string()),
        Just("version".to_string()),
        Just("format".to_string()),
        Just("fileName".to_string()),
        Just("mode".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(", ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("# c".to_string()),
        Just("---\n".to_string()),
        Just("!!str ".to_string()),
        Just("\t".to_string()),
        Just("\u{0}".to_string()),
        "[a-z0-9.-]{1,12}",
        "[0-9]{1,24}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(token, 0..48).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(crate::config("mount_objects_arbitrary"))]
    #[test]
    fn mount_objects_arbitrary(yaml in prop_oneof![
        "\\PC{0,200}",
        yamlish(),
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        check_objects(&yaml)?;
    }
}

/// One field value of a structured entry: valid, near-valid and hostile.
fn value(valid: &'static [&'static str]) -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        20 => prop::sample::select(valid).prop_map(|s| (s.to_string(), true)),
        1 => Just(("[1, 2]".to_string(), false)),
        1 => Just(("{a: 1}".to_string(), false)),
        1 => Just(("\"a\\nb\"".to_string(), false)),
        1 => (254usize..300).prop_map(|n| ("a".repeat(n), false)),
        1 => Just(("-1".to_string(), false)),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    key: (String, bool),
    version: Option<(String, bool)>,
    format: Option<(String, bool)>,
    mode: Option<(String, bool)>,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        value(&["db", "jwt", "a.b-c", "k9"]),
        prop::option::of(value(&["current", "previous", "all", "3", "\"7\""])),
        prop::option::of(value(&["raw", "hex", "base64", "pem", "jwk"])),
        prop::option::of(value(&["\"0400\"", "\"0644\"", "0600"])),
    )
        .prop_map(|(key, version, format, mode)| Entry {
            key,
            version,
            format,
            mode,
        })
}

fn render(entries: &[Entry]) -> String {
    let mut y = String::new();
    for (i, e) in entries.iter().enumerate() {
        y.push_str(&format!("- key: {}\n  fileName: f{i}\n", e.key.0));
        for (name, v) in [
            ("version", &e.version),
            ("format", &e.format),
            ("mode", &e.mode),
        ] {
            if let Some((v, _)) = v {
                y.push_str(&format!("  {name}: {v}\n"));
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(crate::config("mount_objects_structured"))]
    /// Near-valid documents: when every generated value is valid and the count is within the
    /// cap, the parse must succeed and round-trip; otherwise it must be a typed refusal.
    #[test]
    fn mount_objects_structured(
        entries in prop_oneof![
            8 => prop::collection::vec(entry(), 1..6),
            1 => prop::collection::vec(entry(), 60..70),
        ],
        alias in prop::option::weighted(0.2, (any::<prop::sample::Index>(), prop::sample::select(vec!["&x ", "*x", "<<: *x\n"]))),
    ) {
        let mut yaml = render(&entries);
        let valid = entries.len() <= MAX_OBJECTS
            && entries.iter().all(|e| {
                e.key.1
                    && [&e.version, &e.format, &e.mode]
                        .iter()
                        .all(|v| v.as_ref().is_none_or(|(_, ok)| *ok))
            });
        if let Some((at, a)) = alias {
            // Insert at a char boundary anywhere: refused as an anchor/alias, always.
            let i = yaml.char_indices().map(|(i, _)| i).nth(at.index(yaml.len())).unwrap_or(0);
            yaml.insert_str(i, a);
            let e = parse_objects(&yaml, 0o644).unwrap_err();
            let anchor = matches!(e, ParamError::ObjectsAnchor { .. })
                || (yaml.len() > MAX_OBJECTS_BYTES && matches!(e, ParamError::TooLarge { .. }));
            prop_assert!(anchor, "{e}");
            return Ok(());
        }
        match parse_objects(&yaml, 0o644) {
            Ok(objects) => {
                prop_assert!(valid, "accepted an invalid document:\n{yaml}");
                objects_hold(&objects)?;
                prop_assert_eq!(objects.len(), entries.len());
                for (i, (o, e)) in objects.iter().zip(&entries).enumerate() {
                    prop_assert_eq!(&o.key, &e.key.0);
                    prop_assert_eq!(&o.file_name, &format!("f{i}"));
                    let fmt = e.format.as_ref().map_or("raw", |(f, _)| f.as_str());
                    prop_assert_eq!(o.format, Format::parse(fmt).unwrap());
                    if let Some((m, _)) = &e.mode {
                        prop_assert_eq!(o.mode, params::parse_mode(m.trim_matches('"')).unwrap());
                    } else {
                        prop_assert_eq!(o.mode, 0o644);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!valid, "refused a valid document: {e}\n{yaml}");
                if entries.len() > MAX_OBJECTS && entries.iter().all(|e| e.key.1) {
                    // The count is checked before the entries' fields.
                    let count_or_field = matches!(
                        e,
                        ParamError::TooManyObjects { .. }
                            | ParamError::ObjectsYaml(_)
                            | ParamError::TooLarge { .. }
                    );
                    prop_assert!(count_or_field, "{e}");
                }
                objects_refusal(e, yaml.len())?;
            }
        }
    }
}

/// Attribute maps: the driver's keys with valid, hostile and missing values, extra keys,
/// and sometimes not JSON at all.
fn attributes() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        8 => Just("web-0".to_string()),
        1 => "[a-z0-9.-]{0,300}",
        1 => "\\PC{0,20}",
        1 => Just("web-0\n{\"forged\":1}".to_string()),
    ];
    let objects = prop_oneof![
        4 => Just("- key: db".to_string()),
        1 => yamlish(),
        1 => (1usize..3).prop_map(|k| "- key: db\n".repeat(k * 40)),
    ];
    let token = prop_oneof![
        4 => Just(serde_json::json!({"keyward": {"token": "t", "expirationTimestamp": "2999-01-01T00:00:00Z"}}).to_string()),
        1 => Just(serde_json::json!({"keyward": {"token": "t", "expirationTimestamp": "2001-01-01T00:00:00Z"}}).to_string()),
        1 => Just(serde_json::json!({"keyward": {"token": "t".repeat(17_000)}}).to_string()),
        1 => Just(serde_json::json!({"vault": {"token": "t"}}).to_string()),
        1 => "\\PC{0,40}",
    ];
    let some = 0.9;
    (
        prop::option::weighted(some, name.clone()),
        prop::option::weighted(some, name.clone()),
        prop::option::weighted(some, name),
        prop::option::weighted(some, objects),
        prop::option::weighted(some, token),
        prop::collection::btree_map("[a-z./]{1,12}", "\\PC{0,12}", 0..4),
        prop_oneof![9 => Just(None), 1 => "\\PC{0,80}".prop_map(Some)],
    )
        .prop_map(|(ns, pod, sa, objects, token, extra, raw)| {
            if let Some(raw) = raw {
                return raw;
            }
            let mut m = serde_json::Map::new();
            for (k, v) in extra {
                m.insert(k, v.into());
            }
            for (k, v) in [
                (
                    params::POD_NAMESPACE,
                    ns.map(|n| n.replace("web-0", "team-a")),
                ),
                (params::POD_NAME, pod),
                (params::SA_NAME, sa.map(|n| n.replace("web-0", "web"))),
                (params::OBJECTS, objects),
                (params::SA_TOKENS, token),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v.into());
                }
            }
            serde_json::Value::Object(m).to_string()
        })
}

proptest! {
    #![proptest_config(crate::config("mount_attributes"))]
    #[test]
    fn mount_attributes(
        attrs in attributes(),
        secrets in prop_oneof![Just("null".to_string()), Just(String::new()), "\\PC{0,40}"],
        permission in prop_oneof![Just("420".to_string()), "\\PC{0,8}"],
    ) {
        match parse_mount(&attrs, &secrets, &permission, "keyward", SystemTime::now()) {
            Ok(p) => bounds_hold(&p)?,
            Err(e) => {
                prop_assert!(
                    matches!(e, MountError::Request(_) | MountError::PodToken(_)),
                    "untyped refusal {e:?}"
                );
                let code = tonic::Status::from(e).code();
                prop_assert!(
                    matches!(code, tonic::Code::InvalidArgument | tonic::Code::Unauthenticated),
                    "{code:?}"
                );
            }
        }
    }
}
