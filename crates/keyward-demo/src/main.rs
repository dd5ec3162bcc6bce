//! `keyward-demo`: the user's story, narrated. On a reachable cluster with keyward installed it
//! runs the kind e2e suite; otherwise the embedded test API server with the real `keyward`
//! controller and provider processes and a Python gRPC client standing in for the CSI driver.

use clap::Parser;
use keyward_demo::story;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "keyward-demo",
    version,
    about = "keyward's user story, end to end"
)]
struct Args {
    /// Run on the embedded test API server even if a cluster is reachable.
    #[arg(long)]
    embedded: bool,
    /// The `keyward` binary to run as controller and provider (default: beside this one, as
    /// cargo builds them into the same target directory).
    #[arg(long, env = "KEYWARD_BIN")]
    keyward_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = story::repo_root();
    if !args.embedded && cluster_reachable() {
        println!(
            "a cluster is reachable through KUBECONFIG: running the kind e2e suite against it"
        );
        let st = std::process::Command::new(repo.join("tests/e2e/kind-e2e.sh"))
            .env("KEYWARD_E2E_EXISTING_CLUSTER", "1")
            .status()?;
        std::process::exit(st.code().unwrap_or(1));
    }
    println!("no cluster reachable: using the embedded test API server");
    let bin = match args.keyward_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("keyward"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release --bin keyward`) or pass --keyward-bin",
        bin.display()
    );
    let opts = story::StoryOptions {
        bin,
        python: story::default_python(&repo),
        repo,
        narrate: true,
    };
    if let Err(e) = story::run(opts).await {
        eprintln!("\nDEMO FAILED: {e:?}");
        std::process::exit(1);
    }
    Ok(())
}

/// Whether `KUBECONFIG` names a cluster that answers (kubectl, 5 s).
fn cluster_reachable() -> bool {
    std::env::var_os("KUBECONFIG").is_some()
        && std::process::Command::new("kubectl")
            .args(["version", "--request-timeout=5s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
