//! Parsing the driver's Mount request: attributes, the `objects` parameter, tokens and modes.
//! Parameters choose *what* to mount; they never grant access (the key service decides from
//! the verified pod token).

use super::error::MountError;
use crate::keyservice::Selector;
use crate::keyservice::limits::{self, FieldProblem};
use crate::keyservice::service::{KeyNameError, check_key_name};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

/// Driver keys in `attributes`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Pod namespace.
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Pod UID.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// Pod service account.
pub const SA_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
/// Token map `{audience: {token, expirationTimestamp}}`.
pub const SA_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// Our parameter listing what to mount.
pub const OBJECTS: &str = "objects";

/// Default file mode when the driver sends none (0644, the driver's own default).
pub const DEFAULT_MODE: u32 = 0o644;

/// Largest `attributes` JSON accepted: the SecretProviderClass parameters, the pod's volume
/// attributes and the driver's pod info and tokens (a few KiB in practice).
pub const MAX_ATTRIBUTES_BYTES: usize = 128 * 1024;
/// Largest `secrets` JSON accepted (the nodePublishSecretRef data, or tokens on Kubernetes
/// >= 1.35).
pub const MAX_SECRETS_BYTES: usize = 64 * 1024;
/// Largest `objects` parameter accepted (64 objects of every field at full length fit).
pub const MAX_OBJECTS_BYTES: usize = 32 * 1024;
/// Most objects one Mount may list: the key service's cap on keys per request
/// ([`limits::MAX_KEYS_PER_MOUNT`]), so every accepted Mount fits one Fetch.
pub const MAX_OBJECTS: usize = limits::MAX_KEYS_PER_MOUNT;

/// A malformed Mount request: the user fixes the SecretProviderClass or the CSIDriver. Every
/// message names the parameter or object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// `attributes` is not the driver's JSON.
    #[error("attributes are not a JSON object of strings: {0}")]
    Attributes(#[source] serde_json::Error),
    /// `secrets` is not the driver's JSON.
    #[error("secrets are neither null nor a JSON object of strings: {0}")]
    Secrets(#[source] serde_json::Error),
    /// A pod-info attribute is missing.
    #[error(
        "attribute {0} is missing; set `podInfoOnMount: true` on the CSIDriver secrets-store.csi.k8s.io"
    )]
    MissingAttribute(&'static str),
    /// The token map is not the driver's JSON.
    #[error("{SA_TOKENS} in {from} is not the driver's token map JSON: {source}")]
    TokenMap {
        /// `attributes` or `secrets`.
        from: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// `permission` is not a file mode.
    #[error("permission {0:?} is not a file mode (JSON decimal 0-511, e.g. \"420\" for 0644)")]
    Permission(String),
    /// No `objects` parameter.
    #[error(
        "parameter `objects` is missing; list the keys to mount in the SecretProviderClass parameters"
    )]
    MissingObjects,
    /// `objects` is not YAML of the expected shape.
    #[error(
        "parameter `objects` is not a valid YAML list of {{key, version, format, fileName, mode}}: {0}"
    )]
    ObjectsYaml(#[source] serde_yaml_ng::Error),
    /// `objects` is empty.
    #[error("parameter `objects` lists no object; add at least one entry such as `- key: my-key`")]
    NoObjects,
    /// A field of the request is larger than the provider accepts.
    #[error("{what} is {len} bytes, above the provider's limit of {max}; {fix}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
        /// What the user changes.
        fix: &'static str,
    },
    /// `objects` uses a YAML anchor or alias: an alias re-expands the node it names, so a few
    /// KiB can become gigabytes (billion laughs). Refused before the YAML is parsed.
    #[error(
        "parameter `objects` contains {ch:?} at line {line}, column {column}: YAML anchors (&) and aliases (*) are not accepted (an alias can expand a small SecretProviderClass into gigabytes); write each object out in full and keep '&' and '*' out of comments"
    )]
    ObjectsAnchor {
        /// `&` or `*`.
        ch: char,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
    },
    /// More objects than one Mount may carry.
    #[error(
        "parameter `objects` lists {count} objects, above the limit of {MAX_OBJECTS} per mount; split them over several SecretProviderClasses and volumes"
    )]
    TooManyObjects {
        /// Objects listed.
        count: usize,
    },
    /// A pod-info attribute is not a Kubernetes name (too long, control characters...).
    #[error("attribute {attribute} {problem}; it must be the pod's Kubernetes {expected}")]
    PodAttribute {
        /// The attribute.
        attribute: &'static str,
        /// What is wrong (never the value itself).
        problem: FieldProblem,
        /// What a valid value is.
        expected: &'static str,
    },
    /// An entry without `key`.
    #[error("objects[{0}]: `key` (a ManagedKey name) is required")]
    MissingKey(usize),
    /// An entry whose `key` is neither a ManagedKey name nor `namespace/name`.
    #[error("objects[{index}]: {source}")]
    KeyName {
        /// Position in `objects`.
        index: usize,
        /// What is wrong with the name.
        source: KeyNameError,
    },
    /// Another field of an entry is wrong.
    #[error("object {key:?}: {source}")]
    Object {
        /// The entry's `key`.
        key: String,
        /// What is wrong.
        source: ObjectError,
    },
}

