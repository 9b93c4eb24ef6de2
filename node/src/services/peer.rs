//! The Raft peer service (port 2380): openraft RPCs, snapshot streams,
//! bootstrap joins, replica creation, and forwarded proposals.
//!
//! Every request names the node it is meant for. A node with another
//! identity refuses it: after a pod loses its volume, the new process at the
//! old DNS name must never answer for the old member.
//!
//! Nothing here trusts the caller (authentication is the TLS layer's job):
//! every request carries this node's non-empty cluster id, names a group
//! this node hosts, and passes the checks of its kind before it reaches
//! Raft or storage —
//!
//! - votes only from voters of the group, as this replica's log or the
//!   cluster map records them; appends, snapshots and leadership transfers
//!   only from nodes of the map; terms and log indexes below [`MAX_TERM`] /
//!   [`MAX_INDEX`];
//! - proposals only of metadata commands, on the metadata group, validated
//!   like every other proposal ([`Proposal::new`]);
//! - replicas destroyed only once the cluster map no longer places one here;
//! - a join only once: a joined node replays its own join record.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use raftkv_core::command::{Proposal, Request as KvRequest};
use raftkv_core::map::ClusterMap;
use raftkv_core::{GroupId, NodeId};
use raftkv_proto::peer::{self, RaftKind, peer_server::Peer};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::NodeError;
use crate::host::{Group, Host};
use crate::metrics::METRICS;
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, Vote};
use crate::storage::{SnapshotFile, decode_raft, encode_raft, validate_snapshot};

/// Highest term a peer message may carry: far above any a real cluster
/// reaches (an election a millisecond for 8,000 years), far below where
/// openraft's term arithmetic would overflow.
pub const MAX_TERM: u64 = 1 << 48;
/// Highest log index a peer message may carry.
pub const MAX_INDEX: u64 = 1 << 48;
/// How long `DestroyReplica` waits for this node's map to show the removal
/// the caller committed before it.
const DESTROY_MAP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct PeerService {
    pub host: Arc<Host>,
}

fn check_vote(vote: &Vote, from: NodeId) -> Result<(), Status> {
    let leader = vote.leader_id();
    if leader.node_id != from {
        return Err(Status::invalid_argument(format!(
            "message from node {from} carries the vote of node {}",
            leader.node_id
        )));
    }
    if leader.term > MAX_TERM {
        return Err(Status::invalid_argument(format!(
            "term {} is over the bound of {MAX_TERM}",
            leader.term
        )));
    }
    Ok(())
}

fn check_log_id(log_id: Option<&LogId>) -> Result<(), Status> {
    match log_id {
        Some(l) if l.index > MAX_INDEX || l.leader_id.term > MAX_TERM => Err(Status::invalid_argument(format!(
            "log id {l} is over the bounds (term {MAX_TERM}, index {MAX_INDEX})"
        ))),
        _ => Ok(()),
    }
}

