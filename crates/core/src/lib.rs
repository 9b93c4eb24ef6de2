//! Pure domain logic of raftkv, shared by the node, the client and the operator.
//!
//! This crate does no I/O: it knows neither RocksDB, tonic nor Kubernetes. It
//! owns the decisions and formats that must agree everywhere and never change
//! silently:
//!
//! ```text
//!   key ──hash::shard_for_key──▶ ShardId ──ClusterMap──▶ replicas (node ids) ──▶ leader
//!   Command ──encode (versioned)──▶ Raft log entry ──apply──▶ ValueRecord (versioned)
//! ```
//!
//! - [`hash`]: the stable key → shard function (fixed for the life of a cluster).
//! - [`limits`]: key/value size limits and input validation.
//! - [`map`]: the cluster map (nodes, shard placement) and its initial placement.
//! - [`command`]: what a shard's Raft log carries and what applying it answers.
//! - [`record`]: the stored form of a value (version, expiry).
//! - [`leadership`]: which voters a leader counts as healthy, and whom it hands leadership to.
//! - [`keys`]: the RocksDB key layout shared by all shards of a node.
//! - [`scan`]: continuation tokens and key ranges for cross-shard scans.
//! - [`snapshot`]: the validated file format shard snapshots travel in.
//! - [`codec`]: the version-prefixed encoding every persisted format uses.
#![forbid(unsafe_code)]

pub mod codec;
pub mod command;
pub mod hash;
pub mod keys;
pub mod leadership;
pub mod limits;
pub mod map;
pub mod record;
pub mod safety;
pub mod scan;
pub mod snapshot;

pub use codec::CodecError;

/// A node's identity. Created with the data directory, never reused; it is
/// the Raft id of the node's metadata replica and of the shard replicas
/// placed at bootstrap.
pub type NodeId = u64;

/// Highest node id: node ids stay below 2^63, where allocated replica ids
/// ([`map::FIRST_REPLICA_ID`]) start.
pub const MAX_NODE_ID: NodeId = i64::MAX as u64;

/// The Raft id of one incarnation of a shard replica (see [`map`]).
pub type ReplicaId = u64;

/// Index of a data shard, `0..shard_count`.
pub type ShardId = u32;

/// A Raft group hosted by a node: either the metadata group (cluster map) or a
/// data shard. Encoded as a `u32` in storage keys and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum GroupId {
    /// The small Raft group that holds the cluster map.
    Meta,
    /// A data shard.
    Shard(ShardId),
}

impl GroupId {
    /// The wire/storage number of the metadata group. Data shards use their
    /// own index, below [`map::MAX_SHARDS`], so they never reach it. It is
    /// below `u32::MAX` so that every group's key prefix has an end.
    pub const META_RAW: u32 = u32::MAX - 1;

    pub fn to_raw(self) -> u32 {
        match self {
            GroupId::Meta => Self::META_RAW,
            GroupId::Shard(s) => s,
        }
    }

    pub fn from_raw(raw: u32) -> Self {
        if raw == Self::META_RAW {
            GroupId::Meta
        } else {
            GroupId::Shard(raw)
        }
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupId::Meta => f.write_str("meta"),
            GroupId::Shard(s) => write!(f, "{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_id_round_trips_through_raw() {
        for g in [
            GroupId::Meta,
            GroupId::Shard(0),
            GroupId::Shard(7),
            GroupId::Shard(65_535),
        ] {
            assert_eq!(GroupId::from_raw(g.to_raw()), g);
        }
        assert_eq!(GroupId::Meta.to_string(), "meta");
        assert_eq!(GroupId::Shard(3).to_string(), "3");
    }
}
