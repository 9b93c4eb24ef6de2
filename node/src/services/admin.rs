//! The admin service (port 2381): what the operator and `kvctl` use to
//! bootstrap, inspect and reshape the cluster.
//!
//! Every call is idempotent and safe to retry. Shard-level calls run on the
//! shard's leader (forwarded once, like client requests). Unsafe changes are
//! refused with FAILED_PRECONDITION and the reason (see `raftkv_core::safety`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, EmptyNode, ReadPolicy, ServerState};
use raftkv_core::command::{Command, Response as KvResponse};
use raftkv_core::map::{ClusterMap, MapError, NodeAddr};
use raftkv_core::{GroupId, NodeId, ReplicaId, ShardId, leadership, safety};
use raftkv_proto::admin::{self, admin_client::AdminClient, admin_server::Admin};
use raftkv_proto::peer;
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::host::{Group, Host};
use crate::raft::network::Lane;
use crate::routing::{self, Target};

use crate::error::HOP;
/// A learner this close to the leader's log may become a voter.
const PROMOTE_MAX_LAG: u64 = 1000;
const META_DEADLINE: Duration = Duration::from_secs(30);
/// How long an admin call looks for its group's leader.
const ADMIN_ROUTE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a membership change may take to commit before the call gives up.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);

pub struct AdminService {
    pub host: Arc<Host>,
}

