//! Test-only endpoints under /_test: faults, tokens, snapshots.

use crate::prelude::*;

pub(crate) fn admin(inner: &Inner, method: &Method, segs: &[&str], body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct NewToken {
        token: String,
        #[serde(flatten)]
        identity: TokenIdentity,
    }
    match (method.as_str(), segs) {
        ("POST", ["tokens"]) => match serde_json::from_slice::<NewToken>(body) {
            Ok(t) => {
                inner
                    .tokens
                    .lock()
                    .expect("lock")
                    .insert(t.token, t.identity);
                (StatusCode::NO_CONTENT, "").into_response()
            }
            Err(e) => status(400, "BadRequest", format!("token body: {e}"), None),
        },
        ("POST", ["faults"]) => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => {
                inner.faults.lock().expect("lock").push(f);
                (StatusCode::NO_CONTENT, "").into_response()
            }
            Err(e) => status(400, "BadRequest", format!("fault body: {e}"), None),
        },
        ("POST", ["close-watches"]) => {
            inner.close_watches.send_modify(|g| *g += 1);
            (StatusCode::NO_CONTENT, "").into_response()
        }
        ("GET", ["snapshot"]) => {
            let st = inner.state.lock().expect("lock");
            let all: Vec<Value> = st
                .objects
                .values()
                .flat_map(|m| m.values().cloned())
                .collect();
            ok_json(StatusCode::OK, &Value::Array(all))
        }
        _ => status(404, "NotFound", "unknown test endpoint".into(), None),
    }
}
