//! The planner: from an [`Observed`] snapshot to the next safe step. Pure —
//! no I/O, no clock — so every state it can see is a unit test below.
//!
//! ```text
//! Observed ──validate──► paused? ──► bootstrapped? ──► membership work ──► upgrade ──► idle
//!                 │           │             │                │                 │
//!              Blocked      Paused     Bootstrap/Wait   AddNode/AddReplica/  Drain/DeletePod/
//!                                                      Promote/Remove…      Undrain
//! ```
//!
//! One step per reconcile: the controller applies it, the nodes change, the
//! next observation shows the result, and the planner derives the following
//! step from what it sees, never from memory. `status.operation` only decides
//! *which* target to continue with when several need work, so a restarted
//! operator finishes the change it started before beginning another.
//!
//! Safety rules:
//! - Bootstrap only when every initial pod answers as unjoined (or, to finish
//!   a bootstrap cut short, with the same members again — the node treats that
//!   as a no-op).
//! - A pod whose node id changed lost its volume: its old identity is never
//!   re-used. The new node is added, takes over each of the old node's shard
//!   replicas (learner → caught-up voter) and only then is the old replica
//!   removed, so a shard never has fewer live copies than before.
//! - A lost node that was a metadata voter hands its seat to the new node
//!   (a joint change the metadata leader refuses unless the new node is
//!   caught up and both voter sets keep a live quorum) before it leaves the map.
//! - A shard without a leader blocks membership changes: the operator cannot
//!   tell a slow election from lost quorum, and the nodes refuse anyway.
//! - Scale-down is refused (data would leave with the pod; not implemented).

use crate::crd::OperationKind;
use crate::model::{MemberAddr, NodeInfo, Observed, PodObs};

/// The next step for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Server-side apply the Services, StatefulSet and PDB (false while paused or invalid).
    pub apply_workloads: bool,
    /// What the StatefulSet's `.spec.replicas` should be.
    pub statefulset_replicas: u32,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Converged: nothing to do.
    Idle,
    /// Waiting for something outside the operator (pods starting, nodes catching up).
    Wait {
        kind: Option<OperationKind>,
        message: String,
    },
    /// Refusing to continue; the user must act.
    Blocked { reason: BlockReason, message: String },
    /// `spec.paused`.
    Paused,
    /// One membership or upgrade step.
    Step(Step),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    InvalidSpec,
    ShardsChanged,
    ReplicationFactorChanged,
    ForeignCluster,
    QuorumLost,
    ScaleDownUnsupported,
    MetaVoterUnplaceable,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::InvalidSpec => "InvalidSpec",
            BlockReason::ShardsChanged => "ShardsChanged",
            BlockReason::ReplicationFactorChanged => "ReplicationFactorChanged",
            BlockReason::ForeignCluster => "ForeignCluster",
            BlockReason::QuorumLost => "QuorumLost",
            BlockReason::ScaleDownUnsupported => "ScaleDownUnsupported",
            BlockReason::MetaVoterUnplaceable => "MetaVoterUnplaceable",
        }
    }
}

/// A node member as `Bootstrap`/`AddNode` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    pub addr: MemberAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `Bootstrap` on `via` (a pod name) with every initial member.
    Bootstrap {
        via: String,
        members: Vec<Member>,
    },
    /// `AddNode` for the node in `pod`.
    AddNode {
        pod: String,
        member: Member,
    },
    AddReplica {
        pod: String,
        shard: u32,
        node_id: u64,
    },
    PromoteReplica {
        pod: String,
        shard: u32,
        node_id: u64,
    },
    /// Remove `node_id`'s replica of `shard` (a member that lost its volume).
    RemoveReplica {
        pod: String,
        shard: u32,
        node_id: u64,
    },
    /// Hand lost node `old`'s seat in the metadata group to `new` (the node now in `pod`).
    ReplaceMetaVoter {
        pod: String,
        old: u64,
        new: u64,
    },
    /// Remove a lost node that no longer hosts anything from the map.
    RemoveNode {
        pod: String,
        node_id: u64,
    },
    /// Move `shard`'s leadership to `to` (the node in `pod`), to even out leaders.
    TransferLeader {
        pod: String,
        shard: u32,
        to: u64,
    },
    /// Make the node in `pod` hand off its leaderships before a restart.
    DrainLeaders {
        pod: String,
    },
    /// Clear a drain mark (after the restart, or a leaked one).
    UndrainLeaders {
        pod: String,
    },
    /// Delete the pod so the StatefulSet (OnDelete) recreates it from the new template.
    DeletePod {
        pod: String,
    },
    /// One step of moving a shard replica from a loaded node to a light one.
    Rebalance(Move),
}

