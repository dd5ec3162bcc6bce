//! The `keyward` command: controller, CSI provider, CRD generation and operator tools.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keyward", version, about = "Kubernetes-native key management")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the CRD YAML files (default: ./crds).
    Crdgen {
        /// Output directory.
        #[arg(long, default_value = "crds")]
        out: std::path::PathBuf,
    },
    /// Run the CSI provider for the Secrets Store CSI Driver (a DaemonSet on every node).
    Provider(keyward::provider::ProviderArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.cmd {
        Cmd::Crdgen { out } => {
            std::fs::create_dir_all(&out)?;
            for (file, yaml) in keyward::crd::crds_yaml() {
                std::fs::write(out.join(&file), yaml)?;
                println!("wrote {}", out.join(&file).display());
            }
        }
        Cmd::Provider(args) => keyward::provider::run(args).await?,
    }
    Ok(())
}
