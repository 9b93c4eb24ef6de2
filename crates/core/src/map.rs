//! The cluster map: which nodes exist (id → addresses) and which nodes host
//! the replicas of each shard. It lives in the metadata Raft group, so it is
//! durable and consistent; every change bumps `version`, and every node serves
//! its copy so clients and nodes can refresh a stale one.
//!
//! Changes are pure functions from one map to the next (`with_*`), validated
//! before they are proposed, so the rules are unit-tested without a cluster.
//!
//! # Replica ids
//!
//! A shard replica's Raft id is its *replica id*, not its node's id, so a
//! shard removed from a node can come back to it as a new incarnation that
//! never answers for the old one's votes and log (CockroachDB's ReplicaID,
//! TiKV's peer id). Replicas placed at bootstrap keep replica id = node id
//! (so do all replicas of clusters created before replica ids existed);
//! every replica added later gets an id from [`ClusterMap::with_new_replica`],
//! taken from `next_replica_id` and never reused. Node ids are below 2^63
//! ([`crate::MAX_NODE_ID`]) and allocated ids start at [`FIRST_REPLICA_ID`],
//! so the two never collide and an id below 2^63 always names its node.
//!
//! # Formats
//!
//! Version 1 (before replica ids) has no `ids`, `pending` or
//! `next_replica_id`. A map that has never allocated an id is still written
//! as version 1, so nodes of the previous release read every record of a
//! cluster until its first replica move after the upgrade.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{NodeId, ReplicaId, ShardId, codec};

/// Format version of an encoded [`ClusterMap`] with replica ids.
pub const MAP_FORMAT: u8 = 2;
/// Format version of a map written before replica ids (and of any map that
/// has allocated none, see the module docs).
pub const MAP_FORMAT_V1: u8 = 1;
/// The first replica id [`ClusterMap::with_new_replica`] hands out: above
/// every node id.
pub const FIRST_REPLICA_ID: ReplicaId = 1 << 63;
/// Most shards a cluster may have (keeps shard ids clear of the metadata group's id).
pub const MAX_SHARDS: u32 = 65_536;
/// Most voters the metadata group gets; more nodes join it as learners.
pub const MAX_META_VOTERS: usize = 5;
/// Most nodes a map may list (a bound on what a decoded map can make a node do).
pub const MAX_NODES: usize = 4_096;
/// Longest cluster id, in bytes.
pub const MAX_CLUSTER_ID_BYTES: usize = 253;
/// Longest host name, in bytes (a DNS name).
pub const MAX_HOST_BYTES: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The name peers and clients use: a stable DNS name in Kubernetes.
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub admin_port: u16,
}

impl NodeAddr {
    pub fn client_endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }
    pub fn peer_endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }
    pub fn admin_endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.admin_port)
    }
}

/// Replicas of one shard, by the nodes that host them. Voters form its
/// quorum; learners are catching up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReplicas {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The replica id of each member (voter or learner) whose id is not its
    /// node id; a member not listed here has replica id = node id.
    pub ids: BTreeMap<NodeId, ReplicaId>,
    /// Replica ids allocated for nodes that are not members yet: the
    /// replica is being created there and added. Recorded before the shard's
    /// Raft membership names the id, so every node that sees the membership
    /// can already tell where the replica lives.
    pub pending: BTreeMap<NodeId, ReplicaId>,
}