/// A replica move, learner first: `Add` (to) → `Promote` (to) → `Remove` (from).
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    Add { pod: String, shard: u32, node_id: u64 },
    Promote { pod: String, shard: u32, node_id: u64 },
    Remove { pod: String, shard: u32, node_id: u64 },
}

impl Move {
    fn pod(&self) -> &str {
        match self {
            Move::Add { pod, .. } | Move::Promote { pod, .. } | Move::Remove { pod, .. } => pod,
        }
    }

    fn phase(&self) -> String {
        match self {
            Move::Add { shard, node_id, .. } => format!("AddReplica(shard {shard}, node {node_id})"),
            Move::Promote { shard, node_id, .. } => format!("PromoteReplica(shard {shard}, node {node_id})"),
            Move::Remove { shard, node_id, .. } => format!("RemoveReplica(shard {shard}, node {node_id})"),
        }
    }
}

impl Step {
    pub fn kind(&self) -> OperationKind {
        match self {
            Step::Bootstrap { .. } => OperationKind::Bootstrap,
            Step::AddNode { .. } => OperationKind::AddNode,
            Step::AddReplica { .. }
            | Step::PromoteReplica { .. }
            | Step::RemoveReplica { .. }
            | Step::ReplaceMetaVoter { .. }
            | Step::RemoveNode { .. } => OperationKind::ReplaceMember,
            Step::DrainLeaders { .. } | Step::UndrainLeaders { .. } | Step::DeletePod { .. } => OperationKind::Upgrade,
            Step::Rebalance(_) | Step::TransferLeader { .. } => OperationKind::Rebalance,
        }
    }

    /// The pod the step is about (the operation's target).
    pub fn target(&self) -> &str {
        match self {
            Step::Bootstrap { .. } => "cluster",
            Step::AddNode { pod, .. }
            | Step::AddReplica { pod, .. }
            | Step::PromoteReplica { pod, .. }
            | Step::RemoveReplica { pod, .. }
            | Step::ReplaceMetaVoter { pod, .. }
            | Step::RemoveNode { pod, .. }
            | Step::DrainLeaders { pod }
            | Step::UndrainLeaders { pod }
            | Step::DeletePod { pod } => pod,
            Step::Rebalance(m) => m.pod(),
            Step::TransferLeader { pod, .. } => pod,
        }
    }

    /// The operation phase this step is (short, for `status.operation.phase`).
    pub fn phase(&self) -> String {
        match self {
            Step::Bootstrap { members, .. } => format!("Bootstrap({} nodes)", members.len()),
            Step::AddNode { member, .. } => format!("AddNode({})", member.node_id),
            Step::AddReplica { shard, node_id, .. } => format!("AddReplica(shard {shard}, node {node_id})"),
            Step::PromoteReplica { shard, node_id, .. } => format!("PromoteReplica(shard {shard}, node {node_id})"),
            Step::RemoveReplica { shard, node_id, .. } => format!("RemoveReplica(shard {shard}, node {node_id})"),
            Step::ReplaceMetaVoter { old, new, .. } => format!("ReplaceMetaVoter({old} -> {new})"),
            Step::RemoveNode { node_id, .. } => format!("RemoveNode({node_id})"),
            Step::DrainLeaders { .. } => "DrainLeaders".into(),
            Step::UndrainLeaders { .. } => "UndrainLeaders".into(),
            Step::DeletePod { .. } => "RestartPod".into(),
            Step::Rebalance(m) => m.phase(),
            Step::TransferLeader { shard, to, .. } => format!("TransferLeader(shard {shard} to node {to})"),
        }
    }
}

/// Checks the spec the way the CRD's schema does (a CRD installed by hand may be older).
pub fn validate(o: &Observed) -> Result<(), String> {
    let d = &o.desired;
    if d.replicas == 0 || d.replicas > crate::crd::MAX_REPLICAS as u32 {
        return Err(format!(
            "spec.replicas must be between 1 and {}",
            crate::crd::MAX_REPLICAS
        ));
    }
    if d.shards == 0 || d.shards > raftkv_core::map::MAX_SHARDS {
        return Err(format!(
            "spec.shards must be between 1 and {}",
            raftkv_core::map::MAX_SHARDS
        ));
    }
    if d.replication_factor == 0
        || d.replication_factor > crate::crd::MAX_REPLICATION_FACTOR as u32
        || d.replication_factor.is_multiple_of(2)
    {
        return Err("spec.replicationFactor must be 1, 3, 5 or 7".into());
    }
    if d.replicas < d.replication_factor {
        return Err(format!(
            "spec.replicas ({}) must be at least spec.replicationFactor ({})",
            d.replicas, d.replication_factor
        ));
    }
    Ok(())
}

