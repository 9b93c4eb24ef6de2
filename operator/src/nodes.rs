//! How the operator reaches each node's admin API (port 2381), and the calls
//! it makes. Address resolution is pluggable ([`AdminAddress`]): in a cluster
//! the pod's stable DNS name; a test or an out-of-cluster operator can use the
//! pod IP or any mapping of its own.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use raftkv_client::admin_proto as admin;
use raftkv_client::{Admin, ClientError};

use crate::crd::KVCluster;
use crate::error::{Error, Result};
use crate::model::{MapObs, MemberAddr, NodeInfo, Replicas, ShardObs};
use crate::planner::Member;
use crate::resources::{ADMIN_PORT, pod_host};

/// How long one admin call may take before the node counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Membership changes wait for a Raft commit (the node bounds them itself).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the operator finds a pod's admin endpoint (`host:port`).
pub trait AdminAddress: Send + Sync + 'static {
    /// None when the pod cannot be reached yet (e.g. it has no IP).
    fn admin_endpoint(&self, kvc: &KVCluster, pod: &Pod) -> Option<String>;
}

/// `<pod>.<headless>.<ns>.svc.<domain>:2381` — what nodes advertise; works in cluster.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub cluster_domain: String,
}

impl AdminAddress for ClusterDns {
    fn admin_endpoint(&self, kvc: &KVCluster, pod: &Pod) -> Option<String> {
        // A pod without an IP has no DNS record yet; asking would only wait for a timeout.
        pod.status.as_ref()?.pod_ip.as_ref()?;
        Some(format!(
            "{}:{ADMIN_PORT}",
            pod_host(kvc, &pod.name_any(), &self.cluster_domain)
        ))
    }
}

/// `<pod IP>:2381` — for an operator outside the cluster network that can
/// route to pod IPs (the e2e harness's network).
#[derive(Debug, Clone, Copy)]
pub struct PodIp;

impl AdminAddress for PodIp {
    fn admin_endpoint(&self, _: &KVCluster, pod: &Pod) -> Option<String> {
        let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
        Some(if ip.contains(':') {
            format!("[{ip}]:{ADMIN_PORT}")
        } else {
            format!("{ip}:{ADMIN_PORT}")
        })
    }
}

impl<F> AdminAddress for F
where
    F: Fn(&KVCluster, &Pod) -> Option<String> + Send + Sync + 'static,
{
    fn admin_endpoint(&self, kvc: &KVCluster, pod: &Pod) -> Option<String> {
        self(kvc, pod)
    }
}

pub type SharedAdminAddress = Arc<dyn AdminAddress>;

fn node_err(call: &'static str, pod: &str, e: impl std::fmt::Display) -> Error {
    Error::Node {
        call,
        pod: pod.to_string(),
        message: e.to_string(),
    }
}

/// Sorts a failed admin call into "the node said no" (shown as a refusal) and transient failures.
fn classify(call: &'static str, pod: &str, e: ClientError) -> Error {
    match &e {
        ClientError::Status(s) if s.code() == tonic::Code::FailedPrecondition => Error::Refused {
            call,
            pod: pod.to_string(),
            message: s.message().to_string(),
        },
        _ => node_err(call, pod, e),
    }
}

async fn timed<T>(
    call: &'static str,
    pod: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| classify(call, pod, e)),
        Err(_) => Err(node_err(call, pod, format!("no answer within {limit:?}"))),
    }
}

pub async fn node_status(pod: &str, endpoint: &str) -> Result<NodeInfo> {
    let mut c = Admin::node(endpoint).map_err(|e| node_err("NodeStatus", pod, e))?;
    let r = timed("NodeStatus", pod, CALL_TIMEOUT, async {
        Ok(c.node_status(admin::NodeStatusRequest {}).await?.into_inner())
    })
    .await?;
    Ok(node_info(r))
}

pub async fn cluster_map(pod: &str, endpoint: &str) -> Result<MapObs> {
    let mut c = Admin::node(endpoint).map_err(|e| node_err("ClusterMap", pod, e))?;
    let r = timed("ClusterMap", pod, CALL_TIMEOUT, async {
        Ok(c.cluster_map(admin::ClusterMapRequest { linearizable: false })
            .await?
            .into_inner())
    })
    .await?;
    Ok(map_obs(r))
}

