//! `kube-test-apiserver`: run the test API server until SIGINT/SIGTERM, for poking at it with
//! kubectl by hand. Test support only.

use clap::Parser;
use kube_test_apiserver::{ServerOptions, TestApiServer};
use std::path::PathBuf;

/// Run the test API server.
#[derive(Parser, Debug)]
#[command(name = "kube-test-apiserver", version)]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the kubeconfig here.
    #[arg(long, default_value = "test-apiserver-kubeconfig")]
    kubeconfig: PathBuf,
    /// Run the garbage collector and namespace controller this many milliseconds after the
    /// write that gives them work (default: inside that write).
    #[arg(long)]
    controllers_delay_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let s = TestApiServer::start_with(ServerOptions {
        port: Some(args.port),
        kubeconfig: Some(args.kubeconfig.clone()),
        history: 0,
        controllers_delay: args
            .controllers_delay_ms
            .map(std::time::Duration::from_millis),
    })
    .await?;
    println!(
        "test API server on {} ; kubeconfig {}",
        s.url(),
        args.kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    s.shutdown();
    Ok(())
}
