//! raftkv-podrunner: the kubelet of the local e2e cluster (see the crate
//! docs). `run` is the long-running runner; `enter` and `join` are the
//! helpers it re-executes itself as, to set up a container or run an exec
//! probe inside one.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftkv_e2e::net::NetConfig;
use raftkv_e2e::runner::{self, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Runs the pods of a local Kubernetes control plane as local processes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register the node and run its pods until SIGTERM.
    Run {
        /// Cluster state directory (from cluster-up.sh).
        #[arg(long, env = "RAFTKV_CLUSTER_DIR")]
        state_dir: PathBuf,
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "raftkv-e2e-node")]
        node_name: String,
        /// Where image binaries come from (see the image table).
        #[arg(long, env = "RAFTKV_BIN_DIR")]
        bin_dir: PathBuf,
        /// First restart back-off in seconds (the kubelet uses 10).
        #[arg(long, default_value_t = 2)]
        backoff_base_secs: u64,
        /// Back-off cap in seconds (the kubelet uses 300).
        #[arg(long, default_value_t = 60)]
        backoff_max_secs: u64,
        #[arg(long, default_value = "v1.36.3")]
        k8s_version: String,
    },
    /// Set up a container's namespaces and mounts from a spec file, then exec it.
    Enter { spec: PathBuf },
    /// Run a command inside running container process PID (exec probes).
    Join {
        pid: i32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        // The helpers stay single-threaded: no runtime, straight to execve.
        Cmd::Enter { spec } => {
            let text = std::fs::read_to_string(&spec).with_context(|| format!("read {}", spec.display()))?;
            let spec: raftkv_e2e::sandbox::SandboxSpec = serde_json::from_str(&text)?;
            let err = raftkv_e2e::sandbox::enter(&spec).unwrap_err();
            eprintln!("raftkv-podrunner enter: {err}");
            std::process::exit(128);
        }
        Cmd::Join { pid, command } => {
            let err = raftkv_e2e::sandbox::join(pid, &command).unwrap_err();
            eprintln!("raftkv-podrunner join: {err}");
            std::process::exit(126);
        }
        Cmd::Run {
            state_dir,
            kubeconfig,
            node_name,
            bin_dir,
            backoff_base_secs,
            backoff_max_secs,
            k8s_version,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn")),
                )
                .with_ansi(false)
                .init();
            let net = NetConfig::load(&state_dir)?;
            let cfg = Config {
                state: state_dir,
                kubeconfig,
                node_name,
                bin_dir,
                net,
                backoff_base: Duration::from_secs(backoff_base_secs),
                backoff_max: Duration::from_secs(backoff_max_secs),
                self_exe: std::env::current_exe()?,
                k8s_version,
                started: jiff::Timestamp::now(),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler can be installed");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    tracing::info!("signal received, shutting down");
                    s.cancel();
                });
                runner::run(cfg, shutdown).await
            })
        }
    }
}
