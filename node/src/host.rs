//! The host: every Raft group on this node, the cluster map as this node
//! knows it, and the routing of proposals and reads to shard leaders.
//!
//! ```text
//!   kv / admin / peer services ──▶ Host ──▶ Group { Raft, ReadView } per shard + meta
//!                                   │
//!                                   ├── map: watch<ClusterMap>  (from the meta group, or the join record)
//!                                   └── PeerPool (addresses + channels, shared by all groups)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, EmptyNode, ServerState, SnapshotPolicy};
use raftkv_core::command::{Command, Request, Response};
use raftkv_core::keys::node_tag;
use raftkv_core::map::ClusterMap;
use raftkv_core::{GroupId, NodeId, ShardId};
use raftkv_proto::peer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::error::{NodeError, hints};
use crate::metrics::METRICS;
use crate::network::{NetworkFactory, PeerPool};
use crate::storage::{Engine, EngineOptions, ReadView};
use crate::types::Raft;

/// How long one upkeep membership change (a metadata learner added or
/// removed) may wait for its commit before the next tick tries again.
const UPKEEP_CHANGE_WITHIN: Duration = Duration::from_secs(5);

/// One Raft group hosted here.
#[derive(Clone)]
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub view: ReadView,
    /// When this replica last accepted an append from its leader: bounds how
    /// stale a follower read may be.
    pub leader_contact: Arc<Mutex<Option<Instant>>>,
}

impl Group {
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::types::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader this replica knows of, without cloning the whole metrics.
    pub fn current_leader(&self) -> Option<NodeId> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The last log index applied here, without cloning the whole metrics.
    pub fn applied_index(&self) -> u64 {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index)
    }
}

