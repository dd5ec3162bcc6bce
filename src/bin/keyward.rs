//! The `keyward` command: controller, CSI provider, CRD generation and operator tools.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keyward",
    version = keyward::crypto::module::version_line(),
    about = "Kubernetes-native key management"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the ManagedKey controller.
    Controller(Box<keyward::controller::cli::ControllerArgs>),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Compliance report: every ManagedKey, its state, rotation age against policy, overdue
    /// rotations, pending deletions and the KEK in use.
    Report {
        /// Output format: table or json.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
        /// Only this namespace (default: all).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// KEK operations.
    #[command(subcommand)]
    Kek(KekCmd),
    /// Disaster recovery: write every ManagedKey, RotationPolicy and key storage object and
    /// the shared keys to one integrity-protected file (key material stays wrapped under the
    /// KEK; the KEK itself is never in it).
    Backup(keyward::backup::cli::BackupArgs),
    /// Recreate a backup in this cluster: the same versions, bytes and object versions.
    /// Checks everything before the first write; safe to run again.
    Restore(keyward::backup::cli::RestoreArgs),
    /// Write the CRD YAML files (default: ./crds).
    Crdgen {
        /// Output directory.
        #[arg(long, default_value = "crds")]
        out: std::path::PathBuf,
    },
    /// Serve the Kubernetes KMS v2 plugin API on a unix socket, so kube-apiserver encrypts
    /// Secrets at rest under a keyward KEK (a static pod beside the apiserver).
    KmsPlugin(keyward::kms::KmsPluginArgs),
    /// The kubectl plugin's commands (`kubectl keyward ...` when this binary is installed as
    /// `kubectl-keyward` on PATH).
    Kubectl(KubectlCli),
    /// Run the CSI provider for the Secrets Store CSI Driver (a DaemonSet on every node).
    Provider(keyward::provider::ProviderArgs),
    /// Check a running provider: call `Version` on its socket as the CSI driver does; exit 0
    /// when it answers v1alpha1 (the DaemonSet's liveness and readiness probe).
    ProviderProbe {
        /// The provider's socket.
        #[arg(
            long,
            default_value = "/var/run/secrets-store-csi-providers/keyward.sock"
        )]
        socket: std::path::PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
}

/// `kubectl keyward`: operator commands on one ManagedKey, and the audit tools.
#[derive(Parser)]
#[command(name = "kubectl keyward", version = keyward::crypto::module::version_line())]
struct KubectlCli {
    #[command(flatten)]
    global: keyward::plugin::Global,
    #[command(subcommand)]
    cmd: KubectlCmd,
}

