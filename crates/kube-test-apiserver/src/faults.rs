//! Fault injection: fail, drop or delay chosen requests so tests can reproduce outages.

use crate::prelude::*;

/// What an injected fault does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Answer with this HTTP status (409, 429, 500...) and a Status body.
    Status(u16),
    /// Drop the connection without an answer.
    Drop,
    /// Only delay (see `delay_ms`), then serve normally.
    Delay,
}

/// Fail (or delay) the next `times` requests matching verb / resource / name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (None = any).
    #[serde(default)]
    pub verb: Option<String>,
    /// Plural resource, optionally with subresource (`managedkeys/status`) (None = any).
    #[serde(default)]
    pub resource: Option<String>,
    /// Object name (None = any).
    #[serde(default)]
    pub name: Option<String>,
    /// How many requests to affect.
    pub times: usize,
    /// What to do.
    pub kind: FaultKind,
    /// Delay before answering, milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

impl Fault {
    /// Fail the next `times` matching requests with HTTP `code`.
    pub fn status(verb: &str, resource: &str, code: u16, times: usize) -> Self {
        Self {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            name: None,
            times,
            kind: FaultKind::Status(code),
            delay_ms: 0,
        }
    }
}

pub(crate) async fn apply_fault(inner: &Inner, verb: &str, t: &Target) -> Option<Response> {
    let resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.plural),
        None => t.plural.clone(),
    };
    let hit = {
        let mut faults = inner.faults.lock().expect("lock");
        let i = faults.iter().position(|f| {
            f.times > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource
                    .as_deref()
                    .is_none_or(|r| r == resource || r == t.plural)
                && f.name
                    .as_deref()
                    .is_none_or(|n| Some(n) == t.name.as_deref())
        })?;
        faults[i].times -= 1;
        let f = faults[i].clone();
        if faults[i].times == 0 {
            faults.remove(i);
        }
        f
    };
    if hit.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hit.delay_ms)).await;
    }
    match hit.kind {
        FaultKind::Delay => None,
        FaultKind::Status(code) => {
            let reason = match code {
                409 => "Conflict",
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => "Unknown",
            };
            let mut r = status(
                code,
                reason,
                format!("injected fault: {code} for {verb} {resource}"),
                None,
            );
            if code == 429 {
                r.headers_mut()
                    .insert("retry-after", "1".parse().expect("header"));
            }
            Some(r)
        }
        // An empty body with a broken length makes hyper drop the connection mid-response.
        FaultKind::Drop => Some(
            Response::builder()
                .status(200)
                .header("content-length", "1000")
                .body(Body::from_stream(futures::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::other("injected drop"))
                })))
                .expect("response"),
        ),
    }
}
