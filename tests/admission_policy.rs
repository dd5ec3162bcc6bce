//! The chart's ValidatingAdmissionPolicy (`templates/admission-policy.yaml`) keeps the two
//! irreversible changes of a ManagedKey, `spec.desiredState: Compromised` and `spec.deletion`,
//! for whoever holds the custom verbs `compromise` / `schedule-deletion` (the key-admin role,
//! aggregated into `admin`). The test API server enforces no admission policy, so this test
//! evaluates the rendered policy's CEL itself, as kube-apiserver's
//! `staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating` does: `variables` in
//! order (each may use the earlier ones), then every validation; `authorizer` answers from the
//! rendered aggregated ClusterRoles, for a user bound to the built-in `edit`, `admin`, or to the
//! key-admin role alone.
//!
//! Differences from the real evaluation: the authorizer here knows only the chart's aggregated
//! roles (not a cluster's other bindings), and CEL cost limits are not applied.

mod fixture;

use cel::extractors::This;
use cel::objects::{Key, Map};
use cel::{Context, ExecutionError, Program, Value};
use serde_json::{Value as Json, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Rendered policy + aggregated ClusterRoles of the default values.
fn rendered() -> Vec<Json> {
    let out = std::process::Command::new(fixture::python())
        .arg(fixture::root().join("tests/py/render_rbac.py"))
        .args(["keyward-system", "--admission"])
        .output()
        .expect("run render_rbac.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Verbs on `managedkeys` a user bound to the built-in `role` (edit/admin, through the
/// aggregation labels) or to the named ClusterRole gets from the chart.
fn verbs_for(objects: &[Json], role: &str) -> BTreeSet<String> {
    let label = format!("rbac.authorization.k8s.io/aggregate-to-{role}");
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .filter(|o| o["metadata"]["labels"][&label] == "true" || o["metadata"]["name"] == role)
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .contains(&json!("keyward.io"))
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("managedkeys"))
        })
        .flat_map(|r| r["verbs"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn map_get(m: &Value, k: &str) -> Option<Value> {
    match m {
        Value::Map(m) => m.map.get(&Key::String(Arc::new(k.to_owned()))).cloned(),
        _ => None,
    }
}

fn with(m: &Value, k: &str, v: Value) -> Value {
    let Value::Map(m) = m else {
        panic!("authorizer methods are called on the authorizer, got {m:?}")
    };
    let mut inner: HashMap<Key, Value> = (*m.map).clone();
    inner.insert(Key::String(Arc::new(k.to_owned())), v);
    Value::Map(Map {
        map: Arc::new(inner),
    })
}

/// The `authorizer` variable: `.group().resource().namespace().name()` narrow the request,
/// `.check(verb)` decides it against `verbs` (granted on keyward.io/managedkeys only) and
/// `.allowed()` reads the decision.
fn context(object: &Json, old: Option<&Json>, verbs: &BTreeSet<String>) -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_variable("object", object.clone()).unwrap();
    match old {
        Some(o) => ctx.add_variable("oldObject", o.clone()).unwrap(),
        None => ctx.add_variable_from_value("oldObject", Value::Null),
    }
    ctx.add_variable(
        "authorizer",
        json!({"verbs": verbs.iter().collect::<Vec<_>>(), "group": "", "resource": "", "namespace": "", "name": ""}),
    )
    .unwrap();
    for field in ["group", "resource", "namespace", "name"] {
        let f = field.to_owned();
        ctx.add_function(field, move |This(this): This<Value>, v: Arc<String>| {
            Ok::<_, ExecutionError>(with(&this, &f, Value::String(v)))
        });
    }
    ctx.add_function("check", |This(this): This<Value>, verb: Arc<String>| {
        let granted = match map_get(&this, "verbs") {
            Some(Value::List(l)) => l.contains(&Value::String(verb.clone())),
            _ => false,
        };
        let on_keys = map_get(&this, "group") == Some(Value::String(Arc::new("keyward.io".into())))
            && map_get(&this, "resource") == Some(Value::String(Arc::new("managedkeys".into())));
        Ok::<_, ExecutionError>(with(&this, "decision", Value::Bool(granted && on_keys)))
    });
    ctx.add_function("allowed", |This(this): This<Value>| {
        map_get(&this, "decision") == Some(Value::Bool(true))
    });
    ctx
}

/// Evaluates the policy for one request: Ok, or Err(message of the first failed validation).
fn admit(
    policy: &Json,
    object: &Json,
    old: Option<&Json>,
    verbs: &BTreeSet<String>,
) -> Result<(), String> {
    let mut ctx = context(object, old, verbs);
    let mut variables = serde_json::Map::new();
    for v in policy["spec"]["variables"].as_array().unwrap() {
        ctx.add_variable("variables", Json::Object(variables.clone()))
            .unwrap();
        let p = Program::compile(v["expression"].as_str().unwrap()).unwrap();
        let value = p.execute(&ctx).unwrap();
        let Value::Bool(b) = value else {
            panic!("variable {} is not a bool: {value:?}", v["name"])
        };
        variables.insert(v["name"].as_str().unwrap().to_owned(), json!(b));
    }
    ctx.add_variable("variables", Json::Object(variables))
        .unwrap();
    for v in policy["spec"]["validations"].as_array().unwrap() {
        let p = Program::compile(v["expression"].as_str().unwrap()).unwrap();
        match p.execute(&ctx) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => return Err(v["message"].as_str().unwrap().to_owned()),
            other => panic!(
                "validation {} did not evaluate to a bool: {other:?}",
                v["expression"]
            ),
        }
    }
    Ok(())
}

fn key(spec: Json) -> Json {
    json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
           "metadata": {"name": "payments-dek", "namespace": "team-a"}, "spec": spec})
}

