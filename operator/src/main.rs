//! `raftkv-operator`: the binary around [`raftkv_operator::run`]. Out of a
//! cluster it uses the kubeconfig, in one the service account
//! (`kube::Client::try_default`). SIGTERM/SIGINT stop it gracefully.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use raftkv_operator::nodes::{ClusterDns, PodIp};
use raftkv_operator::{Config, LeaderElection};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AddressMode {
    /// `<pod>.<headless>.<ns>.svc.<domain>:2381` (in cluster).
    Dns,
    /// `<pod IP>:2381` (outside the cluster, where pod IPs are routable).
    PodIp,
}

#[derive(Parser, Debug)]
#[command(version, about = "The raftkv Kubernetes operator")]
struct Args {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "RAFTKV_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    #[arg(long, env = "RAFTKV_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// How to reach each node's admin API.
    #[arg(long, env = "RAFTKV_OPERATOR_NODE_ADDRESS", value_enum, default_value = "dns")]
    node_address: AddressMode,
    #[arg(long, env = "RAFTKV_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so only one replica acts.
    #[arg(long, env = "RAFTKV_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, env = "RAFTKV_OPERATOR_LEASE_NAME", default_value = "raftkv-operator")]
    lease_name: String,
    #[arg(long, env = "RAFTKV_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity (default: the pod name, POD_NAME, or the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "RAFTKV_OPERATOR_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTKV_LOG").unwrap_or_else(|_| "info,kube=warn".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("raftkv-operator-{}", std::process::id()))
    });
    let leader_election = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string());
        Some(LeaderElection {
            namespace,
            lease_name: args.lease_name.clone(),
            identity: identity.clone(),
            duration_seconds: args.lease_seconds,
        })
    } else {
        None
    };
    let config = Config {
        namespace: args.namespace.clone(),
        cluster_domain: args.cluster_domain.clone(),
        admin_address: match args.node_address {
            AddressMode::Dns => Arc::new(ClusterDns {
                cluster_domain: args.cluster_domain.clone(),
            }),
            AddressMode::PodIp => Arc::new(PodIp),
        },
        metrics_addr: Some(args.metrics_addr),
        leader_election,
        instance: Some(identity),
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    raftkv_operator::run(client, config, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