/// The next safe step for the cluster `o` describes.
pub fn plan(o: &Observed) -> Plan {
    let d = &o.desired;
    let current = o.statefulset_replicas.unwrap_or(0);
    if let Err(message) = validate(o) {
        return Plan {
            apply_workloads: false,
            statefulset_replicas: current,
            action: Action::Blocked {
                reason: BlockReason::InvalidSpec,
                message,
            },
        };
    }
    if d.paused {
        return Plan {
            apply_workloads: false,
            statefulset_replicas: current,
            action: Action::Paused,
        };
    }
    // Never shrink the StatefulSet: the removed pods' nodes still hold replicas.
    let statefulset_replicas = d.replicas.max(current);
    let plan = |action| Plan {
        apply_workloads: true,
        statefulset_replicas,
        action,
    };
    let blocked = |reason, message| plan(Action::Blocked { reason, message });
    if current > d.replicas {
        return blocked(
            BlockReason::ScaleDownUnsupported,
            format!(
                "spec.replicas is {} but the cluster has {current} nodes: scaling down (moving data off nodes first) is not supported yet; set spec.replicas back to {current}",
                d.replicas
            ),
        );
    }
    if let Some((p, i)) = o
        .pods
        .iter()
        .filter_map(|p| p.info().map(|i| (p, i)))
        .find(|(_, i)| i.joined && i.cluster_id != o.cluster_id)
    {
        return blocked(
            BlockReason::ForeignCluster,
            format!(
                "pod {} holds node {} of another cluster ({:?}); delete its PersistentVolumeClaim if that data is not needed",
                p.name, i.node_id, i.cluster_id
            ),
        );
    }
    if let Some(map) = &o.map {
        if map.shard_count != d.shards {
            return blocked(
                BlockReason::ShardsChanged,
                format!(
                    "the cluster was created with {} shards; spec.shards ({}) cannot change, set it back",
                    map.shard_count, d.shards
                ),
            );
        }
        if map.replication_factor != d.replication_factor {
            return blocked(
                BlockReason::ReplicationFactorChanged,
                format!(
                    "the cluster was created with replication factor {}; changing it is not supported, set spec.replicationFactor back",
                    map.replication_factor
                ),
            );
        }
    }
    if o.joined().next().is_none() {
        return plan(bootstrap(o));
    }
    let Some(map) = &o.map else {
        return plan(Action::Wait {
            kind: None,
            message: "waiting for a joined node to serve the cluster map".into(),
        });
    };

    // Membership work, one target at a time; the recorded operation goes first.
    let mut work: Vec<(OperationKind, &PodObs)> = Vec::new();
    for p in &o.pods {
        let Some(i) = p.info() else { continue };
        if map.nodes.contains_key(&i.node_id) {
            if !i.joined {
                // In the map but never joined: a bootstrap or an AddNode cut short.
                let kind = match &o.operation {
                    Some(op) if op.kind == OperationKind::Bootstrap => OperationKind::Bootstrap,
                    _ => OperationKind::AddNode,
                };
                work.push((kind, p));
            } else if lost_ids(map, p, i).next().is_some() {
                work.push((OperationKind::ReplaceMember, p));
            }
        } else if !i.joined {
            if lost_ids(map, p, i).next().is_some() {
                work.push((OperationKind::ReplaceMember, p));
            } else {
                work.push((OperationKind::AddNode, p));
            }
        }
    }
    if let Some(op) = &o.operation
        && let Some(pos) = work.iter().position(|(_, p)| p.name == op.target)
    {
        let item = work.remove(pos);
        work.insert(0, item);
    } else if o
        .operation
        .as_ref()
        .is_some_and(|op| op.kind == OperationKind::Bootstrap)
        && let Some(pos) = work.iter().position(|(k, _)| *k == OperationKind::Bootstrap)
    {
        let item = work.remove(pos);
        work.insert(0, item);
    }
    if let Some((kind, pod)) = work.first() {
        let info = pod.info().expect("only pods with node info are work items");
        return plan(match kind {
            OperationKind::Bootstrap => rebootstrap(o, map),
            OperationKind::AddNode => Action::Step(Step::AddNode {
                pod: pod.name.clone(),
                member: member(info),
            }),
            _ => replace(o, map, pod, info),
        });
    }

    // Pods of the current size that do not exist or answer yet.
    let missing: Vec<String> = (0..d.replicas)
        .filter(|n| o.pod(*n).and_then(PodObs::info).is_none())
        .map(|n| o.pod(n).map_or_else(|| format!("pod {n} not created"), pod_unreachable))
        .collect();

    plan(match upgrade(o, missing) {
        Action::Idle => rebalance(o, map),
        other => other,
    })
}

