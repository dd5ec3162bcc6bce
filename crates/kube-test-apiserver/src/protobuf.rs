//! Just enough of the Kubernetes protobuf wire format to read what `kubectl create` sends for
//! the simple built-ins tests create (Namespace, ServiceAccount, ConfigMap,
//! TokenRequest). Anything else is answered with 415 so the client can send JSON.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        let f = match tag & 7 {
            0 => Field::Varint(varint(b, &mut pos)?),
            1 => {
                pos += 8;
                continue;
            }
            2 => {
                let n = varint(b, &mut pos)? as usize;
                let s = b.get(pos..pos.checked_add(n)?)?;
                pos += n;
                Field::Bytes(s)
            }
            5 => {
                pos += 4;
                continue;
            }
            _ => return None,
        };
        out.push((tag >> 3, f));
    }
    Some(out)
}

fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Field::Varint(_) => None,
    }
}

fn map_entry(b: &[u8]) -> Option<(String, String)> {
    let fs = fields(b)?;
    let get = |n| {
        fs.iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
    };
    Some((get(1)?, get(2).unwrap_or_default()))
}

fn string_map(fs: &[(u64, Field<'_>)], n: u64) -> Option<Value> {
    let mut m = Map::new();
    for (_, f) in fs.iter().filter(|(k, _)| *k == n) {
        if let Field::Bytes(b) = f {
            let (k, v) = map_entry(b)?;
            m.insert(k, v.into());
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let fs = fields(b)?;
    let mut m = Map::new();
    for (n, key) in [(1, "name"), (2, "generateName"), (3, "namespace")] {
        if let Some(s) = fs
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
            .filter(|s| !s.is_empty())
        {
            m.insert(key.into(), s.into());
        }
    }
    if let Some(l) = string_map(&fs, 11) {
        m.insert("labels".into(), l);
    }
    if let Some(a) = string_map(&fs, 12) {
        m.insert("annotations".into(), a);
    }
    Some(Value::Object(m))
}

/// Decode a protobuf request body to JSON, for the kinds listed in the module docs.
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = unknown.iter().find_map(|(n, f)| match (n, f) {
        (1, Field::Bytes(b)) => fields(b),
        _ => None,
    })?;
    let tm = |n| {
        type_meta
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
    };
    let (api_version, kind) = (tm(1)?, tm(2)?);
    let raw = unknown.iter().find_map(|(n, f)| match (n, f) {
        (2, Field::Bytes(b)) => Some(*b),
        _ => None,
    })?;
    let obj = fields(raw)?;
    let meta = obj.iter().find_map(|(n, f)| match (n, f) {
        (1, Field::Bytes(b)) => object_meta(b),
        _ => None,
    });
    let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": meta.unwrap_or_else(|| json!({}))});
    match kind.as_str() {
        "Namespace" | "ServiceAccount" => {}
        "ConfigMap" => {
            if let Some(d) = string_map(&obj, 2) {
                v["data"] = d;
            }
        }
        "TokenRequest" => {
            let spec = obj.iter().find_map(|(n, f)| match (n, f) {
                (2, Field::Bytes(b)) => fields(b),
                _ => None,
            })?;
            let auds: Vec<String> = spec
                .iter()
                .filter(|(k, _)| *k == 1)
                .filter_map(|(_, f)| string(f))
                .collect();
            let mut s = json!({"audiences": auds});
            if let Some((_, Field::Varint(e))) = spec.iter().find(|(k, _)| *k == 4) {
                s["expirationSeconds"] = (*e as i64).into();
            }
            if let Some(b) = spec.iter().find_map(|(n, f)| match (n, f) {
                (3, Field::Bytes(b)) => fields(b),
                _ => None,
            }) {
                let g = |n| b.iter().find(|(k, _)| *k == n).and_then(|(_, f)| string(f));
                s["boundObjectRef"] =
                    json!({"kind": g(1), "apiVersion": g(2), "name": g(3), "uid": g(4)});
            }
            v["spec"] = s;
        }
        _ => return None,
    }
    Some(v)
}
