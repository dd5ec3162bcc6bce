//! `meta.k8s.io/v1` Tables for `kubectl get`.

use crate::types::ResType;
use serde_json::{Value, json};

/// Evaluate a simple JSONPath (`.a.b`, `.a[0].b`) against an object.
pub fn jsonpath<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, idx) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
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