impl ShardReplicas {
    /// Replicas placed at bootstrap: replica id = node id.
    pub fn of_nodes(voters: Vec<NodeId>, learners: Vec<NodeId>) -> Self {
        ShardReplicas {
            voters,
            learners,
            ..Default::default()
        }
    }
    /// `node` hosts a member (voter or learner) of this shard.
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
    /// Nodes hosting members.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
    /// The replica id of the member on `node`, or of the one pending there.
    pub fn replica_on(&self, node: NodeId) -> Option<ReplicaId> {
        if self.contains(node) {
            Some(self.ids.get(&node).copied().unwrap_or(node))
        } else {
            self.pending.get(&node).copied()
        }
    }
    /// The node hosting replica `id` (a member or a pending one).
    pub fn node_of(&self, id: ReplicaId) -> Option<NodeId> {
        if let Some((n, _)) = self.ids.iter().chain(&self.pending).find(|(_, r)| **r == id) {
            return Some(*n);
        }
        (id < FIRST_REPLICA_ID && self.contains(id) && !self.ids.contains_key(&id)).then_some(id)
    }
    /// Replica ids of the voters.
    pub fn voter_ids(&self) -> Vec<ReplicaId> {
        self.voters.iter().filter_map(|n| self.replica_on(*n)).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Chosen at bootstrap; peers refuse to talk across clusters.
    pub cluster_id: String,
    /// Bumped by every change; a reader with a lower version is stale.
    pub version: u64,
    /// Fixed at bootstrap (see [`crate::hash`]).
    pub shard_count: u32,
    pub replication_factor: u32,
    pub nodes: BTreeMap<NodeId, NodeAddr>,
    /// Indexed by shard id.
    pub shards: Vec<ShardReplicas>,
    /// Voters of the metadata group itself (replica id = node id there).
    pub meta_voters: Vec<NodeId>,
    /// The next replica id to hand out; only grows.
    pub next_replica_id: ReplicaId,
}

/// The map as format 1 wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapV1 {
    cluster_id: String,
    version: u64,
    shard_count: u32,
    replication_factor: u32,
    nodes: BTreeMap<NodeId, NodeAddr>,
    shards: Vec<ShardV1>,
    meta_voters: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ShardV1 {
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
}

impl From<MapV1> for ClusterMap {
    fn from(m: MapV1) -> Self {
        ClusterMap {
            cluster_id: m.cluster_id,
            version: m.version,
            shard_count: m.shard_count,
            replication_factor: m.replication_factor,
            nodes: m.nodes,
            shards: m
                .shards
                .into_iter()
                .map(|s| ShardReplicas::of_nodes(s.voters, s.learners))
                .collect(),
            meta_voters: m.meta_voters,
            next_replica_id: FIRST_REPLICA_ID,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("a cluster needs at least one shard")]
    NoShards,
    #[error("{0} shards is over the maximum of {MAX_SHARDS}")]
    TooManyShards(u32),
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error("replication factor {rf} needs at least {rf} nodes, but only {nodes} were given")]
    TooFewNodes { rf: u32, nodes: usize },
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    #[error("unknown shard {shard}: the cluster has {shard_count} shards")]
    UnknownShard { shard: ShardId, shard_count: u32 },
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("node {node} still hosts replicas of shards {shards:?}; move them first")]
    NodeStillHostsReplicas { node: NodeId, shards: Vec<ShardId> },
    #[error("node {0} is a voter of the metadata group; replace it (ReplaceMetaVoter) before removing it")]
    NodeIsMetaVoter(NodeId),
    #[error("the metadata group needs at least one voter")]
    NoMetaVoters,
    #[error("the cluster id must be 1 to {MAX_CLUSTER_ID_BYTES} bytes, not {0}")]
    BadClusterId(usize),
    #[error("a map's version starts at 1")]
    ZeroVersion,
    #[error("{nodes} nodes is over the maximum of {MAX_NODES}")]
    TooManyNodes { nodes: usize },
    #[error("the map lists {listed} shards, but its shard count is {shard_count}")]
    ShardListMismatch { listed: usize, shard_count: u32 },
    #[error("shard {0} has no voter")]
    ShardWithoutVoters(ShardId),
    #[error("shard {shard} lists node {node} twice")]
    DuplicateReplica { shard: ShardId, node: NodeId },
    #[error("shard {shard} has a replica on node {node}, which the map does not list")]
    ReplicaOnUnknownNode { shard: ShardId, node: NodeId },
    #[error("metadata voter {0} is not a node of the map, or is listed twice")]
    BadMetaVoter(NodeId),
    #[error("node {node} has an unusable address: {reason}")]
    BadAddress { node: NodeId, reason: String },
    #[error("node id {0} is over the maximum of {max}", max = crate::MAX_NODE_ID)]
    NodeIdTooLarge(NodeId),
    #[error("node {node} already hosts a replica of shard {shard}")]
    AlreadyReplica { shard: ShardId, node: NodeId },
    #[error("shard {shard} has no replica with id {replica}")]
    UnknownReplica { shard: ShardId, replica: ReplicaId },
    #[error("replica id {replica} is not one the map handed out (next is {next})")]
    BadReplicaId { replica: ReplicaId, next: ReplicaId },
    #[error("replica id {0} is used twice")]
    DuplicateReplicaId(ReplicaId),
    #[error("next replica id {0} is below the first allocated id {FIRST_REPLICA_ID}")]
    BadNextReplicaId(ReplicaId),
    #[error("no replica ids are left to allocate")]
    ReplicaIdsExhausted,
}

