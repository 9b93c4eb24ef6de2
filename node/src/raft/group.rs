//! One Raft group on this node: its handle, what its metrics say, and its
//! lifecycle (open or create, initialise, destroy).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::EmptyNode;
use openraft::errors::{InitializeError, RaftError};
use raftkv_core::leadership::VoterView;
use raftkv_core::{GroupId, NodeId};

use crate::error::NodeError;
use crate::host::Host;
use crate::metrics::METRICS;
use crate::raft::network::NetworkFactory;
use crate::raft::types::Raft;
use crate::storage::ReadView;

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
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::raft::types::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader this replica knows of, without cloning the whole metrics.
    pub fn current_leader(&self) -> Option<NodeId> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The group's voters as this replica's log has them, without cloning the whole metrics.
    pub fn voters(&self) -> Vec<NodeId> {
        use openraft::async_runtime::WatchReceiver;
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
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
        // Held to the end, as `open_group` holds it: a replica being created
        // never sees the group half destroyed.
        let _guard = self.creating.lock().await;
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