impl PeerService {
    /// Streams a snapshot into `incoming`, at most as many bytes as the disk
    /// holds above the node's free-space reserve, syncs it and renames it
    /// "received-": its path and length.
    async fn receive_snapshot(
        &self,
        first: Vec<u8>,
        stream: &mut Streaming<peer::SnapshotChunk>,
        incoming: &Path,
    ) -> Result<(PathBuf, u64), Status> {
        let room = self.host.snapshot_room();
        let io = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
        let mut file = tokio::fs::File::create(incoming).await.map_err(io)?;
        let mut len = 0u64;
        let mut data = first;
        loop {
            len += data.len() as u64;
            if len > room {
                return Err(Status::resource_exhausted(format!(
                    "the snapshot stream passed {room} bytes, all the space this node has above its reserve (--min-free-mb)"
                )));
            }
            file.write_all(&data).await.map_err(io)?;
            match stream.next().await {
                Some(chunk) => data = chunk?.data,
                None => break,
            }
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let name = incoming
            .file_name()
            .map(|n| n.to_string_lossy().replacen("incoming-", "received-", 1))
            .unwrap_or_default();
        let received = incoming.with_file_name(name);
        tokio::fs::rename(incoming, &received).await.map_err(io)?;
        Ok((received, len))
    }

    fn check_target(&self, target: u64) -> Result<(), Status> {
        if target != self.host.id {
            return Err(Status::failed_precondition(format!(
                "request meant for node {target} reached node {}; refusing (this address now belongs to another identity)",
                self.host.id
            )));
        }
        Ok(())
    }

    /// The request is for this node's cluster, which it has joined.
    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        match self.host.cluster_id() {
            None => Err(NodeError::NotJoined.into()),
            Some(c) if c != cluster_id => Err(Status::failed_precondition(format!(
                "request from cluster {cluster_id:?} reached a node of cluster {c:?}"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn group(&self, raw: u32) -> Result<Group, Status> {
        let g = GroupId::from_raw(raw);
        self.host
            .group(g)
            .ok_or_else(|| Status::not_found(format!("no replica of shard {g} on node {}", self.host.id)))
    }

    /// `node` may ask this replica for its vote: a voter of the group as this
    /// replica's log has it, or as the cluster map has it (a replica whose
    /// log is behind a membership change, or still empty, must recognise
    /// the new voters).
    fn check_voter(&self, group: &Group, node: NodeId) -> Result<(), Status> {
        let in_log = group.voters().contains(&node);
        let in_map = self.host.map().is_some_and(|m| match group.id {
            GroupId::Meta => m.meta_voters.contains(&node),
            GroupId::Shard(s) => m.replicas(s).is_ok_and(|r| r.voters.contains(&node)),
        });
        if in_log || in_map {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "node {node} is not a voter of group {}",
                group.id
            )))
        }
    }

    /// `node` may send this replica appends and snapshots: a node of the map.
    /// (Looser than [`Self::check_voter`]: a lagging replica must accept a
    /// leader that neither its log nor its copy of the map knows as a voter
    /// yet, or it could never catch up.)
    fn check_node(&self, node: NodeId) -> Result<(), Status> {
        match self.host.map() {
            Some(m) if m.nodes.contains_key(&node) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "node {node} is not a node of this cluster's map"
            ))),
        }
    }
}

