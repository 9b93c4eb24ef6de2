//! The runner's Node object and its heartbeat (Lease in kube-node-lease,
//! renewed every 10 s; status with a Ready condition, every 30 s), as a
//! kubelet keeps them, so the node-lifecycle controller sees a live node.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Config;

const MANAGER: &str = "raftkv-podrunner";

/// Node allocatable the runner advertises (the scheduler's view; nothing is enforced).
pub const NODE_CPU: u64 = 16;
pub const NODE_MEMORY_BYTES: u64 = 64 << 30;

fn node_status(cfg: &Config, now: jiff::Timestamp) -> serde_json::Value {
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now.to_string(), "lastTransitionTime": cfg.started.to_string()})
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"status": {
        "capacity": {"cpu": NODE_CPU.to_string(), "memory": format!("{}Ki", NODE_MEMORY_BYTES >> 10), "pods": "250", "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": NODE_CPU.to_string(), "memory": format!("{}Ki", NODE_MEMORY_BYTES >> 10), "pods": "250", "ephemeral-storage": "100Gi"},
        "conditions": [
            cond("Ready", "True", "KubeletReady", "raftkv pod runner is posting ready status"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
        ],
        "addresses": [{"type": "InternalIP", "address": cfg.net.host_ip()}, {"type": "Hostname", "address": cfg.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "raftkv-e2e", "systemUUID": "raftkv-e2e", "bootID": cfg.started.to_string(),
            "kernelVersion": kernel.trim(), "osImage": "raftkv pod runner (processes, no containers)",
            "containerRuntimeVersion": "raftkv-podrunner://0.1.0", "kubeletVersion": cfg.k8s_version,
            "kubeProxyVersion": cfg.k8s_version, "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        }
    }})
}

/// Creates or updates the Node and reports it Ready.
pub async fn register(client: &kube::Client, cfg: &Config) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": {
            "kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": if std::env::consts::ARCH == "x86_64" { "amd64" } else { "arm64" },
            "raftkv.io/pod-runner": "true"}},
        "spec": {"podCIDR": cfg.net.pod_cidr(), "podCIDRs": [cfg.net.pod_cidr()]}
    });
    nodes
        .patch(
            &cfg.node_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(node),
        )
        .await?;
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(node_status(cfg, jiff::Timestamp::now())),
        )
        .await?;
    Ok(())
}

async fn renew_lease(client: &kube::Client, cfg: &Config) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": cfg.node_name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40,
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
    });
    leases
        .patch(
            &cfg.node_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

/// Keeps the Lease and the status fresh until `stop`.
pub async fn heartbeat(client: kube::Client, cfg: Config, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = renew_lease(&client, &cfg).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if n.is_multiple_of(3)
            && let Err(e) = register(&client, &cfg).await
        {
            tracing::warn!(error = %e, "node status update failed");
        }
        n += 1;
    }
}
