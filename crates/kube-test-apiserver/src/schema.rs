//! openAPIV3Schema validation and pruning for custom resources, shaped like the real server's
//! field errors (`spec.x: Unsupported value: ...`).

use crate::types::VersionSchema;
use serde_json::{Map, Value};
use std::sync::Arc;

/// One field error, as in a Status `details.causes[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueInvalid`, `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// Dotted field path.
    pub field: String,
    /// Message without the field path.
    pub message: String,
}

impl FieldError {
    /// `field: message`, the form the real server joins into the Status message.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validate `v` against `schema` at `path`, appending errors.
pub fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let s = match schema.as_object() {
        Some(s) => s,
        None => return,
    };
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if s.contains_key("type") {
            errs.push(FieldError {
                reason: "FieldValueTypeInvalid",
                field: path.into(),
                message: format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    s["type"].as_str().unwrap_or("object")
                ),
            });
        }
        return;
    }
    let int_or_string = s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = t == actual
            || (t == "number" && actual == "integer")
            || (int_or_string && (actual == "integer" || actual == "string"));
        if !ok {
            errs.push(FieldError {
                reason: "FieldValueTypeInvalid",
                field: path.into(),
                message: format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: {}",
                    quote(v)
                ),
            });
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list = allowed.iter().map(quote).collect::<Vec<_>>().join(", ");
        errs.push(FieldError {
            reason: "FieldValueNotSupported",
            field: path.into(),
            message: format!("Unsupported value: {}: supported values: {list}", quote(v)),
        });
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                let excl = s.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (excl && x == min) {
                    errs.push(FieldError { reason: "FieldValueInvalid", field: path.into(), message: format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}") });
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                let excl = s.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (excl && x == max) {
                    errs.push(FieldError { reason: "FieldValueInvalid", field: path.into(), message: format!("Invalid value: {v}: {path} in body should be less than or equal to {max}") });
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: path.into(),
                    message: format!(
                        "Invalid value: {}: {path} in body should be at least {min} chars long",
                        quote(v)
                    ),
                });
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errs.push(FieldError {
                    reason: "FieldValueTooLong",
                    field: path.into(),
                    message: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => errs.push(FieldError {
                        reason: "FieldValueInvalid",
                        field: path.into(),
                        message: format!(
                            "Invalid value: {}: {path} in body should match '{p}'",
                            quote(v)
                        ),
                    }),
                    _ => {}
                }
            }
            // The recognized string formats are validated (validation::check_format).
            if let Some(f) = s.get("format").and_then(Value::as_str)
                && let Some(message) = crate::validation::check_format(f, path, st)
            {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: path.into(),
                    message,
                });
            }
        }
        Value::Array(items) => {
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: path.into(),
                    message: format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                });
            }
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                errs.push(FieldError {
                    reason: "FieldValueTooMany",
                    field: path.into(),
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            if let Some(item_schema) = s.get("items") {
                for (i, it) in items.iter().enumerate() {
                    validate(item_schema, it, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(o) => {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        errs.push(FieldError {
                            reason: "FieldValueRequired",
                            field: join(path, r),
                            message: "Required value".into(),
                        });
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in o {
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    validate(ps, child, &join(path, k), errs);
                } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    validate(ap, child, &join(path, k), errs);
                }
            }
        }
        _ => {}
    }
}

/// Drop fields the schema does not declare, as the real server prunes them.
pub fn prune(schema: &Value, v: &mut Value) {
    let Some(s) = schema.as_object() else { return };
    if s.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        && !s.contains_key("properties")
    {
        return;
    }
    match v {
        Value::Object(o) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let preserve = s
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    prune(ps, o.get_mut(&k).expect("key exists"));
                } else if let Some(ap) = additional {
                    if ap.is_object() {
                        prune(ap, o.get_mut(&k).expect("key exists"));
                    }
                } else if !preserve {
                    o.remove(&k);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for it in items {
                    prune(is, it);
                }
            }
        }
        _ => {}
    }
}

/// CEL rules of `schema` checked against `obj`, with the rules compiled once per schema (per
/// thread) instead of on every write: compiling was the largest single cost of a custom
/// resource write in the controller benchmark. Same semantics as `kube_cel::validate`.
/// Keyed by the schema's allocation; the entry holds the `Arc`, so that address cannot be
/// reused by another schema while the entry exists.
fn validate_cel(
    schema: &Arc<VersionSchema>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), kube_cel::ValidationErrors> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    /// Distinct schemas kept per thread (CRD versions in use; cleared when exceeded).
    const MAX_SCHEMAS: usize = 64;
    type Entry = (Arc<VersionSchema>, Rc<kube_cel::CompiledSchema>);
    thread_local! {
        static COMPILED: RefCell<HashMap<usize, Entry>> = RefCell::new(HashMap::new());
    }
    let key = Arc::as_ptr(schema) as usize;
    let compiled = COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, hit)) = c.get(&key) {
            return hit.clone();
        }
        if c.len() >= MAX_SCHEMAS {
            c.clear();
        }
        let fresh = Rc::new(kube_cel::compile_schema(&schema.openapi));
        c.insert(key, (schema.clone(), fresh.clone()));
        fresh
    });
    kube_cel::validate_compiled(&compiled, obj, old)
}