fn bad_payload(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable payload: {e}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<peer::RaftRequest>) -> Result<Response<peer::RaftReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        let group = self.group(req.group)?;
        let raft = &group.raft;
        let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
        let from = req.from_node;
        let payload = match RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Append => {
                let rpc: openraft::raft::AppendEntriesRequest<crate::raft::types::TypeConfig> =
                    decode_raft("append entries", &req.payload).map_err(bad_payload)?;
                check_vote(&rpc.vote, from)?;
                self.check_node(from)?;
                check_log_id(rpc.prev_log_id.as_ref())?;
                check_log_id(rpc.leader_commit.as_ref())?;
                for e in &rpc.entries {
                    check_log_id(Some(&e.log_id))?;
                }
                let resp = raft.append_entries(rpc).await.map_err(|e| internal(&e))?;
                if resp.is_success() {
                    *group.leader_contact.lock().expect("contact lock") = Some(Instant::now());
                }
                encode_raft(&resp)
            }
            RaftKind::Vote | RaftKind::PreVote => {
                let rpc: openraft::raft::VoteRequest<crate::raft::types::TypeConfig> =
                    decode_raft("vote", &req.payload).map_err(bad_payload)?;
                check_vote(&rpc.vote, from)?;
                check_log_id(rpc.last_log_id.as_ref())?;
                self.check_voter(&group, from)?;
                if req.kind == RaftKind::Vote as i32 {
                    encode_raft(&raft.vote(rpc).await.map_err(|e| internal(&e))?)
                } else {
                    encode_raft(&raft.pre_vote(rpc).await.map_err(|e| internal(&e))?)
                }
            }
            RaftKind::TransferLeader => {
                if self.host.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Status::failed_precondition(
                        "this node is draining and refuses leadership",
                    ));
                }
                let rpc: openraft::raft::TransferLeaderRequest<crate::raft::types::TypeConfig> =
                    decode_raft("transfer leader", &req.payload).map_err(bad_payload)?;
                check_vote(rpc.from_leader(), from)?;
                check_log_id(rpc.last_log_id())?;
                // A node of the map, not necessarily a voter here: a leader
                // that has just removed itself hands over its leadership.
                self.check_node(from)?;
                encode_raft(&raft.handle_transfer_leader(rpc).await.map_err(|e| internal(&e))?)
            }
            RaftKind::Unspecified => {
                return Err(Status::invalid_argument("unknown raft message kind"));
            }
        };
        Ok(Response::new(peer::RaftReply { payload }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<peer::SnapshotChunk>>,
    ) -> Result<Response<peer::RaftReply>, Status> {
        let started = Instant::now();
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_target(first.target_node)?;
        self.check_cluster(&first.cluster_id)?;
        let group = self.group(first.group)?;
        let (vote, meta): (Vote, SnapshotMeta) = decode_raft("snapshot header", &first.header).map_err(bad_payload)?;
        check_vote(&vote, first.from_node)?;
        self.check_node(first.from_node)?;
        check_log_id(meta.last_log_id.as_ref())?;
        let incoming = self
            .host
            .engine
            .new_snapshot_path(group.id, "incoming")
            .map_err(|e| Status::internal(e.to_string()))?;
        // A file that is not installed is removed, whatever cut it short.
        let mut cleanup = RemoveOnDrop(Some(incoming.clone()));
        let received = self.receive_snapshot(first.data, &mut stream, &incoming).await?;
        cleanup.0 = Some(received.0.clone());
        let (received, len) = received;
        // Checked whole before openraft sees it: a bad file is refused here,
        // where it changes nothing.
        let (path, g) = (received.clone(), group.id);
        let entries = tokio::task::spawn_blocking(move || validate_snapshot(&path, g))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("snapshot of group {g} refused: {e}")))?;
        tracing::debug!(group = %g, entries, bytes = len, "received snapshot");
        cleanup.0 = None;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile { path: received, len },
        };
        let resp = group
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        METRICS.snapshot_received(group.id, len, started.elapsed());
        Ok(Response::new(peer::RaftReply {
            payload: encode_raft(&resp),
        }))
    }

    async fn join(&self, request: Request<peer::JoinRequest>) -> Result<Response<peer::JoinReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        // Decoding validates the map: a node never persists one it cannot route by.
        let map = ClusterMap::decode(&req.map).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.host.join(map).await?;
        Ok(Response::new(peer::JoinReply {}))
    }

    async fn create_replica(
        &self,
        request: Request<peer::CreateReplicaRequest>,
    ) -> Result<Response<peer::CreateReplicaReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        let g = GroupId::from_raw(req.group);
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        match g {
            GroupId::Shard(s) if s < map.shard_count => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "no shard {g} to create: the cluster has shards 0..{} (the metadata group is created by joining)",
                    map.shard_count
                )));
            }
        }
        self.host.open_group(g).await?;
        Ok(Response::new(peer::CreateReplicaReply {}))
    }

    async fn destroy_replica(
        &self,
        request: Request<peer::CreateReplicaRequest>,
    ) -> Result<Response<peer::CreateReplicaReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        // The caller (the shard's leader) committed this node's removal from
        // the shard's membership, and then from the map, before asking (see
        // admin RemoveReplica): only a removal the map records destroys data.
        let g = GroupId::from_raw(req.group);
        let GroupId::Shard(shard) = g else {
            return Err(Status::invalid_argument(
                "the metadata group's replica is never destroyed",
            ));
        };
        let me = self.host.id;
        let mut rx = self.host.subscribe_map();
        let removed = matches!(
            tokio::time::timeout(
                DESTROY_MAP_WAIT,
                rx.wait_for(|m| m
                    .as_ref()
                    .is_some_and(|m| m.replicas(shard).is_ok_and(|r| !r.contains(me)))),
            )
            .await,
            Ok(Ok(_))
        );
        if !removed {
            return Err(Status::failed_precondition(format!(
                "the cluster map still places shard {shard} on node {me} (or does not know the shard); refusing to destroy its replica"
            )));
        }
        self.host.destroy_group(g).await?;
        Ok(Response::new(peer::CreateReplicaReply {}))
    }

    async fn propose(&self, request: Request<peer::ProposeRequest>) -> Result<Response<peer::ProposeReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        // Only the metadata path forwards proposals between nodes; key
        // writes are forwarded as client requests (see `kv`).
        if GroupId::from_raw(req.group) != GroupId::Meta {
            return Err(Status::invalid_argument(
                "peers forward proposals for the metadata group only",
            ));
        }
        let kv = KvRequest::decode(&req.request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let proposal = Proposal::new(GroupId::Meta, kv).map_err(NodeError::from)?;
        let resp = self.host.propose_local(proposal).await?;
        Ok(Response::new(peer::ProposeReply {
            response: encode_raft(&resp),
        }))
    }
}

/// Removes a snapshot file that never reached openraft (the stream was cut,
/// too large or invalid).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Unlinking a large file can take a while: off the async workers.
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(path);
            });
        }
    }
}