impl ClusterMap {
    /// The map a cluster starts with: every node known, each shard on
    /// `replication_factor` nodes by [`initial_placement`].
    pub fn bootstrap(
        cluster_id: String,
        nodes: BTreeMap<NodeId, NodeAddr>,
        shard_count: u32,
        replication_factor: u32,
    ) -> Result<Self, MapError> {
        if shard_count == 0 {
            return Err(MapError::NoShards);
        }
        if shard_count > MAX_SHARDS {
            return Err(MapError::TooManyShards(shard_count));
        }
        if replication_factor == 0 {
            return Err(MapError::ZeroReplicationFactor);
        }
        if nodes.contains_key(&0) {
            return Err(MapError::ZeroNodeId);
        }
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let shards = initial_placement(&ids, shard_count, replication_factor)?
            .into_iter()
            .map(|voters| ShardReplicas::of_nodes(voters, vec![]))
            .collect();
        let map = ClusterMap {
            cluster_id,
            version: 1,
            shard_count,
            replication_factor,
            meta_voters: meta_voters(&ids),
            nodes,
            shards,
            next_replica_id: FIRST_REPLICA_ID,
        };
        map.validate()?;
        Ok(map)
    }

    /// The format-1 form of this map, if it has never allocated a replica id.
    pub fn as_v1(&self) -> Option<MapV1> {
        let none_allocated = self.next_replica_id == FIRST_REPLICA_ID
            && self.shards.iter().all(|s| s.ids.is_empty() && s.pending.is_empty());
        none_allocated.then(|| MapV1 {
            cluster_id: self.cluster_id.clone(),
            version: self.version,
            shard_count: self.shard_count,
            replication_factor: self.replication_factor,
            nodes: self.nodes.clone(),
            shards: self
                .shards
                .iter()
                .map(|s| ShardV1 {
                    voters: s.voters.clone(),
                    learners: s.learners.clone(),
                })
                .collect(),
            meta_voters: self.meta_voters.clone(),
        })
    }

    /// Format 1 while the map has allocated no replica id, else format 2.
    pub fn encode(&self) -> Vec<u8> {
        match self.as_v1() {
            Some(v1) => codec::encode(MAP_FORMAT_V1, &v1),
            None => codec::encode(MAP_FORMAT, self),
        }
    }

