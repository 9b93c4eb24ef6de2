//! The Raft peer client: openraft's network traits over the tonic `Peer`
//! service.
//!
//! One HTTP/2 channel per peer carries every group's appends, votes and
//! heartbeats (groups are multiplexed by the `group` field); snapshots get a
//! second channel so a long transfer never delays heartbeats. Channels are
//! lazy: they resolve the peer's DNS name on every (re)connect, so a pod that
//! comes back with a new IP is found again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::RaftNetworkV2;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use raftkv_core::map::{ClusterMap, FIRST_REPLICA_ID, NodeAddr};
use raftkv_core::{GroupId, NodeId, ReplicaId};
use raftkv_proto::peer::{self, RaftKind, peer_client::PeerClient};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::raft::types::{Snapshot, TypeConfig, Vote};
use crate::storage::{SnapshotFile, decode_raft, encode_raft};

/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Most bytes of entries one append carries (estimated from the commands'
/// sizes). A longer batch is sent in parts, each acknowledged as a partial
/// success, so a follower that fell behind on large values always catches
/// up and no message nears the peer port's limit. One entry always goes.
pub const MAX_APPEND_BYTES: usize = 8 << 20;

/// About how many bytes `entry` takes on the wire.
fn entry_bytes(entry: &crate::raft::types::Entry) -> usize {
    use raftkv_core::command::Command;
    const OVERHEAD: usize = 64;
    match &entry.payload {
        openraft::EntryPayload::Normal(r) => match &r.command {
            Command::Put { key, value, .. } => key.len() + value.len() + OVERHEAD,
            Command::Delete { key } => key.len() + OVERHEAD,
            Command::Cas { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len) + OVERHEAD,
            Command::InitMap(_) | Command::UpdateMap { .. } | Command::Expire { .. } => r.encode().len() + OVERHEAD,
        },
        openraft::EntryPayload::Blank => OVERHEAD,
        openraft::EntryPayload::Membership(_) => 16 * OVERHEAD,
    }
}

/// Keeps the longest prefix of `entries` within `budget` bytes (one entry
/// at least); returns the last kept entry's log id if any were dropped.
fn fit_entries(entries: &mut Vec<crate::raft::types::Entry>, budget: usize) -> Option<crate::raft::types::LogId> {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total = total.saturating_add(entry_bytes(e));
            total > budget
        })
        .map(|cut| cut.max(1))?;
    if keep >= entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Lane {
    /// Appends, votes and heartbeats of every group.
    Raft,
    /// Snapshot streams.
    Snapshot,
    /// Client requests forwarded to a shard leader's KV service.
    Client,
    /// Admin requests forwarded to a shard leader's admin service.
    Admin,
}

/// Addresses of the peers and the channels to them, shared by every group.
pub struct PeerPool {
    self_id: NodeId,
    book: RwLock<BTreeMap<NodeId, NodeAddr>>,
    /// Where each allocated replica id lives, from every map seen. An id is
    /// never reused, so an entry stays true.
    replicas: RwLock<HashMap<ReplicaId, NodeId>>,
    channels: Mutex<HashMap<(NodeId, Lane), (String, Channel)>>,
    cluster_id: RwLock<String>,
    /// The source address of connections to peers: the listen address when it
    /// names one interface, so a node's traffic comes from where it can be
    /// reached (multi-homed hosts, firewall rules, the partition tests).
    local_address: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

impl PeerPool {
    pub fn new(self_id: NodeId, listen_host: &str) -> Arc<Self> {
        let local_address = listen_host.parse::<IpAddr>().ok().filter(|ip| !ip.is_unspecified());
        Arc::new(PeerPool {
            self_id,
            book: RwLock::default(),
            replicas: RwLock::default(),
            channels: Mutex::default(),
            cluster_id: RwLock::default(),
            local_address,
        })
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    pub fn set_cluster_id(&self, id: &str) {
        *self.cluster_id.write().expect("cluster id lock") = id.to_string();
    }

    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().expect("cluster id lock").clone()
    }

