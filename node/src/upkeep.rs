//! The node's periodic work: metrics, the drain mark, disk space, metadata
//! membership for every node of the map, reclaiming expired keys, and
//! deleting replicas that left their shard (replica GC).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::{ChangeMembers, EmptyNode, ServerState};
use raftkv_core::command::{Command, Response};
use raftkv_core::{GroupId, NodeId};

use crate::error::NodeError;
use crate::host::{Host, fs_free_bytes, now_ms};
use crate::metrics::METRICS;
use crate::routing::{self, Target};
use raftkv_proto::peer;

/// How long one upkeep membership change (a metadata learner added or
/// removed) may wait for its commit before the next tick tries again.
const UPKEEP_CHANGE_WITHIN: Duration = Duration::from_secs(5);
/// How often a node looks for replicas it hosts that left their shard.
const REPLICA_GC_EVERY: Duration = Duration::from_secs(10);
/// How long one replica GC check may take to find and ask a shard's leader.
const REPLICA_GC_CHECK_WITHIN: Duration = Duration::from_secs(5);
/// Records one expiry sweep of a shard reads, at most.
const EXPIRY_SWEEP_RECORDS: usize = 10_000;
/// Sweep ticks a shard rests after a whole pass over it found nothing
/// expired (most shards hold no TTL keys; this keeps their cost near zero).
const EXPIRY_IDLE_TICKS: u32 = 30;

/// Where the expiry sweep of one shard stands.
#[derive(Default)]
struct Sweep {
    /// The last key read (`None`: start from the beginning).
    cursor: Option<Vec<u8>>,
    /// Whether this pass over the shard found anything expired.
    found: bool,
    /// Ticks left to rest.
    rest: u32,
}

impl Host {
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
                METRICS.group(g.id, &m, g.replica);
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

    /// On every shard this node leads: every `expiry_sweep_ms`, read the next
    /// slice of the shard and propose the deletion of the records that have
    /// expired. Expiry is the leader's decision, replicated like a write, so
    /// every replica deletes the same records and digests stay equal.
    pub async fn sweep_expired(self: &Arc<Self>) {
        let mut sweeps: HashMap<GroupId, Sweep> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.expiry_sweep_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.shutting_down.load(Ordering::SeqCst) || self.disk_full.load(Ordering::SeqCst) {
                continue;
            }
            for g in self.groups() {
                if g.id == GroupId::Meta || !g.is_leader() {
                    continue;
                }
                let sweep = sweeps.entry(g.id).or_default();
                if sweep.rest > 0 {
                    sweep.rest -= 1;
                    continue;
                }
                let cursor = sweep.cursor.take();
                let view = g.view.clone();
                let now = now_ms();
                let swept = self
                    .storage(move || view.expired_keys(cursor.as_deref(), EXPIRY_SWEEP_RECORDS, now))
                    .await;
                let (keys, next) = match swept {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(group = %g.id, error = %e, "expiry sweep failed");
                        continue;
                    }
                };
                let sweep = sweeps.entry(g.id).or_default();
                sweep.found |= !keys.is_empty();
                if next.is_none() {
                    // A whole pass done: rest if it found nothing.
                    sweep.rest = if sweep.found { 0 } else { EXPIRY_IDLE_TICKS };
                    sweep.found = false;
                }
                sweep.cursor = next;
                if keys.is_empty() {
                    continue;
                }
                let count = keys.len();
                match self.propose(g.id, Command::Expire { keys }).await {
                    Ok(Response::Expired { deleted }) => {
                        METRICS
                            .expired_deleted
                            .with_label_values(&[&g.id.to_string()])
                            .inc_by(deleted);
                        tracing::debug!(group = %g.id, found = count, deleted, "expired keys deleted");
                    }
                    Ok(other) => tracing::warn!(group = %g.id, answer = ?other, "unexpected answer to an expiry"),
                    Err(e) => {
                        tracing::debug!(group = %g.id, error = %e, "expiry proposal not applied; the next sweep retries")
                    }
                }
            }
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

    /// Replica GC: a replica this node hosts but its map does not place
    /// here (removed while the node was down, or its `DestroyReplica` was
    /// lost) is deleted once the shard's leader confirms it left the shard
    /// for good ([`raftkv_core::safety::check_replica_gone`]). Without that
    /// answer, it stays.
    pub async fn collect_replicas(self: &Arc<Self>) {
        // Not at start-up: the map is caught up first.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + REPLICA_GC_EVERY, REPLICA_GC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(map) = self.map() else { continue };
            for g in self.groups() {
                let GroupId::Shard(shard) = g.id else { continue };
                if map.replica_on(shard, self.id) == Some(g.replica) || g.is_leader() {
                    continue;
                }
                match self.replica_gone(&g, &map.cluster_id).await {
                    Ok(()) => {
                        tracing::info!(
                            shard,
                            replica = g.replica,
                            "deleting a replica that left its shard (confirmed by the leader)"
                        );
                        match self.destroy_group(g.id, g.replica).await {
                            Ok(()) => METRICS
                                .replicas_collected
                                .with_label_values(&[&shard.to_string()])
                                .inc(),
                            Err(e) => {
                                tracing::warn!(shard, replica = g.replica, error = %e, "could not delete a replica that left its shard")
                            }
                        }
                    }
                    Err(why) => {
                        tracing::debug!(shard, replica = g.replica, %why, "keeping a replica the map does not place here");
                    }
                }
            }
        }
    }

    /// Asks `g`'s leader whether this node's replica of it is gone.
    async fn replica_gone(&self, g: &crate::host::Group, cluster_id: &str) -> Result<(), String> {
        let ask = routing::on_leader(self, g.id, false, REPLICA_GC_CHECK_WITHIN, |target| async move {
            let Target::Node(n) = target else {
                return Err(NodeError::NotLeader {
                    group: g.id,
                    leader: None,
                }
                .into());
            };
            let mut client = self.pool.client(n).map_err(|e| NodeError::Peer(e.to_string()))?;
            let reply = client
                .check_replica(peer::CheckReplicaRequest {
                    target_node: n,
                    cluster_id: cluster_id.to_string(),
                    group: g.id.to_raw(),
                    replica_id: g.replica,
                })
                .await?;
            Ok::<_, tonic::Status>(reply.into_inner())
        })
        .await;
        match ask {
            Ok(r) if r.gone => Ok(()),
            Ok(r) => Err(r.reason),
            Err(s) => Err(s.message().to_string()),
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
