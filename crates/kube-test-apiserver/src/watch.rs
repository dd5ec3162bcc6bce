//! Watch: event streams with history, 410 Expired, bookmarks and initial events.

use crate::prelude::*;

/// Whether a change is one a watch with namespace `ns` and query `q` delivers: the same
/// selectors as a list (`routes::filter`), checked on the object in place (every change of a
/// type reaches every watch of that type, so a copy here was one per watch per change).
pub(crate) fn matches(c: &Change, ns: Option<&str>, q: &HashMap<String, String>) -> bool {
    if ns.is_some_and(|n| n != c.namespace) {
        return false;
    }
    let selected = |key: &str, f: fn(&str, &Value) -> Result<bool, String>| {
        q.get(key)
            .filter(|s| !s.is_empty())
            .is_none_or(|s| f(s, &c.object).unwrap_or(false))
    };
    selected("labelSelector", crate::store::labels_match)
        && selected("fieldSelector", crate::store::fields_match)
}

pub(crate) fn watch(
    inner: Arc<Inner>,
    rt: ResType,
    version: String,
    ns: Option<String>,
    q: HashMap<String, String>,
) -> Response {
    let key = (rt.group.clone(), rt.plural.clone());
    let mut live = inner.changes.subscribe();
    let mut closed = inner.close_watches.subscribe();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let api_version = rt.api_version(&version);
    let requested: Option<u64> = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0 && !initial_events);

    // Initial part, computed under the lock together with the position in the stream.
    let (mut initial, mut last_rv, expired) = {
        let st = inner.state.lock().expect("lock");
        match requested {
            Some(rv) if rv < st.oldest_resumable() => {
                (Vec::new(), st.rv, Some((rv, st.oldest_resumable())))
            }
            Some(rv) => {
                let ev: Vec<Value> = st
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.key == key && matches(c, ns.as_deref(), &q))
                    .map(|c| json!({"type": c.etype, "object": c.object}))
                    .collect();
                (ev, st.rv, None)
            }
            None => {
                let mut items = st.list(&rt, ns.as_deref());
                let _ = filter(&mut items, &q);
                (
                    items
                        .into_iter()
                        .map(|o| json!({"type": "ADDED", "object": o}))
                        .collect(),
                    st.rv,
                    None,
                )
            }
        }
    };
    for e in &mut initial {
        e["object"]["apiVersion"] = api_version.clone().into();
    }
    if initial_events {
        initial.push(json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
    }
    let stream = async_stream_lines(move |tx| async move {
        if let Some((rv, oldest)) = expired {
            let e = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {rv} ({oldest})"), "reason": "Expired", "code": 410}});
            let _ = tx.send(e).await;
            return;
        }
        for e in initial {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = closed.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(b).await.is_err() { return; }
                }
                c = live.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last_rv { continue; }
                        last_rv = c.rv;
                        if c.key != key || !matches(&c, ns.as_deref(), &q) { continue; }
                        let mut o = c.object.clone();
                        o["apiVersion"] = api_version.clone().into();
                        if tx.send(json!({"type": c.etype, "object": o})).await.is_err() { return; }
                    }
                    // Too slow to keep up: end the watch; the client resumes from its last RV.
                    Err(_) => return,
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// A body stream fed by a task through a channel of JSON events (one per line).
pub(crate) fn async_stream_lines<F, Fut>(
    f: F,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(256);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = v.to_string();
        line.push('\n');
        Some((Ok(Bytes::from(line)), rx))
    })
}
