//! The Raft peer service (port 2380): openraft RPCs, snapshot streams,
//! bootstrap joins, replica creation, and forwarded proposals.
//!
//! Every request names the node it is meant for. A node with another
//! identity refuses it: after a pod loses its volume, the new process at the
//! old DNS name must never answer for the old member.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use raftkv_core::GroupId;
use raftkv_core::command::Request as KvRequest;
use raftkv_core::map::ClusterMap;
use raftkv_proto::peer::{self, RaftKind, peer_server::Peer};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::NodeError;
use crate::host::{Group, Host};
use crate::metrics::METRICS;
use crate::storage::{SnapshotFile, decode_raft, encode_raft};
use crate::types::{Snapshot, SnapshotMeta, Vote};

pub struct PeerService {
    pub host: Arc<Host>,
}

impl PeerService {
    fn check_target(&self, target: u64) -> Result<(), Status> {
        if target != self.host.id {
            return Err(Status::failed_precondition(format!(
                "request meant for node {target} reached node {}; refusing (this address now belongs to another identity)",
                self.host.id
            )));
        }
        Ok(())
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        match self.host.cluster_id() {
            Some(c) if !cluster_id.is_empty() && c != cluster_id => Err(Status::failed_precondition(format!(
                "request from cluster {cluster_id:?} reached a node of cluster {c:?}"
            ))),
            _ => Ok(()),
        }
    }

    fn group(&self, raw: u32) -> Result<Group, Status> {
        let g = GroupId::from_raw(raw);
        self.host
            .group(g)
            .ok_or_else(|| Status::not_found(format!("no replica of shard {g} on node {}", self.host.id)))
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
        let payload = match RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Append => {
                let rpc = decode_raft("append entries", &req.payload).map_err(bad_payload)?;
                let resp = raft.append_entries(rpc).await.map_err(|e| internal(&e))?;
                if resp.is_success() {
                    *group.leader_contact.lock().expect("contact lock") = Some(Instant::now());
                }
                encode_raft(&resp)
            }
            RaftKind::Vote => {
                let rpc = decode_raft("vote", &req.payload).map_err(bad_payload)?;
                encode_raft(&raft.vote(rpc).await.map_err(|e| internal(&e))?)
            }
            RaftKind::PreVote => {
                let rpc = decode_raft("pre-vote", &req.payload).map_err(bad_payload)?;
                encode_raft(&raft.pre_vote(rpc).await.map_err(|e| internal(&e))?)
            }
            RaftKind::TransferLeader => {
                if self.host.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Status::failed_precondition(
                        "this node is draining and refuses leadership",
                    ));
                }
                let rpc = decode_raft("transfer leader", &req.payload).map_err(bad_payload)?;
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
        let incoming = self
            .host
            .engine
            .new_snapshot_path(group.id, "incoming")
            .map_err(|e| Status::internal(e.to_string()))?;
        let io = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
        let mut file = tokio::fs::File::create(&incoming).await.map_err(io)?;
        let mut len = first.data.len() as u64;
        file.write_all(&first.data).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            len += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let received = incoming.with_file_name(
            incoming
                .file_name()
                .map(|n| n.to_string_lossy().replacen("incoming-", "received-", 1))
                .unwrap_or_default(),
        );
        tokio::fs::rename(&incoming, &received).await.map_err(io)?;
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
        if self.host.cluster_id().is_none() {
            return Err(NodeError::NotJoined.into());
        }
        self.check_cluster(&req.cluster_id)?;
        self.host.open_group(GroupId::from_raw(req.group)).await?;
        Ok(Response::new(peer::CreateReplicaReply {}))
    }

    async fn destroy_replica(
        &self,
        request: Request<peer::CreateReplicaRequest>,
    ) -> Result<Response<peer::CreateReplicaReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        self.check_cluster(&req.cluster_id)?;
        // The caller (the shard's leader) has committed this node's removal
        // from the shard's membership before asking; see admin RemoveReplica.
        let g = GroupId::from_raw(req.group);
        self.host.destroy_group(g).await?;
        Ok(Response::new(peer::CreateReplicaReply {}))
    }

    async fn propose(&self, request: Request<peer::ProposeRequest>) -> Result<Response<peer::ProposeReply>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node)?;
        let g = GroupId::from_raw(req.group);
        let kv = KvRequest::decode(&req.request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let resp = self.host.propose_local(g, kv).await?;
        Ok(Response::new(peer::ProposeReply {
            response: encode_raft(&resp),
        }))
    }
}