    /// Decodes a map of either format and checks its invariants
    /// ([`ClusterMap::validate`]): bytes from a peer or a disk never become
    /// a map the node cannot route by.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        let map: ClusterMap = match bytes.first() {
            Some(&MAP_FORMAT_V1) => codec::decode::<MapV1>("cluster map", MAP_FORMAT_V1, bytes)?.into(),
            _ => codec::decode("cluster map", MAP_FORMAT, bytes)?,
        };
        map.validate().map_err(|e| codec::CodecError::Corrupt {
            what: "cluster map",
            reason: e.to_string(),
        })?;
        Ok(map)
    }

    /// The invariants every map satisfies: a named cluster, 1..=[`MAX_SHARDS`]
    /// shards each with at least one voter and no node twice, every replica
    /// and metadata voter on a listed node, usable addresses. Every map this
    /// code builds passes; a map that does not came from outside.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.cluster_id.is_empty() || self.cluster_id.len() > MAX_CLUSTER_ID_BYTES {
            return Err(MapError::BadClusterId(self.cluster_id.len()));
        }
        if self.version == 0 {
            return Err(MapError::ZeroVersion);
        }
        if self.shard_count == 0 {
            return Err(MapError::NoShards);
        }
        if self.shard_count > MAX_SHARDS {
            return Err(MapError::TooManyShards(self.shard_count));
        }
        if self.replication_factor == 0 {
            return Err(MapError::ZeroReplicationFactor);
        }
        if self.nodes.len() > MAX_NODES {
            return Err(MapError::TooManyNodes {
                nodes: self.nodes.len(),
            });
        }
        for (&node, addr) in &self.nodes {
            if node == 0 {
                return Err(MapError::ZeroNodeId);
            }
            if node > crate::MAX_NODE_ID {
                return Err(MapError::NodeIdTooLarge(node));
            }
            let reason = if addr.host.is_empty() || addr.host.len() > MAX_HOST_BYTES {
                Some(format!("host must be 1 to {MAX_HOST_BYTES} bytes"))
            } else if !addr.host.bytes().all(|b| b.is_ascii_graphic()) {
                Some("host must be printable ASCII without spaces".into())
            } else if addr.client_port == 0 || addr.peer_port == 0 || addr.admin_port == 0 {
                Some("ports must not be 0".into())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(MapError::BadAddress { node, reason });
            }
        }
        if self.shards.len() != self.shard_count as usize {
            return Err(MapError::ShardListMismatch {
                listed: self.shards.len(),
                shard_count: self.shard_count,
            });
        }
        if self.next_replica_id < FIRST_REPLICA_ID {
            return Err(MapError::BadNextReplicaId(self.next_replica_id));
        }
        let mut allocated = std::collections::BTreeSet::new();
        for (shard, replicas) in (0..).zip(&self.shards) {
            if replicas.voters.is_empty() {
                return Err(MapError::ShardWithoutVoters(shard));
            }
            let mut seen = std::collections::BTreeSet::new();
            for node in replicas.all().chain(replicas.pending.keys().copied()) {
                if !seen.insert(node) {
                    return Err(MapError::DuplicateReplica { shard, node });
                }
                if !self.nodes.contains_key(&node) {
                    return Err(MapError::ReplicaOnUnknownNode { shard, node });
                }
            }
            for (&node, &replica) in replicas.ids.iter().chain(&replicas.pending) {
                if replicas.ids.contains_key(&node) && !replicas.contains(node) {
                    return Err(MapError::ReplicaOnUnknownNode { shard, node });
                }
                if replica < FIRST_REPLICA_ID || replica >= self.next_replica_id {
                    return Err(MapError::BadReplicaId {
                        replica,
                        next: self.next_replica_id,
                    });
                }
                if !allocated.insert(replica) {
                    return Err(MapError::DuplicateReplicaId(replica));
                }
            }
        }
        if self.meta_voters.is_empty() {
            return Err(MapError::NoMetaVoters);
        }
        let mut seen = std::collections::BTreeSet::new();
        for &v in &self.meta_voters {
            if !self.nodes.contains_key(&v) || !seen.insert(v) {
                return Err(MapError::BadMetaVoter(v));
            }
        }
        Ok(())
    }

    pub fn replicas(&self, shard: ShardId) -> Result<&ShardReplicas, MapError> {
        self.shards.get(shard as usize).ok_or(MapError::UnknownShard {
            shard,
            shard_count: self.shard_count,
        })
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeAddr, MapError> {
        self.nodes.get(&id).ok_or(MapError::UnknownNode(id))
    }

    /// The replica id of `shard`'s member (or pending replica) on `node`.
    pub fn replica_on(&self, shard: ShardId, node: NodeId) -> Option<ReplicaId> {
        self.replicas(shard).ok()?.replica_on(node)
    }

    /// The node hosting replica `id` of `shard`. An id below
    /// [`FIRST_REPLICA_ID`] is its node's id, whether or not this map still
    /// lists it.
    pub fn node_of(&self, shard: ShardId, id: ReplicaId) -> Option<NodeId> {
        if id < FIRST_REPLICA_ID {
            return Some(id);
        }
        self.replicas(shard).ok()?.node_of(id)
    }

    /// Shards that have a replica (voter or learner) on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.shard_count)
            .filter(|&s| self.shards[s as usize].contains(node))
            .collect()
    }

    /// Adds (or re-addresses) a node. The node hosts nothing until replicas move to it.
    pub fn with_node(&self, id: NodeId, addr: NodeAddr) -> Result<Self, MapError> {
        if id == 0 {
            return Err(MapError::ZeroNodeId);
        }
        let mut next = self.clone();
        next.nodes.insert(id, addr);
        next.version += 1;
        next.validate()?;
        Ok(next)
    }

    /// Removes a node that no longer hosts anything.
    pub fn without_node(&self, id: NodeId) -> Result<Self, MapError> {
        self.node(id)?;
        let hosted = self.shards_on(id);
        if !hosted.is_empty() {
            return Err(MapError::NodeStillHostsReplicas {
                node: id,
                shards: hosted,
            });
        }
        if self.meta_voters.contains(&id) {
            return Err(MapError::NodeIsMetaVoter(id));
        }
        let mut next = self.clone();
        next.nodes.remove(&id);
        for s in &mut next.shards {
            s.pending.remove(&id);
        }
        next.version += 1;
        next.validate()?;
        Ok(next)
    }

    /// Records the metadata group's voters as its Raft membership now has them.
    pub fn with_meta_voters(&self, voters: &[NodeId]) -> Result<Self, MapError> {
        if voters.is_empty() {
            return Err(MapError::NoMetaVoters);
        }
        for n in voters {
            self.node(*n)?;
        }
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut next = self.clone();
        next.meta_voters = sorted;
        next.version += 1;
        next.validate()?;
        Ok(next)
    }

    /// Allocates the replica id of a new replica of `shard` on `node`, and
    /// records it as pending there. Idempotent: while one is pending on
    /// `node`, that one is returned and the map is unchanged, so a retried
    /// add never leaves two incarnations behind.
    pub fn with_new_replica(&self, shard: ShardId, node: NodeId) -> Result<(Self, ReplicaId), MapError> {
        let replicas = self.replicas(shard)?;
        self.node(node)?;
        if replicas.contains(node) {
            return Err(MapError::AlreadyReplica { shard, node });
        }
        if let Some(&id) = replicas.pending.get(&node) {
            return Ok((self.clone(), id));
        }
        let id = self.next_replica_id;
        let mut next = self.clone();
        next.next_replica_id = id.checked_add(1).ok_or(MapError::ReplicaIdsExhausted)?;
        next.shards[shard as usize].pending.insert(node, id);
        next.version += 1;
        next.validate()?;
        Ok((next, id))
    }

    /// Drops the replica pending on `node` for `shard` (an add given up).
    pub fn without_pending(&self, shard: ShardId, node: NodeId) -> Result<Self, MapError> {
        self.replicas(shard)?;
        let mut next = self.clone();
        if next.shards[shard as usize].pending.remove(&node).is_none() {
            return Ok(next);
        }
        next.version += 1;
        next.validate()?;
        Ok(next)
    }

    /// Records the members of `shard` as its Raft membership now has them,
    /// by replica id: each id must be a replica this map knows (a member, a
    /// pending one, which becomes a member, or a node id). Pending replicas
    /// that are not members yet stay pending.
    pub fn with_shard_members(
        &self,
        shard: ShardId,
        voters: &[ReplicaId],
        learners: &[ReplicaId],
    ) -> Result<Self, MapError> {
        let current = self.replicas(shard)?;
        let mut next_replicas = ShardReplicas {
            pending: current.pending.clone(),
            ..Default::default()
        };
        for (ids, list) in [
            (voters, &mut next_replicas.voters),
            (learners, &mut next_replicas.learners),
        ] {
            for &replica in ids {
                let node = current
                    .node_of(replica)
                    .or_else(|| (replica < FIRST_REPLICA_ID && self.nodes.contains_key(&replica)).then_some(replica))
                    .ok_or(MapError::UnknownReplica { shard, replica })?;
                list.push(node);
                if next_replicas.pending.get(&node) == Some(&replica) {
                    next_replicas.pending.remove(&node);
                }
                if replica != node {
                    next_replicas.ids.insert(node, replica);
                }
            }
        }
        if *current == next_replicas {
            return Ok(self.clone());
        }
        let mut next = self.clone();
        next.shards[shard as usize] = next_replicas;
        next.version += 1;
        next.validate()?;
        Ok(next)
    }

    /// Records the replicas of `shard` as the shard's own Raft membership now has them.
    pub fn with_shard_replicas(&self, shard: ShardId, replicas: ShardReplicas) -> Result<Self, MapError> {
        self.replicas(shard)?;
        for n in replicas.all() {
            self.node(n)?;
        }
        let mut next = self.clone();
        next.shards[shard as usize] = replicas;
        next.version += 1;
        next.validate()?;
        Ok(next)
    }
}