pub struct Host {
    pub id: NodeId,
    pub config: NodeConfig,
    pub engine: Arc<Engine>,
    pub pool: Arc<PeerPool>,
    groups: RwLock<HashMap<GroupId, Group>>,
    /// Serialises group creation so two callers never open one group twice.
    creating: tokio::sync::Mutex<()>,
    map_tx: watch::Sender<Option<Arc<ClusterMap>>>,
    cluster_id: RwLock<Option<String>>,
    raft_config: Arc<openraft::Config>,
    leader_hints: Mutex<HashMap<GroupId, NodeId>>,
    pub draining: AtomicBool,
    pub shutting_down: AtomicBool,
    pub disk_full: AtomicBool,
    pub shutdown: CancellationToken,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Host {
    pub async fn open(config: NodeConfig, node_id: NodeId, shutdown: CancellationToken) -> anyhow::Result<Arc<Host>> {
        let engine = Engine::open(
            EngineOptions {
                dir: config.data_dir.clone(),
                audit_durability: config.audit_durability,
            },
            Box::new(|took, batch| {
                METRICS.wal_fsync.observe(took.as_secs_f64());
                METRICS.wal_fsync_batch.observe(batch as f64);
            }),
        )?;
        let raft_config = openraft::Config {
            cluster_name: "raftkv".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
            max_in_snapshot_log_to_keep: config.keep_entries,
            // Compact as soon as entries fall behind the retention window (deletes are range tombstones).
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()?;
        let pool = PeerPool::new(node_id);
        let draining = engine.node_record(node_tag::DRAIN)?.is_some();
        let joined = engine
            .node_record(node_tag::JOINED)?
            .map(|b| ClusterMap::decode(&b))
            .transpose()?;
        let host = Arc::new(Host {
            id: node_id,
            config,
            engine: engine.clone(),
            pool,
            groups: RwLock::default(),
            creating: tokio::sync::Mutex::new(()),
            map_tx: watch::Sender::new(None),
            cluster_id: RwLock::new(joined.as_ref().map(|m| m.cluster_id.clone())),
            raft_config: Arc::new(raft_config),
            leader_hints: Mutex::default(),
            draining: AtomicBool::new(draining),
            shutting_down: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            shutdown,
        });
        METRICS.draining.set(draining as i64);
        if let Some(m) = joined {
            host.publish_map(Arc::new(m));
        }
        for g in engine.groups()? {
            if engine.is_tombstoned(g)? {
                continue;
            }
            host.open_group(g).await?;
        }
        Ok(host)
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().expect("cluster id lock").clone()
    }

    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.map_tx.borrow().clone()
    }

    pub fn subscribe_map(&self) -> watch::Receiver<Option<Arc<ClusterMap>>> {
        self.map_tx.subscribe()
    }

    /// Adopts `map` if it is newer than the one this node has.
    pub fn publish_map(&self, map: Arc<ClusterMap>) {
        self.pool.set_addresses(&map.nodes);
        self.pool.set_cluster_id(&map.cluster_id);
        self.map_tx.send_if_modified(|cur| match cur {
            Some(c) if c.version >= map.version => false,
            _ => {
                *cur = Some(map.clone());
                true
            }
        });
    }

    pub fn group(&self, g: GroupId) -> Option<Group> {
        self.groups.read().expect("groups lock").get(&g).cloned()
    }

    pub fn groups(&self) -> Vec<Group> {
        let mut v: Vec<Group> = self.groups.read().expect("groups lock").values().cloned().collect();
        v.sort_by_key(|g| g.id);
        v
    }

    /// Joined and able to route: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.cluster_id().is_some() && self.map().is_some() && !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Opens (or creates, empty) the replica of `g` on this node.
    pub async fn open_group(self: &Arc<Self>, g: GroupId) -> Result<Group, NodeError> {
        let _guard = self.creating.lock().await;
        if let Some(existing) = self.group(g) {
            return Ok(existing);
        }
        if self.engine.is_tombstoned(g)? {
            return Err(NodeError::Refused(format!(
                "shard {g} was removed from this node and is never recreated here"
            )));
        }
        let log = self.engine.log_store(g);
        let sm = self.engine.state_machine(g)?;
        let map_watch = sm.subscribe_map();
        let net = NetworkFactory {
            group: g,
            pool: self.pool.clone(),
        };
        let raft = Raft::new(self.id, self.raft_config.clone(), net, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if self.draining.load(Ordering::SeqCst) {
            raft.runtime_config().elect(false);
        }
        let group = Group {
            id: g,
            raft,
            view: self.engine.read_view(g),
            leader_contact: Arc::default(),
        };
        self.groups.write().expect("groups lock").insert(g, group.clone());
        METRICS
            .shards_hosted
            .set(self.groups.read().expect("groups lock").len() as i64);
        if let Some(mut rx) = map_watch {
            // The metadata group's applied map is the node's map from now on.
            let host = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    let current = rx.borrow_and_update().clone();
                    let Some(host) = host.upgrade() else { return };
                    if let Some(m) = current {
                        host.publish_map(m);
                    }
                    drop(host);
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        tracing::info!(group = %g, "opened replica");
        Ok(group)
    }

    /// Shuts down and deletes the replica of `g` here, leaving a tombstone.
    pub async fn destroy_group(&self, g: GroupId) -> Result<(), NodeError> {
        let group = self.groups.write().expect("groups lock").remove(&g);
        if let Some(group) = group {
            group
                .raft
                .shutdown()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        self.engine.destroy_group(g).await?;
        METRICS
            .shards_hosted
            .set(self.groups.read().expect("groups lock").len() as i64);
        tracing::info!(group = %g, "destroyed replica");
        Ok(())
    }

    /// Bootstrap step on every initial node: remember the cluster, create this
    /// node's groups, and initialise the groups this node seeds (the first
    /// voter of each). Idempotent for the same cluster.
    pub async fn join(self: &Arc<Self>, map: ClusterMap) -> Result<(), NodeError> {
        if !map.nodes.contains_key(&self.id) {
            return Err(NodeError::Refused(format!(
                "node {} is not a member of the bootstrap map",
                self.id
            )));
        }
        match self.cluster_id() {
            Some(c) if c != map.cluster_id => {
                return Err(NodeError::Refused(format!(
                    "already joined cluster {c:?}; refusing to join {:?}",
                    map.cluster_id
                )));
            }
            Some(_) => {}
            None => {
                self.engine
                    .put_node_record(node_tag::JOINED, Some(&map.encode()))
                    .await?;
                *self.cluster_id.write().expect("cluster id lock") = Some(map.cluster_id.clone());
                tracing::info!(cluster = %map.cluster_id, "joined cluster");
            }
        }
        self.publish_map(Arc::new(map.clone()));
        // Groups are seeded from the bootstrap map (version 1) only. A later map
        // reaches nodes added since, whose replicas are created by the leaders
        // (as learners); seeding one from it would start a second history.
        let seed = map.version == 1;
        let meta = self.open_group(GroupId::Meta).await?;
        if seed && map.meta_voters.first() == Some(&self.id) {
            initialize(&meta.raft, &map.meta_voters).await?;
        }
        for s in map.shards_on(self.id) {
            let replicas = map.replicas(s).expect("shards_on returns known shards");
            let group = self.open_group(GroupId::Shard(s)).await?;
            if seed && replicas.voters.first() == Some(&self.id) {
                initialize(&group.raft, &replicas.voters).await?;
            }
        }
        Ok(())
    }

    /// The shard that owns `key`, by the current map.
    pub fn shard_of(&self, key: &[u8]) -> Result<(ShardId, Arc<ClusterMap>), NodeError> {
        let map = self.map().ok_or(NodeError::NotJoined)?;
        Ok((raftkv_core::hash::shard_for_key(key, map.shard_count), map))
    }

    pub fn note_leader(&self, g: GroupId, leader: NodeId) {
        self.leader_hints.lock().expect("hint lock").insert(g, leader);
    }

    pub fn forget_leader(&self, g: GroupId) {
        self.leader_hints.lock().expect("hint lock").remove(&g);
    }

    /// Where to send a request for `g`: its leader as this node knows it
    /// (its own replica's view, then the last hint it was given), else some
    /// replica that can redirect. Nodes in `avoid` (unreachable, or refused
    /// without a better hint during this request) are skipped.
    pub fn leader_of(&self, g: GroupId, avoid: &[NodeId]) -> Result<Option<NodeId>, NodeError> {
        let ok = |n: &NodeId| !avoid.contains(n);
        if let Some(group) = self.group(g)
            && let Some(l) = group.current_leader().filter(ok)
        {
            return Ok(Some(l));
        }
        if let Some(h) = self.leader_hints.lock().expect("hint lock").get(&g).copied().filter(ok) {
            return Ok(Some(h));
        }
        let map = self.map().ok_or(NodeError::NotJoined)?;
        let candidates: Vec<NodeId> = match g {
            GroupId::Meta => map.meta_voters.clone(),
            GroupId::Shard(s) => map
                .replicas(s)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?
                .voters
                .clone(),
        };
        Ok(candidates
            .into_iter()
            .filter(|n| *n != self.id || self.group(g).is_some())
            .find(ok))
    }

    /// After a refusal from `target`: follow its hint, or avoid it for the
    /// rest of this request. Returns false when every candidate was tried.
    pub fn redirect(&self, g: GroupId, target: NodeId, hint: Option<NodeId>, avoid: &mut Vec<NodeId>) {
        match hint {
            Some(l) if l != target => {
                self.note_leader(g, l);
                avoid.retain(|n| *n != l);
            }
            _ => {
                self.forget_leader(g);
                avoid.push(target);
            }
        }
    }

    /// Proposes `request` on the local replica of `g`, which must lead it.
    pub async fn propose_local(&self, g: GroupId, request: Request) -> Result<Response, NodeError> {
        let group = self.group(g).ok_or(NodeError::NoReplica(g))?;
        let label = g.to_string();
        METRICS.proposals_pending.with_label_values(&[&label]).inc();
        let result = group.raft.client_write(request).await;
        METRICS.proposals_pending.with_label_values(&[&label]).dec();
        match result {
            Ok(r) => Ok(r.data),
            Err(e) => {
                METRICS.proposals_failed.with_label_values(&[&label]).inc();
                Err(match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                        group: g,
                        leader: f.leader_id,
                    },
                    RaftError::APIError(other) => NodeError::Ambiguous(other.to_string()),
                    RaftError::Fatal(f) => NodeError::Raft(f.to_string()),
                })
            }
        }
    }

    /// Proposes a metadata command on the metadata group's leader, wherever it is.
    pub async fn propose_meta(&self, command: Command, deadline: Duration) -> Result<Response, NodeError> {
        let request = Request {
            proposed_at_ms: now_ms(),
            command,
        };
        let until = Instant::now() + deadline;
        let mut last_err = NodeError::NotLeader {
            group: GroupId::Meta,
            leader: None,
        };
        let mut pause = Duration::from_millis(20);
        let mut avoid = Vec::new();
        while Instant::now() < until {
            let Some(target) = self.leader_of(GroupId::Meta, &avoid)? else {
                avoid.clear();
                tokio::time::sleep(pause).await;
                continue;
            };
            let attempt = if target == self.id {
                self.propose_local(GroupId::Meta, request.clone()).await
            } else {
                self.forward_propose(target, GroupId::Meta, &request).await
            };
            match attempt {
                Ok(r) => return Ok(r),
                Err(e) if e.retry_safe() => {
                    let hint = if let NodeError::NotLeader { leader, .. } = &e {
                        *leader
                    } else {
                        None
                    };
                    self.redirect(GroupId::Meta, target, hint, &mut avoid);
                    last_err = e;
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        Err(NodeError::Timeout(format!("metadata proposal: {last_err}")))
    }

    async fn forward_propose(&self, target: NodeId, g: GroupId, request: &Request) -> Result<Response, NodeError> {
        let mut client = self.pool.client(target).map_err(|e| NodeError::Peer(e.to_string()))?;
        let req = peer::ProposeRequest {
            target_node: target,
            group: g.to_raw(),
            request: request.encode(),
        };
        match client.propose(req).await {
            Ok(r) => {
                crate::storage::decode_raft("proposal response", &r.into_inner().response).map_err(NodeError::from)
            }
            Err(s) => {
                let (safe, leader) = hints(&s);
                if safe {
                    Err(NodeError::NotLeader { group: g, leader })
                } else if never_connected(&s) {
                    // Never reached the peer: nothing was proposed.
                    Err(NodeError::NotLeader { group: g, leader: None })
                } else {
                    Err(NodeError::Peer(format!("node {target}: {}", s.message())))
                }
            }
        }
    }

    /// Changes the persistent drain mark. While set, this node does not
    /// campaign and hands off every leadership it has.
    pub async fn set_draining(&self, on: bool) -> Result<(), NodeError> {
        self.engine
            .put_node_record(node_tag::DRAIN, on.then_some(b"1".as_slice()))
            .await?;
        self.draining.store(on, Ordering::SeqCst);
        METRICS.draining.set(on as i64);
        for g in self.groups() {
            g.raft.runtime_config().elect(!on);
        }
        if on {
            self.hand_off_leaderships().await;
        }
        Ok(())
    }

    /// Asks every group this node leads to transfer leadership to its most
    /// up-to-date other voter. Returns the groups still led here.
    pub async fn hand_off_leaderships(&self) -> Vec<GroupId> {
        let mut still = Vec::new();
        for g in self.groups() {
            let m = g.metrics();
            if m.state != ServerState::Leader {
                continue;
            }
            still.push(g.id);
            let best = m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| {
                        **id != self.id && m.membership_config.membership().voter_ids().any(|v| v == **id)
                    })
                    .max_by_key(|(_, matched)| matched.as_ref().map_or(0, |l| l.index))
                    .map(|(id, _)| *id)
            });
            if let Some(to) = best
                && let Err(e) = g.raft.trigger().transfer_leader(to).await
            {
                tracing::warn!(group = %g.id, to, error = %e, "leader transfer failed");
            }
        }
        still
    }

    /// Periodic upkeep: metrics, the drain mark, disk space, and making every
    /// node in the map a member (learner at least) of the metadata group.
    pub async fn upkeep(self: &Arc<Self>) {
        let mut last_leaders: HashMap<GroupId, Option<NodeId>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for g in self.groups() {
                let m = g.metrics();
                METRICS.group(g.id, &m, self.id);
                let prev = last_leaders.insert(g.id, m.current_leader);
                if let Some(prev) = prev
                    && prev != m.current_leader
                    && m.current_leader.is_some()
                {
                    METRICS.leader_changes.with_label_values(&[&g.id.to_string()]).inc();
                }
            }
            if self.draining.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst) {
                self.hand_off_leaderships().await;
            }
            self.check_disk();
            self.sync_meta_learners().await;
        }
    }

