//! `kubectl keyward ...`: the operator's commands for one ManagedKey, so nobody scripts
//! annotations and patches by hand. The same binary runs as `kubectl-keyward` (kubectl finds
//! plugins by that name on PATH) or as `keyward kubectl ...`. Every command is a thin client of
//! the API with the caller's own credentials: what it may do is what their RBAC (and the
//! chart's admission policy for compromise) allows, and the controller does the work.
//!
//! The rendering of what is shown is pure (`view`), so it is tested without a cluster.

pub mod view;

use crate::crd::{DesiredState, ManagedKey, RESTORE_ANNOTATION, ROTATE_NOW_ANNOTATION};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

/// Field manager of every write, so `managedFields` shows who asked.
pub const FIELD_MANAGER: &str = "kubectl-keyward";

/// Errors of the plugin, each telling the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The API refused or could not be reached.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// Cause.
        source: kube::Error,
    },
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The ManagedKey does not exist.
    #[error("ManagedKey {0} not found (check the name and --namespace)")]
    NotFound(String),
    /// An irreversible command without `--yes`.
    #[error("{0}")]
    Confirm(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// `--wait` ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The key cannot produce the requested output.
    #[error("{0}")]
    Key(String),
}

/// Options shared by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Namespace of the ManagedKey (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
}