/// Places `shard_count` shards of `rf` replicas each on `nodes`.
///
/// Shard `i` goes to the `rf` nodes starting at position `i mod n` of the
/// sorted node list, so replicas and first replicas (which start as leaders)
/// are spread evenly and the result depends only on the inputs.
pub fn initial_placement(nodes: &[NodeId], shard_count: u32, rf: u32) -> Result<Vec<Vec<NodeId>>, MapError> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(MapError::DuplicateNode(w[0]));
    }
    if rf == 0 {
        return Err(MapError::ZeroReplicationFactor);
    }
    if (sorted.len() as u64) < u64::from(rf) {
        return Err(MapError::TooFewNodes {
            rf,
            nodes: sorted.len(),
        });
    }
    let n = sorted.len();
    Ok((0..shard_count as usize)
        .map(|i| (0..rf as usize).map(|j| sorted[(i + j) % n]).collect())
        .collect())
}

/// Voters of the metadata group: an odd number, at most [`MAX_META_VOTERS`],
/// the lowest node ids (deterministic, so every node computes the same set).
pub fn meta_voters(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    let mut count = sorted.len().min(MAX_META_VOTERS);
    if count.is_multiple_of(2) && count > 0 {
        count -= 1;
    }
    sorted.truncate(count);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> NodeAddr {
        NodeAddr {
            host: format!("n{i}"),
            client_port: 1000 + i,
            peer_port: 2000 + i,
            admin_port: 3000 + i,
        }
    }

    fn nodes(ids: &[NodeId]) -> BTreeMap<NodeId, NodeAddr> {
        ids.iter().map(|&i| (i, addr(i as u16))).collect()
    }

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let p = initial_placement(&[30, 10, 20], 8, 3).unwrap();
        assert_eq!(p.len(), 8);
        for replicas in &p {
            let mut r = replicas.clone();
            r.sort();
            assert_eq!(r, vec![10, 20, 30]);
        }
        let firsts: Vec<_> = p.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![10, 20, 30, 10, 20, 30, 10, 20]);
    }

    #[test]
    fn placement_with_more_nodes_than_rf_balances_load() {
        let p = initial_placement(&[1, 2, 3, 4, 5], 10, 3).unwrap();
        let mut load = BTreeMap::new();
        for r in &p {
            assert_eq!(r.len(), 3);
            let mut d = r.clone();
            d.dedup();
            assert_eq!(d.len(), 3, "replicas of one shard on distinct nodes: {r:?}");
            for n in r {
                *load.entry(*n).or_insert(0) += 1;
            }
        }
        assert!(load.values().all(|&l| l == 6), "{load:?}");
    }

    #[test]
    fn placement_refuses_bad_input() {
        assert_eq!(
            initial_placement(&[1, 2], 4, 3),
            Err(MapError::TooFewNodes { rf: 3, nodes: 2 })
        );
        assert_eq!(initial_placement(&[1, 1, 2], 4, 2), Err(MapError::DuplicateNode(1)));
        assert_eq!(initial_placement(&[1, 2], 4, 0), Err(MapError::ZeroReplicationFactor));
    }

    #[test]
    fn meta_voters_are_odd_and_bounded() {
        assert_eq!(meta_voters(&[5]), vec![5]);
        assert_eq!(meta_voters(&[2, 1]), vec![1]);
        assert_eq!(meta_voters(&[3, 1, 2]), vec![1, 2, 3]);
        assert_eq!(meta_voters(&[4, 3, 1, 2]), vec![1, 2, 3]);
        assert_eq!(meta_voters(&[7, 6, 5, 4, 3, 2, 1]), vec![1, 2, 3, 4, 5]);
        assert!(meta_voters(&[]).is_empty());
    }

    #[test]
    fn bootstrap_map_is_valid_and_round_trips() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 8, 3).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.shards.len(), 8);
        assert_eq!(m.meta_voters, vec![1, 2, 3]);
        assert_eq!(m.shards_on(2).len(), 8);
        assert_eq!(ClusterMap::decode(&m.encode()).unwrap(), m);
        assert_eq!(
            m.replicas(8),
            Err(MapError::UnknownShard {
                shard: 8,
                shard_count: 8
            })
        );
        assert_eq!(
            ClusterMap::bootstrap("c".into(), nodes(&[1]), 0, 1),
            Err(MapError::NoShards)
        );
        assert_eq!(
            ClusterMap::bootstrap("c".into(), nodes(&[1]), MAX_SHARDS + 1, 1),
            Err(MapError::TooManyShards(MAX_SHARDS + 1))
        );
        assert_eq!(
            ClusterMap::bootstrap("c".into(), nodes(&[0, 1]), 1, 1),
            Err(MapError::ZeroNodeId)
        );
    }

    #[test]
    fn validate_refuses_maps_no_node_could_route_by() {
        let good = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 4, 3).unwrap();
        assert_eq!(good.validate(), Ok(()));
        let broken = |f: &dyn Fn(&mut ClusterMap)| {
            let mut m = good.clone();
            f(&mut m);
            // A broken map is refused both directly and when decoded from bytes.
            assert!(ClusterMap::decode(&m.encode()).is_err(), "decoded {m:?}");
            m.validate().unwrap_err()
        };
        assert_eq!(broken(&|m| m.cluster_id.clear()), MapError::BadClusterId(0));
        assert_eq!(broken(&|m| m.version = 0), MapError::ZeroVersion);
        assert_eq!(
            broken(&|m| {
                m.shard_count = 0;
                m.shards.clear();
            }),
            MapError::NoShards
        );
        assert_eq!(
            broken(&|m| m.shards.truncate(2)),
            MapError::ShardListMismatch {
                listed: 2,
                shard_count: 4
            }
        );
        assert_eq!(broken(&|m| m.shards[1].voters.clear()), MapError::ShardWithoutVoters(1));
        assert_eq!(
            broken(&|m| m.shards[2].learners.push(1)),
            MapError::DuplicateReplica { shard: 2, node: 1 }
        );
        assert_eq!(
            broken(&|m| m.shards[3].voters[0] = 9),
            MapError::ReplicaOnUnknownNode { shard: 3, node: 9 }
        );
        assert_eq!(broken(&|m| m.meta_voters.push(9)), MapError::BadMetaVoter(9));
        assert_eq!(broken(&|m| m.meta_voters.push(1)), MapError::BadMetaVoter(1));
        assert_eq!(broken(&|m| m.meta_voters.clear()), MapError::NoMetaVoters);
        assert_eq!(broken(&|m| m.replication_factor = 0), MapError::ZeroReplicationFactor);
        assert!(matches!(
            broken(&|m| m.nodes.get_mut(&2).unwrap().peer_port = 0),
            MapError::BadAddress { node: 2, .. }
        ));
        assert!(matches!(
            broken(&|m| m.nodes.get_mut(&3).unwrap().host = "a b".into()),
            MapError::BadAddress { node: 3, .. }
        ));
        assert_eq!(
            good.with_node(
                4,
                NodeAddr {
                    host: String::new(),
                    ..addr(4)
                }
            )
            .unwrap_err(),
            MapError::BadAddress {
                node: 4,
                reason: format!("host must be 1 to {MAX_HOST_BYTES} bytes")
            }
        );
    }

    #[test]
    fn node_changes_bump_version_and_guard_hosted_replicas() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 4, 3).unwrap();
        let m2 = m.with_node(4, addr(4)).unwrap();
        assert_eq!(m2.version, 2);
        assert!(m2.shards_on(4).is_empty());
        assert_eq!(
            m2.without_node(3),
            Err(MapError::NodeStillHostsReplicas {
                node: 3,
                shards: vec![0, 1, 2, 3]
            })
        );
        let m3 = m2.without_node(4).unwrap();
        assert_eq!(m3.version, 3);
        assert!(!m3.nodes.contains_key(&4));
        assert_eq!(m3.without_node(9), Err(MapError::UnknownNode(9)));
    }

    #[test]
    fn meta_voter_changes_need_known_nodes_and_free_the_old_voter() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 1, 1).unwrap();
        let m = m.with_node(4, addr(4)).unwrap();
        // Node 1 hosts shard 0 only as long as the placement put it there; move it away first.
        let m = m
            .with_shard_replicas(0, ShardReplicas::of_nodes(vec![4], vec![]))
            .unwrap();
        assert_eq!(m.without_node(1), Err(MapError::NodeIsMetaVoter(1)));
        assert_eq!(m.with_meta_voters(&[2, 9, 3]), Err(MapError::UnknownNode(9)));
        assert_eq!(m.with_meta_voters(&[]), Err(MapError::NoMetaVoters));
        let next = m.with_meta_voters(&[4, 3, 2, 4]).unwrap();
        assert_eq!(next.meta_voters, vec![2, 3, 4]);
        assert_eq!(next.version, m.version + 1);
        let gone = next.without_node(1).unwrap();
        assert!(!gone.nodes.contains_key(&1));
    }

    #[test]
    fn shard_replica_changes_must_name_known_nodes() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 2, 3).unwrap();
        let r = ShardReplicas::of_nodes(vec![1, 2, 3], vec![9]);
        assert_eq!(m.with_shard_replicas(0, r), Err(MapError::UnknownNode(9)));
        let m2 = m.with_node(4, addr(4)).unwrap();
        let r = ShardReplicas::of_nodes(vec![1, 2, 3], vec![4]);
        let m3 = m2.with_shard_replicas(1, r.clone()).unwrap();
        assert_eq!(m3.replicas(1).unwrap(), &r);
        assert_eq!(m3.shards_on(4), vec![1]);
        assert_eq!(m3.node(4).unwrap().client_endpoint(), "http://n4:1004");
    }

    #[test]
    fn a_new_replica_gets_a_fresh_id_above_every_node_id_and_a_retry_gets_the_same_one() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 2, 3).unwrap();
        let m = m.with_node(4, addr(4)).unwrap();
        assert_eq!(
            m.with_new_replica(0, 1).unwrap_err(),
            MapError::AlreadyReplica { shard: 0, node: 1 }
        );
        assert_eq!(m.with_new_replica(0, 9).unwrap_err(), MapError::UnknownNode(9));
        let (m1, id) = m.with_new_replica(0, 4).unwrap();
        assert_eq!(id, FIRST_REPLICA_ID);
        assert!(id > crate::MAX_NODE_ID);
        assert_eq!(m1.version, m.version + 1);
        assert_eq!(m1.replica_on(0, 4), Some(id));
        assert_eq!(m1.node_of(0, id), Some(4));
        // Still pending: not a member, so no shard lists node 4 yet.
        assert!(m1.shards_on(4).is_empty());
        let (again, same) = m1.with_new_replica(0, 4).unwrap();
        assert_eq!((same, &again), (id, &m1));
        // Another shard's replica on the same node gets its own id.
        let (m2, other) = m1.with_new_replica(1, 4).unwrap();
        assert_eq!(other, id + 1);
        assert_eq!(m2.next_replica_id, id + 2);
    }

    #[test]
    fn recording_members_by_replica_id_turns_a_pending_replica_into_a_member_and_forgets_removed_ones() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 1, 3).unwrap();
        let m = m.with_node(4, addr(4)).unwrap();
        let (m, id) = m.with_new_replica(0, 4).unwrap();
        let learning = m.with_shard_members(0, &[1, 2, 3], &[id]).unwrap();
        let r = learning.replicas(0).unwrap();
        assert_eq!((r.voters.clone(), r.learners.clone()), (vec![1, 2, 3], vec![4]));
        assert_eq!(r.ids.get(&4), Some(&id));
        assert!(r.pending.is_empty());
        // Recording the same membership again changes nothing.
        assert_eq!(learning.with_shard_members(0, &[1, 2, 3], &[id]).unwrap(), learning);
        // Node 1 leaves; then it is added back: a new incarnation, never id 1 again.
        let moved = learning.with_shard_members(0, &[2, 3, id], &[]).unwrap();
        assert_eq!(moved.replicas(0).unwrap().voters, vec![2, 3, 4]);
        let (back, new) = moved.with_new_replica(0, 1).unwrap();
        assert_eq!(new, id + 1);
        assert_eq!(back.replica_on(0, 1), Some(new));
        let rejoined = back.with_shard_members(0, &[2, 3, id], &[new]).unwrap();
        assert_eq!(rejoined.replicas(0).unwrap().learners, vec![1]);
        assert_eq!(rejoined.replica_on(0, 1), Some(new));
        // A membership naming an id the map never handed out is refused.
        assert_eq!(
            rejoined.with_shard_members(0, &[2, 3, id + 7], &[]).unwrap_err(),
            MapError::UnknownReplica {
                shard: 0,
                replica: id + 7
            }
        );
        // Giving up a pending add.
        let (p, _) = rejoined.with_node(5, addr(5)).unwrap().with_new_replica(0, 5).unwrap();
        let given_up = p.without_pending(0, 5).unwrap();
        assert_eq!(given_up.replica_on(0, 5), None);
        assert_eq!(given_up.next_replica_id, p.next_replica_id, "ids are never reused");
        // Removing a node drops what was pending on it.
        let gone = p.without_node(5).unwrap();
        assert!(gone.replicas(0).unwrap().pending.is_empty());
    }

    #[test]
    fn validate_refuses_replica_ids_the_map_did_not_hand_out_or_hands_out_twice() {
        let m = ClusterMap::bootstrap("c1".into(), nodes(&[1, 2, 3]), 2, 2).unwrap();
        let (m, id) = m.with_new_replica(0, 3).unwrap();
        let broken = |f: &dyn Fn(&mut ClusterMap)| {
            let mut b = m.clone();
            f(&mut b);
            assert!(ClusterMap::decode(&b.encode()).is_err(), "decoded {b:?}");
            b.validate().unwrap_err()
        };
        assert_eq!(
            broken(&|b| b.next_replica_id = id),
            MapError::BadReplicaId { replica: id, next: id }
        );
        assert_eq!(
            broken(&|b| {
                b.shards[0].pending.insert(3, 5);
            }),
            MapError::BadReplicaId {
                replica: 5,
                next: id + 1
            }
        );
        assert_eq!(
            broken(&|b| {
                b.shards[1].pending.insert(1, id);
            }),
            MapError::DuplicateReplicaId(id)
        );
        assert_eq!(
            broken(&|b| {
                b.shards[0].pending.insert(1, id);
            }),
            MapError::DuplicateReplica { shard: 0, node: 1 }
        );
        assert_eq!(
            broken(&|b| {
                b.shards[0].pending.clear();
                b.shards[0].ids.insert(3, id);
            }),
            MapError::ReplicaOnUnknownNode { shard: 0, node: 3 }
        );
        assert_eq!(
            broken(&|b| b.nodes.insert(1 << 63, addr(9)).map_or((), |_| ())),
            MapError::NodeIdTooLarge(1 << 63)
        );
        let mut low = m.clone();
        low.next_replica_id = 5;
        assert_eq!(low.validate(), Err(MapError::BadNextReplicaId(5)));
    }
}
