//! The node's error type and how each case reaches a gRPC client.

use std::io;

use raftkv_core::command::CommandError;
use raftkv_core::limits::InputError;
use raftkv_core::{GroupId, NodeId};

pub use raftkv_proto::retry::{HOP, LEADER_HINT, RETRY_SAFE};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid request: {0}")]
    Invalid(#[from] InputError),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("invalid request: {0}")]
    Command(#[from] CommandError),
    #[error("this node has not joined a cluster yet; bootstrap it or add it through the admin API")]
    NotJoined,
    #[error("this node is not the leader of shard {group}; the leader is {}", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("no replica of shard {0} on this node")]
    NoReplica(GroupId),
    #[error("this node is shutting down")]
    ShuttingDown,
    #[error("disk full: writes are refused until space is freed (reads are still served)")]
    DiskFull,
    #[error("refused: {0}")]
    Refused(String),
    #[error("the write's outcome is unknown (leader changed while it was in flight): {0}")]
    Ambiguous(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("peer unreachable: {0}")]
    Peer(String),
    #[error("the replica is {staleness_ms} ms behind, over the requested bound of {bound_ms} ms")]
    TooStale { staleness_ms: u64, bound_ms: u64 },
    #[error("storage error: {0}")]
    Storage(#[from] io::Error),
    #[error("raft error: {0}")]
    Raft(String),
}

impl NodeError {
    /// Whether the request certainly was not applied, so another node may be tried.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            NodeError::NotLeader { .. }
                | NodeError::NoReplica(_)
                | NodeError::ShuttingDown
                | NodeError::TooStale { .. }
        )
    }
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        use tonic::Code;
        let code = match &e {
            NodeError::Invalid(_) | NodeError::BadRequest(_) | NodeError::Command(_) => Code::InvalidArgument,
            NodeError::NotJoined | NodeError::Refused(_) => Code::FailedPrecondition,
            NodeError::NotLeader { .. } | NodeError::ShuttingDown | NodeError::Peer(_) | NodeError::TooStale { .. } => {
                Code::Unavailable
            }
            NodeError::NoReplica(_) => Code::NotFound,
            NodeError::DiskFull => Code::ResourceExhausted,
            NodeError::Ambiguous(_) => Code::Unknown,
            NodeError::Timeout(_) => Code::DeadlineExceeded,
            NodeError::Storage(_) | NodeError::Raft(_) => Code::Internal,
        };
        let mut s = tonic::Status::new(code, e.to_string());
        if let NodeError::NotLeader { leader: Some(l), .. } = &e
            && let Ok(v) = l.to_string().parse()
        {
            s.metadata_mut().insert(LEADER_HINT, v);
        }
        if e.retry_safe() {
            s.metadata_mut()
                .insert(RETRY_SAFE, tonic::metadata::MetadataValue::from_static("1"));
        }
        s
    }
}

/// Reads the retry hints a peer attached to a refusal.
pub fn hints(s: &tonic::Status) -> (bool, Option<NodeId>) {
    let safe = s.metadata().get(RETRY_SAFE).is_some();
    let leader = s
        .metadata()
        .get(LEADER_HINT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (safe, leader)
}
