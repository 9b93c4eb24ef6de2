//! raftkv-operator: turns `KVCluster` resources into running raftkv clusters.
//!
//! ```text
//!             ┌────────────── controller (kube runtime; adapters) ──────────────┐
//! watch ──►   observe ──► planner::plan ──► apply (SSA, admin calls) ──► status
//!  (KVCluster,   │          (pure)             │                           │
//!   owned objs,  │                             │                           │
//!   pods)     nodes::* (admin API, port 2381, address resolution pluggable)
//! ```
//!
//! Pure modules (no I/O, unit-tested exhaustively): [`model`], [`planner`],
//! [`status`], [`resources`]. Adapters: [`observe`], [`nodes`],
//! [`controller`], [`metrics`]. [`run`] is the one entry point, used by the
//! binary and by tests that run the operator in-process.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod observe;
pub mod planner;
pub mod resources;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

pub use crate::error::{Error, Result};
use crate::nodes::{AdminAddress, ClusterDns};

/// How the operator runs.
#[derive(Clone)]
pub struct Config {
    /// Watch only this namespace (None: all namespaces).
    pub namespace: Option<String>,
    /// The cluster's DNS domain (`cluster.local`): part of every node's advertised name.
    pub cluster_domain: String,
    /// Where the operator finds each pod's admin API.
    pub admin_address: Arc<dyn AdminAddress>,
    /// Serve `/metrics` and `/healthz` here (None: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Lease-based leader election (None: act at once, e.g. a single in-process test operator).
    pub leader_election: Option<LeaderElection>,
    /// This replica's name (pod name), shown in Events and the Lease.
    pub instance: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration_seconds: u64,
}

impl Config {
    /// Defaults for an operator in a cluster: DNS names, all namespaces.
    pub fn new() -> Self {
        Config {
            namespace: None,
            cluster_domain: "cluster.local".into(),
            admin_address: Arc::new(ClusterDns {
                cluster_domain: "cluster.local".into(),
            }),
            metrics_addr: None,
            leader_election: None,
            instance: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the operator until `shutdown` is cancelled (or, with leader election,
/// until the lease is lost: then it returns an error so the process restarts
/// instead of acting alongside the new leader).
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) -> Result<()> {
    let metrics = metrics::Metrics::new();
    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics and /healthz");
    }
    let election = config.leader_election.clone();
    let ctx = Arc::new(controller::Context::new(client.clone(), config, metrics));
    let Some(le) = election else {
        controller::run_controller(ctx, shutdown).await;
        return Ok(());
    };
    let manager = LeaseManagerBuilder::new(client, &le.lease_name)
        .with_namespace(&le.namespace)
        .with_identity(&le.identity)
        .with_duration(le.duration_seconds)
        .with_grace(le.duration_seconds.div_ceil(3).max(1))
        .build()
        .await
        .map_err(|e| Error::LeaderElection(e.to_string()))?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %le.lease_name, identity = %le.identity, "waiting for leadership");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                drop(leading);
                let _ = task.await;
                return Ok(());
            }
            changed = leading.changed() => {
                changed.map_err(|e| Error::LeaderElection(e.to_string()))?;
            }
        }
    }
    tracing::info!(identity = %le.identity, "became leader; reconciling");
    let stop = shutdown.child_token();
    let running = tokio::spawn(controller::run_controller(ctx, stop.clone()));
    let lost = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() {
                    break true;
                }
            }
        }
    };
    stop.cancel();
    let _ = running.await;
    // Dropping the receiver makes the lease task release the lease.
    drop(leading);
    let _ = task.await;
    if lost {
        return Err(Error::LeaderElection("lost the lease to another replica".into()));
    }
    Ok(())
}