    fn check_disk(&self) {
        let free_mb = fs_free_bytes(&self.config.data_dir).map(|b| b / (1 << 20));
        if let Some(free_mb) = free_mb {
            let full = free_mb < self.config.min_free_mb;
            if full != self.disk_full.swap(full, Ordering::SeqCst) {
                if full {
                    tracing::error!(
                        free_mb,
                        min_free_mb = self.config.min_free_mb,
                        "disk nearly full: refusing writes"
                    );
                } else {
                    tracing::info!(free_mb, "disk space recovered: accepting writes again");
                }
            }
            METRICS.disk_full.set(full as i64);
        }
    }

    /// On the metadata leader: every node in the map is a learner of the
    /// metadata group at least, and a learner that left the map leaves the group.
    async fn sync_meta_learners(&self) {
        let (Some(map), Some(meta)) = (self.map(), self.group(GroupId::Meta)) else {
            return;
        };
        let m = meta.metrics();
        if m.state != ServerState::Leader {
            return;
        }
        let members = m.membership_config.membership();
        let known: Vec<NodeId> = members.voter_ids().chain(members.learner_ids()).collect();
        for node in map.nodes.keys().filter(|n| !known.contains(n)) {
            tracing::info!(node, "adding node to the metadata group as a learner");
            match tokio::time::timeout(UPKEEP_CHANGE_WITHIN, meta.raft.add_learner(*node, EmptyNode {}, false)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(node, error = %e, "could not add metadata learner"),
                Err(_) => tracing::warn!(node, "adding a metadata learner did not commit in time"),
            }
        }
        // A learner missing from the map was removed from the cluster (or
        // re-added by a race with RemoveNode). Only judged once the map is
        // applied up to the membership, so a map that is merely behind the
        // log (a new leader still applying) removes nothing.
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let membership_at = m.membership_config.log_id().as_ref().map_or(0, |l| l.index);
        let gone: BTreeSet<NodeId> = members.learner_ids().filter(|n| !map.nodes.contains_key(n)).collect();
        if !gone.is_empty() && applied >= membership_at {
            tracing::info!(nodes = ?gone, "removing learners that left the cluster map from the metadata group");
            let change = meta.raft.change_membership(ChangeMembers::RemoveNodes(gone), false);
            match tokio::time::timeout(UPKEEP_CHANGE_WITHIN, change).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not remove metadata learners"),
                Err(_) => tracing::warn!("removing metadata learners did not commit in time"),
            }
        }
    }
}

async fn initialize(raft: &Raft, voters: &[NodeId]) -> Result<(), NodeError> {
    let members: BTreeMap<NodeId, EmptyNode> = voters.iter().map(|&v| (v, EmptyNode {})).collect();
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Already initialised: a retried bootstrap.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(NodeError::Raft(e.to_string())),
    }
}

/// Free bytes on the file system holding `path`, as an unprivileged writer sees it.
fn fs_free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// A transport failure before the request reached the peer (so nothing
/// can have been applied), as opposed to one in the middle of a call.
pub fn never_connected(s: &tonic::Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == tonic::Code::Unavailable
        && (m.contains("connect")
            || m.contains("connection refused")
            || m.contains("dns error")
            || m.contains("no address"))
        && !m.contains("reset")
}
