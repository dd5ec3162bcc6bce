//! The controllers a real cluster runs beside the apiserver whose work tests observe through
//! the API: the garbage collector (owner references, `orphan` and `foregroundDeletion`) and the
//! namespace controller (emptying a Terminating namespace). By default they run synchronously
//! inside the store, after every update and delete, until neither has anything left to do; with
//! `ServerOptions::controllers_delay` they run that long after the write instead, as the
//! eventually consistent controllers of a real cluster do.

use crate::store::{
    Change, DeleteOptions, Propagation, State, TypeKey, finalizers, is_deleting, is_namespace,
    meta, should_remove,
};
use crate::types::ResType;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// An upper bound on controller rounds per write: each round makes progress, so hitting it
/// means a bug here, not a slow cluster.
const MAX_ROUNDS: usize = 10_000;

/// What the garbage collector's graph keeps of one stored object.
struct Node {
    key: TypeKey,
    ns: String,
    name: String,
    uid: String,
    namespaced: bool,
    deleting: bool,
    finalizers: Vec<String>,
    owners: Vec<Value>,
}

/// What the garbage collector decides for one object.
enum Action {
    /// Drop the ownerReferences with these uids from the object.
    StripRefs(usize, Vec<String>),
    /// Delete the object with this propagation policy.
    Delete(usize, Propagation),
    /// Remove one finalizer (the collector's own) from the object.
    DropFinalizer(usize, &'static str),
}

fn has_owners(o: &Value) -> bool {
    o["metadata"]
        .get("ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
}

fn owner_refs(o: &Value) -> Vec<Value> {
    o["metadata"]
        .get("ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether an update from `before` to `after` can give the garbage collector or the namespace
/// controller work: only owner references, deletion and namespaces drive them. Any other
/// update leaves their view (the dependency graph, what is being deleted) as it was, so a pass
/// over every object after it would find nothing; skipping it keeps a write O(1) in the number
/// of stored objects (it was O(n): 10,000 ManagedKeys made the server the benchmark's
/// bottleneck). Deletes always run them.
pub(crate) fn may_give_controllers_work(t: &ResType, before: &Value, after: &Value) -> bool {
    is_namespace(t)
        || [before, after]
            .iter()
            .any(|o| is_deleting(o) || has_owners(o))
}

impl State {
    /// After a write: run the controllers now, or (with a delay configured) mark their work
    /// as due for [`run_delayed`].
    pub(crate) fn settle_or_schedule(&mut self) -> Vec<Arc<Change>> {
        if self.controllers_delay.is_some() {
            self.settle_due.get_or_insert_with(std::time::Instant::now);
            return Vec::new();
        }
        self.settle()
    }

    /// Run the emulated controllers until they are idle; returns their changes.
    pub(crate) fn settle(&mut self) -> Vec<Arc<Change>> {
        let mut all = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let mut round = self.collect_garbage();
            round.extend(self.finish_namespaces());
            if round.is_empty() {
                break;
            }
            all.extend(round);
        }
        all
    }

    fn snapshot(&self) -> Vec<Node> {
        let mut nodes = Vec::new();
        for (key, objs) in &self.objects {
            let namespaced = self.find_type(&key.0, &key.1).is_some_and(|t| t.namespaced);
            for ((ns, name), o) in objs {
                nodes.push(Node {
                    key: key.clone(),
                    ns: ns.clone(),
                    name: name.clone(),
                    uid: meta(o, "uid").unwrap_or_default(),
                    namespaced,
                    deleting: is_deleting(o),
                    finalizers: finalizers(o),
                    owners: owner_refs(o),
                });
            }
        }
        nodes
    }

    /// One round of the garbage collector (pkg/controller/garbagecollector/garbagecollector.go).
    fn collect_garbage(&mut self) -> Vec<Arc<Change>> {
        let nodes = self.snapshot();
        let by_uid: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.uid.as_str(), i))
            .collect();
        // An owner is looked up in the dependent's namespace (or cluster-wide when the owner
        // is cluster-scoped), so a reference across namespaces resolves to nothing
        // (isDangling / classifyReferences).
        let resolve = |dep: &Node, r: &Value| -> Option<usize> {
            let i = *by_uid.get(r.get("uid")?.as_str()?)?;
            let owner = &nodes[i];
            (!owner.namespaced || (dep.namespaced && owner.ns == dep.ns)).then_some(i)
        };
        // owner index -> (dependent index, blockOwnerDeletion) (the graph of graph_builder.go).
        let mut dependents: HashMap<usize, Vec<(usize, bool)>> = HashMap::new();
        for (d, dep) in nodes.iter().enumerate() {
            for r in &dep.owners {
                if let Some(o) = resolve(dep, r) {
                    let blocking = r["blockOwnerDeletion"].as_bool().unwrap_or(false);
                    dependents.entry(o).or_default().push((d, blocking));
                }
            }
        }
        let waiting =
            |n: &Node| n.deleting && n.finalizers.iter().any(|f| f == "foregroundDeletion");
        let mut actions = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let fins = &n.finalizers;
            let deps = dependents.get(&i).map(Vec::as_slice).unwrap_or_default();
            if n.deleting {
                if fins.iter().any(|f| f == "orphan") {
                    // attemptToOrphanWorker: drop this owner from every dependent, then the
                    // finalizer.
                    for (d, _) in deps {
                        actions.push(Action::StripRefs(*d, vec![n.uid.clone()]));
                    }
                    actions.push(Action::DropFinalizer(i, "orphan"));
                }
                if fins.iter().any(|f| f == "foregroundDeletion")
                    && deps.iter().all(|(_, blocking)| !blocking)
                {
                    // processDeletingDependentsItem: no blocking dependent left.
                    actions.push(Action::DropFinalizer(i, "foregroundDeletion"));
                }
                // "being deleted is a one-way trip" (attemptToDeleteItem).
                continue;
            }
            let refs = &n.owners;
            if refs.is_empty() {
                continue;
            }
            // classifyReferences + attemptToDeleteItem.
            let (mut solid, mut gone) = (0, Vec::new());
            let mut waiting_refs = 0;
            for r in refs {
                let uid = r["uid"].as_str().unwrap_or_default().to_string();
                match resolve(n, r) {
                    None => gone.push(uid),
                    Some(o) if waiting(&nodes[o]) => {
                        waiting_refs += 1;
                        gone.push(uid);
                    }
                    Some(_) => solid += 1,
                }
            }
            if solid > 0 {
                if !gone.is_empty() {
                    actions.push(Action::StripRefs(i, gone));
                }
            } else if waiting_refs > 0 && !deps.is_empty() {
                actions.push(Action::Delete(i, Propagation::Foreground));
            } else {
                let policy = if fins.iter().any(|f| f == "orphan") {
                    Propagation::Orphan
                } else if fins.iter().any(|f| f == "foregroundDeletion") {
                    Propagation::Foreground
                } else {
                    Propagation::Background
                };
                actions.push(Action::Delete(i, policy));
            }
        }
        let mut changes = Vec::new();
        for a in actions {
            let i = match &a {
                Action::StripRefs(i, _) | Action::Delete(i, _) | Action::DropFinalizer(i, _) => *i,
            };
            let n = &nodes[i];
            let Some(t) = self.find_type(&n.key.0, &n.key.1).cloned() else {
                continue;
            };
            // The collector acts on the object it decided about, not on a successor.
            let Some(mut cur) = self
                .get(&t, &n.ns, &n.name)
                .filter(|o| meta(o, "uid").as_deref() == Some(n.uid.as_str()))
                .cloned()
            else {
                continue;
            };
            match a {
                Action::StripRefs(_, uids) => {
                    let refs = owner_refs(&cur);
                    let kept: Vec<Value> = refs
                        .iter()
                        .filter(|r| !uids.iter().any(|u| r["uid"] == json!(u)))
                        .cloned()
                        .collect();
                    if kept.len() == refs.len() {
                        continue;
                    }
                    let m = cur["metadata"].as_object_mut().expect("metadata");
                    if kept.is_empty() {
                        m.remove("ownerReferences");
                    } else {
                        m.insert("ownerReferences".into(), kept.into());
                    }
                    changes.push(self.put(&t, &n.ns, &n.name, cur));
                }
                Action::DropFinalizer(_, f) => {
                    let fins = finalizers(&cur);
                    if !fins.iter().any(|x| x == f) {
                        continue;
                    }
                    let kept: Vec<&String> = fins.iter().filter(|x| *x != f).collect();
                    cur["metadata"]["finalizers"] = json!(kept);
                    if let Ok((_, c)) = self.put_or_remove(&t, &n.ns, &n.name, cur) {
                        changes.extend(c);
                    }
                }
                Action::Delete(_, p) => {
                    let opts = DeleteOptions::propagation(p);
                    if let Ok((_, c)) = self.delete_one(&t, &n.ns, &n.name, &opts) {
                        changes.extend(c);
                    }
                }
            }
        }
        changes
    }

