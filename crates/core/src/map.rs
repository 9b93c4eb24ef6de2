//! The cluster map: which nodes exist (id → addresses) and which nodes host
//! the replicas of each shard. It lives in the metadata Raft group, so it is
//! durable and consistent; every change bumps `version`, and every node serves
//! its copy so clients and nodes can refresh a stale one.
//!
//! Changes are pure functions from one map to the next (`with_*`), validated
//! before they are proposed, so the rules are unit-tested without a cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{NodeId, ShardId, codec};

/// Format version of an encoded [`ClusterMap`].
pub const MAP_FORMAT: u8 = 1;
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

/// Replicas of one shard. Voters form its quorum; learners are catching up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReplicas {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ShardReplicas {
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
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
    /// Voters of the metadata group itself.
    pub meta_voters: Vec<NodeId>,
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
            .map(|voters| ShardReplicas {
                voters,
                learners: vec![],
            })
            .collect();
        let map = ClusterMap {
            cluster_id,
            version: 1,
            shard_count,
            replication_factor,
            meta_voters: meta_voters(&ids),
            nodes,
            shards,
        };
        map.validate()?;
        Ok(map)
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(MAP_FORMAT, self)
    }

    /// Decodes a map and checks its invariants ([`ClusterMap::validate`]):
    /// bytes from a peer or a disk never become a map the node cannot route by.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        let map: ClusterMap = codec::decode("cluster map", MAP_FORMAT, bytes)?;
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
        for (shard, replicas) in (0..).zip(&self.shards) {
            if replicas.voters.is_empty() {
                return Err(MapError::ShardWithoutVoters(shard));
            }
            let mut seen = std::collections::BTreeSet::new();
            for node in replicas.all() {
                if !seen.insert(node) {
                    return Err(MapError::DuplicateReplica { shard, node });
                }
                if !self.nodes.contains_key(&node) {
                    return Err(MapError::ReplicaOnUnknownNode { shard, node });
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
            .with_shard_replicas(
                0,
                ShardReplicas {
                    voters: vec![4],
                    learners: vec![],
                },
            )
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
        let r = ShardReplicas {
            voters: vec![1, 2, 3],
            learners: vec![9],
        };
        assert_eq!(m.with_shard_replicas(0, r), Err(MapError::UnknownNode(9)));
        let m2 = m.with_node(4, addr(4)).unwrap();
        let r = ShardReplicas {
            voters: vec![1, 2, 3],
            learners: vec![4],
        };
        let m3 = m2.with_shard_replicas(1, r.clone()).unwrap();
        assert_eq!(m3.replicas(1).unwrap(), &r);
        assert_eq!(m3.shards_on(4), vec![1]);
        assert_eq!(m3.node(4).unwrap().client_endpoint(), "http://n4:1004");
    }
}
