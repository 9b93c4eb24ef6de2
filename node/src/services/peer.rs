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
use raftkv_core::{GroupId, NodeId, ReplicaId, ShardId, safety};
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
/// How long `CreateReplica` and `DestroyReplica` wait for this node's map to
/// show the allocation or removal the caller committed before asking.
const MAP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct PeerService {
    pub host: Arc<Host>,
}

/// A wire replica id: 0 (from a node of the release before replica ids) is the node id.
fn replica_or_node(replica: ReplicaId, node: NodeId) -> ReplicaId {
    if replica == 0 { node } else { replica }
}

fn check_vote(vote: &Vote, from: ReplicaId) -> Result<(), Status> {
    let leader = vote.leader_id();
    if leader.node_id != from {
        return Err(Status::invalid_argument(format!(
            "message from replica {from} carries the vote of replica {}",
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

    /// This node's replica of group `raw`, which must be incarnation
    /// `replica`: a message for another incarnation (one destroyed here, or
    /// one not created yet) never reaches this one.
    fn group(&self, raw: u32, replica: ReplicaId) -> Result<Group, Status> {
        let g = GroupId::from_raw(raw);
        let group = self
            .host
            .group(g)
            .ok_or_else(|| Status::not_found(format!("no replica of shard {g} on node {}", self.host.id)))?;
        if group.replica != replica {
            return Err(Status::not_found(format!(
                "node {} hosts replica {} of shard {g}, not {replica}",
                self.host.id, group.replica
            )));
        }
        Ok(group)
    }

    /// `from` (a replica id) is hosted by `node`, the sender.
    fn check_sender(&self, from: ReplicaId, node: NodeId) -> Result<(), Status> {
        match self.host.pool.node_of(from) {
            Some(n) if n == node => Ok(()),
            Some(n) => Err(Status::permission_denied(format!(
                "node {node} sent a message from replica {from}, which lives on node {n}"
            ))),
            None => Err(Status::unavailable(format!(
                "replica {from} is not in this node's cluster map yet"
            ))),
        }
    }

    /// Replica `from` may ask this replica for its vote: a voter of the
    /// group as this replica's log has it, or as the cluster map has it (a
    /// replica whose log is behind a membership change, or still empty,
    /// must recognise the new voters).
    fn check_voter(&self, group: &Group, from: ReplicaId) -> Result<(), Status> {
        let in_log = group.voter_ids().contains(&from);
        let in_map = self.host.map().is_some_and(|m| match group.id {
            GroupId::Meta => m.meta_voters.contains(&from),
            GroupId::Shard(s) => m.replicas(s).is_ok_and(|r| r.voter_ids().contains(&from)),
        });
        if in_log || in_map {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "replica {from} is not a voter of group {}",
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

impl PeerService {
    /// Waits (at most [`MAP_WAIT`]) until this node's map knows `shard`
    /// and satisfies `ok`.
    async fn wait_for_map(&self, shard: ShardId, ok: impl Fn(&ClusterMap) -> bool) -> Result<(), ()> {
        let mut rx = self.host.subscribe_map();
        let seen = tokio::time::timeout(
            MAP_WAIT,
            rx.wait_for(|m| m.as_ref().is_some_and(|m| m.replicas(shard).is_ok() && ok(m))),
        )
        .await;
        if matches!(seen, Ok(Ok(_))) { Ok(()) } else { Err(()) }
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
        let group = self.group(req.group, replica_or_node(req.target_replica, req.target_node))?;
        let raft = &group.raft;
        let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
        let from = replica_or_node(req.from_replica, req.from_node);
        self.check_sender(from, req.from_node)?;
        let payload = match RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Append => {
                let rpc: openraft::raft::AppendEntriesRequest<crate::raft::types::TypeConfig> =
                    decode_raft("append entries", &req.payload).map_err(bad_payload)?;
                check_vote(&rpc.vote, from)?;
                self.check_node(req.from_node)?;
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
                self.check_node(req.from_node)?;
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
        let group = self.group(first.group, replica_or_node(first.target_replica, first.target_node))?;
        let from = replica_or_node(first.from_replica, first.from_node);
        self.check_sender(from, first.from_node)?;
        let (vote, meta): (Vote, SnapshotMeta) = decode_raft("snapshot header", &first.header).map_err(bad_payload)?;
        check_vote(&vote, from)?;
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
        let shard = match g {
            GroupId::Shard(s) if s < map.shard_count => s,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "no shard {g} to create: the cluster has shards 0..{} (the metadata group is created by joining)",
                    map.shard_count
                )));
            }
        };
        let me = self.host.id;
        let replica = replica_or_node(req.replica_id, me);
        // An allocated id is created only where the map allocated it (the
        // caller recorded it before asking). Node-id replicas come from
        // leaders of the release before replica ids, which recorded after.
        if replica != me {
            self.wait_for_map(shard, |m| m.replica_on(shard, me) == Some(replica))
                .await
                .map_err(|()| {
                    Status::failed_precondition(format!(
                        "the cluster map does not place replica {replica} of shard {shard} on node {me}; refusing to create it"
                    ))
                })?;
        }
        self.host.open_group(g, replica).await?;
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
        let replica = replica_or_node(req.replica_id, me);
        self.wait_for_map(shard, |m| m.replica_on(shard, me) != Some(replica))
            .await
            .map_err(|()| {
                Status::failed_precondition(format!(
                    "the cluster map still places replica {replica} of shard {shard} on node {me} (or does not know the shard); refusing to destroy it"
                ))
            })?;
        self.host.destroy_group(g, replica).await?;
        Ok(Response::new(peer::CreateReplicaReply {}))
    }

    async fn check_replica(
        &self,
        request: Request<peer::CheckReplicaRequest>,
    ) -> Result<Response<peer::CheckReplicaReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        let g = GroupId::from_raw(req.group);
        let GroupId::Shard(shard) = g else {
            return Err(Status::invalid_argument("metadata replicas are not collected"));
        };
        let group = self
            .host
            .group(g)
            .ok_or(NodeError::NotLeader { group: g, leader: None })?;
        let confirmed = group
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .is_ok();
        if !confirmed {
            return Err(NodeError::NotLeader {
                group: g,
                leader: group.leader_node().filter(|l| *l != self.host.id),
            }
            .into());
        }
        let m = group.metrics();
        let membership = m.membership_config.membership();
        let members: Vec<ReplicaId> = membership.voter_ids().chain(membership.learner_ids()).collect();
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        let pending = map
            .replicas(shard)
            .is_ok_and(|r| r.pending.values().any(|p| *p == req.replica_id));
        let view = safety::LeaderView {
            confirmed,
            members: &members,
            membership_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            map_next_replica_id: map.next_replica_id,
            pending,
        };
        let answer = safety::check_replica_gone(req.replica_id, &view);
        Ok(Response::new(peer::CheckReplicaReply {
            gone: answer.is_ok(),
            reason: answer.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
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
