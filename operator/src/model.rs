//! What the planner sees: a snapshot of one `KVCluster`'s world, gathered by
//! [`crate::observe`] (Kubernetes objects + every node's admin status) and
//! reduced to plain data, so the planner and the status builder are pure
//! functions of it and tests build it by hand.

use std::collections::BTreeMap;

use crate::crd::Operation;

/// The parts of the spec the planner acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub replicas: u32,
    pub shards: u32,
    pub replication_factor: u32,
    /// Full image reference (`repository:tag`) every node pod should run.
    pub image: String,
    pub paused: bool,
}

/// One `KVCluster`'s observed world.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Given to `Bootstrap`: the KVCluster's uid, so a node of another
    /// cluster (or of a deleted and recreated one) is never mistaken for ours.
    pub cluster_id: String,
    pub desired: Desired,
    /// `.spec.replicas` of the StatefulSet as it exists (None: not created yet).
    pub statefulset_replicas: Option<u32>,
    /// Node pods that exist, by ordinal.
    pub pods: Vec<PodObs>,
    /// The cluster map as a joined node serves it (None: not bootstrapped or no joined node answered).
    pub map: Option<MapObs>,
    /// The operation a previous reconcile recorded in status.
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodObs {
    pub name: String,
    pub ordinal: u32,
    /// The stable DNS name the node advertises: `<pod>.<headless>.<ns>.svc.cluster.local`.
    pub host: String,
    /// The node container's image.
    pub image: Option<String>,
    /// The pod's Ready condition (the node's /readyz).
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    pub node: NodeObs,
}

/// What the node in a pod said through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeObs {
    /// Not asked or no answer (the message says why).
    Unreachable(String),
    Up(NodeInfo),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node_id: u64,
    pub joined: bool,
    /// Empty while unjoined.
    pub cluster_id: String,
    pub ready: bool,
    pub draining: bool,
    pub build_version: String,
    pub member: MemberAddr,
    /// Shard replicas it hosts (the metadata group excluded).
    pub shards: Vec<ShardObs>,
}

/// A node's advertised addresses (what `Bootstrap`/`AddNode` record in the map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddr {
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub admin_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardObs {
    pub shard: u32,
    /// This node is the shard's leader.
    pub leading: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapObs {
    pub version: u64,
    pub shard_count: u32,
    pub replication_factor: u32,
    pub nodes: BTreeMap<u64, MemberAddr>,
    /// Indexed by shard id.
    pub shards: Vec<Replicas>,
    pub meta_voters: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicas {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl Replicas {
    pub fn contains(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

impl PodObs {
    pub fn info(&self) -> Option<&NodeInfo> {
        match &self.node {
            NodeObs::Up(i) => Some(i),
            NodeObs::Unreachable(_) => None,
        }
    }
}

impl Observed {
    pub fn pod(&self, ordinal: u32) -> Option<&PodObs> {
        self.pods.iter().find(|p| p.ordinal == ordinal)
    }

    /// Pods whose node is joined to this cluster.
    pub fn joined(&self) -> impl Iterator<Item = (&PodObs, &NodeInfo)> {
        self.pods.iter().filter_map(|p| {
            p.info()
                .filter(|i| i.joined && i.cluster_id == self.cluster_id)
                .map(|i| (p, i))
        })
    }

    /// Node ids that answer as joined members of this cluster.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.joined().map(|(_, i)| i.node_id).collect()
    }

    /// Whether some reachable node reports itself the leader of `shard`.
    pub fn has_leader(&self, shard: u32) -> bool {
        self.joined()
            .any(|(_, i)| i.shards.iter().any(|s| s.shard == shard && s.leading))
    }
}
