//! Protobuf bodies of the workload kinds `kubectl create deployment|service|job|cronjob|
//! priorityclass|poddisruptionbudget|quota` and `kubectl run` send: Deployment, Service, Pod,
//! Job, CronJob, PriorityClass, PodDisruptionBudget, ResourceQuota.
//!
//! Decoding is driven by tables of field numbers taken from the upstream `generated.proto`
//! files (k8s.io/api `core/v1`, `apps/v1`, `batch/v1`, `scheduling/v1`, `policy/v1`;
//! k8s.io/apimachinery `util/intstr`, `api/resource`). The tables list every field those
//! kubectl generators fill in, not the whole API: a field number the table does not know makes
//! the whole body undecodable (415), so nothing a client sends is ever dropped silently. A
//! non-empty `status` is refused the same way (kubectl sends none).

use super::protobuf::{Field, fields, label_selector, object_meta, string};
use serde_json::{Map, Value, json};

/// How one field is turned into JSON.
///
/// Go's protobuf encoding writes every non-pointer scalar, zero values included, where its JSON
/// encoding omits them (`omitempty`): `Str`, `Int` and `Bool` drop "", 0 and false, as JSON
/// would. Pointer fields (`*int32`, `*bool`, `*string`) and fields without `omitempty` are
/// written only when set, zero or not: `IntP`, `BoolP`, `StrP` keep every value.
#[derive(Clone, Copy)]
enum K {
    Str,
    StrP,
    /// int32/int64 (two's complement in a varint).
    Int,
    IntP,
    Bool,
    BoolP,
    RepStr,
    /// map<string, string>.
    MapStr,
    /// map<string, resource.Quantity> (Quantity: `string = 1`).
    MapQty,
    /// intstr.IntOrString: type 1 (0 int, 1 string), intVal 2, strVal 3.
    IntOrStr,
    /// meta/v1 LabelSelector.
    Sel,
    /// meta/v1 ObjectMeta.
    Meta,
    Msg(&'static [F]),
    RepMsg(&'static [F]),
}

type F = (u64, &'static str, K);

// core/v1 generated.proto
const CONTAINER_PORT: &[F] = &[
    (1, "name", K::Str),
    (2, "hostPort", K::Int),
    (3, "containerPort", K::IntP),
    (4, "protocol", K::Str),
    (5, "hostIP", K::Str),
];
const ENV_VAR: &[F] = &[(1, "name", K::Str), (2, "value", K::Str)];
const RESOURCES: &[F] = &[(1, "limits", K::MapQty), (2, "requests", K::MapQty)];
const CONTAINER: &[F] = &[
    (1, "name", K::Str),
    (2, "image", K::Str),
    (3, "command", K::RepStr),
    (4, "args", K::RepStr),
    (5, "workingDir", K::Str),
    (6, "ports", K::RepMsg(CONTAINER_PORT)),
    (7, "env", K::RepMsg(ENV_VAR)),
    (8, "resources", K::Msg(RESOURCES)),
    (13, "terminationMessagePath", K::Str),
    (14, "imagePullPolicy", K::Str),
    (16, "stdin", K::Bool),
    (17, "stdinOnce", K::Bool),
    (18, "tty", K::Bool),
    (20, "terminationMessagePolicy", K::Str),
    (24, "restartPolicy", K::StrP),
];
const POD_SPEC: &[F] = &[
    (2, "containers", K::RepMsg(CONTAINER)),
    (3, "restartPolicy", K::Str),
    (4, "terminationGracePeriodSeconds", K::IntP),
    (5, "activeDeadlineSeconds", K::IntP),
    (6, "dnsPolicy", K::Str),
    (7, "nodeSelector", K::MapStr),
    (8, "serviceAccountName", K::Str),
    (9, "serviceAccount", K::Str),
    (10, "nodeName", K::Str),
    (11, "hostNetwork", K::Bool),
    (12, "hostPID", K::Bool),
    (13, "hostIPC", K::Bool),
    (16, "hostname", K::Str),
    (17, "subdomain", K::Str),
    (19, "schedulerName", K::Str),
    (20, "initContainers", K::RepMsg(CONTAINER)),
    (21, "automountServiceAccountToken", K::BoolP),
    (24, "priorityClassName", K::Str),
    (25, "priority", K::IntP),
    (27, "shareProcessNamespace", K::BoolP),
    (29, "runtimeClassName", K::StrP),
    (30, "enableServiceLinks", K::BoolP),
    (31, "preemptionPolicy", K::StrP),
    (35, "setHostnameAsFQDN", K::BoolP),
    (37, "hostUsers", K::BoolP),
    (41, "hostnameOverride", K::StrP),
];
const POD_TEMPLATE: &[F] = &[(1, "metadata", K::Meta), (2, "spec", K::Msg(POD_SPEC))];
const SERVICE_PORT: &[F] = &[
    (1, "name", K::Str),
    (2, "protocol", K::Str),
    (3, "port", K::IntP),
    (4, "targetPort", K::IntOrStr),
    (5, "nodePort", K::Int),
    (6, "appProtocol", K::StrP),
];
const SERVICE_SPEC: &[F] = &[
    (1, "ports", K::RepMsg(SERVICE_PORT)),
    (2, "selector", K::MapStr),
    (3, "clusterIP", K::Str),
    (4, "type", K::Str),
    (5, "externalIPs", K::RepStr),
    (7, "sessionAffinity", K::Str),
    (8, "loadBalancerIP", K::Str),
    (10, "externalName", K::Str),
    (11, "externalTrafficPolicy", K::Str),
    (12, "healthCheckNodePort", K::Int),
    (13, "publishNotReadyAddresses", K::Bool),
    (17, "ipFamilyPolicy", K::StrP),
    (18, "clusterIPs", K::RepStr),
    (19, "ipFamilies", K::RepStr),
    (20, "allocateLoadBalancerNodePorts", K::BoolP),
    (21, "loadBalancerClass", K::StrP),
    (22, "internalTrafficPolicy", K::StrP),
    (23, "trafficDistribution", K::StrP),
];
const QUOTA_SPEC: &[F] = &[(1, "hard", K::MapQty), (2, "scopes", K::RepStr)];
// apps/v1
const STRATEGY: &[F] = &[(1, "type", K::Str)];
const DEPLOYMENT_SPEC: &[F] = &[
    (1, "replicas", K::IntP),
    (2, "selector", K::Sel),
    (3, "template", K::Msg(POD_TEMPLATE)),
    (4, "strategy", K::Msg(STRATEGY)),
    (5, "minReadySeconds", K::Int),
    (6, "revisionHistoryLimit", K::IntP),
    (7, "paused", K::Bool),
    (9, "progressDeadlineSeconds", K::IntP),
];
// batch/v1
const JOB_SPEC: &[F] = &[
    (1, "parallelism", K::IntP),
    (2, "completions", K::IntP),
    (3, "activeDeadlineSeconds", K::IntP),
    (4, "selector", K::Sel),
    (5, "manualSelector", K::BoolP),
    (6, "template", K::Msg(POD_TEMPLATE)),
    (7, "backoffLimit", K::IntP),
    (8, "ttlSecondsAfterFinished", K::IntP),
    (9, "completionMode", K::StrP),
    (10, "suspend", K::BoolP),
];
const JOB_TEMPLATE: &[F] = &[(1, "metadata", K::Meta), (2, "spec", K::Msg(JOB_SPEC))];
const CRONJOB_SPEC: &[F] = &[
    (1, "schedule", K::Str),
    (2, "startingDeadlineSeconds", K::IntP),
    (3, "concurrencyPolicy", K::Str),
    (4, "suspend", K::BoolP),
    (5, "jobTemplate", K::Msg(JOB_TEMPLATE)),
    (6, "successfulJobsHistoryLimit", K::IntP),
    (7, "failedJobsHistoryLimit", K::IntP),
    (8, "timeZone", K::StrP),
];
// policy/v1
const PDB_SPEC: &[F] = &[
    (1, "minAvailable", K::IntOrStr),
    (2, "selector", K::Sel),
    (3, "maxUnavailable", K::IntOrStr),
    (4, "unhealthyPodEvictionPolicy", K::Str),
];
// scheduling/v1 PriorityClass: the fields sit on the object itself (metadata is 1).
const PRIORITY_CLASS: &[F] = &[
    (2, "value", K::IntP),
    (3, "globalDefault", K::Bool),
    (4, "description", K::Str),
    (5, "preemptionPolicy", K::StrP),
];

fn entry(b: &[u8]) -> Option<(String, Vec<(u64, Field<'_>)>)> {
    let fs = fields(b)?;
    let key = fs
        .iter()
        .find(|(n, _)| *n == 1)
        .and_then(|(_, f)| string(f))?;
    let value = fs
        .into_iter()
        .find(|(n, _)| *n == 2)
        .map(|(_, f)| match f {
            Field::Bytes(b) => fields(b),
            Field::Varint(_) => None,
        })
        .unwrap_or(Some(vec![]))?;
    Some((key, value))
}

fn map_entry_str(b: &[u8]) -> Option<(String, Value)> {
    let fs = fields(b)?;
    let get = |n| {
        fs.iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, f)| string(f))
    };
    Some((get(1)?, get(2).unwrap_or_default().into()))
}

/// One field's JSON value.
/// `Some(Value::Null)` stands for a zero value JSON would omit.
fn value(f: &Field<'_>, k: K) -> Option<Value> {
    Some(match (k, f) {
        (K::Str, f) => Some(string(f)?)
            .filter(|s| !s.is_empty())
            .map_or(Value::Null, Value::from),
        (K::StrP, f) => string(f)?.into(),
        (K::Int, Field::Varint(v)) => Some(*v as i64)
            .filter(|v| *v != 0)
            .map_or(Value::Null, Value::from),
        (K::IntP, Field::Varint(v)) => (*v as i64).into(),
        (K::Bool, Field::Varint(v)) => {
            if *v != 0 {
                true.into()
            } else {
                Value::Null
            }
        }
        (K::BoolP, Field::Varint(v)) => (*v != 0).into(),
        (K::IntOrStr, Field::Bytes(b)) => {
            let fs = fields(b)?;
            let typ = fs.iter().find_map(|(n, f)| match (n, f) {
                (1, Field::Varint(v)) => Some(*v),
                _ => None,
            });
            if typ == Some(1) {
                fs.iter()
                    .find(|(n, _)| *n == 3)
                    .and_then(|(_, f)| string(f))?
                    .into()
            } else {
                let v = fs.iter().find_map(|(n, f)| match (n, f) {
                    (2, Field::Varint(v)) => Some(*v as i64 as i32),
                    _ => None,
                });
                v.unwrap_or(0).into()
            }
        }
        (K::Sel, Field::Bytes(b)) => label_selector(&fields(b)?),
        (K::Meta, Field::Bytes(b)) => object_meta(b)?,
        (K::Msg(s), Field::Bytes(b)) => message(b, s)?,
        _ => return None,
    })
}

/// Decode `b` by `schema`; None when a field is unknown or malformed.
fn message(b: &[u8], schema: &[F]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(b)? {
        let Some(&(_, name, k)) = schema.iter().find(|(num, _, _)| *num == n) else {
            eprintln!(
                "DEBUG unknown field {n} in {:?}",
                schema.iter().map(|f| f.1).collect::<Vec<_>>()
            );
            return None;
        };
        match k {
            K::RepStr => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                list.as_array_mut()?.push(string(&f)?.into());
            }
            K::RepMsg(s) => {
                let Field::Bytes(b) = f else { return None };
                let item = message(b, s)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                list.as_array_mut()?.push(item);
            }
            K::MapStr => {
                let Field::Bytes(b) = f else { return None };
                let (key, v) = map_entry_str(b)?;
                let m = out.entry(name).or_insert_with(|| json!({}));
                m.as_object_mut()?.insert(key, v);
            }
            K::MapQty => {
                let Field::Bytes(b) = f else { return None };
                let (key, q) = entry(b)?;
                // resource.Quantity: `string = 1`, nothing else.
                if q.iter().any(|(n, _)| *n != 1) {
                    return None;
                }
                let s = q
                    .iter()
                    .find(|(n, _)| *n == 1)
                    .and_then(|(_, f)| string(f))
                    .unwrap_or_default();
                let m = out.entry(name).or_insert_with(|| json!({}));
                m.as_object_mut()?.insert(key, s.into());
            }
            _ => match value(&f, k)? {
                Value::Null => {}
                v => {
                    out.insert(name.to_owned(), v);
                }
            },
        }
    }
    Some(Value::Object(out))
}

/// Every field a zero varint or an empty/zero sub-message (what an unset Go struct encodes to).
fn all_zero(b: &[u8]) -> bool {
    fields(b).is_some_and(|fs| {
        fs.iter().all(|(_, f)| match f {
            Field::Varint(v) => *v == 0,
            Field::Bytes(b) => all_zero(b),
        })
    })
}

/// The schema of `kind`'s `spec` (field 2), or of its top-level fields for PriorityClass.
fn spec_schema(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "Deployment" => DEPLOYMENT_SPEC,
        "Service" => SERVICE_SPEC,
        "Pod" => POD_SPEC,
        "Job" => JOB_SPEC,
        "CronJob" => CRONJOB_SPEC,
        "PodDisruptionBudget" => PDB_SPEC,
        "ResourceQuota" => QUOTA_SPEC,
        _ => return None,
    })
}

