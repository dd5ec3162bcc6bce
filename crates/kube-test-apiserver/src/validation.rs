//! The real kube-apiserver's generic and per-type validations of built-in objects and custom
//! resources: object names, labels, annotations, finalizers, ownerReferences, Secret and
//! ConfigMap data, Events, the request body and storage size limits, and CRD format warnings.
//! Being as strict as the real server keeps product bugs (a label value too long, a name with
//! a capital letter) from passing tests and failing in a cluster. Each rule names the upstream
//! file and function it follows; messages are upstream's so tests can compare them.

use crate::auth::strings_at;
use crate::schema::FieldError;
use crate::store::StoreError;
use crate::types::ResType;
use base64::Engine as _;
use regex::Regex;
use serde_json::{Value, json};
use std::sync::LazyLock;

/// TotalAnnotationSizeLimitB (staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go).
pub(crate) const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;
/// MaxSecretSize (pkg/apis/core/types.go); also the ConfigMap limit (ValidateConfigMap).
pub(crate) const MAX_SECRET_SIZE: usize = 1024 * 1024;
/// The default `--max-request-body-bytes`/MaxRequestBodyBytes of kube-apiserver
/// (staging/src/k8s.io/apiserver/pkg/server/config.go: 3 MiB for resource writes).
pub(crate) const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;
/// etcd's default `--max-request-bytes` (1.5 MiB): larger objects cannot be stored.
pub(crate) const ETCD_MAX_REQUEST: usize = 1536 * 1024;
/// NoteLengthLimit and friends (pkg/apis/core/validation/events.go).
const NOTE_LENGTH_LIMIT: usize = 1024;
const SHORT_LIMIT: usize = 128;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";

fn re(fmt: &str) -> Regex {
    Regex::new(&format!("^{fmt}$")).unwrap_or_else(|_| Regex::new("^$").expect("empty regex"))
}

static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| re(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| re(DNS1123_SUBDOMAIN_FMT));
static DNS1035_LABEL: LazyLock<Regex> = LazyLock::new(|| re(DNS1035_LABEL_FMT));
static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| re(LABEL_KEY_FMT));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| re(LABEL_VALUE_FMT));
static CONFIG_KEY: LazyLock<Regex> = LazyLock::new(|| re(CONFIG_KEY_FMT));

/// RegexError (staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go).
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let ex: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        ex.join(" or ")
    )
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// IsDNS1123Label (apimachinery/pkg/util/validation/validation.go).
pub(crate) fn dns1123_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !DNS1123_LABEL.is_match(v) {
        if DNS1123_SUBDOMAIN.is_match(v) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character", DNS1123_LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errs
}

/// IsDNS1123Subdomain (apimachinery/pkg/util/validation/validation.go).
pub(crate) fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !DNS1123_SUBDOMAIN.is_match(v) {
        errs.push(regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", DNS1123_SUBDOMAIN_FMT, &["example.com"]));
    }
    errs
}

/// IsDNS1035Label (apimachinery/pkg/util/validation/validation.go).
pub(crate) fn dns1035_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !DNS1035_LABEL.is_match(v) {
        errs.push(regex_error("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character", DNS1035_LABEL_FMT, &["my-name", "abc-123"]));
    }
    errs
}