fn refused(e: impl std::fmt::Display) -> Status {
    NodeError::Refused(e.to_string()).into()
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

/// The shard as `group` (this node's replica) sees it, naming nodes, not
/// replica ids.
pub fn shard_status(group: &Group) -> admin::ShardStatus {
    let m = group.metrics();
    let membership = m.membership_config.membership();
    let nodes =
        |ids: &mut dyn Iterator<Item = ReplicaId>| -> Vec<NodeId> { ids.filter_map(|r| group.node_of(r)).collect() };
    let voter_ids: Vec<ReplicaId> = membership.voter_ids().collect();
    let voters = nodes(&mut voter_ids.iter().copied());
    let learners = nodes(&mut membership.learner_ids());
    let last = m.last_log_index.unwrap_or(0);
    let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    let progress = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter_map(|(id, matched)| {
                    let matched = matched.as_ref().map_or(0, |l| l.index);
                    Some(admin::ReplicaProgress {
                        node_id: group.node_of(*id)?,
                        matched_index: matched,
                        lag: last.saturating_sub(matched),
                        voter: voter_ids.contains(id),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let (shard, meta) = match group.id {
        GroupId::Meta => (0, true),
        GroupId::Shard(s) => (s, false),
    };
    admin::ShardStatus {
        shard,
        meta,
        role: if m.state == ServerState::Follower && !voter_ids.contains(&group.replica) {
            "learner"
        } else {
            role(m.state)
        }
        .into(),
        term: m.current_term,
        leader: m.current_leader.and_then(|r| group.node_of(r)).unwrap_or(0),
        last_log_index: last,
        committed_index: committed,
        applied_index: applied,
        snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
        purged_index: m.purged.as_ref().map_or(0, |l| l.index),
        voters,
        learners,
        progress,
        lag: committed.saturating_sub(applied),
        replica_id: group.replica,
    }
}

impl AdminService {
    /// Bootstrap, run in a task of its own (see `bootstrap`).
    async fn bootstrap_here(&self, req: admin::BootstrapRequest) -> Result<Response<admin::BootstrapResponse>, Status> {
        if req.cluster_id.is_empty() {
            return Err(NodeError::BadRequest("cluster_id must not be empty".into()).into());
        }
        let mut nodes = BTreeMap::new();
        for m in &req.members {
            let (id, addr): (NodeId, NodeAddr) = m
                .try_into()
                .map_err(|e: raftkv_proto::ConversionError| NodeError::BadRequest(e.to_string()))?;
            if nodes.insert(id, addr).is_some() {
                return Err(NodeError::BadRequest(format!("node {id} is listed twice")).into());
            }
        }
        if !nodes.contains_key(&self.host.id) {
            return Err(NodeError::BadRequest(format!("the members must include this node ({})", self.host.id)).into());
        }
        let map = ClusterMap::bootstrap(req.cluster_id.clone(), nodes, req.shards, req.replication_factor)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if let Some(existing) = self.host.map() {
            if existing.cluster_id == map.cluster_id && self.host.group(GroupId::Meta).is_some() {
                // Already bootstrapped (a retry): finish the map if it is not in the metadata group yet.
                if existing.version > 1 {
                    return Ok(Response::new(admin::BootstrapResponse {
                        map: Some((&*existing).into()),
                    }));
                }
            } else if existing.cluster_id != map.cluster_id {
                return Err(refused(format!(
                    "this node already belongs to cluster {:?}",
                    existing.cluster_id
                )));
            }
        }
        self.host.pool.set_addresses(&map.nodes);
        self.host.pool.set_cluster_id(&map.cluster_id);
        for id in map.nodes.keys() {
            if *id == self.host.id {
                self.host.join(map.clone()).await?;
                continue;
            }
            let mut client = self.host.pool.client(*id).map_err(|e| NodeError::Peer(e.to_string()))?;
            client
                .join(peer::JoinRequest {
                    target_node: *id,
                    map: map.encode(),
                })
                .await
                .map_err(|s| Status::new(s.code(), format!("node {id} could not join: {}", s.message())))?;
        }
        match self
            .host
            .propose_meta(Command::InitMap(map.clone()), META_DEADLINE)
            .await?
        {
            KvResponse::Map { applied: true, .. } => {}
            KvResponse::Map {
                applied: false, reason, ..
            } => return Err(refused(reason.unwrap_or_default())),
            other => return Err(raft_err(format!("unexpected metadata answer {other:?}"))),
        }
        tracing::info!(cluster = %map.cluster_id, nodes = map.nodes.len(), shards = map.shard_count, "bootstrapped");
        Ok(Response::new(admin::BootstrapResponse {
            map: Some((&map).into()),
        }))
    }

    fn shard(&self, shard: u32) -> Result<(GroupId, Arc<ClusterMap>), Status> {
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        map.replicas(shard).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        Ok((GroupId::Shard(shard), map))
    }

    /// Applies `change` to the cluster map through the metadata group,
    /// retrying when another change got there first.
    async fn update_map(
        &self,
        change: impl Fn(&ClusterMap) -> Result<ClusterMap, MapError>,
    ) -> Result<ClusterMap, Status> {
        let until = Instant::now() + META_DEADLINE;
        loop {
            let current = self.host.map().ok_or(NodeError::NotJoined)?;
            let next = change(&current).map_err(refused)?;
            if next == *current {
                return Ok(next);
            }
            let cmd = Command::UpdateMap {
                expected_version: current.version,
                map: next.clone(),
            };
            match self.host.propose_meta(cmd, META_DEADLINE).await? {
                KvResponse::Map { applied: true, .. } => {
                    self.host.publish_map(Arc::new(next.clone()));
                    return Ok(next);
                }
                KvResponse::Map {
                    applied: false,
                    version,
                    reason,
                } => {
                    if Instant::now() > until {
                        return Err(
                            NodeError::Timeout(format!("cluster map update: {}", reason.unwrap_or_default())).into(),
                        );
                    }
                    // Our copy is behind: wait for the newer map to arrive here.
                    let mut rx = self.host.subscribe_map();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        rx.wait_for(|m| m.as_ref().is_some_and(|m| m.version >= version)),
                    )
                    .await;
                }
                other => {
                    return Err(NodeError::Raft(format!("unexpected metadata answer {other:?}")).into());
                }
            }
        }
    }

    /// Runs an admin call on `g`'s leader: `None` when that is this node
    /// (the caller goes on here), else the leader's answer.
    async fn forward_if_not_leader<T>(
        &self,
        g: GroupId,
        forwarded: bool,
        call: impl Fn(AdminClient<tonic::transport::Channel>) -> futures::future::BoxFuture<'static, Result<T, Status>>,
    ) -> Result<Option<T>, Status> {
        routing::on_leader(&self.host, g, forwarded, ADMIN_ROUTE_DEADLINE, |target| {
            let call = &call;
            async move {
                match target {
                    Target::Here => {
                        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
                        if group.metrics().state == ServerState::Leader {
                            Ok(None)
                        } else {
                            Err(NodeError::NotLeader { group: g, leader: None }.into())
                        }
                    }
                    Target::Node(l) => {
                        let ch = self
                            .host
                            .pool
                            .channel(l, Lane::Admin)
                            .map_err(|e| NodeError::Peer(e.to_string()))?;
                        call(AdminClient::new(ch)).await.map(Some)
                    }
                }
            }
        })
        .await
    }

    /// Refuses a drain that would leave a group this node hosts with no
    /// other voter able to lead (each other voter is asked, briefly, whether
    /// it answers and is not draining).
    async fn check_drain(&self) -> Result<(), Status> {
        let me = self.host.id;
        let groups: Vec<(String, Vec<NodeId>)> = self
            .host
            .groups()
            .iter()
            .map(|g| {
                let others = g.voter_nodes().into_iter().filter(|v| *v != me).collect();
                (format!("group {}", g.id), others)
            })
            .collect();
        let peers: BTreeSet<NodeId> = groups.iter().flat_map(|(_, o)| o.iter().copied()).collect();
        let mut able = BTreeSet::new();
        for peer in peers {
            let Ok(ch) = self.host.pool.channel(peer, Lane::Admin) else {
                continue;
            };
            let status = tokio::time::timeout(
                Duration::from_secs(2),
                AdminClient::new(ch).node_status(admin::NodeStatusRequest {}),
            )
            .await;
            if let Ok(Ok(s)) = status {
                let s = s.into_inner();
                if s.node_id == peer && !s.draining && !s.shutting_down {
                    able.insert(peer);
                }
            }
        }
        safety::check_drain(me, groups.iter().map(|(g, o)| (g.clone(), o.as_slice())), |n| {
            able.contains(&n)
        })
        .map_err(refused)
    }

    /// Voters of `group` that are reachable and caught up, as its leader sees
    /// them: a node that just died must not count toward the quorum a
    /// removal leaves behind.
    fn healthy_voters(&self, group: &Group) -> Vec<ReplicaId> {
        let (last, views) = group.voter_views();
        leadership::healthy_voters(group.replica, last, &views)
    }

    /// Records `shard`'s membership, as `group`'s log has it now, in the map.
    async fn record_replicas(&self, shard: ShardId, group: &Group) -> Result<(), Status> {
        let m = group.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<ReplicaId> = membership.voter_ids().collect();
        let learners: Vec<ReplicaId> = membership.learner_ids().collect();
        self.update_map(|map| map.with_shard_members(shard, &voters, &learners))
            .await?;
        Ok(())
    }

    /// The member of `group` on `node`, refusing when there is none.
    fn member_on(group: &Group, shard: ShardId, node: NodeId) -> Result<ReplicaId, Status> {
        group
            .member_on(node)
            .ok_or_else(|| refused(format!("node {node} is not a replica of shard {shard}; add it first")))
    }
}

/// Sends the call (`req`, a `Copy` request) to `$g`'s leader unless this node
/// leads `$g`, and returns the leader's answer from the handler; falls
/// through when the call is to run here.
macro_rules! forward_to_leader {
    ($svc:expr, $g:expr, $forwarded:expr, $req:expr, $method:ident) => {
        let req = $req;
        if let Some(answer) = $svc
            .forward_if_not_leader($g, $forwarded, move |mut c| {
                Box::pin(async move { Ok(c.$method(hop(req)).await?.into_inner()) })
            })
            .await?
        {
            return Ok(Response::new(answer));
        }
    };
}

fn hop<T>(m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut()
        .insert(HOP, tonic::metadata::MetadataValue::from_static("1"));
    r
}

fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().get(HOP).is_some()
}

/// A membership change (never retaining removed voters as learners), bounded
/// in time so a change that cannot commit does not hang the admin call.
async fn change_membership(group: &Group, change: ChangeMembers<ReplicaId, EmptyNode>) -> Result<(), Status> {
    match tokio::time::timeout(MEMBERSHIP_DEADLINE, group.raft.change_membership(change, false)).await {
        Ok(r) => r.map(|_| ()).map_err(raft_err),
        Err(_) => Err(NodeError::Timeout(format!(
            "membership change of shard {} did not commit within {MEMBERSHIP_DEADLINE:?}; check that its voters are up",
            group.id
        ))
        .into()),
    }
}

fn raft_err(e: impl std::fmt::Display) -> Status {
    NodeError::Raft(e.to_string()).into()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn node_status(
        &self,
        _: Request<admin::NodeStatusRequest>,
    ) -> Result<Response<admin::NodeStatusResponse>, Status> {
        let h = &self.host;
        let c = &h.config;
        Ok(Response::new(admin::NodeStatusResponse {
            node_id: h.id,
            build_version: env!("CARGO_PKG_VERSION").into(),
            joined: h.cluster_id().is_some(),
            cluster_id: h.cluster_id().unwrap_or_default(),
            draining: h.draining.load(std::sync::atomic::Ordering::SeqCst),
            map_version: h.map().map_or(0, |m| m.version),
            shards: h.groups().iter().map(shard_status).collect(),
            ready: h.is_ready(),
            shutting_down: h.shutting_down.load(std::sync::atomic::Ordering::SeqCst),
            advertise_host: c.advertise_host.clone(),
            client_port: c.client_port.into(),
            peer_port: c.peer_port.into(),
            admin_port: c.admin_port.into(),
            disk_full: h.disk_full.load(std::sync::atomic::Ordering::SeqCst),
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<admin::BootstrapRequest>,
    ) -> Result<Response<admin::BootstrapResponse>, Status> {
        // Runs to its end even if the caller goes away (its handler would be
        // dropped): joins sent to half the nodes would leave shards unseeded.
        let here = AdminService {
            host: self.host.clone(),
        };
        let req = request.into_inner();
        tokio::spawn(async move { here.bootstrap_here(req).await })
            .await
            .map_err(|e| raft_err(format!("bootstrap task failed: {e}")))?
    }

    async fn cluster_map(
        &self,
        request: Request<admin::ClusterMapRequest>,
    ) -> Result<Response<admin::ClusterMapResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if req.linearizable {
            forward_to_leader!(self, GroupId::Meta, forwarded, req, cluster_map);
            // The metadata leader's map is current once a quorum confirms it
            // still leads and its state machine has applied up to that point.
            let meta = self
                .host
                .group(GroupId::Meta)
                .ok_or(NodeError::NoReplica(GroupId::Meta))?;
            meta.raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
                .map_err(|e| {
                    tracing::debug!(cause = %e, "linearizable map read refused");
                    NodeError::NotLeader {
                        group: GroupId::Meta,
                        leader: None,
                    }
                })?;
        }
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        Ok(Response::new((&*map).into()))
    }

    async fn add_node(
        &self,
        request: Request<admin::AddNodeRequest>,
    ) -> Result<Response<admin::ClusterMapResponse>, Status> {
        let member = request
            .into_inner()
            .member
            .ok_or_else(|| NodeError::BadRequest("member is required".into()))?;
        let (id, addr): (NodeId, NodeAddr) = (&member)
            .try_into()
            .map_err(|e: raftkv_proto::ConversionError| NodeError::BadRequest(e.to_string()))?;
        // The node must answer at that address with that identity.
        self.host.pool.set_addresses(&BTreeMap::from([(id, addr.clone())]));
        let ch = self
            .host
            .pool
            .channel(id, Lane::Admin)
            .map_err(|e| NodeError::Peer(e.to_string()))?;
        let status = AdminClient::new(ch)
            .node_status(admin::NodeStatusRequest {})
            .await
            .map_err(|s| NodeError::Peer(format!("node {id} at {}: {}", addr.admin_endpoint(), s.message())))?
            .into_inner();
        if status.node_id != id {
            return Err(refused(format!(
                "the node at {} is node {}, not {id}",
                addr.admin_endpoint(),
                status.node_id
            )));
        }
        let cluster = self.host.cluster_id().ok_or(NodeError::NotJoined)?;
        if status.joined && status.cluster_id != cluster {
            return Err(refused(format!("node {id} belongs to cluster {:?}", status.cluster_id)));
        }
        let map = self
            .update_map(|m| {
                m.with_node(id, addr.clone())
                    .map(|n| if m.nodes.get(&id) == Some(&addr) { m.clone() } else { n })
            })
            .await?;
        let mut client = self.host.pool.client(id).map_err(|e| NodeError::Peer(e.to_string()))?;
        client
            .join(peer::JoinRequest {
                target_node: id,
                map: map.encode(),
            })
            .await
            .map_err(|s| Status::new(s.code(), format!("node {id} could not join: {}", s.message())))?;
        Ok(Response::new((&map).into()))
    }

    async fn remove_node(
        &self,
        request: Request<admin::RemoveNodeRequest>,
    ) -> Result<Response<admin::ClusterMapResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let id = req.node_id;
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        if !map.nodes.contains_key(&id) {
            return Ok(Response::new((&*map).into()));
        }
        // Refuse early (before leaving the metadata group) if the node still hosts replicas.
        map.without_node(id).map_err(refused)?;
        // The metadata group's leader takes the node out of the group (as a learner) first, then the map.
        forward_to_leader!(self, GroupId::Meta, forwarded, req, remove_node);
        let meta = self
            .host
            .group(GroupId::Meta)
            .ok_or(NodeError::NoReplica(GroupId::Meta))?;
        if meta
            .metrics()
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == id)
        {
            change_membership(&meta, ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        }
        let map = self
            .update_map(|m| {
                if m.nodes.contains_key(&id) {
                    m.without_node(id)
                } else {
                    Ok(m.clone())
                }
            })
            .await?;
        Ok(Response::new((&map).into()))
    }

    async fn replace_meta_voter(
        &self,
        request: Request<admin::ReplaceMetaVoterRequest>,
    ) -> Result<Response<admin::ClusterMapResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let (old, new) = (req.old_node_id, req.new_node_id);
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        if old == new {
            return Err(NodeError::BadRequest(format!("node {old} cannot replace itself")).into());
        }
        if new != 0 {
            map.node(new).map_err(|e| refused(format!("{e}; add the node first")))?;
        }
        forward_to_leader!(self, GroupId::Meta, forwarded, req, replace_meta_voter);
        let meta = self
            .host
            .group(GroupId::Meta)
            .ok_or(NodeError::NoReplica(GroupId::Meta))?;
        let m = meta.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        // Already done (a retry, perhaps after the map update was cut short): only record it.
        let done = (new == 0 || voters.contains(&new)) && !voters.contains(&old);
        // openraft cannot go on after its leader removes itself this way.
        let leader_leaves = || {
            Err(refused(format!(
                "node {old} leads the metadata group; move its leadership to another voter first"
            )))
        };
        if new == 0 && !done {
            safety::check_remove_voter(&voters, &self.healthy_voters(&meta), old).map_err(refused)?;
            safety::check_meta_seat_release(&voters, old, map.nodes.len(), req.force).map_err(refused)?;
            if old == self.host.id {
                return leader_leaves();
            }
            change_membership(&meta, ChangeMembers::RemoveVoters(BTreeSet::from([old]))).await?;
            tracing::info!(old, "metadata voter removed");
        } else if !done {
            if !voters.contains(&old) {
                return Err(refused(format!(
                    "node {old} is not a voter of the metadata group (voters {voters:?})"
                )));
            }
            if voters.contains(&new) {
                return Err(refused(format!("node {new} is already a voter of the metadata group")));
            }
            if !membership.learner_ids().any(|l| l == new) {
                return Err(refused(format!(
                    "node {new} is not a learner of the metadata group yet (nodes in the map join it within a second); retry"
                )));
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&new).cloned().flatten())
                .map(|l| l.index);
            safety::check_promote(new, m.last_log_index.unwrap_or(0), matched, PROMOTE_MAX_LAG).map_err(refused)?;
            let mut healthy = self.healthy_voters(&meta);
            healthy.push(new);
            safety::check_replace_voter(&voters, &healthy, old, new).map_err(refused)?;
            if old == self.host.id {
                return leader_leaves();
            }
            let next: BTreeSet<NodeId> = voters.iter().copied().filter(|&v| v != old).chain([new]).collect();
            change_membership(&meta, ChangeMembers::ReplaceAllVoters(next)).await?;
            tracing::info!(old, new, "metadata voter replaced");
        }
        let voters: Vec<NodeId> = meta.metrics().membership_config.membership().voter_ids().collect();
        let map = self
            .update_map(|m| {
                if m.meta_voters == voters {
                    Ok(m.clone())
                } else {
                    m.with_meta_voters(&voters)
                }
            })
            .await?;
        Ok(Response::new((&map).into()))
    }

    async fn add_replica(
        &self,
        request: Request<admin::ReplicaRequest>,
    ) -> Result<Response<admin::ShardStatus>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let (g, map) = self.shard(req.shard)?;
        forward_to_leader!(self, g, forwarded, req, add_replica);
        map.node(req.node_id)
            .map_err(|e| refused(format!("{e}; add the node first")))?;
        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
        if group.member_on(req.node_id).is_none() {
            // A new incarnation: its id is in the map (pending) before the
            // membership names it, so every node can route to it. A retry
            // finds the pending one and goes on with it.
            let next = self
                .update_map(|m| m.with_new_replica(req.shard, req.node_id).map(|(next, _)| next))
                .await?;
            let replica = next
                .replica_on(req.shard, req.node_id)
                .ok_or_else(|| raft_err("the map lost the replica it just allocated"))?;
            let mut client = self
                .host
                .pool
                .client(req.node_id)
                .map_err(|e| NodeError::Peer(e.to_string()))?;
            client
                .create_replica(peer::CreateReplicaRequest {
                    target_node: req.node_id,
                    cluster_id: map.cluster_id.clone(),
                    group: g.to_raw(),
                    replica_id: replica,
                })
                .await
                .map_err(|s| {
                    Status::new(
                        s.code(),
                        format!(
                            "node {} could not create replica {replica}: {}",
                            req.node_id,
                            s.message()
                        ),
                    )
                })?;
            // Non-blocking: the learner catches up (by snapshot when the log is compacted) in the background.
            group
                .raft
                .add_learner(replica, EmptyNode {}, false)
                .await
                .map_err(raft_err)?;
            tracing::info!(shard = req.shard, node = req.node_id, replica, "added learner");
        }
        self.record_replicas(req.shard, &group).await?;
        Ok(Response::new(shard_status(&group)))
    }

    async fn promote_replica(
        &self,
        request: Request<admin::ReplicaRequest>,
    ) -> Result<Response<admin::ShardStatus>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let (g, _) = self.shard(req.shard)?;
        forward_to_leader!(self, g, forwarded, req, promote_replica);
        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
        let replica = Self::member_on(&group, req.shard, req.node_id)?;
        let m = group.metrics();
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|v| v == replica) {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&replica).cloned().flatten())
                .map(|l| l.index);
            safety::check_promote(req.node_id, m.last_log_index.unwrap_or(0), matched, PROMOTE_MAX_LAG)
                .map_err(refused)?;
            change_membership(&group, ChangeMembers::AddVoterIds(BTreeSet::from([replica]))).await?;
            tracing::info!(shard = req.shard, node = req.node_id, replica, "promoted to voter");
        }
        self.record_replicas(req.shard, &group).await?;
        Ok(Response::new(shard_status(&group)))
    }

    async fn remove_replica(
        &self,
        request: Request<admin::ReplicaRequest>,
    ) -> Result<Response<admin::ShardStatus>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let (g, map) = self.shard(req.shard)?;
        forward_to_leader!(self, g, forwarded, req, remove_replica);
        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
        let membership = group.metrics().membership_config.membership().clone();
        let voters: Vec<ReplicaId> = membership.voter_ids().collect();
        let learners: Vec<ReplicaId> = membership.learner_ids().collect();
        // The incarnation to remove: the member on the node, else one still
        // pending there (an add cut short).
        let member = group.member_on(req.node_id);
        let Some(replica) = member.or_else(|| map.replica_on(req.shard, req.node_id)) else {
            return Ok(Response::new(shard_status(&group)));
        };
        if member.is_some() {
            if voters.contains(&replica) {
                safety::check_remove_voter(&voters, &self.healthy_voters(&group), replica).map_err(refused)?;
                safety::check_replication_floor(&voters, replica, map.replication_factor, req.force)
                    .map_err(refused)?;
            }
            let gone = BTreeSet::from([replica]);
            // retain = false: a removed voter does not stay behind as a learner.
            let change = if voters.contains(&replica) {
                ChangeMembers::RemoveVoters(gone)
            } else {
                ChangeMembers::RemoveNodes(gone)
            };
            change_membership(&group, change).await?;
            tracing::info!(
                shard = req.shard,
                node = req.node_id,
                replica,
                "removed replica from membership"
            );
        }
        // The leader may have been the one removed: record from whoever leads now.
        if group.metrics().state == ServerState::Leader {
            self.record_replicas(req.shard, &group).await?;
        } else {
            let voters: Vec<ReplicaId> = voters.iter().copied().filter(|v| *v != replica).collect();
            let learners: Vec<ReplicaId> = learners.iter().copied().filter(|l| *l != replica).collect();
            self.update_map(|m| m.with_shard_members(req.shard, &voters, &learners))
                .await?;
        }
        if member.is_none() {
            self.update_map(|m| match m.replica_on(req.shard, req.node_id) {
                Some(r) if r == replica => m.without_pending(req.shard, req.node_id),
                _ => Ok(m.clone()),
            })
            .await?;
        }
        // A leader that removed itself answers with the shard as it left it
        // (its replica is destroyed below).
        let left = (replica == group.replica).then(|| {
            let mut s = shard_status(&group);
            s.role = "removed".into();
            s.voters.retain(|v| *v != req.node_id);
            s.learners.retain(|l| *l != req.node_id);
            s
        });
        // Now that the removal is committed, the old replica's data can go.
        if map.nodes.contains_key(&req.node_id) {
            let destroy = peer::CreateReplicaRequest {
                target_node: req.node_id,
                cluster_id: map.cluster_id.clone(),
                group: g.to_raw(),
                replica_id: replica,
            };
            if req.node_id == self.host.id {
                self.host.destroy_group(g, replica).await?;
            } else if let Ok(mut client) = self.host.pool.client(req.node_id)
                && let Err(s) = client.destroy_replica(destroy).await
            {
                tracing::warn!(shard = req.shard, node = req.node_id, replica, error = %s.message(), "could not delete the removed replica's data; it is inert");
            }
        }
        let status = match left {
            Some(s) => s,
            None => self.host.group(g).map(|g| shard_status(&g)).unwrap_or_default(),
        };
        Ok(Response::new(status))
    }

    async fn transfer_leader(
        &self,
        request: Request<admin::TransferLeaderRequest>,
    ) -> Result<Response<admin::ShardStatus>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let (g, _) = self.shard(req.shard)?;
        if req.to_node != 0
            && self
                .host
                .group(g)
                .is_some_and(|gr| gr.leader_node() == Some(req.to_node))
        {
            let group = self.host.group(g).expect("checked above");
            return Ok(Response::new(shard_status(&group)));
        }
        forward_to_leader!(self, g, forwarded, req, transfer_leader);
        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
        let voters = group.voter_ids();
        let to = if req.to_node == 0 {
            let (last, views) = group.voter_views();
            leadership::transfer_target(group.replica, last, &views, &[])
                .ok_or_else(|| refused("no other caught-up voter to take over"))?
        } else {
            group
                .member_on(req.to_node)
                .filter(|r| voters.contains(r))
                .ok_or_else(|| refused(format!("node {} is not a voter of shard {}", req.to_node, req.shard)))?
        };
        if to == group.replica {
            return Ok(Response::new(shard_status(&group)));
        }
        group.raft.trigger().transfer_leader(to).await.map_err(raft_err)?;
        let moved = group
            .raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(to, "leader transfer")
            .await;
        if moved.is_err() {
            return Err(NodeError::Timeout(format!(
                "leadership of shard {} did not move to replica {to} within 10 s",
                req.shard
            ))
            .into());
        }
        Ok(Response::new(shard_status(&group)))
    }

    async fn drain_leaders(&self, _: Request<admin::DrainRequest>) -> Result<Response<admin::DrainResponse>, Status> {
        if !self.host.draining.load(std::sync::atomic::Ordering::SeqCst) {
            self.check_drain().await?;
        }
        self.host.set_draining(true).await?;
        let leading = self.host.hand_off_leaderships().await;
        Ok(Response::new(admin::DrainResponse {
            draining: true,
            leading: leading
                .into_iter()
                .filter_map(|g| if let GroupId::Shard(s) = g { Some(s) } else { None })
                .collect(),
        }))
    }

    async fn undrain_leaders(&self, _: Request<admin::DrainRequest>) -> Result<Response<admin::DrainResponse>, Status> {
        self.host.set_draining(false).await?;
        Ok(Response::new(admin::DrainResponse {
            draining: false,
            leading: vec![],
        }))
    }

    async fn shard_digest(
        &self,
        request: Request<admin::ShardDigestRequest>,
    ) -> Result<Response<admin::ShardDigestResponse>, Status> {
        let req = request.into_inner();
        let (g, _) = self.shard(req.shard)?;
        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
        let view = group.view.clone();
        let d = self.host.storage(move || view.digest()).await?;
        Ok(Response::new(admin::ShardDigestResponse {
            shard: req.shard,
            node_id: self.host.id,
            applied_index: d.applied_index,
            key_count: d.key_count,
            digest: d.digest,
        }))
    }
}
