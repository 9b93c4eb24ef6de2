//! The host: every Raft group on this node, the cluster map as this node
//! knows it, joining a cluster, and proposals (routed by [`crate::routing`]).
//!
//! ```text
//!   kv / admin / peer services ──▶ Host ──▶ Group { Raft, ReadView } per shard + meta
//!                                   │
//!                                   ├── map: watch<ClusterMap>  (from the meta group, or the join record)
//!                                   └── PeerPool (addresses + channels, shared by all groups)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use raftkv_core::command::{Command, Proposal, Request, Response};
use raftkv_core::keys::node_tag;
use raftkv_core::leadership;
use raftkv_core::map::ClusterMap;
use raftkv_core::{GroupId, NodeId, ShardId};
use raftkv_proto::peer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::error::{NodeError, hints};
use crate::metrics::METRICS;
pub use crate::raft::group::Group;
use crate::raft::group::initialize;
use crate::raft::network::PeerPool;
use crate::routing::{self, Target};
use crate::storage::{Engine, EngineOptions};

/// How long a proposal may wait for its commit and apply. Past it the
/// caller gets an ambiguous answer (the entry may still commit later).
pub const PROPOSAL_DEADLINE: Duration = Duration::from_secs(20);
/// Storage tasks (scans, digests) that may run at once on the blocking
/// pool; more wait their turn instead of piling up threads and memory.
const STORAGE_TASKS: usize = 4;

pub struct Host {
    pub id: NodeId,
    pub config: NodeConfig,
    pub engine: Arc<Engine>,
    pub pool: Arc<PeerPool>,
    pub(crate) groups: RwLock<HashMap<GroupId, Group>>,
    /// Serialises group creation so two callers never open one group twice.
    pub(crate) creating: tokio::sync::Mutex<()>,
    pub(crate) map_tx: watch::Sender<Option<Arc<ClusterMap>>>,
    pub(crate) cluster_id: RwLock<Option<String>>,
    pub(crate) raft_config: Arc<openraft::Config>,
    pub(crate) leader_hints: Mutex<HashMap<GroupId, NodeId>>,
    pub draining: AtomicBool,
    pub shutting_down: AtomicBool,
    pub disk_full: AtomicBool,
    pub shutdown: CancellationToken,
    /// Proposals waiting for their commit here; shutdown lets them finish.
    pub(crate) in_flight: AtomicI64,
    pub(crate) storage_tasks: tokio::sync::Semaphore,
}

/// Counts one proposal in flight for as long as it lives, so a caller that
/// gives up (a cancelled request drops the future) never leaks the count.
struct InFlight<'a> {
    host: &'a Host,
    label: String,
}

