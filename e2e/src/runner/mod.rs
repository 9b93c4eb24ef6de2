//! The pod runner: the kubelet of one Node, running that node's pods as
//! local processes (see the crate docs for the picture).
//!
//! Every second the runner lists the pods bound to its node, the Services
//! and EndpointSlices (→ the hosts file every pod gets) and the claims of
//! its StorageClass; each pod is owned by one task ([`pod::run`]) that gets
//! the pod's latest object through a watch channel. Listing instead of
//! watching keeps the loop trivially correct after API hiccups; the cluster
//! is small. This module is the binary's adapter layer, hence `anyhow`.

pub mod node;
pub mod pod;
pub mod provision;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dns::{self, Record};
use crate::net::{self, NetConfig};

/// The runner's settings (flags of `raftkv-podrunner run`).
#[derive(Debug, Clone)]
pub struct Config {
    pub state: PathBuf,
    pub kubeconfig: PathBuf,
    pub node_name: String,
    pub bin_dir: PathBuf,
    pub net: NetConfig,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// This binary, re-executed as the `enter`/`join` helper.
    pub self_exe: PathBuf,
    pub k8s_version: String,
    pub started: jiff::Timestamp,
}

/// What pod tasks share.
pub struct Ctx {
    pub cfg: Config,
    pub client: kube::Client,
    pub dns: watch::Receiver<Arc<Vec<Record>>>,
}

struct PodHandle {
    tx: watch::Sender<Pod>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    index: u16,
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Removes pod network namespaces a previous runner of this cluster left
/// (after a crash), with any process still in them.
async fn sweep_leftovers(cfg: &NetConfig) {
    let Ok(list) = net::run("ip", &["netns", "list"]).await else {
        return;
    };
    let prefix = cfg.pod_netns_prefix();
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
    {
        if let Ok(idx) = ns[prefix.len()..].parse::<u16>() {
            if let Ok(pids) = net::run("ip", &["netns", "pids", ns]).await {
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            tracing::info!(netns = %ns, "removing leftover pod network");
            net::delete_pod_network(cfg, idx).await;
        }
    }
}

/// Runs until `shutdown`; then kills every pod process and removes every
/// pod network namespace before returning.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = client_from(&cfg.kubeconfig).await?;
    sweep_leftovers(&cfg.net).await;
    let _ = std::fs::remove_dir_all(cfg.state.join("runner"));
    std::fs::create_dir_all(cfg.state.join("runner"))?;
    let volumes_dir = cfg.state.join("volumes");
    std::fs::create_dir_all(&volumes_dir)?;
    provision::ensure_storage_class(&client).await.context("StorageClass")?;
    node::register(&client, &cfg).await.context("register Node")?;
    tracing::info!(node = %cfg.node_name, pod_cidr = %cfg.net.pod_cidr(), "node registered");
    let hb_stop = shutdown.child_token();
    let hb = tokio::spawn(node::heartbeat(client.clone(), cfg.clone(), hb_stop.clone()));

    let (dns_tx, dns_rx) = watch::channel(Arc::new(Vec::<Record>::new()));
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        client: client.clone(),
        dns: dns_rx,
    });
    let mut pods: BTreeMap<String, PodHandle> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // DNS records.
        let svcs = Api::<Service>::all(client.clone()).list(&ListParams::default()).await;
        let slices = Api::<EndpointSlice>::all(client.clone())
            .list(&ListParams::default())
            .await;
        match (svcs, slices) {
            (Ok(s), Ok(e)) => {
                let recs = dns::cluster_records(&s.items, &e.items);
                if **dns_tx.borrow() != recs {
                    dns_tx.send_replace(Arc::new(recs));
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "listing services/endpointslices failed"),
        }
        if let Err(e) = provision::step(&client, &volumes_dir).await {
            tracing::warn!(error = format!("{e:#}"), "provisioning pass failed");
        }
        let listed = match Api::<Pod>::all(client.clone()).list(&on_node).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing pods failed");
                continue;
            }
        };
        // Finished tasks free their network index.
        pods.retain(|_, h| !h.task.is_finished());
        let mut seen = BTreeSet::new();
        for p in listed {
            let Some(uid) = p.metadata.uid.clone() else { continue };
            seen.insert(uid.clone());
            if let Some(h) = pods.get(&uid) {
                h.tx.send_replace(p);
                continue;
            }
            // A pod already gone through its final delete (or terminal before we saw it) is not restarted.
            let used: BTreeSet<u16> = pods.values().map(|h| h.index).collect();
            let Some(index) = net::allocate_index(&used) else {
                tracing::error!("pod network full");
                continue;
            };
            let (tx, rx) = watch::channel(p);
            let stop = shutdown.child_token();
            let task = tokio::spawn(pod::run(ctx.clone(), index, rx, stop.clone()));
            pods.insert(uid, PodHandle { tx, stop, task, index });
        }
        for (uid, h) in &pods {
            if !seen.contains(uid) && !h.tx.is_closed() {
                // Gone from the API: dropping the sender tells the task.
                h.stop.cancel();
            }
        }
    }
    tracing::info!(pods = pods.len(), "shutting down: stopping every pod");
    hb_stop.cancel();
    for (_, h) in pods {
        h.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), h.task).await;
    }
    let _ = hb.await;
    sweep_leftovers(&cfg.net).await;
    Ok(())
}
