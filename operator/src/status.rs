//! Status from observation: members, shard summary, conditions, phase and
//! the operation record. Pure (the clock is a parameter), so what users see
//! is unit-tested against the same snapshots as the planner.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{KVClusterStatus, MemberStatus, Operation, Phase, ShardSummary};
use crate::model::{NodeObs, Observed};
use crate::planner::{Action, Plan};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const BLOCKED: &str = "Blocked";
pub const PAUSED: &str = "Paused";

/// The tag of an image reference (`repo:tag` → `tag`), ignoring a registry port.
pub fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t)
}

/// Counts over the cluster map as the nodes report it.
pub fn shard_summary(o: &Observed) -> Option<ShardSummary> {
    let map = o.map.as_ref()?;
    let live = o.live_nodes();
    let mut s = ShardSummary {
        total: map.shard_count as i32,
        ..Default::default()
    };
    for (shard, r) in map.shards.iter().enumerate() {
        // Enough live voters; a learner (a replica still catching up during
        // a move) neither adds to nor takes from that.
        let full = r.voters.iter().filter(|v| live.contains(v)).count() as u32 >= map.replication_factor;
        if full {
            s.fully_replicated += 1;
        } else {
            s.under_replicated += 1;
        }
        if !o.has_leader(shard as u32) {
            s.leaderless += 1;
        }
    }
    Some(s)
}

fn members(o: &Observed) -> Vec<MemberStatus> {
    o.pods
        .iter()
        .map(|p| {
            let version = p.image.as_deref().and_then(image_tag).map(str::to_string);
            match &p.node {
                NodeObs::Unreachable(e) => MemberStatus {
                    pod: p.name.clone(),
                    version,
                    error: Some(e.clone()),
                    ..Default::default()
                },
                NodeObs::Up(i) => MemberStatus {
                    pod: p.name.clone(),
                    node_id: Some(i.node_id),
                    address: Some(format!("{}:{}", i.member.host, i.member.client_port)),
                    ready: i.ready,
                    joined: i.joined,
                    draining: i.draining,
                    version,
                    replicas: i.shards.len() as i32,
                    leaders: i.shards.iter().filter(|s| s.leading).count() as i32,
                    error: None,
                },
            }
        })
        .collect()
}