/// Validate a whole custom resource: schema (spec/status and the rest), then CEL rules.
/// Returns the object with defaults applied and unknown fields pruned.
pub fn check_object(
    schema: &Arc<VersionSchema>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Value, Vec<FieldError>> {
    // metadata, apiVersion and kind are the server's, not the schema's.
    let mut body = obj.clone();
    let mut rest = Map::new();
    if let Some(o) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            if let Some(v) = o.remove(k) {
                rest.insert(k.into(), v);
            }
        }
    }
    let stripped = &schema.body;
    prune(stripped, &mut body);
    let mut body = kube_cel::apply_defaults(stripped, &body);
    let mut errs = Vec::new();
    validate(stripped, &body, "", &mut errs);
    if errs.is_empty() {
        // CEL sees the whole object (self.metadata too).
        let mut full = body.clone();
        if let Some(o) = full.as_object_mut() {
            for (k, v) in &rest {
                o.insert(k.clone(), v.clone());
            }
        }
        if let Err(cel) = validate_cel(schema, &full, old) {
            for e in cel.into_vec() {
                let field = if e.field_path.is_empty() {
                    "<root>".to_string()
                } else {
                    e.field_path.clone()
                };
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field,
                    message: format!("Invalid value: \"object\": {}", e.message),
                });
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if let Some(o) = body.as_object_mut() {
        for (k, v) in rest {
            o.insert(k, v);
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Arc<VersionSchema> {
        Arc::new(VersionSchema::new(schema_json()))
    }

    fn schema_json() -> Value {
        json!({"type":"object","properties":{"spec":{"type":"object","required":["size"],"properties":{
            "size":{"type":"integer","minimum":1,"maximum":10},
            "color":{"type":"string","enum":["red","blue"]},
            "name":{"type":"string","pattern":"^[a-z]+$","maxLength":5},
            "mode":{"type":"string","default":"fast"}}}},
            "x-kubernetes-validations":[{"rule":"self.spec.size != 7","message":"seven is unlucky"}]})
    }

    #[test]
    fn errors_name_the_field_like_the_real_server() {
        let bad = json!({"apiVersion":"x/v1","kind":"W","metadata":{"name":"a"},"spec":{"size":11,"color":"green","name":"ABC","extra":1}});
        let errs = check_object(&schema(), &bad, None).unwrap_err();
        let rendered: Vec<String> = errs.iter().map(FieldError::render).collect();
        assert!(rendered.contains(&"spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10".to_string()), "{rendered:?}");
        assert!(
            rendered.contains(
                &"spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\""
                    .to_string()
            ),
            "{rendered:?}"
        );
        assert!(
            rendered
                .iter()
                .any(|r| r.starts_with("spec.name: Invalid value: \"ABC\"")),
            "{rendered:?}"
        );
        let missing = check_object(&schema(), &json!({"spec":{}}), None).unwrap_err();
        assert_eq!(missing[0].render(), "spec.size: Required value");
    }

    #[test]
    fn defaults_pruning_and_cel() {
        let ok = check_object(
            &schema(),
            &json!({"metadata":{"name":"a"},"spec":{"size":2,"junk":true}}),
            None,
        )
        .unwrap();
        assert_eq!(ok["spec"]["mode"], "fast");
        assert!(ok["spec"].get("junk").is_none());
        assert_eq!(ok["metadata"]["name"], "a");
        let cel = check_object(&schema(), &json!({"spec":{"size":7}}), None).unwrap_err();
        assert!(cel[0].message.contains("seven is unlucky"), "{cel:?}");
    }

    /// The compiled rules are cached per schema: a CRD update (a new `VersionSchema`) is
    /// checked with its own rules, and the old schema with its own, in any order.
    #[test]
    fn each_schema_is_checked_with_its_own_rules() {
        let sevens = schema();
        let mut eights = schema_json();
        eights["x-kubernetes-validations"] =
            json!([{"rule": "self.spec.size != 8", "message": "eight is unlucky"}]);
        let eights = Arc::new(VersionSchema::new(eights));
        for _ in 0..2 {
            assert!(check_object(&sevens, &json!({"spec":{"size":8}}), None).is_ok());
            let e = check_object(&eights, &json!({"spec":{"size":8}}), None).unwrap_err();
            assert!(e[0].message.contains("eight is unlucky"), "{e:?}");
            assert!(check_object(&eights, &json!({"spec":{"size":7}}), None).is_ok());
        }
    }
}