#[derive(Subcommand)]
enum KubectlCmd {
    #[command(flatten)]
    Key(keyward::plugin::Command),
    /// Audit log tools (as `keyward audit`).
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum KekCmd {
    /// Create a new KEK version and make it current; controllers rewrap every envelope in
    /// the background and old versions keep unwrapping meanwhile.
    Rotate {
        /// Namespace the controller runs in (where the local root-key Secret lives).
        #[arg(long, env = "POD_NAMESPACE", default_value = "keyward-system")]
        namespace: String,
        /// The same KEK flags the controller uses.
        #[command(flatten)]
        kek: keyward::kek::config::KekArgs,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check a log's hash chain, signed checkpoints and their cadence across its rotated
    /// files, and (with an anchor) that its tail was not cut; names the first bad record.
    Verify {
        /// The audit files (`audit.log`, `audit.log.1`, ...) or a directory holding them;
        /// any order: they are chained by sequence number.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Public key (64 hex chars) that verifies checkpoints.
        #[arg(long)]
        public_key: Option<std::path::PathBuf>,
        /// The anchor (JSON) the controller wrote at its last checkpoint, saved to a file.
        #[arg(long, conflicts_with = "anchor_from_cluster")]
        anchor: Option<std::path::PathBuf>,
        /// Read the anchor of this replica (pod name) from the ConfigMap keyward-audit-anchor
        /// in --namespace, through the current kubeconfig.
        #[arg(long, value_name = "POD")]
        anchor_from_cluster: Option<String>,
        /// Namespace of the controller (with --anchor-from-cluster).
        #[arg(long, env = "POD_NAMESPACE", default_value = "keyward-system")]
        namespace: String,
    },
    /// Create an audit signing key pair: PREFIX.key (secret) and PREFIX.pub.
    Keygen {
        /// Path prefix.
        prefix: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Installed as `kubectl-keyward`, kubectl runs it for `kubectl keyward ...`.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let as_plugin = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl-keyward"));
    let cli = if as_plugin {
        Cli {
            cmd: Cmd::Kubectl(KubectlCli::parse()),
        }
    } else {
        Cli::parse()
    };
    // KEYWARD_LOG_FORMAT (the chart's logFormat): `json` for log pipelines, `text` otherwise.
    let json = match std::env::var("KEYWARD_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text" | "") | Err(_) => false,
        Ok(other) => {
            anyhow::bail!("KEYWARD_LOG_FORMAT={other:?} is not a log format: use text or json")
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into()),
        )
        .with_writer(std::io::stderr)
        // No colour codes in a log pipeline (kubectl logs, a collector): only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    // The `fips` build stops here unless the module passed its self tests and is in FIPS
    // mode; every TLS user then takes this build's provider from the process default.
    let module = keyward::crypto::module::self_check()?;
    keyward::tls::install_default()?;
    if matches!(
        cli.cmd,
        Cmd::Controller(_) | Cmd::Provider(_) | Cmd::KmsPlugin(_)
    ) {
        tracing::info!(
            module = module.name,
            version = %module.version,
            fips = module.fips,
            tls_fips = keyward::tls::is_fips(),
            "cryptographic module"
        );
    }
    match cli.cmd {
        Cmd::Kek(KekCmd::Rotate { namespace, kek }) => {
            // Only the in-cluster root key needs the API; a KMS plugin's KEK (HSM, AWS KMS)
            // is rotated from a control-plane node before the apiserver is reachable.
            let client = if keyward::kms::check_backend(&kek).is_err() {
                Some(kube::Client::try_default().await?)
            } else {
                None
            };
            let ring = keyward::kek::config::build_keyring(&kek, client, &namespace).await?;
            let v = ring.primary().rotate().await?;
            println!(
                "KEK {} rotated: version {v} is now current; controllers rewrap envelopes within their requeue interval",
                ring.primary().kek_id()
            );
        }
        Cmd::Controller(args) => keyward::controller::cli::run(*args).await?,
        Cmd::Backup(args) => match keyward::backup::cli::run_backup(&args).await {
            Ok(line) => eprintln!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Restore(args) => match keyward::backup::cli::run_restore(&args).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Kubectl(KubectlCli {
            global,
            cmd: KubectlCmd::Key(cmd),
        }) => match keyward::plugin::run(&global, cmd).await {
            Ok((text, yes)) => {
                println!("{text}");
                if !yes {
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        Cmd::Kubectl(KubectlCli {
            cmd: KubectlCmd::Audit(cmd),
            ..
        })
        | Cmd::Audit(cmd) => audit(cmd).await?,
        Cmd::Report { output, namespace } => {
            use keyward::crd::{ManagedKey, RotationPolicy};
            let client = kube::Client::try_default().await?;
            let (keys, policies): (kube::Api<ManagedKey>, kube::Api<RotationPolicy>) =
                match &namespace {
                    Some(ns) => (
                        kube::Api::namespaced(client.clone(), ns),
                        kube::Api::namespaced(client, ns),
                    ),
                    None => (kube::Api::all(client.clone()), kube::Api::all(client)),
                };
            let lp = kube::api::ListParams::default();
            let rows = keyward::audit::report::build(
                &keys.list(&lp).await?.items,
                &policies.list(&lp).await?.items,
                jiff::Timestamp::now(),
            );
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", keyward::audit::report::table(&rows));
                println!(
                    "\nreport made by keyward {}",
                    keyward::crypto::module::version_line()
                );
            }
        }
        Cmd::Crdgen { out } => {
            std::fs::create_dir_all(&out)?;
            for (file, yaml) in keyward::crd::crds_yaml() {
                std::fs::write(out.join(&file), yaml)?;
                println!("wrote {}", out.join(&file).display());
            }
        }
        Cmd::Provider(args) => keyward::provider::run(args).await?,
        Cmd::KmsPlugin(args) => keyward::kms::run(args).await?,
        Cmd::ProviderProbe {
            socket,
            timeout_seconds,
        } => match keyward::provider::probe::probe(
            &socket,
            std::time::Duration::from_secs(timeout_seconds.max(1)),
        )
        .await
        {
            Ok(v) => println!("ok: keyward provider {v} answers on {}", socket.display()),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    }
    Ok(())
}

/// `keyward audit ...` and `kubectl keyward audit ...`.
async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify {
            files,
            public_key,
            anchor,
            anchor_from_cluster,
            namespace,
        } => {
            let logs = keyward::audit::read_log_files(&files)?;
            let pk = public_key
                .as_deref()
                .map(keyward::audit::load_public_key)
                .transpose()?;
            let anchor = match (anchor, anchor_from_cluster) {
                (Some(path), _) => Some(keyward::audit::anchor::Anchor::parse(
                    &std::fs::read_to_string(&path)?,
                    &path.display().to_string(),
                )?),
                (None, Some(pod)) => {
                    let client = kube::Client::try_default().await?;
                    Some(keyward::audit::anchor::fetch(&client, &namespace, &pod).await?)
                }
                (None, None) => None,
            };
            match keyward::audit::verify_files(&logs, pk.as_ref(), anchor.as_ref()) {
                Ok(s) => println!(
                    "ok: {} records (seq {}..{}) in {} files, {} checkpoints{}, {} records after the last checkpoint, {} gap records ({} events lost to failed writes){}",
                    s.records,
                    s.first_seq,
                    s.last_seq,
                    logs.len(),
                    s.checkpoints,
                    if pk.is_some() {
                        ""
                    } else {
                        " (signatures NOT checked: pass --public-key)"
                    },
                    s.unsigned_tail,
                    s.gaps,
                    s.lost,
                    if s.anchored {
                        ", anchor matched"
                    } else {
                        " (no anchor: a cut tail is not detectable; pass --anchor)"
                    },
                ),
                Err(e) => {
                    eprintln!("TAMPERED: {e}");
                    std::process::exit(2);
                }
            }
        }
        AuditCmd::Keygen { prefix } => {
            let (sk, pk) = keyward::audit::generate_keypair(&prefix)?;
            println!("wrote {} (secret) and {}", sk.display(), pk.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        super::KubectlCli::command().debug_assert();
    }
}