fn condition(type_: &str, status: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        // Replaced by `merge_conditions` with the previous time when the status did not flip.
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn merge_conditions(mut next: Vec<Condition>, previous: &[Condition], now: jiff::Timestamp) -> Vec<Condition> {
    for c in &mut next {
        c.last_transition_time = match previous.iter().find(|p| p.type_ == c.type_) {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Time(now),
        };
    }
    next
}

/// The operation record after this reconcile's plan: kept (with its start
/// time) while the same target is being worked on, cleared when idle.
fn operation(plan: &Plan, previous: Option<&Operation>, now: &str) -> Option<Operation> {
    let (kind, target, phase, message) = match &plan.action {
        Action::Step(step) => (step.kind(), step.target().to_string(), step.phase(), None),
        Action::Wait {
            kind: Some(kind),
            message,
        } => {
            let target = previous
                .filter(|p| p.kind == *kind)
                .map_or_else(|| "cluster".to_string(), |p| p.target.clone());
            (*kind, target, "Waiting".to_string(), Some(message.clone()))
        }
        Action::Blocked { message, .. } | Action::Wait { message, .. } => {
            // Keep an interrupted operation visible (it resumes when unblocked).
            return previous.map(|p| Operation {
                message: Some(message.clone()),
                ..p.clone()
            });
        }
        Action::Paused => return previous.cloned(),
        Action::Idle => return None,
    };
    let same = previous.filter(|p| p.kind == kind && p.target == target);
    Some(Operation {
        kind,
        target,
        started_at: same.map_or_else(|| now.to_string(), |p| p.started_at.clone()),
        last_progress_at: match same {
            Some(p) if p.phase == phase => p.last_progress_at.clone(),
            _ => now.to_string(),
        },
        phase,
        message,
    })
}

/// The status to write after planning `plan` from `o`.
pub fn build(
    o: &Observed,
    plan: &Plan,
    previous: Option<&KVClusterStatus>,
    generation: Option<i64>,
    selector: String,
    now: jiff::Timestamp,
) -> KVClusterStatus {
    let members = members(o);
    let shards = shard_summary(o);
    let bootstrapped = o.map.is_some();
    let ready_replicas = members.iter().filter(|m| m.ready).count() as i32;
    let unreachable: Vec<&str> = members
        .iter()
        .filter(|m| m.error.is_some())
        .map(|m| m.pod.as_str())
        .collect();
    let healthy = shards
        .as_ref()
        .is_some_and(|s| s.leaderless == 0 && s.under_replicated == 0);
    let images: Vec<Option<&str>> = o.pods.iter().map(|p| p.image.as_deref()).collect();
    let current_version = match images.first() {
        Some(Some(first)) if images.iter().all(|i| *i == Some(*first)) => image_tag(first).map(str::to_string),
        Some(_) => None,
        None => previous.and_then(|p| p.current_version.clone()),
    };

    let mut conditions = Vec::new();
    let (available_reason, available_msg) = match &shards {
        None => (
            "NotBootstrapped",
            "the cluster has not been bootstrapped yet".to_string(),
        ),
        Some(s) if s.leaderless > 0 => (
            "ShardsWithoutLeader",
            format!("{} of {} shards have no leader", s.leaderless, s.total),
        ),
        Some(s) if s.under_replicated > 0 => (
            "ShardsUnderReplicated",
            format!("{} of {} shards are under-replicated", s.under_replicated, s.total),
        ),
        Some(s) => (
            "AllShardsReplicated",
            format!("all {} shards have a leader and full replication", s.total),
        ),
    };
    conditions.push(condition(
        AVAILABLE,
        healthy,
        available_reason,
        available_msg,
        generation,
    ));

    let (progressing, p_reason, p_msg) = match &plan.action {
        Action::Step(step) => (
            true,
            kind_reason(step.kind()),
            format!("{} on {}", step.phase(), step.target()),
        ),
        Action::Wait { kind, message } => (true, kind.map_or("Waiting", kind_reason), message.clone()),
        Action::Idle => (false, "Idle", "nothing to do".into()),
        Action::Paused => (false, "Paused", "spec.paused is true".into()),
        Action::Blocked { reason, .. } => (false, reason.as_str(), "blocked; see the Blocked condition".into()),
    };
    conditions.push(condition(PROGRESSING, progressing, p_reason, p_msg, generation));

    // A lost metadata voter (a volume lost) keeps its seat until the planner hands it to
    // the node that replaced it: until then the group runs with fewer live voters.
    let live = o.live_nodes();
    let lost_meta: Vec<u64> = o.map.as_ref().map_or_else(Vec::new, |m| {
        m.meta_voters.iter().copied().filter(|v| !live.contains(v)).collect()
    });
    let degraded = bootstrapped && (!healthy || !unreachable.is_empty() || !lost_meta.is_empty());
    let d_msg = if !unreachable.is_empty() {
        format!("nodes not answering: {}", unreachable.join(", "))
    } else if !lost_meta.is_empty() {
        let total = o.map.as_ref().map_or(0, |m| m.meta_voters.len());
        format!(
            "metadata voters {lost_meta:?} do not answer (the metadata group runs on {} of {total} voters until their seats are handed to live nodes)",
            total - lost_meta.len()
        )
    } else if degraded {
        conditions[0].message.clone()
    } else {
        "all nodes answer and every shard is healthy".into()
    };
    let d_reason = if !unreachable.is_empty() {
        "NodesUnreachable"
    } else if !lost_meta.is_empty() {
        "MetadataVoterLost"
    } else if degraded {
        available_reason
    } else {
        "Healthy"
    };
    conditions.push(condition(DEGRADED, degraded, d_reason, d_msg, generation));

    let (blocked, b_reason, b_msg) = match &plan.action {
        Action::Blocked { reason, message } => (true, reason.as_str(), message.clone()),
        _ => (false, "NotBlocked", "the operator can proceed".into()),
    };
    conditions.push(condition(BLOCKED, blocked, b_reason, b_msg, generation));

    let paused = plan.action == Action::Paused;
    conditions.push(condition(
        PAUSED,
        paused,
        if paused { "Paused" } else { "NotPaused" },
        if paused {
            "spec.paused is true: the operator changes nothing until it is false".into()
        } else {
            "reconciling".into()
        },
        generation,
    ));
    let conditions = merge_conditions(conditions, previous.map_or(&[], |p| &p.conditions[..]), now);

    let phase = match &plan.action {
        Action::Paused => Phase::Paused,
        Action::Blocked { .. } => Phase::Blocked,
        _ if !bootstrapped => {
            if o.pods.iter().any(|p| p.info().is_some()) {
                Phase::Bootstrapping
            } else {
                Phase::Pending
            }
        }
        Action::Step(_) | Action::Wait { kind: Some(_), .. } => Phase::Reconciling,
        _ if !healthy => Phase::Degraded,
        _ => Phase::Running,
    };

    KVClusterStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        cluster_id: bootstrapped.then(|| o.cluster_id.clone()),
        members,
        shards,
        current_version,
        operation: operation(plan, previous.and_then(|p| p.operation.as_ref()), &now.to_string()),
        replicas: o.pods.len() as i32,
        ready_replicas,
        selector: Some(selector),
    }
}

fn kind_reason(kind: crate::crd::OperationKind) -> &'static str {
    use crate::crd::OperationKind::*;
    match kind {
        Bootstrap => "Bootstrapping",
        AddNode => "AddingNode",
        ReplaceMember => "ReplacingMember",
        Upgrade => "Upgrading",
        Rebalance => "Rebalancing",
    }
}