fn pod_unreachable(p: &PodObs) -> String {
    match &p.node {
        crate::model::NodeObs::Unreachable(why) => format!("{}: {why}", p.name),
        crate::model::NodeObs::Up(_) => p.name.clone(),
    }
}

fn member(i: &NodeInfo) -> Member {
    Member {
        node_id: i.node_id,
        addr: i.member.clone(),
    }
}

/// Map nodes at the pod's address whose identity the pod no longer has: the
/// pod lost its volume and came back as a new node.
fn lost_ids<'a>(map: &'a crate::model::MapObs, p: &'a PodObs, i: &'a NodeInfo) -> impl Iterator<Item = u64> + 'a {
    map.nodes
        .iter()
        // The full advertised address, not just the host: nodes outside Kubernetes may share a host.
        .filter(move |(id, a)| **id != i.node_id && (a.host == p.host || **a == i.member))
        .map(|(id, _)| *id)
}

fn bootstrap(o: &Observed) -> Action {
    let d = &o.desired;
    let mut members = Vec::new();
    let mut waiting = Vec::new();
    for n in 0..d.replicas {
        match o.pod(n) {
            None => waiting.push(format!("pod {n} not created")),
            Some(p) if p.terminating => waiting.push(format!("{} is terminating", p.name)),
            Some(p) => match p.info() {
                None => waiting.push(pod_unreachable(p)),
                Some(i) => members.push(member(i)),
            },
        }
    }
    if !waiting.is_empty() {
        return Action::Wait {
            kind: Some(OperationKind::Bootstrap),
            message: format!(
                "waiting for all {} initial nodes to answer before bootstrap: {}",
                d.replicas,
                waiting.join("; ")
            ),
        };
    }
    let via = o.pod(0).map(|p| p.name.clone()).unwrap_or_default();
    Action::Step(Step::Bootstrap { via, members })
}

/// Finishes a bootstrap that was cut short: the same members again.
fn rebootstrap(o: &Observed, map: &crate::model::MapObs) -> Action {
    let Some((via, _)) = o.joined().next() else {
        return Action::Wait {
            kind: Some(OperationKind::Bootstrap),
            message: "waiting for a joined node to finish the bootstrap".into(),
        };
    };
    Action::Step(Step::Bootstrap {
        via: via.name.clone(),
        members: map
            .nodes
            .iter()
            .map(|(id, addr)| Member {
                node_id: *id,
                addr: addr.clone(),
            })
            .collect(),
    })
}