/// A missing or expired pod token: the CSIDriver's token set-up or kubelet must be fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token for our audience in attributes or secrets.
    #[error(
        "no service-account token for audience {audience:?} in the mount request; add `tokenRequests: [{{audience: {audience}}}]` to the CSIDriver secrets-store.csi.k8s.io"
    )]
    Missing {
        /// The audience looked for.
        audience: String,
    },
    /// The driver's own expiry timestamp has passed.
    #[error(
        "the pod's service-account token for audience {audience:?} expired at {at}; the driver must send a fresh one (check kubelet and the CSIDriver's requiresRepublish)"
    )]
    Expired {
        /// The audience.
        audience: String,
        /// The driver's expirationTimestamp, as sent.
        at: String,
    },
}

/// What is wrong with one field of an `objects` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// `format`.
    #[error(transparent)]
    Format(#[from] UnknownFormat),
    /// `version`.
    #[error("version {0} is not current, previous, all or a version number")]
    Version(String),
    /// `fileName`.
    #[error(transparent)]
    FileName(#[from] FileNameError),
    /// `mode`.
    #[error(transparent)]
    Mode(#[from] ModeError),
}

/// A `format` value that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}; use raw, base64, hex, pem, public-pem, jwk, public-jwk or jwks")]
pub struct UnknownFormat(pub String);

/// A `mode` value that is not a file mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    /// Not octal digits.
    #[error("mode {0:?} is not an octal file mode like \"0400\"")]
    NotOctal(String),
    /// Above 0777.
    #[error("mode {0:?} is above 0777")]
    TooLarge(String),
    /// A YAML number or other non-string (`400` would silently be decimal).
    #[error("mode must be a quoted octal string like \"0400\", got {0}")]
    NotAString(String),
}

/// A `fileName` the driver would refuse or that is not portable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// The driver's writer refuses the path (see [`super::paths`]).
    #[error("fileName {name:?} {problem}")]
    Path {
        /// The name.
        name: String,
        /// Why the driver refuses it.
        problem: String,
    },
    /// Longer than a Kubernetes name.
    #[error("fileName {0:?} is longer than 253 characters")]
    TooLong(String),
    /// Characters outside `[A-Za-z0-9._-/]`.
    #[error(
        "fileName {0:?} may only contain letters, digits, '.', '_', '-' and '/' between non-empty parts"
    )]
    Characters(String),
    /// Two objects write the same file.
    #[error("fileName {0:?} is used twice; give each object its own fileName")]
    Duplicate(String),
}

/// How a version's material is written to a file. New formats (pem, jwk, jwks) are added
/// here and in [`super::format::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The key bytes as they are.
    Raw,
    /// Standard base64 with padding, no newline.
    Base64,
    /// Lowercase hex, no newline.
    Hex,
    /// PKCS#8 PEM private key (asymmetric algorithms).
    Pem,
    /// SPKI PEM public key.
    PublicPem,
    /// JWK with private members (kid = stable id of key + version).
    Jwk,
    /// JWK with public members only.
    PublicJwk,
    /// JWKS with the public keys of the current and still-valid previous versions.
    Jwks,
}

impl Format {
    /// Formats that carry no private material (the only ones a public-only grant can mount).
    pub fn is_public(self) -> bool {
        matches!(self, Self::PublicPem | Self::PublicJwk | Self::Jwks)
    }

    /// Parse a `format` value.
    pub fn parse(s: &str) -> Result<Self, UnknownFormat> {
        match s {
            "raw" => Ok(Self::Raw),
            "base64" => Ok(Self::Base64),
            "hex" => Ok(Self::Hex),
            "pem" => Ok(Self::Pem),
            "public-pem" => Ok(Self::PublicPem),
            "jwk" => Ok(Self::Jwk),
            "public-jwk" => Ok(Self::PublicJwk),
            "jwks" => Ok(Self::Jwks),
            other => Err(UnknownFormat(other.into())),
        }
    }
}

/// One entry of the `objects` parameter, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// ManagedKey name in the pod's namespace.
    pub key: String,
    /// Which versions.
    pub selector: Selector,
    /// Output encoding.
    pub format: Format,
    /// File name (relative path).
    pub file_name: String,
    /// File mode.
    pub mode: u32,
}