/// Whether this module decodes `kind`.
pub(crate) fn handles(kind: &str) -> bool {
    kind == "PriorityClass" || spec_schema(kind).is_some()
}

/// Fill `v` (apiVersion, kind, metadata already set) from the object's fields `obj`.
pub(crate) fn decode_into(v: &mut Value, kind: &str, obj: &[(u64, Field<'_>)]) -> Option<()> {
    if kind == "PriorityClass" {
        for (n, f) in obj.iter().filter(|(n, _)| *n != 1) {
            let &(_, name, k) = PRIORITY_CLASS.iter().find(|(num, _, _)| num == n)?;
            match value(f, k)? {
                Value::Null => {}
                x => v[name] = x,
            }
        }
        return Some(());
    }
    let schema = spec_schema(kind)?;
    for (n, f) in obj {
        match (n, f) {
            (1, _) => {}
            (2, Field::Bytes(b)) => v["spec"] = message(b, schema)?,
            // A status of zero values is what Go writes for an unset one (its non-pointer
            // counters are always encoded); anything else is refused.
            (3, Field::Bytes(b)) if all_zero(b) => {}
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-byte tag (fields 1 to 15).
    fn tag(n: u64, wire: u64) -> u8 {
        assert!(n < 16);
        u8::try_from((n << 3) | wire).unwrap()
    }

    /// A field key as a varint (any field number).
    fn key(n: u64, wire: u64) -> Vec<u8> {
        let mut v = (n << 3) | wire;
        let mut out = vec![];
        loop {
            let b = u8::try_from(v & 0x7f).unwrap();
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = key(n, 2);
        out.push(u8::try_from(b.len()).unwrap());
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn zero_values_follow_json_omitempty_and_pointers_keep_theirs() {
        // Container: name "c", stdin false (non-pointer: omitted), restartPolicy "" (pointer: kept).
        let mut c = bytes(1, b"c");
        c.extend(key(16, 0));
        c.push(0);
        c.extend(bytes(24, b""));
        // PodSpec: containers, hostNetwork false, automountServiceAccountToken false (pointer).
        let mut spec = bytes(2, &c);
        spec.extend([tag(11, 0), 0]);
        spec.extend(key(21, 0));
        spec.push(0);
        let v = message(&spec, POD_SPEC).unwrap();
        assert_eq!(
            v,
            json!({"containers": [{"name": "c", "restartPolicy": ""}], "automountServiceAccountToken": false})
        );
    }

    #[test]
    fn an_unknown_field_makes_the_body_undecodable() {
        // PodSpec field 18 (affinity) is not in the table: refused, never dropped.
        let spec = bytes(18, b"");
        assert_eq!(message(&spec, POD_SPEC), None);
        // A status that is not all zero values is refused too.
        let nonzero = [tag(3, 2), 2, tag(1, 0), 1];
        let obj = fields(&nonzero).unwrap();
        let mut v = json!({});
        assert_eq!(decode_into(&mut v, "Pod", &obj), None);
        let zero_status = [tag(3, 2), 2, tag(1, 0), 0];
        let zero = fields(&zero_status).unwrap();
        assert_eq!(decode_into(&mut v, "Pod", &zero), Some(()));
    }

    #[test]
    fn int_or_string_and_negative_ints() {
        let s = [tag(1, 0), 1, tag(3, 2), 3, b'5', b'0', b'%'];
        assert_eq!(value(&Field::Bytes(&s), K::IntOrStr), Some(json!("50%")));
        let i = [tag(1, 0), 0, tag(2, 0), 80];
        assert_eq!(value(&Field::Bytes(&i), K::IntOrStr), Some(json!(80)));
        assert_eq!(value(&Field::Varint(u64::MAX), K::IntP), Some(json!(-1)));
    }
}