/// The next step in replacing the lost node(s) at `pod`'s address with the node it now holds.
fn replace(o: &Observed, map: &crate::model::MapObs, pod: &PodObs, info: &NodeInfo) -> Action {
    let new = info.node_id;
    let target = pod.name.clone();
    if !map.nodes.contains_key(&new) {
        return Action::Step(Step::AddNode {
            pod: target,
            member: member(info),
        });
    }
    let lost: Vec<u64> = lost_ids(map, pod, info).collect();
    for (shard, r) in map.shards.iter().enumerate() {
        let shard = shard as u32;
        let Some(&old) = lost.iter().find(|l| r.contains(**l)) else {
            continue;
        };
        if !o.has_leader(shard) {
            let live = o.live_nodes();
            let down: Vec<u64> = r.voters.iter().copied().filter(|v| !live.contains(v)).collect();
            return Action::Blocked {
                reason: BlockReason::QuorumLost,
                message: format!(
                    "shard {shard} has no leader (voters {:?}, not answering or lost: {down:?}); replacing node {old} must wait until it has one — if a majority of its voters lost their volumes the shard's data needs a restore",
                    r.voters
                ),
            };
        }
        if r.learners.contains(&old) || !r.voters.contains(&old) {
            return Action::Step(Step::RemoveReplica {
                pod: target,
                shard,
                node_id: old,
            });
        }
        if !r.contains(new) {
            return Action::Step(Step::AddReplica {
                pod: target,
                shard,
                node_id: new,
            });
        }
        if r.learners.contains(&new) {
            return Action::Step(Step::PromoteReplica {
                pod: target,
                shard,
                node_id: new,
            });
        }
        return Action::Step(Step::RemoveReplica {
            pod: target,
            shard,
            node_id: old,
        });
    }
    // The lost nodes host no replicas now. A metadata voter hands its seat to
    // the new node first (it is in the map, so the metadata group's leader
    // has made it a learner; the node refuses until it is caught up).
    if let Some(&old) = lost.iter().find(|l| map.meta_voters.contains(l)) {
        if map.meta_voters.contains(&new) {
            // Two lost voters at one address (nodes outside Kubernetes sharing
            // a host) cannot both hand over to the one node now there.
            return Action::Blocked {
                reason: BlockReason::MetaVoterUnplaceable,
                message: format!(
                    "node {old} is a lost metadata voter, but node {new} at the same address already holds a metadata seat; hand node {old}'s seat to another caught-up node with `kvctl admin replace-meta-voter {old} <node>`"
                ),
            };
        }
        return Action::Step(Step::ReplaceMetaVoter { pod: target, old, new });
    }
    match lost.first() {
        Some(&old) => Action::Step(Step::RemoveNode {
            pod: target,
            node_id: old,
        }),
        None => Action::Idle,
    }
}

/// Evens out replicas, then leaders, over the live nodes once everything
/// else is settled (every node serving, every shard led): a node added by
/// scale-up starts empty. One replica at a time, never below the
/// replication factor: the new replica is a caught-up voter before the old
/// one is removed. A move cut short is finished first, recognised from the
/// map alone (a learner on a live node; more voters than the replication
/// factor), so a restarted operator needs no memory of it.
fn rebalance(o: &Observed, map: &crate::model::MapObs) -> Action {
    let pod_of = |node: u64| o.joined().find(|(_, i)| i.node_id == node).map(|(p, _)| p.name.clone());
    let live = o.live_nodes();
    let nodes: Vec<u64> = map.nodes.keys().copied().filter(|n| live.contains(n)).collect();
    if nodes.len() != map.nodes.len() {
        return Action::Idle;
    }
    // A leader that a move removed steps down and its shard elects anew
    // within seconds: look again soon, not after the idle interval (that
    // made every move of a scale-up cost 30 s).
    let leaderless: Vec<u32> = (0..map.shard_count).filter(|s| !o.has_leader(*s)).collect();
    if !leaderless.is_empty() {
        return Action::Wait {
            kind: None,
            message: format!("rebalance waits for shards {leaderless:?} to elect a leader"),
        };
    }
    let load = |n: u64| map.shards.iter().filter(|r| r.contains(n)).count();
    let rf = map.replication_factor as usize;
    // A move cut short: promote its learner, or drop the extra voter on the busiest node.
    for (shard, r) in map.shards.iter().enumerate() {
        let shard = shard as u32;
        if let Some(&l) = r.learners.iter().find(|l| nodes.contains(l))
            && let Some(pod) = pod_of(l)
        {
            return Action::Step(Step::Rebalance(Move::Promote { pod, shard, node_id: l }));
        }
        if r.voters.len() > rf
            && let Some(&v) = r.voters.iter().max_by_key(|v| (load(**v), std::cmp::Reverse(**v)))
            && let Some(pod) = pod_of(v)
        {
            return Action::Step(Step::Rebalance(Move::Remove { pod, shard, node_id: v }));
        }
    }
    // Lightest and busiest nodes (lowest id first on ties, so the plan is deterministic).
    let lightest = nodes.iter().copied().min_by_key(|n| (load(*n), *n));
    let busiest = nodes.iter().copied().max_by_key(|n| (load(*n), std::cmp::Reverse(*n)));
    if let (Some(to), Some(from)) = (lightest, busiest)
        && load(from) >= load(to) + 2
        && let Some(shard) = (0..map.shard_count).find(|&s| {
            let r = &map.shards[s as usize];
            r.voters.contains(&from) && !r.contains(to) && r.voters.len() == rf && r.learners.is_empty()
        })
        && let Some(pod) = pod_of(to)
    {
        return Action::Step(Step::Rebalance(Move::Add {
            pod,
            shard,
            node_id: to,
        }));
    }
    balance_leaders(o, map, &nodes).unwrap_or(Action::Idle)
}