/// The plugin's commands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Versions, states, next rotation, conditions and who may mount the key.
    Status {
        /// ManagedKey name.
        name: String,
        /// Output: text or json (the ManagedKey's status as stored).
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Rotate now (annotation keyward.io/rotate-now with a fresh request id).
    Rotate {
        /// ManagedKey name.
        name: String,
        /// Wait until the controller has handled the request.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Declare the key compromised: it rotates at once and the old version is never served
    /// again. Irreversible; needs --yes (and the `compromise` verb with the chart's policy).
    Compromise {
        /// ManagedKey name.
        name: String,
        /// Confirm the irreversible change.
        #[arg(long)]
        yes: bool,
    },
    /// Stop serving the key as current until `resume` (older material still processes).
    Suspend {
        /// ManagedKey name.
        name: String,
    },
    /// Serve and rotate the key again after `suspend`.
    Resume {
        /// ManagedKey name.
        name: String,
    },
    /// Bring back a deleted key inside its deletion window: creates the ManagedKey again
    /// with the deleted key's UID in keyward.io/restore-from-uid; the controller takes over
    /// its versions (same bytes) or says why not in the Ready condition.
    Restore {
        /// ManagedKey name (the deleted key's).
        name: String,
        /// UID of the deleted key (its DeletionScheduled Event names it).
        #[arg(long)]
        uid: String,
        /// The key's manifest (as it was applied; the algorithm must match). Without it a
        /// key with only --algorithm is created; add access and policy afterwards.
        #[arg(short = 'f', long, conflicts_with = "algorithm")]
        filename: Option<std::path::PathBuf>,
        /// Algorithm of the deleted key when no manifest is given.
        #[arg(long)]
        algorithm: Option<String>,
        /// Wait until the controller has restored it (or refused).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Whether a service account may mount the key now, and why not.
    CanMount {
        /// ManagedKey name.
        name: String,
        /// The service account, as NAMESPACE/NAME.
        #[arg(long = "as", value_name = "NAMESPACE/NAME")]
        service_account: String,
    },
    /// The public keys of an asymmetric key as a JWKS (from its status; no material).
    Jwks {
        /// ManagedKey name.
        name: String,
    },
}

/// A client for `global`'s context, and the namespace to use.
pub async fn client(global: &Global) -> Result<(kube::Client, String), PluginError> {
    let opts = kube::config::KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_kubeconfig(&opts)
        .await
        .map_err(|e| PluginError::Config(e.to_string()))?;
    let ns = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| PluginError::Config(e.to_string()))?;
    Ok((client, ns))
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PluginError {
    let action = action.into();
    move |source| PluginError::Kube { action, source }
}

async fn get(api: &Api<ManagedKey>, ns: &str, name: &str) -> Result<ManagedKey, PluginError> {
    api.get_opt(name)
        .await
        .map_err(kube_err(format!("reading ManagedKey {ns}/{name}")))?
        .ok_or_else(|| PluginError::NotFound(format!("{ns}/{name}")))
}

async fn merge_patch(
    api: &Api<ManagedKey>,
    ns: &str,
    name: &str,
    patch: serde_json::Value,
    action: &str,
) -> Result<ManagedKey, PluginError> {
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &pp, &Patch::Merge(patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 404 => {
                PluginError::NotFound(format!("{ns}/{name}"))
            }
            e => PluginError::Kube {
                action: format!("{action} {ns}/{name}"),
                source: e,
            },
        })
}

/// Poll the key until `done` says it is, or time out with `what`.
async fn wait_for(
    api: &Api<ManagedKey>,
    ns: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&ManagedKey) -> bool,
) -> Result<ManagedKey, PluginError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(mk) = api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading ManagedKey {ns}/{name}")))?
            && done(&mk)
        {
            return Ok(mk);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PluginError::Timeout(format!(
                "{ns}/{name}: {what} not seen within {}s; is the controller running? (`kubectl keyward status {name}`)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A rotate-now request id that differs from every earlier one.
fn request_id(now: jiff::Timestamp) -> String {
    let mut r = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut r);
    format!(
        "kubectl-{}-{}",
        now.as_second(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Runs one command; returns what to print and whether the answer is "yes" (exit 0) or "no"
/// (exit 1, for `can-mount`).
pub async fn run(global: &Global, cmd: Command) -> Result<(String, bool), PluginError> {
    let (client, ns) = client(global).await?;
    let api: Api<ManagedKey> = Api::namespaced(client, &ns);
    let now = jiff::Timestamp::now();
    match cmd {
        Command::Status { name, output } => {
            let mk = get(&api, &ns, &name).await?;
            if output == "json" {
                let s = serde_json::to_string_pretty(&mk.status).unwrap_or_default();
                return Ok((s, true));
            }
            Ok((view::status(&mk, now), true))
        }
        Command::Rotate {
            name,
            wait,
            timeout_seconds,
        } => {
            let id = request_id(now);
            merge_patch(
                &api,
                &ns,
                &name,
                json!({"metadata": {"annotations": {ROTATE_NOW_ANNOTATION: id}}}),
                "requesting a rotation of",
            )
            .await?;
            if !wait {
                return Ok((format!("rotation of {ns}/{name} requested ({id})"), true));
            }
            let mk = wait_for(
                &api,
                &ns,
                &name,
                Duration::from_secs(timeout_seconds),
                "the rotation",
                |mk| {
                    mk.status
                        .as_ref()
                        .and_then(|s| s.last_rotate_request.as_deref())
                        == Some(id.as_str())
                },
            )
            .await?;
            let v = mk.status.and_then(|s| s.current_version);
            Ok((
                format!(
                    "{ns}/{name} rotated ({id}): current version {}",
                    v.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                ),
                true,
            ))
        }
        Command::Compromise { name, yes } => {
            if !yes {
                return Err(PluginError::Confirm(format!(
                    "compromising {ns}/{name} is irreversible: it rotates at once and its current version is never served again; run again with --yes"
                )));
            }
            set_desired(&api, &ns, &name, DesiredState::Compromised).await?;
            Ok((
                format!("{ns}/{name} declared Compromised; the controller rotates it now"),
                true,
            ))
        }
        Command::Suspend { name } => {
            set_desired(&api, &ns, &name, DesiredState::Suspended).await?;
            Ok((format!("{ns}/{name} suspended"), true))
        }
        Command::Resume { name } => {
            let mk = get(&api, &ns, &name).await?;
            if mk.spec.desired_state == DesiredState::Compromised {
                return Err(PluginError::Usage(format!(
                    "{ns}/{name} is Compromised, which cannot be undone; create a new key"
                )));
            }
            set_desired(&api, &ns, &name, DesiredState::Active).await?;
            Ok((format!("{ns}/{name} resumed"), true))
        }
        Command::Restore {
            name,
            uid,
            filename,
            algorithm,
            wait,
            timeout_seconds,
        } => {
            let mk = restore_object(&ns, &name, &uid, filename.as_deref(), algorithm)?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &mk).await.map_err(|e| match e {
                kube::Error::Api(ref s) if s.code == 409 => PluginError::Usage(format!(
                    "ManagedKey {ns}/{name} exists; a restore creates it again, so delete the new one first (it must not have versions of its own)"
                )),
                e => PluginError::Kube {
                    action: format!("creating ManagedKey {ns}/{name}"),
                    source: e,
                },
            })?;
            if !wait {
                return Ok((
                    format!(
                        "{ns}/{name} created to restore UID {uid}; `kubectl keyward status {name}` shows the outcome"
                    ),
                    true,
                ));
            }
            let mk = wait_for(
                &api,
                &ns,
                &name,
                Duration::from_secs(timeout_seconds),
                "the restore",
                |mk| {
                    mk.status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .is_some_and(|c| c.status == "True" || c.reason.starts_with("Restore"))
                },
            )
            .await?;
            let ready = mk.status.as_ref().and_then(|s| s.true_condition("Ready"));
            match ready {
                Some(_) => Ok((
                    format!(
                        "{ns}/{name} restored: {} versions",
                        mk.status.as_ref().map(|s| s.version_count).unwrap_or(0)
                    ),
                    true,
                )),
                None => {
                    let why = mk
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_default();
                    Err(PluginError::Key(format!(
                        "restore of {ns}/{name} refused: {why}"
                    )))
                }
            }
        }
        Command::CanMount {
            name,
            service_account,
        } => {
            let (sa_ns, sa) = service_account.split_once('/').ok_or_else(|| {
                PluginError::Usage(format!(
                    "--as {service_account:?}: give the service account as NAMESPACE/NAME"
                ))
            })?;
            let mk = get(&api, &ns, &name).await?;
            let answer = view::can_mount(&mk, sa_ns, sa);
            Ok((answer.to_string(), answer.allowed))
        }
        Command::Jwks { name } => {
            let mk = get(&api, &ns, &name).await?;
            let jwks = view::jwks(&mk).map_err(PluginError::Key)?;
            Ok((jwks, true))
        }
    }
}

async fn set_desired(
    api: &Api<ManagedKey>,
    ns: &str,
    name: &str,
    state: DesiredState,
) -> Result<ManagedKey, PluginError> {
    merge_patch(
        api,
        ns,
        name,
        json!({"spec": {"desiredState": state}}),
        "changing spec.desiredState of",
    )
    .await
}

/// The ManagedKey a restore creates: the manifest (or a bare key of `algorithm`) with the
/// restore annotation, in `ns`/`name`, without server-set fields.
pub fn restore_object(
    ns: &str,
    name: &str,
    uid: &str,
    manifest: Option<&std::path::Path>,
    algorithm: Option<String>,
) -> Result<ManagedKey, PluginError> {
    if uid.len() != 36 || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(PluginError::Usage(format!(
            "--uid {:?} is not a UID (36 characters, hex and dashes); the DeletionScheduled Event of the deleted key names it",
            uid.chars().take(64).collect::<String>()
        )));
    }
    let mut value = match (manifest, algorithm) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| PluginError::Usage(format!("-f {}: {e}", path.display())))?;
            let v: serde_json::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
                PluginError::Usage(format!(
                    "-f {}: not a ManagedKey manifest: {e}",
                    path.display()
                ))
            })?;
            if v["kind"] != "ManagedKey" {
                return Err(PluginError::Usage(format!(
                    "-f {}: kind is {}, not ManagedKey",
                    path.display(),
                    v["kind"]
                )));
            }
            json!({"apiVersion": v["apiVersion"], "kind": "ManagedKey",
                   "metadata": {"labels": v["metadata"]["labels"]}, "spec": v["spec"]})
        }
        (None, Some(alg)) => json!({"apiVersion": "keyward.io/v1alpha1", "kind": "ManagedKey",
                                    "metadata": {}, "spec": {"algorithm": alg}}),
        (None, None) => {
            return Err(PluginError::Usage(
                "give the key's manifest (-f) or its --algorithm".into(),
            ));
        }
    };
    if value["metadata"]["labels"].is_null() {
        value["metadata"]
            .as_object_mut()
            .map(|m| m.remove("labels"));
    }
    value["metadata"]["name"] = name.into();
    value["metadata"]["namespace"] = ns.into();
    value["metadata"]["annotations"] = json!({ RESTORE_ANNOTATION: uid });
    if let Some(spec) = value["spec"].as_object_mut() {
        // A restored key starts from its stored state; a pending deletion would destroy it again.
        spec.remove("deletion");
    }
    serde_json::from_value(value)
        .map_err(|e| PluginError::Usage(format!("the ManagedKey to restore is invalid: {e}")))
}