/// The pod's token for our audience.
#[derive(Clone, PartialEq, Eq)]
pub struct PodToken {
    /// The token.
    pub token: String,
    /// The driver's expirationTimestamp, if it parsed.
    pub expires: Option<SystemTime>,
    /// As sent, for the key service's cache bound.
    pub expiration_raw: String,
}

impl std::fmt::Debug for PodToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodToken")
            .field("token", &"[redacted]")
            .field("expires", &self.expiration_raw)
            .finish()
    }
}

/// A parsed Mount request.
#[derive(Debug, Clone)]
pub struct MountParams {
    /// Pod namespace (claimed by the driver; the key service checks it against the token).
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Service account name.
    pub service_account: String,
    /// The pod's token.
    pub token: PodToken,
    /// What to mount, in order.
    pub objects: Vec<ObjectSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObject {
    key: Option<String>,
    #[serde(default)]
    version: Option<Scalar>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    mode: Option<Scalar>,
}

/// A YAML scalar, the only value an `objects` field takes. A list or map is refused at its
/// first event, so no field can hold (or expand into) a structure.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number (not a list or a map)")
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(n.into()))
            }
            fn visit_i128<E>(self, n: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(n))
            }
            fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<Scalar, E> {
                i128::try_from(n)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number out of range"))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(x))
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.into()))
            }
            fn visit_string<E>(self, s: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(s))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenEntry {
    token: String,
    #[serde(default)]
    expiration_timestamp: String,
}

/// Parse the driver's `permission` field: JSON of a decimal mode, e.g. `420` or `"420"`.
pub fn parse_permission(s: &str) -> Result<u32, ParamError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(DEFAULT_MODE);
    }
    let n = match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Number(n)) => n.as_u64(),
        Ok(serde_json::Value::String(t)) => t.trim().parse::<u64>().ok(),
        _ => None,
    };
    n.filter(|n| *n <= 0o777)
        .map(|n| n as u32)
        .ok_or_else(|| ParamError::Permission(s.into()))
}

/// Parse an octal mode string such as `"0400"`.
pub fn parse_mode(s: &str) -> Result<u32, ModeError> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ModeError::NotOctal(s.into()));
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| ModeError::TooLarge(s.into()))
}