/// IsQualifiedName = IsLabelKey (apimachinery/pkg/api/validate/content/kube.go).
pub(crate) fn qualified_name(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = v.split('/').collect();
    let name = match parts.as_slice() {
        [n] => *n,
        [prefix, n] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".into());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *n
        }
        _ => {
            return vec![format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                    LABEL_KEY_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !LABEL_KEY.is_match(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// IsLabelValue (apimachinery/pkg/api/validate/content/kube.go).
pub(crate) fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !LABEL_VALUE.is_match(v) {
        errs.push(regex_error("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", LABEL_VALUE_FMT, &["MyValue", "my_value", "12345"]));
    }
    errs
}

/// IsConfigMapKey (apimachinery/pkg/util/validation/validation.go), for Secret and ConfigMap keys.
pub(crate) fn config_map_key(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !CONFIG_KEY.is_match(v) {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if v == "." {
        errs.push("must not be '.'".into());
    } else if v == ".." {
        errs.push("must not be '..'".into());
    } else if v.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// IsPathSegmentName / IsPathSegmentPrefix (apimachinery/pkg/api/validate/content), which
/// ValidatePathSegmentName and rbac's ValidateRBACName use.
pub(crate) fn path_segment(v: &str, prefix: bool) -> Vec<String> {
    if !prefix {
        for bad in [".", ".."] {
            if v == bad {
                return vec![format!("may not be '{bad}'")];
            }
        }
    }
    ["/", "%"]
        .iter()
        .filter(|c| v.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// Which ValidateNameFunc a resource's strategy uses.
#[derive(Clone, Copy, PartialEq, Debug)]
enum NameRule {
    /// NameIsDNSSubdomain: most resources and custom resources.
    Subdomain,
    /// NameIsDNSLabel: ValidateNamespaceName.
    Label,
    /// NameIsDNS1035Label: ValidateServiceName (pkg/apis/core/validation/validation.go).
    Dns1035,
    /// ValidatePathSegmentName: rbac's ValidateRBACName and the common check of BeforeCreate.
    PathSegment,
    /// ValidateCustomResourceDefinition: a subdomain that is `spec.names.plural + "." + spec.group`.
    Crd,
}

fn name_rule(t: &ResType) -> NameRule {
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        ("apiextensions.k8s.io", "customresourcedefinitions") => NameRule::Crd,
        _ => NameRule::Subdomain,
    }
}

/// maskTrailingDash (apimachinery/pkg/api/validation/generic.go): a generateName prefix may end
/// with '-'.
fn mask_trailing_dash(v: &str) -> String {
    match v.strip_suffix('-') {
        Some(rest) if !rest.is_empty() => format!("{rest}a"),
        _ => v.to_string(),
    }
}

fn name_errors(rule: NameRule, v: &str, prefix: bool, obj: &Value) -> Vec<String> {
    let masked;
    let v = if prefix && rule != NameRule::PathSegment {
        masked = mask_trailing_dash(v);
        masked.as_str()
    } else {
        v
    };
    match rule {
        NameRule::Subdomain => dns1123_subdomain(v),
        NameRule::Label => dns1123_label(v),
        NameRule::Dns1035 => dns1035_label(v),
        NameRule::PathSegment => path_segment(v, prefix),
        NameRule::Crd => {
            let mut e = dns1123_subdomain(v);
            let want = format!(
                "{}.{}",
                obj.pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                obj.pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            if !prefix && v != want {
                e.push("must be spec.names.plural+\".\"+spec.group".into());
            }
            e
        }
    }
}

/// A name for `generateName` as names.SimpleNameGenerator makes it
/// (staging/src/k8s.io/apiserver/pkg/storage/names/generate.go): the prefix cut to 58
/// characters plus 5 random characters of utilrand's alphabet.
pub(crate) fn generate_name(prefix: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut base: String = prefix.to_string();
    while base.len() > 58 {
        base.pop();
    }
    let r = uuid::Uuid::new_v4();
    let suffix: String = r.as_bytes()[..5]
        .iter()
        .map(|b| ALPHANUMS[usize::from(*b) % ALPHANUMS.len()] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Go's `%q` of a string, close enough for messages (Rust's escaping of the rare
/// non-printable characters differs).
fn q(s: &str) -> String {
    format!("{s:?}")
}

/// field.Invalid.
pub(crate) fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {}: {detail}", q(value)),
    }
}

/// field.Invalid with a value that is not a string (rendered as JSON).
fn invalid_raw(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {detail}"),
    }
}

/// field.Required.
fn required(field: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field: field.into(),
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
    }
}

/// field.TooLong (the value is omitted from the message).
fn too_long(field: &str, max: usize) -> FieldError {
    FieldError {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: must have at most {max} bytes"),
    }
}

fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {detail}"),
    }
}

/// Go's `%#v` of a []string.
fn go_strings(v: &[String]) -> String {
    let inner: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

fn str_map(v: Option<&Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Built-ins whose strategies use pkg/apis/core/validation.ValidateObjectMeta, which adds
/// validateKubeFinalizerName.
fn kube_finalizer_rules(t: &ResType) -> bool {
    !t.from_crd && (t.group.is_empty() || t.group == "apps")
}

/// The parts of ObjectMeta validated on create and update alike
/// (validateObjectMetaAccessorWithOptsCommon / ValidateObjectMetaAccessorUpdate in
/// staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go).
fn meta_common(t: &ResType, m: &Value, errs: &mut Vec<FieldError>) {
    // v1validation.ValidateLabels (apimachinery/pkg/apis/meta/v1/validation/validation.go).
    for (k, v) in str_map(m.get("labels")) {
        for msg in qualified_name(&k) {
            errs.push(invalid("metadata.labels", &k, &msg));
        }
        for msg in label_value(&v) {
            errs.push(invalid("metadata.labels", &v, &msg));
        }
    }
    // ValidateAnnotations: keys are qualified names compared in lower case; the total size
    // of keys and values is limited.
    let annotations = str_map(m.get("annotations"));
    for (k, _) in &annotations {
        for msg in qualified_name(&k.to_lowercase()) {
            errs.push(invalid("metadata.annotations", k, &msg));
        }
    }
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(too_long("metadata.annotations", TOTAL_ANNOTATION_SIZE));
    }
    // ValidateOwnerReferences.
    let mut first_controller: Option<String> = None;
    for r in m
        .get("ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (api_version, kind, name, uid) = (s("apiVersion"), s("kind"), s("name"), s("uid"));
        let version = api_version.rsplit('/').next().unwrap_or("");
        let p = "metadata.ownerReferences";
        if version.is_empty() {
            errs.push(invalid(
                &format!("{p}.apiVersion"),
                &api_version,
                "version must not be empty",
            ));
        }
        if kind.is_empty() {
            errs.push(invalid(&format!("{p}.kind"), &kind, "must not be empty"));
        }
        if name.is_empty() {
            errs.push(invalid(&format!("{p}.name"), &name, "must not be empty"));
        }
        if uid.is_empty() {
            errs.push(invalid(&format!("{p}.uid"), &uid, "must not be empty"));
        }
        if api_version == "v1" && kind == "Event" {
            errs.push(invalid_raw(
                p,
                &r.to_string(),
                "/v1, Kind=Event is disallowed from being an owner",
            ));
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let cur = format!("{kind}/{name}");
            match &first_controller {
                Some(first) => errs.push(invalid_raw(
                    p,
                    &m["ownerReferences"].to_string(),
                    &format!("Only one reference can have Controller set to true. Found \"true\" in references for {first} and {cur}"),
                )),
                None => first_controller = Some(cur),
            }
        }
    }
    // ValidateFinalizers, plus validateKubeFinalizerName for core types
    // (pkg/apis/core/validation/validation.go).
    let fins = strings_at(m, "/finalizers");
    for (i, f) in fins.iter().enumerate() {
        for msg in qualified_name(f) {
            errs.push(invalid("metadata.finalizers", f, &msg));
        }
        if kube_finalizer_rules(t)
            && !f.contains('/')
            && !["kubernetes", "orphan", "foregroundDeletion"].contains(&f.as_str())
        {
            errs.push(invalid(
                &format!("metadata.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    if fins.iter().any(|f| f == "orphan") && fins.iter().any(|f| f == "foregroundDeletion") {
        errs.push(invalid_raw(
            "metadata.finalizers",
            &go_strings(&fins),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
}

/// ValidateObjectMetaAccessor on create: generateName and name by the resource's rule, then
/// the common parts.
fn meta_create(t: &ResType, rule: NameRule, obj: &Value, errs: &mut Vec<FieldError>) {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let gen_name = m.get("generateName").and_then(Value::as_str).unwrap_or("");
    if !gen_name.is_empty() {
        for msg in name_errors(rule, gen_name, true, obj) {
            errs.push(invalid("metadata.generateName", gen_name, &msg));
        }
    }
    let name = m.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errs.push(required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in name_errors(rule, name, false, obj) {
            errs.push(invalid("metadata.name", name, &msg));
        }
    }
    meta_common(t, &m, errs);
}

/// ValidateObjectMetaAccessorUpdate: no new finalizers once deleting, then the common parts.
fn meta_update(t: &ResType, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    if old
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        let was = strings_at(old, "/metadata/finalizers");
        let mut extra: Vec<String> = strings_at(&m, "/finalizers")
            .into_iter()
            .filter(|f| !was.contains(f))
            .collect();
        extra.sort();
        extra.dedup();
        if !extra.is_empty() {
            errs.push(forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                    go_strings(&extra)
                ),
            ));
        }
    }
    meta_common(t, &m, errs);
}

fn is_core_event(t: &ResType) -> bool {
    t.group.is_empty() && t.plural == "events"
}

/// Validation of a create (`old` None) or update, in the order of rest.BeforeCreate /
/// BeforeUpdate (staging/src/k8s.io/apiserver/pkg/registry/rest/create.go): the strategy's
/// own validation first, and only when that passes the common ObjectMeta validation with
/// path-segment names. Schema validation of custom resources is added by the caller.
pub(crate) fn check(t: &ResType, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if is_core_event(t) {
        // The core/v1 Event strategy runs only legacyValidateEvent (events.go).
        errs.extend(legacy_event(obj));
    } else {
        match old {
            None => meta_create(t, name_rule(t), obj, &mut errs),
            Some(old) => meta_update(t, obj, old, &mut errs),
        }
        errs.extend(type_specific(t, obj, old));
    }
    if !errs.is_empty() {
        return errs;
    }
    match old {
        None => meta_create(t, NameRule::PathSegment, obj, &mut errs),
        Some(old) => meta_update(t, obj, old, &mut errs),
    }
    errs
}

fn type_specific(t: &ResType, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => secret(obj),
        ("", "configmaps") => config_map(obj),
        ("events.k8s.io", "events") => events_v1(obj, old),
        _ => Vec::new(),
    }
}

fn decoded_len(v: &Value) -> usize {
    let s = v.as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|b| b.len())
        .unwrap_or(s.len())
}

/// ValidateSecret (pkg/apis/core/validation/validation.go): config-key keys, at most
/// MaxSecretSize decoded bytes, and the keys the well-known types require.
fn secret(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = obj.get("data").and_then(Value::as_object);
    let mut total = 0;
    let mut keys: Vec<&String> = data.map(|d| d.keys().collect()).unwrap_or_default();
    keys.sort();
    for k in &keys {
        for msg in config_map_key(k) {
            errs.push(invalid(&format!("data[{k}]"), k, &msg));
        }
        total += data.and_then(|d| d.get(*k)).map(decoded_len).unwrap_or(0);
    }
    if total > MAX_SECRET_SIZE {
        errs.push(too_long("data", MAX_SECRET_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
    if ty == "kubernetes.io/service-account-token"
        && obj
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
    {
        errs.push(required(
            "metadata.annotations[kubernetes.io/service-account.name]",
            "",
        ));
    }
    let missing: &[&str] = match ty {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            &["username", "password"]
        }
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for k in missing.iter().filter(|k| !has(k)) {
        errs.push(required(&format!("data[{k}]"), ""));
    }
    errs
}

/// ValidateConfigMap (pkg/apis/core/validation/validation.go): config-key keys, no key in both
/// `data` and `binaryData`, at most MaxSecretSize bytes in all (reported on the path "").
fn config_map(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = obj.get("data").and_then(Value::as_object);
    let bin = obj.get("binaryData").and_then(Value::as_object);
    let mut total = 0;
    let mut keys: Vec<&String> = data.map(|d| d.keys().collect()).unwrap_or_default();
    keys.sort();
    for k in keys {
        for msg in config_map_key(k) {
            errs.push(invalid(&format!("data[{k}]"), k, &msg));
        }
        if bin.is_some_and(|b| b.contains_key(k)) {
            errs.push(invalid(
                &format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
        total += data
            .and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .map(str::len)
            .unwrap_or(0);
    }
    let mut keys: Vec<&String> = bin.map(|d| d.keys().collect()).unwrap_or_default();
    keys.sort();
    for k in keys {
        for msg in config_map_key(k) {
            errs.push(invalid(&format!("binaryData[{k}]"), k, &msg));
        }
        if data.is_some_and(|b| b.contains_key(k)) {
            errs.push(invalid(
                &format!("binaryData[{k}]"),
                k,
                "duplicate of key present in data",
            ));
        }
        total += bin.and_then(|d| d.get(k)).map(decoded_len).unwrap_or(0);
    }
    if total > MAX_SECRET_SIZE {
        errs.push(too_long("[]", MAX_SECRET_SIZE));
    }
    errs
}

fn s<'a>(obj: &'a Value, path: &str) -> &'a str {
    obj.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn set(obj: &Value, path: &str) -> bool {
    obj.pointer(path).is_some_and(|v| {
        !(v.is_null() || v.as_str() == Some("") || v.as_i64() == Some(0) || v == &json!({}))
    })
}

/// legacyValidateEvent (pkg/apis/core/validation/events.go), on the internal field names:
/// the events.k8s.io/v1 `note`, `regarding` and `deprecated*` fields are `message`,
/// `involvedObject` and `source`/`firstTimestamp`/... there, and so in the messages.
/// `fields` maps the internal names to the JSON pointers of the version being written.
fn legacy_event_with(obj: &Value, f: &EventFields) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns = s(obj, "/metadata/namespace");
    let involved_ns = s(obj, f.involved_ns);
    if !set(obj, "/eventTime") {
        let ok = if involved_ns.is_empty() {
            ns.is_empty() || ns == "default"
        } else {
            ns == involved_ns
        };
        if !ok {
            errs.push(invalid(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(invalid(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
        let rc = s(obj, "/reportingController");
        if rc.is_empty() {
            errs.push(required("reportingController", ""));
        }
        for msg in qualified_name(rc) {
            errs.push(invalid("reportingController", rc, &msg));
        }
        for (field, ptr, limit) in [
            ("reportingInstance", "/reportingInstance", SHORT_LIMIT),
            ("action", "/action", SHORT_LIMIT),
            ("reason", "/reason", SHORT_LIMIT),
        ] {
            let v = s(obj, ptr);
            if v.is_empty() {
                errs.push(required(field, ""));
            }
            if v.len() > limit {
                errs.push(invalid(
                    field,
                    "",
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if s(obj, f.message).len() > NOTE_LENGTH_LIMIT {
            errs.push(invalid(
                "message",
                "",
                &format!("can have at most {NOTE_LENGTH_LIMIT} characters"),
            ));
        }
    }
    for msg in dns1123_subdomain(ns) {
        errs.push(invalid("namespace", ns, &msg));
    }
    errs
}

/// JSON pointers of the internal Event fields in one API version.
struct EventFields {
    involved_ns: &'static str,
    message: &'static str,
}

const CORE_EVENT: EventFields = EventFields {
    involved_ns: "/involvedObject/namespace",
    message: "/message",
};
const EVENTS_V1: EventFields = EventFields {
    involved_ns: "/regarding/namespace",
    message: "/note",
};

fn legacy_event(obj: &Value) -> Vec<FieldError> {
    legacy_event_with(obj, &CORE_EVENT)
}

/// ValidateEventCreate / ValidateEventUpdate for events.k8s.io/v1 (events.go): the legacy
/// rules plus the strict ones (eventTime, type, no deprecated fields; immutable fields on
/// update). The ObjectMeta part is done by the caller.
fn events_v1(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = legacy_event_with(obj, &EVENTS_V1);
    match old {
        None => {
            errs.extend(event_series(obj));
            if !set(obj, "/eventTime") {
                errs.push(required("eventTime", ""));
            }
            let ty = s(obj, "/type");
            if ty != "Normal" && ty != "Warning" {
                errs.push(invalid("type", "", &format!("has invalid value: {ty}")));
            }
            for (field, ptr) in [
                ("firstTimestamp", "/deprecatedFirstTimestamp"),
                ("lastTimestamp", "/deprecatedLastTimestamp"),
                ("count", "/deprecatedCount"),
                ("source", "/deprecatedSource"),
            ] {
                if set(obj, ptr) {
                    errs.push(invalid(field, "", "needs to be unset"));
                }
            }
        }
        Some(old) => {
            if obj.get("series") != old.get("series") {
                errs.extend(event_series(obj));
            }
            for (field, ptr) in [
                ("involvedObject", "/regarding"),
                ("reason", "/reason"),
                ("message", "/note"),
                ("source", "/deprecatedSource"),
                ("firstTimestamp", "/deprecatedFirstTimestamp"),
                ("lastTimestamp", "/deprecatedLastTimestamp"),
                ("count", "/deprecatedCount"),
                ("type", "/type"),
                ("eventTime", "/eventTime"),
                ("action", "/action"),
                ("related", "/related"),
                ("reportingController", "/reportingController"),
                ("reportingInstance", "/reportingInstance"),
            ] {
                let (new_v, old_v) = (obj.pointer(ptr), old.pointer(ptr));
                if new_v != old_v {
                    let shown = match new_v {
                        Some(Value::String(x)) => q(x),
                        Some(v) => v.to_string(),
                        None => "null".into(),
                    };
                    errs.push(invalid_raw(field, &shown, "field is immutable"));
                }
            }
        }
    }
    errs
}

/// validateV1EventSeries (events.go).
fn event_series(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(series) = obj.get("series").filter(|v| !v.is_null()) {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            errs.push(invalid("series.count", "", "should be at least 2"));
        }
        if !set(series, "/lastObservedTime") {
            errs.push(required("series.lastObservedTime", ""));
        }
    }
    errs
}

/// What the decoding of a write does before validation: a Secret's `stringData` is merged into
/// `data` (Convert_v1_Secret_To_core_Secret in pkg/apis/core/v1/conversion.go; stringData wins)
/// and never stored; undecodable base64 is a 400 from the decoder.
pub(crate) fn normalize(t: &ResType, mut obj: Value) -> Result<Value, StoreError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (field, is_secret) = match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => ("data", true),
        ("", "configmaps") => ("binaryData", false),
        _ => return Ok(obj),
    };
    if let Some(map) = obj.get(field).and_then(Value::as_object) {
        for v in map.values() {
            let text = v.as_str().unwrap_or_default();
            if let Err(e) = b64.decode(text) {
                let detail = match e {
                    base64::DecodeError::InvalidByte(at, _)
                    | base64::DecodeError::InvalidLastSymbol(at, _) => {
                        format!("illegal base64 data at input byte {at}")
                    }
                    _ => format!("illegal base64 data at input byte {}", text.len()),
                };
                return Err(StoreError::BadRequest(format!(
                    "{kind} in version \"v1\" cannot be handled as a {kind}: {detail}",
                    kind = t.kind
                )));
            }
        }
    }
    if is_secret
        && let Some(o) = obj.as_object_mut()
        && let Some(sd) = o.remove("stringData")
        && let Some(sd) = sd.as_object()
        && !sd.is_empty()
    {
        let data = o.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in sd {
            data[k] = b64.encode(v.as_str().unwrap_or_default()).into();
        }
    }
    Ok(obj)
}

/// etcd refuses a write larger than its `--max-request-bytes` (1.5 MiB). The real server
/// answers with the etcd error as an unconverted 500 without a reason (ErrorToAPIStatus in
/// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/status.go; see
/// kubernetes/kubernetes#112152). Built-ins are stored as protobuf, so base64 fields count
/// decoded.
pub(crate) fn storage_size(t: &ResType, obj: &Value) -> Result<(), StoreError> {
    let mut size = obj.to_string().len();
    let binary = match (t.group.as_str(), t.plural.as_str()) {
        ("", "secrets") => obj.get("data"),
        ("", "configmaps") => obj.get("binaryData"),
        _ => None,
    };
    for v in binary
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
    {
        size = size.saturating_sub(v.as_str().map(str::len).unwrap_or(0)) + decoded_len(v);
    }
    if size > ETCD_MAX_REQUEST {
        return Err(StoreError::Internal(
            "etcdserver: request is too large".into(),
        ));
    }
    Ok(())
}

/// Formats CRD schemas may use (supportedVersionedFormats in
/// staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/validation/formats.go, up to 1.34),
/// normalized without dashes as go-openapi compares them.
const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "quantity",
    "k8sshortname",
    "k8slongname",
];

/// GetUnrecognizedFormats (formats.go) for one schema node.
fn unrecognized(format: &str, ty: &str) -> bool {
    match ty {
        "" | "string" => !STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        "integer" => format != "int32" && format != "int64",
        "number" => format != "float" && format != "double",
        _ => true,
    }
}

fn collect_formats(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(m) => {
            if let Some(f) = m
                .get("format")
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
            {
                let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
                if unrecognized(f, ty) {
                    out.push(f.to_string());
                }
            }
            for (k, v) in m {
                // `format` inside `properties` is a property name, not a keyword.
                if k == "properties" || k == "patternProperties" || k == "definitions" {
                    for sub in v.as_object().into_iter().flat_map(|p| p.values()) {
                        collect_formats(sub, out);
                    }
                } else if k != "format" && k != "default" && k != "enum" && k != "example" {
                    collect_formats(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_formats(v, out)),
        _ => {}
    }
}

fn crd_formats(crd: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
            collect_formats(s, &mut out);
        }
    }
    out
}

/// The warnings of a CRD write: WarningsOnCreate / WarningsOnUpdate in
/// staging/src/k8s.io/apiextensions-apiserver/pkg/registry/customresourcedefinition/strategy.go
/// (`unrecognized format "x"`, on update only for formats the old CRD did not have).
pub(crate) fn crd_warnings(new: &Value, old: Option<&Value>) -> Vec<String> {
    let before = old.map(crd_formats).unwrap_or_default();
    crd_formats(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|f| format!("unrecognized format {}", q(&f)))
        .collect()
}

/// A `Warning` header value as the apiserver writes it (staging/src/k8s.io/apiserver/pkg/
/// warning and net/http's MakeWarningHeaderValue form): `299 - "text"`.
pub(crate) fn warning_header(text: &str) -> String {
    format!("299 - {}", q(text))
}

static DATE_TIME: LazyLock<Regex> = LazyLock::new(|| {
    re(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")
});
static DATE: LazyLock<Regex> = LazyLock::new(|| re(r"\d{4}-\d{2}-\d{2}"));
static UUID: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"));
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?",
    )
});
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    re(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
});
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"([+-]?(\d+(\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h|d|w|nanoseconds?|microseconds?|milliseconds?|seconds?|minutes?|hours?|days?|weeks?))+",
    )
});

/// Checks the string formats the real server validates on custom resources (kube-openapi's
/// strfmt registry via the formats of formats.go). Returns the message for `path` when `v`
/// is not of `format`, as `validate.FormatOf` reports it; unknown formats are not checked.
/// Only the formats operators commonly use are verified; the rest are accepted.
pub(crate) fn check_format(format: &str, path: &str, v: &str) -> Option<String> {
    let ok = match format.replace('-', "").as_str() {
        "datetime" => DATE_TIME.is_match(v),
        "date" => DATE.is_match(v),
        "uuid" => UUID.is_match(v),
        "ipv4" => v.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => v.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => v.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                bits.parse::<u8>()
                    .is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })
            })
        }),
        "hostname" => v.len() <= 255 && HOSTNAME.is_match(v),
        "byte" => base64::engine::general_purpose::STANDARD.decode(v).is_ok(),
        "quantity" => QUANTITY.is_match(v),
        "duration" => DURATION.is_match(v),
        "k8sshortname" => dns1123_label(v).is_empty(),
        "k8slongname" => dns1123_subdomain(v).is_empty(),
        _ => true,
    };
    (!ok).then(|| {
        format!(
            "Invalid value: {}: {path} in body must be of type {format}: {}",
            q(v),
            q(v)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(dns1123_subdomain("a.b-c").is_empty());
        assert_eq!(dns1123_subdomain("Ab").len(), 1);
        assert_eq!(
            dns1123_label("a.b"),
            vec!["must not contain dots".to_string()]
        );
        assert!(dns1035_label("1abc").len() == 1);
        assert!(qualified_name("example.com/My_Name.x").is_empty());
        assert_eq!(qualified_name("a/b/c").len(), 1);
        assert_eq!(
            qualified_name("/x"),
            vec!["prefix part must be non-empty".to_string()]
        );
        assert!(label_value("").is_empty());
        assert_eq!(label_value(&"a".repeat(64)).len(), 1);
        assert_eq!(
            config_map_key("..x"),
            vec!["must not start with '..'".to_string()]
        );
        assert_eq!(path_segment("a/b%", false).len(), 2);
        assert_eq!(
            path_segment("..", false),
            vec!["may not be '..'".to_string()]
        );
        let n = generate_name(&"x".repeat(70));
        assert_eq!(n.len(), 63);
    }

    #[test]
    fn formats() {
        assert!(check_format("date-time", "spec.at", "2024-01-02T03:04:05Z").is_none());
        assert!(check_format("date-time", "spec.at", "yesterday").is_some());
        assert!(check_format("int32", "spec.n", "x").is_none());
        assert!(unrecognized("made-up", "string"));
        assert!(!unrecognized("date-time", "string"));
        assert!(!unrecognized("int32", "integer"));
    }
}