#[test]
fn irreversible_key_changes_need_the_key_admin_verbs() {
    let objects = rendered();
    let policy = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .expect("the chart renders the admission policy by default");
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));

    let edit = verbs_for(&objects, "edit");
    let admin = verbs_for(&objects, "admin");
    let oncall = verbs_for(&objects, "keyward-key-admin");
    assert!(edit.contains("patch") && !edit.contains("delete") && !edit.contains("compromise"));
    assert!(admin.contains("compromise") && admin.contains("schedule-deletion"));
    assert!(oncall.contains("compromise") && !oncall.contains("patch"));

    let active = key(json!({"algorithm": "aes-256", "desiredState": "Active"}));
    let compromised = key(json!({"algorithm": "aes-256", "desiredState": "Compromised"}));
    let deleting = key(json!({"algorithm": "aes-256", "deletion": {"scheduled": true}}));
    let no_spec = json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                         "metadata": {"name": "k", "namespace": "team-a"}});

    // Ordinary work needs nothing beyond edit.
    assert_eq!(admit(policy, &active, None, &edit), Ok(()));
    assert_eq!(admit(policy, &no_spec, None, &edit), Ok(()));
    let suspended = key(json!({"algorithm": "aes-256", "desiredState": "Suspended"}));
    assert_eq!(admit(policy, &suspended, Some(&active), &edit), Ok(()));

    // Compromise: edit is refused (on update and on create), admin and key-admin alone pass.
    let refused = admit(policy, &compromised, Some(&active), &edit).unwrap_err();
    assert!(refused.contains("'compromise' verb"), "{refused}");
    assert!(admit(policy, &compromised, None, &edit).is_err());
    assert_eq!(admit(policy, &compromised, Some(&active), &admin), Ok(()));
    assert_eq!(admit(policy, &compromised, Some(&active), &oncall), Ok(()));
    // A key that is already Compromised may still be edited (access, policy) by edit.
    let mut changed = compromised.clone();
    changed["spec"]["access"] =
        json!({"serviceAccounts": [{"namespace": "team-a", "name": "app"}]});
    assert_eq!(admit(policy, &changed, Some(&compromised), &edit), Ok(()));

    // Scheduling destruction: same rule (on update and create); keeping or cancelling a
    // scheduled deletion is not.
    let refused = admit(policy, &deleting, Some(&active), &edit).unwrap_err();
    assert!(refused.contains("'schedule-deletion' verb"), "{refused}");
    assert!(admit(policy, &deleting, None, &edit).is_err());
    assert_eq!(admit(policy, &deleting, Some(&active), &admin), Ok(()));
    assert_eq!(admit(policy, &deleting, Some(&deleting), &edit), Ok(()));
    assert_eq!(admit(policy, &active, Some(&deleting), &edit), Ok(()));
    // A verb granted on another resource does not count.
    let mut elsewhere = BTreeSet::new();
    elsewhere.insert("compromise".to_owned());
    let mut wrong_resource = policy.clone();
    let expr = wrong_resource["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap()
        .replace("resource('managedkeys')", "resource('rotationpolicies')");
    wrong_resource["spec"]["validations"][0]["expression"] = json!(expr);
    assert!(admit(&wrong_resource, &compromised, Some(&active), &elsewhere).is_err());
}