    /// Learns peer addresses (from the cluster map). Channels to a peer whose
    /// address changed are replaced on next use.
    pub fn set_addresses(&self, nodes: &BTreeMap<NodeId, NodeAddr>) {
        let mut book = self.book.write().expect("address book lock");
        for (id, addr) in nodes {
            book.insert(*id, addr.clone());
        }
    }

    /// Learns where the replicas `map` allocated live.
    pub fn learn_replicas(&self, map: &ClusterMap) {
        let mut dir = self.replicas.write().expect("replica directory lock");
        for s in &map.shards {
            for (node, id) in s.ids.iter().chain(&s.pending) {
                dir.insert(*id, *node);
            }
        }
    }

    /// The node hosting replica `id`: the id itself below
    /// [`FIRST_REPLICA_ID`] (replicas placed at bootstrap, and every
    /// metadata replica), else as the maps seen so far say.
    pub fn node_of(&self, id: ReplicaId) -> Option<NodeId> {
        if id < FIRST_REPLICA_ID {
            return Some(id);
        }
        self.replicas.read().expect("replica directory lock").get(&id).copied()
    }

    pub fn address(&self, id: NodeId) -> Option<NodeAddr> {
        self.book.read().expect("address book lock").get(&id).cloned()
    }

    pub fn channel(&self, target: NodeId, lane: Lane) -> Result<Channel, PeerError> {
        let addr = self
            .address(target)
            .ok_or_else(|| PeerError(format!("no address known for node {target}")))?;
        let endpoint = match lane {
            Lane::Raft | Lane::Snapshot => addr.peer_endpoint(),
            Lane::Client => addr.client_endpoint(),
            Lane::Admin => addr.admin_endpoint(),
        };
        let mut channels = self.channels.lock().expect("channel map lock");
        if let Some((ep, ch)) = channels.get(&(target, lane))
            && *ep == endpoint
        {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| PeerError(format!("bad peer endpoint {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .local_address(self.local_address)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert((target, lane), (endpoint, ch.clone()));
        Ok(ch)
    }

    /// A client for `target`'s peer service on the Raft lane.
    pub fn client(&self, target: NodeId) -> Result<PeerClient<Channel>, PeerError> {
        Ok(PeerClient::new(self.channel(target, Lane::Raft)?).max_decoding_message_size(64 << 20))
    }
}

pub struct NetworkFactory {
    pub group: GroupId,
    /// The Raft id of this node's replica of the group.
    pub replica: ReplicaId,
    pub pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: ReplicaId, _node: &openraft::EmptyNode) -> PeerNetwork {
        PeerNetwork {
            target,
            from: self.replica,
            group: self.group,
            pool: self.pool.clone(),
            lane: Lane::Raft,
        }
    }

    async fn new_snapshot_client(&mut self, target: ReplicaId, _node: &openraft::EmptyNode) -> PeerNetwork {
        PeerNetwork {
            target,
            from: self.replica,
            group: self.group,
            pool: self.pool.clone(),
            lane: Lane::Snapshot,
        }
    }
}

/// The link from one replica of a group to another (`target`, a replica id).
pub struct PeerNetwork {
    target: ReplicaId,
    from: ReplicaId,
    group: GroupId,
    pool: Arc<PeerPool>,
    lane: Lane,
}

fn unreachable(msg: impl Into<String>) -> Unreachable<TypeConfig> {
    Unreachable::new(&PeerError(msg.into()))
}

fn network(msg: impl Into<String>) -> NetworkError<TypeConfig> {
    NetworkError::new(&PeerError(msg.into()))
}

/// Connection-level failures back off (Unreachable); anything else is a network error.
fn status_to_rpc(target: NodeId, s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
            RPCError::Unreachable(unreachable(format!("node {target}: {}", s.message())))
        }
        _ => RPCError::Network(network(format!("node {target}: {s}"))),
    }
}

impl PeerNetwork {
    /// The node hosting the target replica.
    fn target_node(&self) -> Result<NodeId, PeerError> {
        self.pool.node_of(self.target).ok_or_else(|| {
            PeerError(format!(
                "no node known for replica {} of group {} (the cluster map has not reached this node yet)",
                self.target, self.group
            ))
        })
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let node = self
            .target_node()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let channel = self
            .pool
            .channel(node, self.lane)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let request = peer::RaftRequest {
            target_node: node,
            from_node: self.pool.self_id(),
            cluster_id: self.pool.cluster_id(),
            group: self.group.to_raw(),
            kind: kind as i32,
            payload: encode_raft(req),
            target_replica: self.target,
            from_replica: self.from,
        };
        let reply = tokio::time::timeout(option.hard_ttl(), client.raft(request))
            .await
            .map_err(|_| RPCError::Unreachable(unreachable(format!("node {node}: timed out"))))?
            .map_err(|s| status_to_rpc(node, s))?;
        decode_raft("raft reply", &reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let cut_at = fit_entries(&mut rpc.entries, MAX_APPEND_BYTES);
        match (self.call(RaftKind::Append, &rpc, &option).await?, cut_at) {
            // The follower has everything up to the last entry sent; openraft
            // sends the rest next.
            (AppendEntriesResponse::Success, Some(last)) => Ok(AppendEntriesResponse::PartialSuccess(Some(last))),
            (resp, _) => Ok(resp),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::TransferLeader, &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let node = self
            .target_node()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let channel = self
            .pool
            .channel(node, Lane::Snapshot)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let mut client = PeerClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel::<peer::SnapshotChunk>(4);
        let header = encode_raft(&(vote, snapshot.meta.clone()));
        let (target, from, cluster_id, group) =
            (node, self.pool.self_id(), self.pool.cluster_id(), self.group.to_raw());
        let (target_replica, from_replica) = (self.target, self.from);
        let path = snapshot.snapshot.path.clone();
        let bytes = snapshot.snapshot.len;
        // Reads the file chunk by chunk: memory stays bounded whatever the shard size.
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut first = true;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut buf).await?;
                buf.truncate(n);
                if n == 0 && !first {
                    return Ok::<(), std::io::Error>(());
                }
                let chunk = peer::SnapshotChunk {
                    target_node: target,
                    from_node: from,
                    cluster_id: cluster_id.clone(),
                    group,
                    header: if first { header.clone() } else { vec![] },
                    data: buf,
                    target_replica,
                    from_replica,
                };
                first = false;
                if tx.send(chunk).await.is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let started = std::time::Instant::now();
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = send => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StreamingError::Network(network(format!("reading snapshot file: {e}"))));
            }
            Err(e) => {
                return Err(StreamingError::Network(network(format!("snapshot reader: {e}"))));
            }
        }
        let reply = reply.map_err(|s| match status_to_rpc(node, s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(network(other.to_string())),
        })?;
        crate::metrics::METRICS.snapshot_sent(self.group, bytes, started.elapsed());
        decode_raft("snapshot reply", &reply.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Entry;
    use raftkv_core::command::{Command, Request};

    fn put(index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: crate::raft::types::LogId::new(
                openraft::vote::leader_id_adv::LeaderId { term: 1, node_id: 1 },
                index,
            ),
            payload: openraft::EntryPayload::Normal(Request {
                proposed_at_ms: 0,
                command: Command::Put {
                    key: b"k".to_vec(),
                    value: vec![0; value_bytes],
                    ttl_ms: None,
                },
            }),
        }
    }

    #[test]
    fn appends_are_cut_to_the_byte_budget_but_always_carry_an_entry() {
        let mut batch: Vec<Entry> = (1..=40).map(|i| put(i, 1 << 20)).collect();
        let last = fit_entries(&mut batch, MAX_APPEND_BYTES).expect("a 40 MiB batch is cut");
        assert_eq!(batch.len(), 7, "7 entries of 1 MiB + overhead fit in 8 MiB");
        assert_eq!(last.index, 7);

        let mut huge = vec![put(1, 20 << 20), put(2, 1)];
        assert_eq!(fit_entries(&mut huge, MAX_APPEND_BYTES).map(|l| l.index), Some(1));
        assert_eq!(huge.len(), 1);

        let mut small: Vec<Entry> = (1..=300).map(|i| put(i, 100)).collect();
        assert_eq!(fit_entries(&mut small, MAX_APPEND_BYTES), None);
        assert_eq!(small.len(), 300);
    }
}