    /// One round of the namespace controller for every namespace being deleted
    /// (namespacedResourcesDeleter.Delete in
    /// pkg/controller/namespace/deletion/namespaced_resources_deleter.go).
    fn finish_namespaces(&mut self) -> Vec<Arc<Change>> {
        let Some(nst) = self.find_type("", "namespaces").cloned() else {
            return vec![];
        };
        let deleting: Vec<Value> = self
            .list(&nst, None)
            .into_iter()
            .filter(is_deleting)
            .collect();
        let mut changes = Vec::new();
        for ns_obj in deleting {
            let ns = meta(&ns_obj, "name").unwrap_or_default();
            // updateNamespaceStatusFunc: a namespace being deleted is Terminating.
            if ns_obj.pointer("/status/phase") != Some(&json!("Terminating")) {
                let mut next = ns_obj.clone();
                if !next["status"].is_object() {
                    next["status"] = json!({});
                }
                next["status"]["phase"] = "Terminating".into();
                changes.push(self.put(&nst, "", &ns, next));
            }
            let holds = |o: &Value| {
                o.pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|x| x == "kubernetes"))
            };
            if !holds(&ns_obj) {
                // Already finalized by this controller (or never held by it): nothing to do.
                continue;
            }
            // deleteAllContent: every namespaced object, deleted with Background propagation
            // (deleteCollection / deleteEachItem); objects with finalizers stay until their
            // controllers remove them.
            for (t, name) in self.content(&ns) {
                if let Ok((_, c)) = self.delete_one(
                    &t,
                    &ns,
                    &name,
                    &DeleteOptions::propagation(Propagation::Background),
                ) {
                    changes.extend(c);
                }
            }
            if !self.content(&ns).is_empty() {
                continue;
            }
            // finalizeNamespace: drop the `kubernetes` token through the finalize
            // subresource; the registry removes the namespace once nothing else holds it.
            let Some(mut cur) = self.get(&nst, "", &ns).cloned() else {
                continue;
            };
            let kept: Vec<Value> = cur
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter(|x| *x != "kubernetes").cloned().collect())
                .unwrap_or_default();
            cur["spec"]["finalizers"] = kept.into();
            if should_remove(&nst, &cur) {
                if let Ok((_, c)) = self.remove(&nst, "", &ns) {
                    changes.extend(c);
                }
            } else {
                changes.push(self.put(&nst, "", &ns, cur));
            }
        }
        changes
    }

    /// The objects stored in a namespace, of every namespaced type.
    fn content(&self, ns: &str) -> Vec<(ResType, String)> {
        let mut out = Vec::new();
        for ((g, p), objs) in &self.objects {
            let Some(t) = self.find_type(g, p).filter(|t| t.namespaced) else {
                continue;
            };
            for (ons, name) in objs.keys() {
                if ons == ns {
                    out.push((t.clone(), name.clone()));
                }
            }
        }
        out
    }
}

/// The delayed controllers' loop (only with [`crate::ServerOptions::controllers_delay`]): work
/// marked due by a write runs `delay` later, so tests see what a real cluster shows between a
/// write and the garbage collector's or namespace controller's reaction (dependents still
/// present, a namespace still holding content). Ends when the server is dropped.
pub(crate) async fn run_delayed(
    inner: std::sync::Weak<crate::server::Inner>,
    delay: std::time::Duration,
) {
    let tick = (delay / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(250),
    );
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Watchers hear of what the controllers change as the store records it.
        let mut st = inner.state.lock().expect("lock");
        if let Some(since) = st.settle_due
            && since.elapsed() >= delay
        {
            st.settle_due = None;
            st.settle();
        }
    }
}