impl<'a> InFlight<'a> {
    fn start(host: &'a Host, g: GroupId) -> Self {
        let label = g.to_string();
        host.in_flight.fetch_add(1, Ordering::SeqCst);
        METRICS.proposals_pending.with_label_values(&[&label]).inc();
        InFlight { host, label }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.host.in_flight.fetch_sub(1, Ordering::SeqCst);
        METRICS.proposals_pending.with_label_values(&[&self.label]).dec();
    }
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
            // A restarted leader must win an election in a new term before it
            // leads again: see "What a power loss may take" in `storage`.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()?;
        let pool = PeerPool::new(node_id, &config.listen_host);
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
            in_flight: AtomicI64::new(0),
            storage_tasks: tokio::sync::Semaphore::new(STORAGE_TASKS),
        });
        METRICS.draining.set(draining as i64);
        if let Some(m) = &joined {
            host.publish_map(Arc::new(m.clone()));
        }
        for g in engine.groups()? {
            let replica = host.recorded_replica(g)?;
            if let Some(gone) = host.destroyed_here(g, replica)? {
                tracing::warn!(group = %g, replica, destroyed = gone, "not opening the data of a destroyed incarnation");
                continue;
            }
            host.open_group(g, replica).await?;
        }
        if let Some(m) = joined
            && engine.node_record(node_tag::JOIN_DONE)?.is_none()
        {
            tracing::info!(cluster = %m.cluster_id, "finishing a join cut short before the last stop");
            host.finish_join(&m).await?;
        }
        Ok(host)
    }

    /// How many bytes a received snapshot may take: the free space above the
    /// `--min-free-mb` reserve.
    pub fn snapshot_room(&self) -> u64 {
        fs_free_bytes(&self.config.data_dir).map_or(u64::MAX, |free| {
            free.saturating_sub(self.config.min_free_mb.saturating_mul(1 << 20))
        })
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
        self.pool.learn_replicas(&map);
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

    /// Bootstrap step on every initial node: remember the cluster, create this
    /// node's groups, and initialise the groups this node seeds (the first
    /// voter of each). Idempotent for the same cluster: a joined node
    /// finishes its own first join (from the record it persisted) and
    /// ignores the map it is sent, so a join can never rewrite what a node
    /// knows of its cluster.
    pub async fn join(self: &Arc<Self>, map: ClusterMap) -> Result<(), NodeError> {
        // A join runs to its end even when the caller goes away (a cancelled
        // RPC drops its handler): a node left joined with half its replicas
        // open would leave the shards it seeds without a leader.
        let host = self.clone();
        tokio::spawn(async move { host.join_here(map).await })
            .await
            .map_err(|e| NodeError::Raft(format!("join task failed: {e}")))?
    }

    async fn join_here(self: &Arc<Self>, map: ClusterMap) -> Result<(), NodeError> {
        map.validate()
            .map_err(|e| NodeError::BadRequest(format!("invalid cluster map: {e}")))?;
        if !map.nodes.contains_key(&self.id) {
            return Err(NodeError::Refused(format!(
                "node {} is not a member of the bootstrap map",
                self.id
            )));
        }
        let map = match self.cluster_id() {
            Some(c) if c != map.cluster_id => {
                return Err(NodeError::Refused(format!(
                    "already joined cluster {c:?}; refusing to join {:?}",
                    map.cluster_id
                )));
            }
            Some(_) => {
                let record = self.engine.node_record(node_tag::JOINED)?.ok_or(NodeError::NotJoined)?;
                ClusterMap::decode(&record).map_err(|e| NodeError::Storage(std::io::Error::other(e)))?
            }
            None => {
                self.engine
                    .put_node_record(node_tag::JOINED, Some(&map.encode()))
                    .await?;
                *self.cluster_id.write().expect("cluster id lock") = Some(map.cluster_id.clone());
                tracing::info!(cluster = %map.cluster_id, "joined cluster");
                map
            }
        };
        self.publish_map(Arc::new(map.clone()));
        self.finish_join(&map).await
    }

    /// Opens the replicas the joined map places on this node and initialises
    /// the groups this node seeds, then records the join as done. Idempotent:
    /// a retried join, or a start-up after a crash mid-join, runs it again.
    async fn finish_join(self: &Arc<Self>, map: &ClusterMap) -> Result<(), NodeError> {
        if self.engine.node_record(node_tag::JOIN_DONE)?.is_some() {
            return Ok(());
        }
        // Groups are seeded from the bootstrap map (version 1) only. A later map
        // reaches nodes added since, whose replicas are created by the leaders
        // (as learners); seeding one from it would start a second history.
        // Only the first voter seeds a group, so a group this node seeds has
        // no history anywhere until it does (`initialize` refuses a replica
        // that has one).
        let seed = map.version == 1;
        let meta = self.open_group(GroupId::Meta, self.id).await?;
        if seed && map.meta_voters.first() == Some(&self.id) {
            initialize(&meta.raft, &map.meta_voters).await?;
        }
        for s in map.shards_on(self.id) {
            let g = GroupId::Shard(s);
            let replicas = map.replicas(s).expect("shards_on returns known shards");
            let replica = replicas.replica_on(self.id).expect("shards_on lists members");
            if self.destroyed_here(g, replica)?.is_some() {
                continue; // moved away and destroyed since
            }
            let group = self.open_group(g, replica).await?;
            if seed && replicas.voters.first() == Some(&self.id) {
                initialize(&group.raft, &replicas.voter_ids()).await?;
            }
        }
        self.engine.put_node_record(node_tag::JOIN_DONE, Some(&[])).await?;
        tracing::info!(cluster = %map.cluster_id, version = map.version, "join finished: replicas open");
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
    /// The leader of `g` this node knows: its own replica's view, else the
    /// last hint it was given.
    pub fn known_leader(&self, g: GroupId) -> Option<NodeId> {
        self.group(g)
            .and_then(|group| group.leader_node())
            .or_else(|| self.leader_hints.lock().expect("hint lock").get(&g).copied())
    }

    pub fn leader_of(&self, g: GroupId, avoid: &[NodeId]) -> Result<Option<NodeId>, NodeError> {
        let ok = |n: &NodeId| !avoid.contains(n);
        if let Some(group) = self.group(g)
            && let Some(l) = group.leader_node().filter(ok)
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

    /// Runs storage work that may take more than a few milliseconds (a scan,
    /// a digest) on the blocking pool, at most [`STORAGE_TASKS`] at once, so
    /// it never holds an async worker that heartbeats need.
    pub async fn storage<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, NodeError> {
        let _permit = self
            .storage_tasks
            .acquire()
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| NodeError::Storage(std::io::Error::other(format!("storage task failed: {e}"))))?
            .map_err(NodeError::Storage)
    }

    /// Proposals waiting for their commit on this node.
    pub fn proposals_in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Validates `command` for `g` and proposes it on the local replica,
    /// which must lead `g`.
    pub async fn propose(&self, g: GroupId, command: Command) -> Result<Response, NodeError> {
        let request = Request {
            proposed_at_ms: now_ms(),
            command,
        };
        self.propose_local(Proposal::new(g, request)?).await
    }

    /// Proposes a validated request on the local replica of its group, which
    /// must lead it. Waits at most [`PROPOSAL_DEADLINE`].
    pub async fn propose_local(&self, proposal: Proposal) -> Result<Response, NodeError> {
        let g = proposal.group();
        let group = self.group(g).ok_or(NodeError::NoReplica(g))?;
        let pending = InFlight::start(self, g);
        let result = tokio::time::timeout(PROPOSAL_DEADLINE, group.raft.client_write(proposal.into_request())).await;
        drop(pending);
        let label = g.to_string();
        let Ok(result) = result else {
            METRICS.proposals_failed.with_label_values(&[&label]).inc();
            return Err(NodeError::Ambiguous(format!(
                "not applied within {PROPOSAL_DEADLINE:?}; it may still commit"
            )));
        };
        match result {
            Ok(r) => match r.data {
                Response::Rejected { reason } => Err(NodeError::Refused(reason)),
                data => Ok(data),
            },
            Err(e) => {
                METRICS.proposals_failed.with_label_values(&[&label]).inc();
                Err(match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                        group: g,
                        leader: f.leader_id.and_then(|r| group.node_of(r)),
                    },
                    RaftError::APIError(other) => NodeError::Ambiguous(other.to_string()),
                    RaftError::Fatal(f) => NodeError::Raft(f.to_string()),
                })
            }
        }
    }

    /// Proposes a metadata command on the metadata group's leader, wherever it is.
    pub async fn propose_meta(&self, command: Command, deadline: Duration) -> Result<Response, NodeError> {
        let proposal = Proposal::new(
            GroupId::Meta,
            Request {
                proposed_at_ms: now_ms(),
                command,
            },
        )?;
        let result = routing::on_leader(self, GroupId::Meta, false, deadline, |target| {
            let proposal = &proposal;
            async move {
                match target {
                    Target::Here => self.propose_local(proposal.clone()).await,
                    Target::Node(n) => self.forward_propose(n, proposal.request()).await,
                }
            }
        })
        .await;
        match result {
            // Still refused without effect when the deadline passed.
            Err(e) if e.retry_safe() => Err(NodeError::Timeout(format!("metadata proposal: {e}"))),
            other => other,
        }
    }

    async fn forward_propose(&self, target: NodeId, request: &Request) -> Result<Response, NodeError> {
        let g = GroupId::Meta;
        let mut client = self.pool.client(target).map_err(|e| NodeError::Peer(e.to_string()))?;
        let req = peer::ProposeRequest {
            target_node: target,
            group: g.to_raw(),
            request: request.encode(),
            cluster_id: self.pool.cluster_id(),
        };
        match client.propose(req).await {
            Ok(r) => {
                crate::storage::decode_raft("proposal response", &r.into_inner().response).map_err(NodeError::from)
            }
            Err(s) => {
                let (safe, leader) = hints(&s);
                if safe {
                    Err(NodeError::NotLeader { group: g, leader })
                } else if raftkv_proto::retry::never_connected(&s) {
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
    /// caught-up healthy other voter. Returns the groups still led here.
    pub async fn hand_off_leaderships(&self) -> Vec<GroupId> {
        let mut still = Vec::new();
        for g in self.groups() {
            let m = g.metrics();
            if m.state != ServerState::Leader {
                continue;
            }
            still.push(g.id);
            let (last, views) = g.voter_views();
            let best = leadership::transfer_target(g.replica, last, &views, &[]);
            if let Some(to) = best
                && let Err(e) = g.raft.trigger().transfer_leader(to).await
            {
                tracing::warn!(group = %g.id, to, error = %e, "leader transfer failed");
            }
        }
        still
    }
}

/// Free bytes on the file system holding `path`, as an unprivileged writer sees it.
pub(crate) fn fs_free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}