/// A leadership from the node leading the most shards to a voter of that
/// shard leading at least two fewer, or None when leaders are even.
fn balance_leaders(o: &Observed, map: &crate::model::MapObs, nodes: &[u64]) -> Option<Action> {
    let leads: Vec<(u64, &str, Vec<u32>)> = o
        .joined()
        .filter(|(_, i)| nodes.contains(&i.node_id) && !i.draining)
        .map(|(p, i)| {
            let led = i.shards.iter().filter(|s| s.leading).map(|s| s.shard).collect();
            (i.node_id, p.name.as_str(), led)
        })
        .collect();
    let (from, _, led) = leads.iter().max_by_key(|(n, _, l)| (l.len(), std::cmp::Reverse(*n)))?;
    let mut candidates: Vec<&(u64, &str, Vec<u32>)> =
        leads.iter().filter(|(_, _, l)| l.len() + 2 <= led.len()).collect();
    candidates.sort_by_key(|(n, _, l)| (l.len(), *n));
    for (to, pod, _) in candidates {
        if let Some(&shard) = led.iter().find(|s| map.shards[**s as usize].voters.contains(to)) {
            debug_assert_ne!(from, to);
            return Some(Action::Step(Step::TransferLeader {
                pod: pod.to_string(),
                shard,
                to: *to,
            }));
        }
    }
    None
}

/// Rolling upgrade (and drain bookkeeping) once membership is settled.
fn upgrade(o: &Observed, missing: Vec<String>) -> Action {
    let d = &o.desired;
    let outdated = |p: &PodObs| p.image.as_deref() != Some(d.image.as_str());
    // A drained node on the new image (restarted, or a leaked mark): undrain once it serves.
    if let Some(p) = o
        .pods
        .iter()
        .find(|p| !outdated(p) && p.info().is_some_and(|i| i.draining && i.ready))
    {
        return Action::Step(Step::UndrainLeaders { pod: p.name.clone() });
    }
    if !o.pods.iter().any(outdated) {
        if missing.is_empty() {
            return Action::Idle;
        }
        return Action::Wait {
            kind: None,
            message: format!("waiting for nodes to answer: {}", missing.join("; ")),
        };
    }
    // A pod on the old image that is not serving is restarted first: it is
    // not serving anything, and a bad rollout must be fixable by editing the spec.
    if let Some(p) = o
        .pods
        .iter()
        .rev()
        .find(|p| outdated(p) && !p.ready && !p.terminating && p.info().is_none_or(|i| !i.ready))
    {
        return Action::Step(Step::DeletePod { pod: p.name.clone() });
    }
    if !missing.is_empty() || o.pods.iter().any(|p| p.terminating || !p.ready) {
        let mut waiting = missing;
        waiting.extend(
            o.pods
                .iter()
                .filter(|p| p.terminating || !p.ready)
                .map(|p| format!("{} not ready", p.name)),
        );
        return Action::Wait {
            kind: Some(OperationKind::Upgrade),
            message: format!("upgrade waits for every node to serve: {}", waiting.join("; ")),
        };
    }
    if let Some(map) = &o.map {
        let leaderless: Vec<u32> = (0..map.shard_count).filter(|s| !o.has_leader(*s)).collect();
        if !leaderless.is_empty() {
            return Action::Wait {
                kind: Some(OperationKind::Upgrade),
                message: format!("upgrade waits for shards {leaderless:?} to elect a leader"),
            };
        }
    }
    // Highest ordinal first (like a StatefulSet rolling update).
    let Some(p) = o.pods.iter().rev().find(|p| outdated(p)) else {
        return Action::Idle;
    };
    let Some(info) = p.info() else {
        return Action::Wait {
            kind: Some(OperationKind::Upgrade),
            message: pod_unreachable(p),
        };
    };
    if d.replication_factor > 1 {
        if !info.draining {
            return Action::Step(Step::DrainLeaders { pod: p.name.clone() });
        }
        let leading = info.shards.iter().filter(|s| s.leading).count();
        if leading > 0 {
            return Action::Wait {
                kind: Some(OperationKind::Upgrade),
                message: format!("{} still leads {leading} shards; waiting for them to move", p.name),
            };
        }
    }
    Action::Step(Step::DeletePod { pod: p.name.clone() })
}

#[cfg(test)]
mod tests;
