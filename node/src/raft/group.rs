//! One Raft group on this node: its handle, what its metrics say, and its
//! lifecycle (open or create, initialise, destroy).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::EmptyNode;
use openraft::errors::{InitializeError, RaftError};
use raftkv_core::leadership::VoterView;
use raftkv_core::{GroupId, NodeId, ReplicaId};

use crate::error::NodeError;
use crate::host::Host;
use crate::metrics::METRICS;
use crate::raft::network::{NetworkFactory, PeerPool};
use crate::raft::types::Raft;
use crate::storage::ReadView;

/// One Raft group hosted here.
///
/// Raft speaks replica ids (this replica's is `replica`); the methods named
/// for nodes translate them (a replica id the node has not learned yet from
/// a map is left out).
#[derive(Clone)]
pub struct Group {
    pub id: GroupId,
    /// This replica's Raft id: its incarnation.
    pub replica: ReplicaId,
    pub raft: Raft,
    pub(crate) pool: Arc<PeerPool>,
    pub view: ReadView,
    /// When this replica last accepted an append from its leader: bounds how
    /// stale a follower read may be.
    pub leader_contact: Arc<Mutex<Option<Instant>>>,
}

impl Group {
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::raft::types::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The replica id of the leader this replica knows of, without cloning the whole metrics.
    pub fn raft_leader(&self) -> Option<ReplicaId> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The node hosting the leader this replica knows of.
    pub fn leader_node(&self) -> Option<NodeId> {
        self.raft_leader().and_then(|r| self.pool.node_of(r))
    }

    /// This replica leads the group, as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.raft_leader() == Some(self.replica)
    }

    /// The group's voters (replica ids) as this replica's log has them.
    pub fn voter_ids(&self) -> Vec<ReplicaId> {
        use openraft::async_runtime::WatchReceiver;
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The nodes hosting the group's voters, as this replica's log has them.
    pub fn voter_nodes(&self) -> Vec<NodeId> {
        self.voter_ids()
            .into_iter()
            .filter_map(|r| self.pool.node_of(r))
            .collect()
    }

    /// The node hosting replica `id`.
    pub fn node_of(&self, id: ReplicaId) -> Option<NodeId> {
        self.pool.node_of(id)
    }

    /// The member (voter or learner) of the group on `node`, by this replica's log.
    pub fn member_on(&self, node: NodeId) -> Option<ReplicaId> {
        use openraft::async_runtime::WatchReceiver;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .chain(membership.learner_ids())
            .find(|r| self.pool.node_of(*r) == Some(node))
    }

    /// The last log index applied here, without cloning the whole metrics.
    pub fn applied_index(&self) -> u64 {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index)
    }

    /// This replica's last log index and what it sees of each voter (the
    /// progress is known only while it leads), for `raftkv_core::leadership`.
    pub fn voter_views(&self) -> (u64, Vec<VoterView>) {
        use openraft::Instant as _;
        use openraft::async_runtime::WatchReceiver;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let views = m
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| VoterView {
                id,
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index),
                acked_ago: m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&id).cloned().flatten())
                    .map(|t| t.elapsed()),
            })
            .collect();
        (m.last_log_index.unwrap_or(0), views)
    }
}

impl Host {
    /// The incarnation of `g` whose data this node holds: the recorded id,
    /// else (replicas placed at bootstrap) the node id.
    pub(crate) fn recorded_replica(&self, g: GroupId) -> std::io::Result<ReplicaId> {
        Ok(self.engine.replica_id(g)?.unwrap_or(self.id))
    }

    /// The highest incarnation of `g` destroyed here, when `replica` is not
    /// above it (so it must never be hosted here).
    pub(crate) fn destroyed_here(&self, g: GroupId, replica: ReplicaId) -> std::io::Result<Option<ReplicaId>> {
        Ok(self.engine.tombstone(g, self.id)?.filter(|gone| replica <= *gone))
    }

    /// Opens (or creates, empty) incarnation `replica` of `g` on this node.
    /// Refused when another incarnation of `g` is open here (it must be
    /// destroyed first), or when one at least as new was destroyed here: a
    /// replica id is never hosted twice.
    pub async fn open_group(self: &Arc<Self>, g: GroupId, replica: ReplicaId) -> Result<Group, NodeError> {
        let _guard = self.creating.lock().await;
        if let Some(existing) = self.group(g) {
            if existing.replica == replica {
                return Ok(existing);
            }
            return Err(NodeError::Refused(format!(
                "node {} hosts replica {} of shard {g}, not {replica}; it must be removed first",
                self.id, existing.replica
            )));
        }
        if let Some(gone) = self.destroyed_here(g, replica)? {
            return Err(NodeError::Refused(format!(
                "replica {gone} of shard {g} was destroyed on this node; only a newer incarnation (id above {gone}) is created here"
            )));
        }
        let recorded = self.recorded_replica(g)?;
        if recorded != replica {
            if self.engine.groups()?.contains(&g) {
                return Err(NodeError::Refused(format!(
                    "node {} has the data of replica {recorded} of shard {g}, not {replica}",
                    self.id
                )));
            }
            // A new incarnation: its id is on disk before Raft writes anything.
            self.engine.set_replica_id(g, replica).await?;
        }
        let log = self.engine.log_store(g);
        let sm = self.engine.state_machine(g)?;
        let map_watch = sm.subscribe_map();
        let net = NetworkFactory {
            group: g,
            replica,
            pool: self.pool.clone(),
        };
        let raft = Raft::new(replica, self.raft_config.clone(), net, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if self.draining.load(Ordering::SeqCst) {
            raft.runtime_config().elect(false);
        }
        let group = Group {
            id: g,
            replica,
            pool: self.pool.clone(),
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
        tracing::info!(group = %g, replica, "opened replica");
        Ok(group)
    }

    /// Shuts down and deletes incarnation `replica` of `g` here, leaving a
    /// tombstone. Refused when this node hosts another incarnation of `g`.
    pub async fn destroy_group(&self, g: GroupId, replica: ReplicaId) -> Result<(), NodeError> {
        // Held to the end, as `open_group` holds it: a replica being created
        // never sees the group half destroyed.
        let _guard = self.creating.lock().await;
        let hosted = match self.group(g) {
            Some(group) => Some(group.replica),
            None if self.engine.groups()?.contains(&g) => Some(self.recorded_replica(g)?),
            None => None,
        };
        if let Some(hosted) = hosted
            && hosted != replica
        {
            return Err(NodeError::Refused(format!(
                "node {} hosts replica {hosted} of shard {g}, not {replica}; refusing to destroy it",
                self.id
            )));
        }
        let group = self.groups.write().expect("groups lock").remove(&g);
        if let Some(group) = group {
            group
                .raft
                .shutdown()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        self.engine.destroy_group(g, replica, self.id).await?;
        METRICS
            .shards_hosted
            .set(self.groups.read().expect("groups lock").len() as i64);
        tracing::info!(group = %g, replica, "destroyed replica");
        Ok(())
    }
}

pub(crate) async fn initialize(raft: &Raft, voters: &[NodeId]) -> Result<(), NodeError> {
    let members: BTreeMap<NodeId, EmptyNode> = voters.iter().map(|&v| (v, EmptyNode {})).collect();
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Already initialised: a retried bootstrap.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(NodeError::Raft(e.to_string())),
    }
}
