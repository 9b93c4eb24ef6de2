//! A hostile peer: speaks the peer protocol (port 2380) directly, with
//! whatever ids, terms and payloads a test chooses, the way an attacker with
//! nothing but network access could. Node ids and the cluster id are public
//! (the admin `NodeStatus` call shows them), so it uses the real ones.

use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use raftkv_core::GroupId;
use raftkv_core::command::{Command, Request};
use raftkv_core::map::ClusterMap;
use raftkv_node::raft::types::{LogId, TypeConfig, Vote};
use raftkv_node::storage::encode_raft;
use raftkv_proto::peer::{self, RaftKind, peer_client::PeerClient};
use tonic::transport::Channel;

pub struct HostilePeer {
    client: PeerClient<Channel>,
    /// The node it talks to.
    pub target: u64,
    pub cluster_id: String,
}

impl HostilePeer {
    pub async fn connect(host: &str, peer_port: u16, target: u64, cluster_id: &str) -> HostilePeer {
        let client = PeerClient::connect(format!("http://{host}:{peer_port}"))
            .await
            .expect("connect to the peer port")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20);
        HostilePeer {
            client,
            target,
            cluster_id: cluster_id.into(),
        }
    }

    /// `Propose` of `command` on `group`, as a peer forwarding a proposal.
    pub async fn propose(&mut self, group: GroupId, command: Command) -> Result<(), tonic::Status> {
        let request = Request {
            proposed_at_ms: 0,
            command,
        };
        self.client
            .propose(peer::ProposeRequest {
                target_node: self.target,
                group: group.to_raw(),
                request: request.encode(),
                cluster_id: self.cluster_id.clone(),
            })
            .await
            .map(|_| ())
    }

    async fn raft(&mut self, group: GroupId, from: u64, kind: RaftKind, payload: Vec<u8>) -> Result<(), tonic::Status> {
        self.client
            .raft(peer::RaftRequest {
                target_node: self.target,
                from_node: from,
                cluster_id: self.cluster_id.clone(),
                group: group.to_raw(),
                kind: kind as i32,
                payload,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// A `Vote` from `candidate` at `term`, claiming to be part of a
    /// leadership transfer (which bypasses the leader lease).
    pub async fn vote(&mut self, group: GroupId, from: u64, candidate: u64, term: u64) -> Result<(), tonic::Status> {
        let mut rpc = VoteRequest::<TypeConfig>::new(Vote::new(term, candidate), Some(far_log_id(term, candidate)));
        rpc.leadership_transfer = true;
        self.raft(group, from, RaftKind::Vote, encode_raft(&rpc)).await
    }

    /// A `TransferLeader` claiming to come from leader `from` at `term`.
    pub async fn transfer_leader(&mut self, group: GroupId, from: u64, term: u64) -> Result<(), tonic::Status> {
        let rpc = TransferLeaderRequest::<TypeConfig>::new(Vote::new_committed(term, from), self.target, None);
        self.raft(group, from, RaftKind::TransferLeader, encode_raft(&rpc))
            .await
    }

    /// A heartbeat from `leader` at `term`.
    pub async fn append(&mut self, group: GroupId, leader: u64, term: u64) -> Result<(), tonic::Status> {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        self.raft(group, leader, RaftKind::Append, encode_raft(&rpc)).await
    }

    pub async fn destroy_replica(&mut self, group: GroupId, cluster_id: &str) -> Result<(), tonic::Status> {
        self.client
            .destroy_replica(peer::CreateReplicaRequest {
                target_node: self.target,
                cluster_id: cluster_id.into(),
                group: group.to_raw(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn create_replica(&mut self, group: GroupId) -> Result<(), tonic::Status> {
        self.client
            .create_replica(peer::CreateReplicaRequest {
                target_node: self.target,
                cluster_id: self.cluster_id.clone(),
                group: group.to_raw(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// `Join` with `map` as it is, valid or not.
    pub async fn join(&mut self, map: &ClusterMap) -> Result<(), tonic::Status> {
        self.client
            .join(peer::JoinRequest {
                target_node: self.target,
                map: map.encode(),
            })
            .await
            .map(|_| ())
    }
}

/// A last log id no real replica has reached, so a vote would be granted on
/// log grounds alone.
fn far_log_id(term: u64, node: u64) -> LogId {
    LogId::new(openraft::vote::leader_id_adv::LeaderId { term, node_id: node }, 1 << 40)
}
