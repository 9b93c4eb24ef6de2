//! raftkv's three gRPC APIs, generated at build time from `proto/`, and the
//! conversions between their messages and the core domain types.
//!
//! Prost types stay at the edges: the node converts into `raftkv_core` types
//! here (`From` / `TryFrom`, typed errors) before any logic runs.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use raftkv_core::map::{ClusterMap, NodeAddr, ShardReplicas as CoreReplicas};

pub mod kv {
    tonic::include_proto!("raftkv.kv.v1");
}
pub mod admin {
    tonic::include_proto!("raftkv.admin.v1");
}
pub mod peer {
    tonic::include_proto!("raftkv.peer.v1");
}
/// A wire-compatible subset of etcd's v3 KV API, for `kvctl bench --backend
/// etcd` only (see `proto/etcd.proto`).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// When a failed call may be sent again (to the same or another node): the
/// one rule, shared by the node's forwarding and the client library.
pub mod retry {
    /// Metadata key marking a refusal made before anything was proposed.
    pub const RETRY_SAFE: &str = "x-raftkv-retry-safe";
    /// Metadata key carrying the id of the node believed to lead the shard.
    pub const LEADER_HINT: &str = "x-raftkv-leader";
    /// Metadata key marking a request one node forwarded to another.
    pub const HOP: &str = "x-raftkv-hop";

    /// The connection could not be made, so nothing was sent: tonic's typed
    /// `ConnectError` is in the status's source chain. (A call cut off after
    /// it was sent is not this: it may have been applied.)
    pub fn never_connected(s: &tonic::Status) -> bool {
        let mut source = std::error::Error::source(s);
        while let Some(e) = source {
            if e.downcast_ref::<tonic::ConnectError>().is_some() {
                return true;
            }
            source = e.source();
        }
        false
    }

    /// The node refused before anything happened (it set [`RETRY_SAFE`]),
    /// or the node was never reached.
    pub fn retry_safe(s: &tonic::Status) -> bool {
        s.metadata().get(RETRY_SAFE).is_some() || never_connected(s)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    #[error("port {0} of node {1} is out of range")]
    BadPort(u32, u64),
    #[error("member is missing")]
    MissingMember,
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    #[error("host of node {0} is empty")]
    EmptyHost(u64),
    #[error("shard list is out of order or incomplete at position {0}")]
    BadShardList(usize),
}

fn port(p: u32, node: u64) -> Result<u16, ConversionError> {
    u16::try_from(p)
        .ok()
        .filter(|&p| p != 0)
        .ok_or(ConversionError::BadPort(p, node))
}

impl TryFrom<&admin::Member> for (u64, NodeAddr) {
    type Error = ConversionError;
    fn try_from(m: &admin::Member) -> Result<Self, Self::Error> {
        if m.node_id == 0 {
            return Err(ConversionError::ZeroNodeId);
        }
        if m.host.is_empty() {
            return Err(ConversionError::EmptyHost(m.node_id));
        }
        Ok((
            m.node_id,
            NodeAddr {
                host: m.host.clone(),
                client_port: port(m.client_port, m.node_id)?,
                peer_port: port(m.peer_port, m.node_id)?,
                admin_port: port(m.admin_port, m.node_id)?,
            },
        ))
    }
}

pub fn member(id: u64, addr: &NodeAddr) -> admin::Member {
    admin::Member {
        node_id: id,
        host: addr.host.clone(),
        client_port: addr.client_port.into(),
        peer_port: addr.peer_port.into(),
        admin_port: addr.admin_port.into(),
    }
}

impl From<&ClusterMap> for admin::ClusterMapResponse {
    fn from(m: &ClusterMap) -> Self {
        admin::ClusterMapResponse {
            cluster_id: m.cluster_id.clone(),
            version: m.version,
            shard_count: m.shard_count,
            replication_factor: m.replication_factor,
            nodes: m.nodes.iter().map(|(id, a)| member(*id, a)).collect(),
            shards: m
                .shards
                .iter()
                .enumerate()
                .map(|(i, r)| admin::ShardReplicas {
                    shard: i as u32,
                    voters: r.voters.clone(),
                    learners: r.learners.clone(),
                    replica_ids: r.ids.iter().map(|(n, id)| (*n, *id)).collect(),
                    pending: r.pending.iter().map(|(n, id)| (*n, *id)).collect(),
                })
                .collect(),
            meta_voters: m.meta_voters.clone(),
            next_replica_id: m.next_replica_id,
        }
    }
}

impl TryFrom<&admin::ClusterMapResponse> for ClusterMap {
    type Error = ConversionError;
    fn try_from(m: &admin::ClusterMapResponse) -> Result<Self, Self::Error> {
        let nodes = m
            .nodes
            .iter()
            .map(<(u64, NodeAddr)>::try_from)
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let mut shards = Vec::with_capacity(m.shards.len());
        for (i, s) in m.shards.iter().enumerate() {
            if s.shard as usize != i {
                return Err(ConversionError::BadShardList(i));
            }
            shards.push(CoreReplicas {
                voters: s.voters.clone(),
                learners: s.learners.clone(),
                ids: s.replica_ids.iter().map(|(n, id)| (*n, *id)).collect(),
                pending: s.pending.iter().map(|(n, id)| (*n, *id)).collect(),
            });
        }
        if shards.len() != m.shard_count as usize {
            return Err(ConversionError::BadShardList(shards.len()));
        }
        Ok(ClusterMap {
            cluster_id: m.cluster_id.clone(),
            version: m.version,
            shard_count: m.shard_count,
            replication_factor: m.replication_factor,
            nodes,
            shards,
            meta_voters: m.meta_voters.clone(),
            next_replica_id: match m.next_replica_id {
                0 => raftkv_core::map::FIRST_REPLICA_ID,
                n => n,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_map_round_trips_through_proto() {
        let nodes = (1..=3u64)
            .map(|i| {
                (
                    i,
                    NodeAddr {
                        host: format!("n{i}"),
                        client_port: 1,
                        peer_port: 2,
                        admin_port: 3,
                    },
                )
            })
            .collect();
        let map = ClusterMap::bootstrap("c".into(), nodes, 4, 3).unwrap();
        let proto = admin::ClusterMapResponse::from(&map);
        assert_eq!(ClusterMap::try_from(&proto).unwrap(), map);
    }

    #[test]
    fn bad_members_are_refused() {
        let m = admin::Member {
            node_id: 1,
            host: "h".into(),
            client_port: 70000,
            peer_port: 1,
            admin_port: 1,
        };
        assert_eq!(<(u64, NodeAddr)>::try_from(&m), Err(ConversionError::BadPort(70000, 1)));
        let m = admin::Member { node_id: 0, ..m };
        assert_eq!(<(u64, NodeAddr)>::try_from(&m), Err(ConversionError::ZeroNodeId));
        let m = admin::Member {
            node_id: 2,
            host: String::new(),
            client_port: 1,
            peer_port: 1,
            admin_port: 1,
        };
        assert_eq!(<(u64, NodeAddr)>::try_from(&m), Err(ConversionError::EmptyHost(2)));
    }
}