fn port(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

pub fn node_info(r: admin::NodeStatusResponse) -> NodeInfo {
    NodeInfo {
        node_id: r.node_id,
        joined: r.joined,
        cluster_id: r.cluster_id,
        ready: r.ready,
        draining: r.draining,
        build_version: r.build_version,
        member: MemberAddr {
            host: r.advertise_host,
            client_port: port(r.client_port),
            peer_port: port(r.peer_port),
            admin_port: port(r.admin_port),
        },
        shards: r
            .shards
            .into_iter()
            .filter(|s| !s.meta)
            .map(|s| ShardObs {
                shard: s.shard,
                leading: s.role == "leader",
            })
            .collect(),
    }
}

pub fn map_obs(r: admin::ClusterMapResponse) -> MapObs {
    let mut shards = vec![Replicas::default(); r.shard_count as usize];
    for s in r.shards {
        if let Some(slot) = shards.get_mut(s.shard as usize) {
            *slot = Replicas {
                voters: s.voters,
                learners: s.learners,
            };
        }
    }
    MapObs {
        version: r.version,
        shard_count: r.shard_count,
        replication_factor: r.replication_factor,
        nodes: r
            .nodes
            .into_iter()
            .map(|m| {
                (
                    m.node_id,
                    MemberAddr {
                        host: m.host,
                        client_port: port(m.client_port),
                        peer_port: port(m.peer_port),
                        admin_port: port(m.admin_port),
                    },
                )
            })
            .collect(),
        shards,
        meta_voters: r.meta_voters,
    }
}

pub fn proto_member(m: &Member) -> admin::Member {
    admin::Member {
        node_id: m.node_id,
        host: m.addr.host.clone(),
        client_port: m.addr.client_port.into(),
        peer_port: m.addr.peer_port.into(),
        admin_port: m.addr.admin_port.into(),
    }
}

pub async fn bootstrap(
    pod: &str,
    endpoint: &str,
    cluster_id: &str,
    shards: u32,
    replication_factor: u32,
    members: &[Member],
) -> Result<()> {
    let mut c = Admin::node(endpoint).map_err(|e| node_err("Bootstrap", pod, e))?;
    let req = admin::BootstrapRequest {
        cluster_id: cluster_id.to_string(),
        shards,
        replication_factor,
        members: members.iter().map(proto_member).collect(),
    };
    timed("Bootstrap", pod, CHANGE_TIMEOUT, async { Ok(c.bootstrap(req).await?) }).await?;
    Ok(())
}

/// Drain (`true`) or undrain the node at `endpoint`.
pub async fn set_drain(pod: &str, endpoint: &str, drain: bool) -> Result<()> {
    let call = if drain { "DrainLeaders" } else { "UndrainLeaders" };
    let mut c = Admin::node(endpoint).map_err(|e| node_err(call, pod, e))?;
    timed(call, pod, CHANGE_TIMEOUT, async {
        if drain {
            c.drain_leaders(admin::DrainRequest {}).await?;
        } else {
            c.undrain_leaders(admin::DrainRequest {}).await?;
        }
        Ok(())
    })
    .await
}

/// A membership change on `pod`'s behalf, bounded by [`CHANGE_TIMEOUT`]; its answer is not needed.
async fn change<T>(call: &'static str, pod: &str, fut: impl Future<Output = Result<T, ClientError>>) -> Result<()> {
    timed(call, pod, CHANGE_TIMEOUT, fut).await.map(|_| ())
}

/// Cluster-wide membership calls, sent to any joined node (it forwards to the leader).
pub struct Cluster {
    admin: Admin,
}

impl Cluster {
    pub fn new(endpoints: &[String]) -> Result<Self> {
        Ok(Cluster {
            admin: Admin::new(endpoints).map_err(|e| node_err("connect", "cluster", e))?,
        })
    }

    pub async fn add_node(&self, pod: &str, m: &Member) -> Result<()> {
        change("AddNode", pod, self.admin.add_node(proto_member(m))).await
    }

    pub async fn remove_node(&self, pod: &str, node_id: u64) -> Result<()> {
        change("RemoveNode", pod, self.admin.remove_node(node_id)).await
    }

    pub async fn transfer_leader(&self, pod: &str, shard: u32, to: u64) -> Result<()> {
        change("TransferLeader", pod, self.admin.transfer_leader(shard, to)).await
    }

    pub async fn replace_meta_voter(&self, pod: &str, old: u64, new: u64) -> Result<()> {
        change("ReplaceMetaVoter", pod, self.admin.replace_meta_voter(old, new)).await
    }

    pub async fn add_replica(&self, pod: &str, shard: u32, node_id: u64) -> Result<()> {
        change("AddReplica", pod, self.admin.add_replica(shard, node_id)).await
    }

    pub async fn promote_replica(&self, pod: &str, shard: u32, node_id: u64) -> Result<()> {
        change("PromoteReplica", pod, self.admin.promote_replica(shard, node_id)).await
    }

    pub async fn remove_replica(&self, pod: &str, shard: u32, node_id: u64) -> Result<()> {
        change("RemoveReplica", pod, self.admin.remove_replica(shard, node_id)).await
    }
}
