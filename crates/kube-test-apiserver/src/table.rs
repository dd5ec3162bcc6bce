//! `meta.k8s.io/v1` Tables for `kubectl get`.

use crate::types::ResType;
use serde_json::{Value, json};

/// Evaluate the JSONPath of a printer column against an object: `.a.b`, `.a[0].b`, and the
/// filter `.a[?(@.k=="v")].b` (first match), as CRD columns use them. Upstream evaluates them
/// with client-go's jsonpath and prints the first result
/// (apiextensions-apiserver `pkg/registry/customresource/tableconvertor`, `ConvertToTable`).
pub fn jsonpath<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        // One segment: a field name, then optionally `[N]` or `[?(@.k=="v")]`.
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let field = &rest[..end];
        rest = &rest[end..];
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            let inner = &r[..close];
            rest = &r[close + 1..];
            if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, want) = f.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|e| e.get(k.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(cur)
}

/// A date cell: upstream's `duration.HumanDuration(time.Since(t))`
/// (apimachinery `pkg/util/duration`), "<invalid>" for a time more than a second ahead.
fn age(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    let d = h / 24;
    let with = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        with(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Build a Table for `items`.
pub fn table(rt: &ResType, version: &str, items: &[Value], rv: &str) -> Value {
    let custom = rt.printer_columns(version);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let cols: Vec<(String, String)> = if custom.is_empty() {
        defs.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
        vec![(".metadata.creationTimestamp".into(), "date".into())]
    } else {
        custom
            .iter()
            .map(|c| {
                defs.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")), "description": c.get("description").cloned().unwrap_or(json!("")), "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
                (c["jsonPath"].as_str().unwrap_or("").to_string(), c["type"].as_str().unwrap_or("string").to_string())
            })
            .collect()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (p, ty) in &cols {
                let v = jsonpath(o, p).cloned().unwrap_or(Value::Null);
                // Like the real server, date cells are rendered as an age ("5m", "3d4h").
                let v = match (ty.as_str(), v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok())) {
                    ("date", Some(t)) => Value::String(age(jiff::Timestamp::now().duration_since(t).as_secs())),
                    _ => v,
                };
                cells.push(v);
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_upstream_human_duration() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (59, "59s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 7200, "3d2h"),
            (40 * 86_400, "40d"),
            (800 * 86_400, "2y70d"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(age(secs), want, "{secs}");
        }
    }

    #[test]
    fn jsonpath_filters_pick_the_first_match() {
        let o = json!({"status": {"conditions": [
            {"type": "Degraded", "status": "False"}, {"type": "Ready", "status": "True"}]},
            "spec": {"list": [{"a": 1}, {"a": 2}]}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Gone\")].status"),
            None
        );
        assert_eq!(jsonpath(&o, ".spec.list[1].a"), Some(&json!(2)));
        assert_eq!(jsonpath(&o, ".spec.missing"), None);
    }
}
