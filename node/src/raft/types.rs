//! The openraft type configuration shared by every group on a node.

use raftkv_core::command::{Request, Response};

openraft::declare_raft_types!(
    /// One configuration for the metadata group and every data shard: they
    /// differ only in which apply rules their state machine runs.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::EmptyNode,
);

pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::storage::SnapshotFile>;