/// Check a file name: what the driver's writer accepts (see [`super::paths`]), and components
/// of `[A-Za-z0-9._-]` so names stay portable and printable.
pub fn check_file_name(name: &str) -> Result<(), FileNameError> {
    if let Some(problem) = super::paths::path_problem(name) {
        return Err(FileNameError::Path {
            name: name.into(),
            problem,
        });
    }
    if name.len() > 253 {
        return Err(FileNameError::TooLong(name.into()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'/')
    {
        return Err(FileNameError::Characters(name.into()));
    }
    Ok(())
}

fn parse_selector(v: &Option<Scalar>) -> Result<Selector, ObjectError> {
    let bad = ObjectError::Version;
    match v {
        None | Some(Scalar::Null) => Ok(Selector::Current),
        Some(Scalar::Str(s)) => match s.as_str() {
            "current" | "" => Ok(Selector::Current),
            "previous" => Ok(Selector::Previous),
            "all" => Ok(Selector::All),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Selector::Number)
                .ok_or_else(|| bad(format!("{n:?}"))),
        },
        Some(Scalar::Int(n)) => u32::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .map(Selector::Number)
            .ok_or_else(|| bad(n.to_string())),
        Some(other) => Err(bad(other.to_string())),
    }
}

/// Refuse YAML anchors and aliases before parsing. Every node that is an anchor or alias
/// starts with a literal `&` or `*`, and no valid `objects` value contains either character
/// (key and file names, formats, versions and modes cannot), so a plain scan is exact: it
/// never lets an alias through, and only refuses values that would be refused anyway (or a
/// comment holding one of the two characters, which the message says).
pub fn check_no_anchors(yaml: &str) -> Result<(), ParamError> {
    for (i, line) in yaml.split('\n').enumerate() {
        if let Some((at, ch)) = line.char_indices().find(|(_, c)| matches!(c, '&' | '*')) {
            return Err(ParamError::ObjectsAnchor {
                ch,
                line: i + 1,
                column: line[..at].chars().count() + 1,
            });
        }
    }
    Ok(())
}

/// Parse the `objects` YAML list. Bounded before parsing: at most [`MAX_OBJECTS_BYTES`], no
/// anchors or aliases, scalar fields only; then at most [`MAX_OBJECTS`] entries. Memory and
/// time are linear in the (capped) input.
pub fn parse_objects(yaml: &str, default_mode: u32) -> Result<Vec<ObjectSpec>, ParamError> {
    if yaml.len() > MAX_OBJECTS_BYTES {
        return Err(ParamError::TooLarge {
            what: "parameter `objects`",
            len: yaml.len(),
            max: MAX_OBJECTS_BYTES,
            fix: "list fewer objects or split them over several SecretProviderClasses",
        });
    }
    check_no_anchors(yaml)?;
    let raw: Vec<RawObject> = serde_yaml_ng::from_str::<Option<Vec<RawObject>>>(yaml)
        .map_err(ParamError::ObjectsYaml)?
        .unwrap_or_default();
    if raw.is_empty() {
        return Err(ParamError::NoObjects);
    }
    if raw.len() > MAX_OBJECTS {
        return Err(ParamError::TooManyObjects { count: raw.len() });
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (index, r) in raw.into_iter().enumerate() {
        let key = r
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(ParamError::MissingKey(index))?;
        check_key_name(&key).map_err(|source| ParamError::KeyName { index, source })?;
        let spec = object_spec(r, key.clone(), default_mode, &mut names)
            .map_err(|source| ParamError::Object { key, source })?;
        out.push(spec);
    }
    Ok(out)
}

/// One validated entry; `names` holds the file names of the entries before it.
fn object_spec(
    r: RawObject,
    key: String,
    default_mode: u32,
    names: &mut HashSet<String>,
) -> Result<ObjectSpec, ObjectError> {
    let format = Format::parse(r.format.as_deref().unwrap_or("raw"))?;
    // A JWKS holds every version verifiers must accept: current plus previous in grace.
    let selector = if format == Format::Jwks && r.version.is_none() {
        Selector::All
    } else {
        parse_selector(&r.version)?
    };
    let file_name = r.file_name.unwrap_or_else(|| key.clone());
    check_file_name(&file_name)?;
    let mode = match &r.mode {
        None | Some(Scalar::Null) => default_mode,
        Some(Scalar::Str(s)) => parse_mode(s)?,
        Some(other) => return Err(ModeError::NotAString(other.to_string()).into()),
    };
    if !names.insert(file_name.clone()) {
        return Err(FileNameError::Duplicate(file_name).into());
    }
    Ok(ObjectSpec {
        key,
        selector,
        format,
        file_name,
        mode,
    })
}

fn parse_token_map(
    json: &str,
    audience: &str,
    from: &'static str,
) -> Result<Option<PodToken>, ParamError> {
    let m: BTreeMap<String, TokenEntry> =
        serde_json::from_str(json).map_err(|source| ParamError::TokenMap { from, source })?;
    Ok(m.get(audience).map(|t| PodToken {
        token: t.token.clone(),
        expires: t
            .expiration_timestamp
            .parse::<jiff::Timestamp>()
            .ok()
            .map(SystemTime::from),
        expiration_raw: t.expiration_timestamp.clone(),
    }))
}

/// Parse a whole Mount request. `audience` selects the token; `now` checks its expiry.
pub fn parse_mount(
    attributes: &str,
    secrets: &str,
    permission: &str,
    audience: &str,
    now: SystemTime,
) -> Result<MountParams, MountError> {
    for (what, text, max, fix) in [
        (
            "attributes (SecretProviderClass parameters and volume attributes)",
            attributes,
            MAX_ATTRIBUTES_BYTES,
            "shorten the SecretProviderClass parameters or the volume's volumeAttributes",
        ),
        (
            "secrets (the volume's nodePublishSecretRef data)",
            secrets,
            MAX_SECRETS_BYTES,
            "point nodePublishSecretRef at a smaller Secret",
        ),
    ] {
        if text.len() > max {
            return Err(ParamError::TooLarge {
                what,
                len: text.len(),
                max,
                fix,
            }
            .into());
        }
    }
    let attrs: BTreeMap<String, String> =
        serde_json::from_str(attributes).map_err(ParamError::Attributes)?;
    // The driver sends `json.Marshal` of the CSI secrets map (v1.6.0 `nodeserver.go`
    // `NodePublishVolume`): the text `null` when the volume has no nodePublishSecretRef and no
    // tokens ride in secrets (a nil Go map), the normal case; an object otherwise.
    let secrets: BTreeMap<String, String> = match secrets.trim() {
        "" | "null" | "{}" => BTreeMap::new(),
        text => serde_json::from_str::<Option<BTreeMap<String, String>>>(text)
            .map_err(ParamError::Secrets)?
            .unwrap_or_default(),
    };
    let need = |k: &'static str| -> Result<String, ParamError> {
        attrs
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or(ParamError::MissingAttribute(k))
    };
    let namespace = need(POD_NAMESPACE)?;
    let pod_name = need(POD_NAME)?;
    let pod_uid = attrs.get(POD_UID).cloned().unwrap_or_default();
    let service_account = need(SA_NAME)?;
    // The same bounds the key service enforces, refused here with the attribute's name.
    let pod_attr = |attribute, expected| {
        move |problem| ParamError::PodAttribute {
            attribute,
            problem,
            expected,
        }
    };
    limits::check_namespace(&namespace)
        .map_err(pod_attr(POD_NAMESPACE, "namespace (a DNS label)"))?;
    limits::check_name(&pod_name).map_err(pod_attr(POD_NAME, "name (a DNS subdomain)"))?;
    limits::check_text(&pod_uid, limits::MAX_UID).map_err(pod_attr(POD_UID, "UID"))?;
    limits::check_name(&service_account)
        .map_err(pod_attr(SA_NAME, "service account name (a DNS subdomain)"))?;
    let default_mode = parse_permission(permission)?;
    let objects_yaml = attrs.get(OBJECTS).ok_or(ParamError::MissingObjects)?;
    let objects = parse_objects(objects_yaml, default_mode)?;
    // The token may come in attributes or (Kubernetes >= 1.35) in secrets.
    let mut token = None;
    for (src, map) in [("attributes", &attrs), ("secrets", &secrets)] {
        if let Some(j) = map.get(SA_TOKENS).filter(|j| !j.trim().is_empty())
            && let Some(t) = parse_token_map(j, audience, src)?
        {
            token = Some(t);
            break;
        }
    }
    let token = token
        .filter(|t| !t.token.is_empty())
        .ok_or_else(|| TokenError::Missing {
            audience: audience.into(),
        })?;
    limits::check_text(&token.token, limits::MAX_TOKEN_BYTES)
        .map_err(pod_attr(SA_TOKENS, "service-account token"))?;
    limits::check_text(&token.expiration_raw, limits::MAX_TIMESTAMP)
        .map_err(pod_attr(SA_TOKENS, "token expirationTimestamp (RFC 3339)"))?;
    if let Some(exp) = token.expires
        && exp <= now
    {
        return Err(TokenError::Expired {
            audience: audience.into(),
            at: token.expiration_raw,
        }
        .into());
    }
    Ok(MountParams {
        namespace,
        pod_name,
        pod_uid,
        service_account,
        token,
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn attrs(objects: &str, tokens: Option<&str>) -> String {
        let mut m = serde_json::json!({
            POD_NAME: "web-0",
            POD_NAMESPACE: "team-a",
            POD_UID: "uid-1",
            SA_NAME: "web",
            "secretProviderClass": "spc",
            OBJECTS: objects,
        });
        if let Some(t) = tokens {
            m[SA_TOKENS] = t.into();
        }
        m.to_string()
    }

    fn tok(exp: &str) -> String {
        serde_json::json!({"keyward": {"token": "tkn", "expirationTimestamp": exp}}).to_string()
    }

    const FUTURE: &str = "2999-01-01T00:00:00Z";

    #[test]
    fn full_request_parses_with_defaults() {
        let y = "- key: db\n- key: jwt\n  version: all\n  format: base64\n  fileName: sign/jwt.key\n  mode: \"0400\"\n- key: db\n  version: 3\n  fileName: db.v3\n- key: db\n  version: previous\n  format: hex\n  fileName: db.prev\n";
        let p = parse_mount(
            &attrs(y, Some(&tok(FUTURE))),
            "",
            "420",
            "keyward",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(
            (
                p.namespace.as_str(),
                p.pod_name.as_str(),
                p.pod_uid.as_str(),
                p.service_account.as_str()
            ),
            ("team-a", "web-0", "uid-1", "web")
        );
        assert_eq!(p.token.token, "tkn");
        assert_eq!(
            p.objects[0],
            ObjectSpec {
                key: "db".into(),
                selector: Selector::Current,
                format: Format::Raw,
                file_name: "db".into(),
                mode: 0o644
            }
        );
        assert_eq!(p.objects[1].selector, Selector::All);
        assert_eq!(p.objects[1].format, Format::Base64);
        assert_eq!(p.objects[1].file_name, "sign/jwt.key");
        assert_eq!(p.objects[1].mode, 0o400);
        assert_eq!(p.objects[2].selector, Selector::Number(3));
        assert_eq!(p.objects[3].selector, Selector::Previous);
        assert_eq!(p.objects[3].format, Format::Hex);
        assert!(!format!("{p:?}").contains("tkn"));
    }

    /// The driver's `secrets` forms (v1.6.0 `nodeserver.go` `NodePublishVolume` marshals the
    /// CSI secrets map): `null` with no nodePublishSecretRef (the normal case), an object of
    /// the Secret's data with one. Only a non-object is refused.
    #[test]
    fn secrets_as_the_driver_sends_them() {
        let now = SystemTime::now();
        let a = attrs("- key: db", Some(&tok(FUTURE)));
        for ok in [
            "null",
            " null ",
            "{}",
            "",
            r#"{"username":"u","password":"p"}"#,
        ] {
            let p = parse_mount(&a, ok, "420", "keyward", now)
                .unwrap_or_else(|e| panic!("secrets {ok:?} refused: {e}"));
            assert_eq!(p.token.token, "tkn");
        }
        for bad in ["[]", "\"x\"", "{\"a\": 1}", "nul"] {
            let e = parse_mount(&a, bad, "420", "keyward", now).unwrap_err();
            assert!(
                matches!(e, MountError::Request(ParamError::Secrets(_)))
                    && e.to_string().contains("neither null nor a JSON object"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn token_in_secrets_is_accepted() {
        let secrets = serde_json::json!({SA_TOKENS: tok(FUTURE)}).to_string();
        let p = parse_mount(
            &attrs("- key: db", None),
            &secrets,
            "",
            "keyward",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(p.token.token, "tkn");
        assert_eq!(p.objects[0].mode, DEFAULT_MODE);
    }

    #[test]
    fn missing_wrong_audience_or_expired_token_is_unauthenticated() {
        let now = SystemTime::now();
        let e = parse_mount(&attrs("- key: db", None), "", "420", "keyward", now).unwrap_err();
        assert!(
            matches!(e, MountError::PodToken(TokenError::Missing { .. }))
                && e.to_string().contains("tokenRequests"),
            "{e}"
        );
        let other =
            serde_json::json!({"vault": {"token": "x", "expirationTimestamp": FUTURE}}).to_string();
        let e =
            parse_mount(&attrs("- key: db", Some(&other)), "", "420", "keyward", now).unwrap_err();
        assert!(matches!(
            e,
            MountError::PodToken(TokenError::Missing { .. })
        ));
        let e = parse_mount(
            &attrs("- key: db", Some(&tok("2001-01-01T00:00:00Z"))),
            "",
            "420",
            "keyward",
            now,
        )
        .unwrap_err();
        assert!(
            matches!(e, MountError::PodToken(TokenError::Expired { .. }))
                && e.to_string().contains("expired"),
            "{e}"
        );
        let soon = jiff::Timestamp::try_from(now + Duration::from_secs(5))
            .unwrap()
            .to_string();
        assert!(
            parse_mount(
                &attrs("- key: db", Some(&tok(&soon))),
                "",
                "420",
                "keyward",
                now
            )
            .is_ok()
        );
    }

    #[test]
    fn permission_parsing() {
        assert_eq!(parse_permission("420").unwrap(), 0o644);
        assert_eq!(parse_permission("\"256\"").unwrap(), 0o400);
        assert_eq!(parse_permission("").unwrap(), 0o644);
        assert!(parse_permission("512").is_err());
        assert!(parse_permission("-1").is_err());
        assert!(parse_permission("rw").is_err());
    }

    #[test]
    fn mode_parsing() {
        assert_eq!(parse_mode("0400").unwrap(), 0o400);
        assert_eq!(parse_mode("440").unwrap(), 0o440);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("").is_err());
        // Unquoted leading-zero values arrive as strings and are octal.
        assert_eq!(
            parse_objects("- key: a\n  mode: 0400\n", 0o644).unwrap()[0].mode,
            0o400
        );
        let e = parse_objects("- key: a\n  mode: 400\n", 0o644).unwrap_err();
        assert!(e.to_string().contains("quoted octal"), "{e}");
    }

    #[test]
    fn file_name_rules() {
        for ok in ["db", "db.key", "dir/db.key", "a_b-c.v1"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "sp ace",
            "a\\b",
            "..",
            "..hidden",
            "dir/..data",
            ".",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_bad_objects_value_is_invalid_argument_naming_the_fix() {
        let cases = [
            ("- key: [unclosed", "not a valid YAML"),
            ("", "lists no object"),
            ("[]", "lists no object"),
            ("- key: Other-NS/db", "must be a namespace"),
            ("- key: Db_Bad", "not a valid ManagedKey name"),
            ("- version: current", "`key`"),
            ("- key: db\n  format: pkcs12", "unknown format"),
            ("- key: db\n  format: rot13", "unknown format"),
            ("- key: db\n  version: newest", "not current, previous, all"),
            ("- key: db\n  version: 0", "not current, previous, all"),
            ("- key: db\n  fileName: /abs", "absolute"),
            ("- key: db\n  fileName: ../up", "\"..\""),
            ("- key: db\n- key: db", "used twice"),
            (
                "- key: a\n  fileName: x\n- key: b\n  fileName: x",
                "used twice",
            ),
            ("- key: db\n  colour: blue", "unknown field"),
            ("- key: db\n  mode: \"0999\"", "octal"),
        ];
        for (y, want) in cases {
            let e = parse_objects(y, 0o644).expect_err(y);
            assert!(e.to_string().contains(want), "{y:?}: {e}");
            // Every one of them is the user's to fix in the SecretProviderClass.
            let s = tonic::Status::from(MountError::from(e));
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{y:?}");
        }
    }

    #[test]
    fn missing_pod_info_or_objects_is_invalid() {
        let a = serde_json::json!({POD_NAMESPACE: "ns", OBJECTS: "- key: db"}).to_string();
        let e = parse_mount(&a, "", "420", "keyward", SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("podInfoOnMount"), "{e}");
        let a = serde_json::json!({POD_NAMESPACE: "ns", POD_NAME: "p", SA_NAME: "sa"}).to_string();
        let e = parse_mount(&a, "", "420", "keyward", SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("`objects` is missing"), "{e}");
        assert!(parse_mount("not json", "", "", "keyward", SystemTime::now()).is_err());
    }

    /// A billion-laughs document: ten aliases per level, nine levels (10^9 nodes expanded).
    fn billion_laughs() -> String {
        let mut y = String::from("- key: a\n  version: &l0 [\"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 10].join(", ");
            y.push_str(&format!("- key: a{i}\n  version: &l{i} [{refs}]\n"));
        }
        y
    }

    #[test]
    fn a_billion_laughs_objects_parameter_is_refused_fast_naming_the_anchor() {
        let y = billion_laughs();
        assert!(y.len() < 1024, "{}", y.len());
        let t = std::time::Instant::now();
        let e = parse_objects(&y, 0o644).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert!(
            matches!(
                e,
                ParamError::ObjectsAnchor {
                    ch: '&',
                    line: 2,
                    column: 12
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("anchors (&) and aliases (*)"), "{e}");
        // Aliases alone, and merge keys, are refused the same way.
        for (y, ch) in [
            ("- key: *k", '*'),
            ("- <<: *base\n  key: a", '*'),
            ("- {key: \"a #\", version: *x}", '*'),
            ("- key: a # ** note **", '*'),
        ] {
            let e = parse_objects(y, 0o644).unwrap_err();
            assert!(
                matches!(e, ParamError::ObjectsAnchor { ch: c, .. } if c == ch),
                "{y:?}: {e}"
            );
        }
    }

    #[test]
    fn object_fields_are_scalars_only() {
        for y in [
            "- key: a\n  version: [1, 2]",
            "- key: a\n  mode: {a: 1}",
            "- key: [a]",
        ] {
            let e = parse_objects(y, 0o644).unwrap_err();
            assert!(matches!(e, ParamError::ObjectsYaml(_)), "{y:?}: {e}");
        }
        let e = parse_objects("- key: a\n  version: 1.5", 0o644).unwrap_err();
        assert!(e.to_string().contains("version 1.5 is not current"), "{e}");
        let e = parse_objects("- key: a\n  version: true", 0o644).unwrap_err();
        assert!(e.to_string().contains("version true is not current"), "{e}");
        let e = parse_objects("- key: a\n  version: 99999999999999999999", 0o644).unwrap_err();
        assert!(e.to_string().contains("is not current"), "{e}");
        let e = parse_objects("- key: a\n  mode: 400", 0o644).unwrap_err();
        assert!(e.to_string().contains("got 400"), "{e}");
    }

    #[test]
    fn objects_count_and_size_are_capped() {
        let list = |n: usize| (0..n).map(|i| format!("- key: k{i}\n")).collect::<String>();
        assert_eq!(parse_objects(&list(MAX_OBJECTS), 0o644).unwrap().len(), 64);
        let e = parse_objects(&list(MAX_OBJECTS + 1), 0o644).unwrap_err();
        assert!(matches!(e, ParamError::TooManyObjects { count: 65 }), "{e}");
        assert!(e.to_string().contains("limit of 64 per mount"), "{e}");
        let big = format!("- key: a\n# {}\n", "x".repeat(MAX_OBJECTS_BYTES));
        let e = parse_objects(&big, 0o644).unwrap_err();
        assert!(
            matches!(
                e,
                ParamError::TooLarge {
                    what: "parameter `objects`",
                    ..
                }
            ),
            "{e}"
        );
        let s = tonic::Status::from(MountError::from(e));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn pod_info_and_request_sizes_are_bounded_naming_the_attribute() {
        let now = SystemTime::now();
        let with = |k: &str, v: &str| {
            let mut a: serde_json::Value =
                serde_json::from_str(&attrs("- key: db", Some(&tok(FUTURE)))).unwrap();
            a[k] = v.into();
            a.to_string()
        };
        for (k, v, needle) in [
            (POD_NAME, "web-0\nforged", "control character U+000A"),
            (POD_NAME, &"a".repeat(254), "above the limit of 253"),
            (POD_NAMESPACE, &"a".repeat(64), "above the limit of 63"),
            (POD_NAMESPACE, "Team_A", "is not a DNS label"),
            (SA_NAME, "web\u{0}", "control character U+0000"),
            (POD_UID, &"u".repeat(129), "above the limit of 128"),
        ] {
            let e = parse_mount(&with(k, v), "", "420", "keyward", now).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, MountError::Request(ParamError::PodAttribute { attribute, .. }) if attribute == k),
                "{k}: {msg}"
            );
            assert!(msg.contains(needle) && msg.contains(k), "{msg}");
            assert!(!msg.contains("forged") && !msg.contains('\n'), "{msg}");
        }
        let long_token =
            serde_json::json!({"keyward": {"token": "t".repeat(20_000), "expirationTimestamp": FUTURE}})
                .to_string();
        let e = parse_mount(&with(SA_TOKENS, &long_token), "", "420", "keyward", now).unwrap_err();
        assert!(e.to_string().contains("above the limit of 16384"), "{e}");

        let huge = with("padding", &"p".repeat(MAX_ATTRIBUTES_BYTES));
        let e = parse_mount(&huge, "", "420", "keyward", now).unwrap_err();
        assert!(
            matches!(
                e,
                MountError::Request(ParamError::TooLarge {
                    max: MAX_ATTRIBUTES_BYTES,
                    ..
                })
            ),
            "{e}"
        );
        let secrets = serde_json::json!({"k": "s".repeat(MAX_SECRETS_BYTES)}).to_string();
        let e = parse_mount(&with("x", "y"), &secrets, "420", "keyward", now).unwrap_err();
        assert!(e.to_string().contains("nodePublishSecretRef"), "{e}");
    }

    /// The limits are the documented ones to the byte (the tests above read them from the
    /// constants, so a wrong constant would pass them).
    #[test]
    fn the_size_limits_are_exact() {
        let now = SystemTime::now();
        let base = attrs("- key: db", Some(&tok(FUTURE)));
        let secrets = |len: usize| {
            let pad = len - r#"{"k":""}"#.len();
            format!(r#"{{"k":"{}"}}"#, "s".repeat(pad))
        };
        let too_large = |r: &Result<MountParams, MountError>| match r {
            Err(MountError::Request(ParamError::TooLarge { max, .. })) => Some(*max),
            _ => None,
        };
        assert_eq!(secrets(65_536).len(), 65_536);
        assert_eq!(
            too_large(&parse_mount(&base, &secrets(65_536), "420", "keyward", now)),
            None
        );
        assert_eq!(
            too_large(&parse_mount(&base, &secrets(65_537), "420", "keyward", now)),
            Some(65_536)
        );
        let objects = |len: usize| {
            let head = "- key: a\n# ";
            format!("{head}{}", "x".repeat(len - head.len()))
        };
        assert_eq!(objects(32_768).len(), 32_768);
        assert_eq!(parse_objects(&objects(32_768), 0o644).unwrap().len(), 1);
        assert!(matches!(
            parse_objects(&objects(32_769), 0o644),
            Err(ParamError::TooLarge { max: 32_768, .. })
        ));
    }

    #[test]
    fn a_list_where_a_scalar_belongs_is_named() {
        for field in ["mode", "version"] {
            let e = parse_objects(&format!("- key: db\n  {field}: [1, 2]\n"), 0o644).unwrap_err();
            assert!(
                e.to_string()
                    .contains("a string or a number (not a list or a map)"),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn a_file_name_of_253_bytes_is_the_longest() {
        assert!(check_file_name(&"a".repeat(253)).is_ok());
        assert!(matches!(
            check_file_name(&"a".repeat(254)),
            Err(FileNameError::TooLong(_))
        ));
    }

    #[test]
    fn numbered_versions_start_at_1_as_numbers_and_as_strings() {
        for v in ["1", "\"1\"", "4294967295"] {
            let o = parse_objects(&format!("- key: db\n  version: {v}\n"), 0o644).unwrap();
            assert!(
                matches!(o[0].selector, Selector::Number(n) if n >= 1),
                "{v}"
            );
        }
        for v in ["0", "\"0\"", "-1", "4294967296"] {
            let e = parse_objects(&format!("- key: db\n  version: {v}\n"), 0o644).unwrap_err();
            assert!(e.to_string().contains("version"), "{v}: {e}");
        }
    }
}
