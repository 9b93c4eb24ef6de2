//! Every state the planner can see, built by hand.

use std::collections::BTreeMap;

use super::*;
use crate::crd::Operation;
use crate::model::{Desired, MapObs, NodeObs, Observed, PodObs, Replicas, ShardObs};

const UID: &str = "uid-1";
const OLD: &str = "raftkv/raftkv-node:0.1.0";
const NEW: &str = "raftkv/raftkv-node:0.2.0";

fn host(n: u32) -> String {
    format!("kv-{n}.kv-nodes.db.svc.cluster.local")
}

fn addr(n: u32) -> MemberAddr {
    MemberAddr {
        host: host(n),
        client_port: 2379,
        peer_port: 2380,
        admin_port: 2381,
    }
}

/// A pod whose node answers (unjoined, node id `id`).
fn unjoined(n: u32, id: u64) -> PodObs {
    PodObs {
        name: format!("kv-{n}"),
        ordinal: n,
        host: host(n),
        image: Some(OLD.into()),
        ready: false,
        terminating: false,
        node: NodeObs::Up(NodeInfo {
            node_id: id,
            joined: false,
            cluster_id: String::new(),
            ready: false,
            draining: false,
            build_version: "0.1.0".into(),
            member: addr(n),
            shards: vec![],
        }),
    }
}

/// A joined, serving pod hosting `shards` (leading the ones in `leads`).
fn joined(n: u32, id: u64, shards: &[u32], leads: &[u32]) -> PodObs {
    let mut p = unjoined(n, id);
    p.ready = true;
    if let NodeObs::Up(i) = &mut p.node {
        i.joined = true;
        i.ready = true;
        i.cluster_id = UID.into();
        i.shards = shards
            .iter()
            .map(|s| ShardObs {
                shard: *s,
                leading: leads.contains(s),
            })
            .collect();
    }
    p
}

fn unreachable(n: u32) -> PodObs {
    PodObs {
        node: NodeObs::Unreachable("pod is Pending without an address".into()),
        ..unjoined(n, 0)
    }
}

fn info_mut(p: &mut PodObs) -> &mut NodeInfo {
    match &mut p.node {
        NodeObs::Up(i) => i,
        NodeObs::Unreachable(_) => panic!("pod has no node info"),
    }
}

fn observed(replicas: u32, pods: Vec<PodObs>, map: Option<MapObs>) -> Observed {
    Observed {
        cluster_id: UID.into(),
        desired: Desired {
            replicas,
            shards: 2,
            replication_factor: 3,
            image: OLD.into(),
            paused: false,
        },
        statefulset_replicas: Some(replicas),
        pods,
        map,
        operation: None,
    }
}

/// Nodes 1..=3 on pods 0..=2; shards 0 and 1 on all three.
fn map3() -> MapObs {
    MapObs {
        version: 5,
        shard_count: 2,
        replication_factor: 3,
        nodes: (0..3).map(|n| (u64::from(n) + 1, addr(n))).collect::<BTreeMap<_, _>>(),
        shards: vec![
            Replicas {
                voters: vec![1, 2, 3],
                learners: vec![],
            };
            2
        ],
        meta_voters: vec![1, 2, 3],
    }
}

/// A healthy, bootstrapped 3-node cluster: node 1 leads shard 0, node 2 leads shard 1.
fn healthy() -> Observed {
    observed(
        3,
        vec![
            joined(0, 1, &[0, 1], &[0]),
            joined(1, 2, &[0, 1], &[1]),
            joined(2, 3, &[0, 1], &[]),
        ],
        Some(map3()),
    )
}

fn op(kind: OperationKind, target: &str) -> Operation {
    Operation {
        kind,
        target: target.into(),
        phase: "x".into(),
        started_at: "t0".into(),
        last_progress_at: "t0".into(),
        message: None,
    }
}

fn step(o: &Observed) -> Step {
    match plan(o).action {
        Action::Step(s) => s,
        other => panic!("expected a step, got {other:?}"),
    }
}

fn blocked(o: &Observed) -> (BlockReason, String) {
    match plan(o).action {
        Action::Blocked { reason, message } => (reason, message),
        other => panic!("expected blocked, got {other:?}"),
    }
}

fn waiting(o: &Observed) -> String {
    match plan(o).action {
        Action::Wait { message, .. } => message,
        other => panic!("expected wait, got {other:?}"),
    }
}

// --- validation and switches ---

#[test]
fn invalid_spec_blocks_without_touching_objects() {
    let mut o = observed(3, vec![], None);
    o.desired.replicas = 2;
    let p = plan(&o);
    assert!(!p.apply_workloads);
    assert_eq!(p.statefulset_replicas, 3, "keeps what exists");
    let (reason, msg) = blocked(&o);
    assert_eq!(reason, BlockReason::InvalidSpec);
    assert!(msg.contains("replicationFactor"), "{msg}");

    for (replicas, shards, rf) in [(0, 2, 1), (3, 0, 3), (3, 70_000, 3), (4, 2, 2), (9, 2, 9)] {
        let mut o = observed(replicas, vec![], None);
        o.desired.shards = shards;
        o.desired.replication_factor = rf;
        assert_eq!(blocked(&o).0, BlockReason::InvalidSpec, "{replicas} {shards} {rf}");
    }
}

#[test]
fn paused_changes_nothing_even_with_work_pending() {
    let mut o = observed(3, vec![unjoined(0, 11), unjoined(1, 12), unjoined(2, 13)], None);
    o.desired.paused = true;
    let p = plan(&o);
    assert_eq!(p.action, Action::Paused);
    assert!(!p.apply_workloads);
}

// --- before bootstrap ---

#[test]
fn no_pods_yet_creates_objects_and_waits() {
    let mut o = observed(3, vec![], None);
    o.statefulset_replicas = None;
    let p = plan(&o);
    assert!(p.apply_workloads);
    assert_eq!(p.statefulset_replicas, 3);
    let msg = waiting(&o);
    assert!(
        msg.contains("pod 0 not created") && msg.contains("pod 2 not created"),
        "{msg}"
    );
}

#[test]
fn pods_not_answering_delay_bootstrap() {
    let o = observed(3, vec![unjoined(0, 11), unreachable(1), unjoined(2, 13)], None);
    let msg = waiting(&o);
    assert!(msg.contains("kv-1: pod is Pending"), "{msg}");
    let mut o = observed(3, vec![unjoined(0, 11), unjoined(1, 12), unjoined(2, 13)], None);
    o.pods[2].terminating = true;
    assert!(waiting(&o).contains("kv-2 is terminating"));
}

#[test]
fn all_unjoined_bootstraps_once_with_every_member() {
    let o = observed(3, vec![unjoined(0, 11), unjoined(1, 12), unjoined(2, 13)], None);
    let Step::Bootstrap { via, members } = step(&o) else {
        panic!("expected bootstrap")
    };
    assert_eq!(via, "kv-0");
    assert_eq!(
        members
            .iter()
            .map(|m| (m.node_id, m.addr.host.clone()))
            .collect::<Vec<_>>(),
        vec![(11, host(0)), (12, host(1)), (13, host(2))]
    );
}

#[test]
fn bootstrap_cut_short_is_finished_with_the_same_members() {
    let mut map = map3();
    map.version = 1;
    let mut o = observed(
        3,
        vec![joined(0, 1, &[], &[]), unjoined(1, 2), unjoined(2, 3)],
        Some(map),
    );
    o.operation = Some(op(OperationKind::Bootstrap, "cluster"));
    let Step::Bootstrap { via, members } = step(&o) else {
        panic!("expected bootstrap")
    };
    assert_eq!(via, "kv-0", "sent to the joined node");
    assert_eq!(members.iter().map(|m| m.node_id).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn a_node_in_the_map_that_never_joined_is_added_again_outside_bootstrap() {
    let mut o = healthy();
    o.pods[2] = unjoined(2, 3);
    assert_eq!(
        step(&o),
        Step::AddNode {
            pod: "kv-2".into(),
            member: Member {
                node_id: 3,
                addr: addr(2)
            }
        }
    );
}

#[test]
fn a_node_of_another_cluster_blocks() {
    let mut o = observed(3, vec![unjoined(0, 11), unjoined(1, 12), joined(2, 13, &[], &[])], None);
    info_mut(&mut o.pods[2]).cluster_id = "someone-else".into();
    let (reason, msg) = blocked(&o);
    assert_eq!(reason, BlockReason::ForeignCluster);
    assert!(msg.contains("kv-2") && msg.contains("PersistentVolumeClaim"), "{msg}");
}

// --- bootstrapped ---

#[test]
fn healthy_cluster_is_idle() {
    let p = plan(&healthy());
    assert_eq!(p.action, Action::Idle);
    assert!(p.apply_workloads);
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn joined_nodes_without_a_map_wait() {
    let mut o = healthy();
    o.map = None;
    assert!(waiting(&o).contains("cluster map"));
}

#[test]
fn shard_count_and_replication_factor_are_fixed() {
    let mut o = healthy();
    o.desired.shards = 4;
    let (reason, msg) = blocked(&o);
    assert_eq!(reason, BlockReason::ShardsChanged);
    assert!(msg.contains("created with 2 shards"), "{msg}");
    let mut o = healthy();
    o.desired.replication_factor = 1;
    assert_eq!(blocked(&o).0, BlockReason::ReplicationFactorChanged);
}

#[test]
fn scale_down_is_refused_and_the_statefulset_kept() {
    let mut o = healthy();
    o.desired.replicas = 3;
    o.statefulset_replicas = Some(4);
    let p = plan(&o);
    assert_eq!(p.statefulset_replicas, 4);
    assert!(p.apply_workloads);
    assert_eq!(blocked(&o).0, BlockReason::ScaleDownUnsupported);
}

#[test]
fn scale_up_adds_the_new_node() {
    let mut o = healthy();
    o.desired.replicas = 4;
    assert_eq!(plan(&o).statefulset_replicas, 4);
    assert!(waiting(&o).contains("pod 3 not created"));
    o.pods.push(unjoined(3, 44));
    assert_eq!(
        step(&o),
        Step::AddNode {
            pod: "kv-3".into(),
            member: Member {
                node_id: 44,
                addr: addr(3)
            }
        }
    );
}

#[test]
fn a_deleted_pod_that_comes_back_with_its_volume_needs_nothing() {
    let mut o = healthy();
    o.pods.remove(1);
    assert!(waiting(&o).contains("pod 1 not created"));
    let mut o = healthy();
    o.pods[1] = unreachable(1);
    let msg = waiting(&o);
    assert!(msg.contains("kv-1"), "{msg}");
}

// --- a pod that lost its volume ---

/// Pod 1 lost its volume: it now answers as unjoined node 9; node 2 is gone.
fn lost_volume() -> Observed {
    let mut o = healthy();
    o.pods[1] = unjoined(1, 9);
    // Node 2 led shard 1; node 3 took over.
    o.pods[2] = joined(2, 3, &[0, 1], &[1]);
    o
}

#[test]
fn lost_volume_first_adds_the_new_identity_never_the_old() {
    let o = lost_volume();
    assert_eq!(
        step(&o),
        Step::AddNode {
            pod: "kv-1".into(),
            member: Member {
                node_id: 9,
                addr: addr(1)
            }
        }
    );
}

/// After AddNode: node 9 joined and is in the map at pod 1's address, next to lost node 2.
fn replacing() -> Observed {
    let mut o = lost_volume();
    o.pods[1] = joined(1, 9, &[], &[]);
    let map = o.map.as_mut().expect("map");
    map.nodes.insert(9, addr(1));
    o.operation = Some(op(OperationKind::ReplaceMember, "kv-1"));
    o
}

#[test]
fn lost_volume_replaces_each_replica_learner_promote_remove() {
    let mut o = replacing();
    let target = "kv-1".to_string();
    assert_eq!(
        step(&o),
        Step::AddReplica {
            pod: target.clone(),
            shard: 0,
            node_id: 9
        }
    );
    o.map.as_mut().expect("map").shards[0].learners = vec![9];
    assert_eq!(
        step(&o),
        Step::PromoteReplica {
            pod: target.clone(),
            shard: 0,
            node_id: 9
        }
    );
    o.map.as_mut().expect("map").shards[0] = Replicas {
        voters: vec![1, 2, 3, 9],
        learners: vec![],
    };
    assert_eq!(
        step(&o),
        Step::RemoveReplica {
            pod: target.clone(),
            shard: 0,
            node_id: 2
        }
    );
    o.map.as_mut().expect("map").shards[0].voters = vec![1, 3, 9];
    assert_eq!(
        step(&o),
        Step::AddReplica {
            pod: target.clone(),
            shard: 1,
            node_id: 9
        },
        "then the next shard"
    );
    o.map.as_mut().expect("map").shards[1].voters = vec![1, 3, 9];
    // Node 2 hosts nothing now but is a metadata voter: its seat goes to node 9 first...
    assert_eq!(
        step(&o),
        Step::ReplaceMetaVoter {
            pod: target.clone(),
            old: 2,
            new: 9
        }
    );
    assert_eq!(plan(&o).statefulset_replicas, 3);
    // ...then it leaves the map.
    o.map.as_mut().expect("map").meta_voters = vec![1, 3, 9];
    assert_eq!(
        step(&o),
        Step::RemoveNode {
            pod: target,
            node_id: 2
        }
    );
    o.map.as_mut().expect("map").nodes.remove(&2);
    assert_eq!(plan(&o).action, Action::Idle);
}

#[test]
fn a_lost_metadata_voter_waits_for_its_shards_before_its_seat_moves() {
    // The seat moves only after every replica of the lost node has been replaced.
    let mut o = replacing();
    assert!(matches!(step(&o), Step::AddReplica { .. }));
    for r in &mut o.map.as_mut().expect("map").shards {
        r.voters = vec![1, 3, 9];
    }
    assert_eq!(
        step(&o),
        Step::ReplaceMetaVoter {
            pod: "kv-1".into(),
            old: 2,
            new: 9
        }
    );
    // Still recorded as part of replacing kv-1's member.
    assert_eq!(step(&o).kind(), OperationKind::ReplaceMember);
    assert_eq!(step(&o).phase(), "ReplaceMetaVoter(2 -> 9)");
}

#[test]
fn a_lost_metadata_voter_whose_address_already_holds_a_seat_blocks() {
    // Two lost voters at one address: the node there can take one seat only.
    let mut o = replacing();
    for r in &mut o.map.as_mut().expect("map").shards {
        r.voters = vec![1, 3, 9];
    }
    o.map.as_mut().expect("map").meta_voters = vec![1, 2, 9];
    let p = plan(&o);
    match p.action {
        Action::Blocked { reason, message } => {
            assert_eq!(reason, BlockReason::MetaVoterUnplaceable);
            assert!(message.contains("replace-meta-voter 2"), "{message}");
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
}

#[test]
fn a_lost_learner_is_removed_without_a_replacement_first() {
    let mut o = replacing();
    o.map.as_mut().expect("map").shards[0] = Replicas {
        voters: vec![1, 3, 9],
        learners: vec![2],
    };
    assert_eq!(
        step(&o),
        Step::RemoveReplica {
            pod: "kv-1".into(),
            shard: 0,
            node_id: 2
        }
    );
}

#[test]
fn replacement_refuses_on_a_shard_without_leader() {
    let mut o = replacing();
    // Nobody leads shard 0 (e.g. pods 0 and 1 both lost their volumes).
    info_mut(&mut o.pods[0]).shards[0].leading = false;
    let (reason, msg) = blocked(&o);
    assert_eq!(reason, BlockReason::QuorumLost);
    assert!(msg.contains("shard 0 has no leader") && msg.contains("[2]"), "{msg}");
}

#[test]
fn the_recorded_operation_is_continued_before_other_work() {
    let mut o = replacing();
    o.desired.replicas = 4;
    o.statefulset_replicas = Some(4);
    o.pods.push(unjoined(3, 44));
    assert!(matches!(step(&o), Step::AddReplica { .. }), "replacement recorded");
    o.operation = Some(op(OperationKind::AddNode, "kv-3"));
    assert!(matches!(step(&o), Step::AddNode { pod, .. } if pod == "kv-3"));
    o.operation = None;
    assert!(
        matches!(step(&o), Step::AddReplica { .. }),
        "without a record, lowest ordinal first"
    );
}

// --- upgrades ---

fn upgrading() -> Observed {
    let mut o = healthy();
    o.desired.image = NEW.into();
    o
}

#[test]
fn upgrade_drains_the_highest_ordinal_then_restarts_it() {
    let mut o = upgrading();
    assert_eq!(step(&o), Step::DrainLeaders { pod: "kv-2".into() });
    info_mut(&mut o.pods[2]).draining = true;
    info_mut(&mut o.pods[2]).shards[0].leading = true;
    info_mut(&mut o.pods[0]).shards[0].leading = false;
    assert!(waiting(&o).contains("kv-2 still leads 1 shards"));
    info_mut(&mut o.pods[2]).shards[0].leading = false;
    info_mut(&mut o.pods[0]).shards[0].leading = true;
    assert_eq!(step(&o), Step::DeletePod { pod: "kv-2".into() });
}

#[test]
fn upgrade_undrains_a_restarted_node_before_the_next() {
    let mut o = upgrading();
    o.pods[2].image = Some(NEW.into());
    info_mut(&mut o.pods[2]).draining = true;
    assert_eq!(step(&o), Step::UndrainLeaders { pod: "kv-2".into() });
    info_mut(&mut o.pods[2]).draining = false;
    assert_eq!(step(&o), Step::DrainLeaders { pod: "kv-1".into() });
}

#[test]
fn upgrade_waits_for_the_restarted_pod_and_for_leaders() {
    let mut o = upgrading();
    o.pods[2].image = Some(NEW.into());
    o.pods[2].ready = false;
    info_mut(&mut o.pods[2]).ready = false;
    assert!(waiting(&o).contains("kv-2 not ready"));
    let mut o = upgrading();
    info_mut(&mut o.pods[1]).shards[1].leading = false;
    assert!(waiting(&o).contains("shards [1]"));
}

#[test]
fn a_broken_pod_on_the_old_image_is_restarted_first() {
    let mut o = upgrading();
    o.pods[0].ready = false;
    info_mut(&mut o.pods[0]).ready = false;
    assert_eq!(step(&o), Step::DeletePod { pod: "kv-0".into() });
    let mut o = upgrading();
    o.pods[1] = unreachable(1);
    assert_eq!(step(&o), Step::DeletePod { pod: "kv-1".into() });
}

#[test]
fn replication_factor_one_restarts_without_draining() {
    let mut o = upgrading();
    o.desired.replication_factor = 1;
    o.map.as_mut().expect("map").replication_factor = 1;
    assert_eq!(step(&o), Step::DeletePod { pod: "kv-2".into() });
}

#[test]
fn a_leaked_drain_is_cleared() {
    let mut o = healthy();
    info_mut(&mut o.pods[0]).draining = true;
    assert_eq!(step(&o), Step::UndrainLeaders { pod: "kv-0".into() });
}

#[test]
fn steps_name_their_operation() {
    let s = Step::AddReplica {
        pod: "kv-1".into(),
        shard: 3,
        node_id: 9,
    };
    assert_eq!(s.kind(), OperationKind::ReplaceMember);
    assert_eq!(s.target(), "kv-1");
    assert_eq!(s.phase(), "AddReplica(shard 3, node 9)");
    assert_eq!(
        Step::Bootstrap {
            via: "kv-0".into(),
            members: vec![]
        }
        .target(),
        "cluster"
    );
}

// --- status built from the same snapshots ---

mod status {
    use super::*;
    use crate::crd::Phase;
    use crate::status::{build, image_tag};

    fn now() -> jiff::Timestamp {
        "2026-11-22T00:00:00Z".parse().expect("timestamp")
    }

    fn cond<'a>(
        s: &'a crate::crd::KVClusterStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect("condition present")
    }

    #[test]
    fn healthy_cluster_is_available_and_running() {
        let o = healthy();
        let s = build(&o, &plan(&o), None, Some(4), "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(cond(&s, "Available").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Blocked").status, "False");
        let shards = s.shards.expect("summary");
        assert_eq!((shards.total, shards.fully_replicated, shards.leaderless), (2, 2, 0));
        assert_eq!(s.ready_replicas, 3);
        assert_eq!(s.current_version.as_deref(), Some("0.1.0"));
        assert_eq!(s.members[0].leaders, 1);
        assert_eq!(s.members[0].replicas, 2);
        assert_eq!(s.members[0].node_id, Some(1));
        assert_eq!(s.observed_generation, Some(4));
        assert!(s.operation.is_none());
    }

    #[test]
    fn lost_member_degrades_and_records_the_operation() {
        let o = replacing();
        let p = plan(&o);
        let previous = crate::crd::KVClusterStatus {
            operation: Some(op(OperationKind::ReplaceMember, "kv-1")),
            ..Default::default()
        };
        let s = build(&o, &p, Some(&previous), Some(1), "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Reconciling));
        assert_eq!(cond(&s, "Available").status, "False");
        assert_eq!(cond(&s, "Available").reason, "ShardsUnderReplicated");
        assert_eq!(cond(&s, "Progressing").reason, "ReplacingMember");
        let op = s.operation.clone().expect("operation");
        assert_eq!(op.target, "kv-1");
        assert_eq!(
            op.started_at, "t0",
            "start time kept while the same target is worked on"
        );
        assert_eq!(op.phase, "AddReplica(shard 0, node 9)");
        assert_ne!(op.last_progress_at, "t0", "a new phase is progress");
        let d = cond(&s, "Degraded");
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "MetadataVoterLost"));
        assert!(
            d.message.contains("[2]") && d.message.contains("2 of 3"),
            "{}",
            d.message
        );
    }

    #[test]
    fn blocked_and_paused_say_why() {
        let mut o = healthy();
        o.desired.shards = 4;
        let s = build(&o, &plan(&o), None, None, "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Blocked));
        let b = cond(&s, "Blocked");
        assert_eq!((b.status.as_str(), b.reason.as_str()), ("True", "ShardsChanged"));
        assert!(b.message.contains("cannot change"));
        let mut o = healthy();
        o.desired.paused = true;
        let s = build(&o, &plan(&o), None, None, "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Paused));
        assert_eq!(cond(&s, "Paused").status, "True");
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let o = healthy();
        let first = build(&o, &plan(&o), None, None, "sel".into(), now());
        let later: jiff::Timestamp = "2026-11-22T01:00:00Z".parse().expect("timestamp");
        let second = build(&o, &plan(&o), Some(&first), None, "sel".into(), later);
        assert_eq!(cond(&second, "Available").last_transition_time.0, now());
        let mut o2 = healthy();
        info_mut(&mut o2.pods[0]).shards[0].leading = false;
        let third = build(&o2, &plan(&o2), Some(&second), None, "sel".into(), later);
        assert_eq!(cond(&third, "Available").status, "False");
        assert_eq!(cond(&third, "Available").last_transition_time.0, later);
        assert_eq!(third.shards.expect("summary").leaderless, 1);
    }

    #[test]
    fn before_bootstrap_the_phase_follows_the_pods() {
        let o = observed(3, vec![], None);
        let s = build(&o, &plan(&o), None, None, "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(cond(&s, "Available").reason, "NotBootstrapped");
        let o = observed(3, vec![unjoined(0, 11), unjoined(1, 12), unjoined(2, 13)], None);
        let s = build(&o, &plan(&o), None, None, "sel".into(), now());
        assert_eq!(s.phase, Some(Phase::Bootstrapping));
        assert_eq!(s.operation.expect("operation").kind, OperationKind::Bootstrap);
    }

    #[test]
    fn versions_from_image_tags() {
        assert_eq!(image_tag("raftkv/raftkv-node:0.1.0"), Some("0.1.0"));
        assert_eq!(image_tag("registry:5000/raftkv/raftkv-node:1.0"), Some("1.0"));
        assert_eq!(image_tag("registry:5000/raftkv/raftkv-node"), None);
        let mut o = upgrading();
        o.pods[2].image = Some(NEW.into());
        let s = build(&o, &plan(&o), None, None, "sel".into(), now());
        assert_eq!(s.current_version, None, "mixed versions");
        assert_eq!(s.members[2].version.as_deref(), Some("0.2.0"));
    }
}

#[test]
fn nodes_sharing_a_host_are_told_apart_by_port() {
    // Outside Kubernetes (loopback) every node advertises 127.0.0.1 on its own ports.
    let mut o = healthy();
    let map = o.map.as_mut().expect("map");
    for (id, a) in map.nodes.iter_mut() {
        a.host = "127.0.0.1".into();
        a.peer_port = 3000 + *id as u16;
    }
    for (n, p) in o.pods.iter_mut().enumerate() {
        let i = info_mut(p);
        i.member.host = "127.0.0.1".into();
        i.member.peer_port = 3000 + n as u16 + 1;
    }
    assert_eq!(plan(&o).action, Action::Idle);
    // Pod 1 lost its volume: same address, new id.
    let mut lost = o.clone();
    let mut fresh = unjoined(1, 9);
    info_mut(&mut fresh).member = info_mut(&mut lost.pods[1]).member.clone();
    lost.pods[1] = fresh;
    assert!(matches!(step(&lost), Step::AddNode { member, .. } if member.node_id == 9));
}

/// `healthy()` scaled up: node 4 on pod kv-3 has joined and hosts nothing.
fn scaled_up() -> Observed {
    let mut o = healthy();
    o.desired.replicas = 4;
    o.statefulset_replicas = Some(4);
    o.pods.push(joined(3, 4, &[], &[]));
    o.map.as_mut().expect("map").nodes.insert(4, addr(3));
    o
}

fn rebalance_step(o: &Observed) -> Move {
    match step(o) {
        Step::Rebalance(m) => m,
        other => panic!("expected a rebalance step, got {other:?}"),
    }
}

#[test]
fn scale_up_moves_one_replica_at_a_time_learner_first() {
    let mut o = scaled_up();
    // Loads 2,2,2,0: shard 0 moves from node 1 (busiest, lowest id) to node 4.
    assert_eq!(
        rebalance_step(&o),
        Move::Add {
            pod: "kv-3".into(),
            shard: 0,
            node_id: 4
        }
    );
    assert_eq!(step(&o).kind(), OperationKind::Rebalance);
    o.map.as_mut().expect("map").shards[0].learners = vec![4];
    assert_eq!(
        rebalance_step(&o),
        Move::Promote {
            pod: "kv-3".into(),
            shard: 0,
            node_id: 4
        }
    );
    o.map.as_mut().expect("map").shards[0] = Replicas {
        voters: vec![1, 2, 3, 4],
        learners: vec![],
    };
    // The extra voter on the busiest node goes, never the one just added.
    assert_eq!(
        rebalance_step(&o),
        Move::Remove {
            pod: "kv-0".into(),
            shard: 0,
            node_id: 1
        }
    );
    o.map.as_mut().expect("map").shards[0].voters = vec![2, 3, 4];
    // Loads 1,2,2,1: within one of each other.
    assert_eq!(plan(&o).action, Action::Idle);
}

#[test]
fn rebalance_evens_out_a_larger_cluster_without_dropping_below_the_replication_factor() {
    // Drive the planner to convergence on a model that applies each step.
    let mut o = scaled_up();
    let map = o.map.as_mut().expect("map");
    map.shard_count = 8;
    map.shards = vec![
        Replicas {
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        8
    ];
    o.desired.shards = 8;
    for p in &mut o.pods {
        if let NodeObs::Up(i) = &mut p.node
            && i.node_id == 1
        {
            i.shards = (0..8)
                .map(|s| ShardObs {
                    shard: s,
                    leading: true,
                })
                .collect();
        }
    }
    let mut steps = 0;
    while let Action::Step(s) = plan(&o).action {
        steps += 1;
        assert!(steps < 100, "no convergence");
        let map = o.map.as_mut().expect("map");
        match s {
            Step::Rebalance(Move::Add { shard, node_id, .. }) => map.shards[shard as usize].learners.push(node_id),
            Step::Rebalance(Move::Promote { shard, node_id, .. }) => {
                let r = &mut map.shards[shard as usize];
                r.learners.retain(|l| *l != node_id);
                r.voters.push(node_id);
            }
            Step::Rebalance(Move::Remove { shard, node_id, .. }) => {
                map.shards[shard as usize].voters.retain(|v| *v != node_id)
            }
            Step::TransferLeader { shard, to, .. } => {
                for p in &mut o.pods {
                    if let NodeObs::Up(i) = &mut p.node {
                        i.shards.retain(|x| x.shard != shard);
                        if i.node_id == to || map.shards[shard as usize].voters.contains(&i.node_id) {
                            i.shards.push(ShardObs {
                                shard,
                                leading: i.node_id == to,
                            });
                        }
                    }
                }
            }
            other => panic!("unexpected step {other:?}"),
        }
        for r in &map.shards {
            assert!(r.voters.len() >= 3, "a shard fell below its replication factor: {r:?}");
        }
    }
    let map = o.map.as_ref().expect("map");
    let loads: Vec<usize> = (1..=4)
        .map(|n| map.shards.iter().filter(|r| r.contains(n)).count())
        .collect();
    assert_eq!(loads.iter().sum::<usize>(), 24);
    assert!(loads.iter().all(|l| *l == 6), "replicas per node: {loads:?}");
    let leads: Vec<usize> = o
        .pods
        .iter()
        .filter_map(|p| p.info())
        .map(|i| i.shards.iter().filter(|s| s.leading).count())
        .collect();
    assert!(leads.iter().all(|l| *l == 2), "leaders per node: {leads:?}");
    // 6 moves of 3 steps each, then the leader transfers.
    assert!(steps >= 18, "{steps} steps");
}

#[test]
fn leaders_move_to_a_voter_leading_at_least_two_fewer() {
    let mut o = healthy();
    o.pods[0] = joined(0, 1, &[0, 1], &[0, 1]);
    o.pods[1] = joined(1, 2, &[0, 1], &[]);
    assert_eq!(
        step(&o),
        Step::TransferLeader {
            pod: "kv-1".into(),
            shard: 0,
            to: 2
        }
    );
    // A draining node (an upgrade under way) is left alone: the upgrade goes first.
    let mut drained = o.clone();
    if let NodeObs::Up(i) = &mut drained.pods[1].node {
        i.draining = true;
    }
    assert!(!matches!(step(&drained), Step::TransferLeader { to: 2, .. }));
}

#[test]
fn no_rebalance_while_a_node_is_down_or_a_shard_is_leaderless() {
    let mut o = scaled_up();
    o.pods[2] = unreachable(2);
    assert!(!matches!(plan(&o).action, Action::Step(Step::Rebalance(_))));
    let mut o = scaled_up();
    o.pods[0] = joined(0, 1, &[0, 1], &[]);
    o.pods[1] = joined(1, 2, &[0, 1], &[]);
    assert!(!o.has_leader(0));
    // Waiting (looked at again within seconds), not idle: a leader a move
    // removed is replaced by an election.
    match plan(&o).action {
        Action::Wait { kind: None, message } => assert!(message.contains("[0, 1]"), "{message}"),
        other => panic!("expected a wait for shard 0's leader, got {other:?}"),
    }
}

#[test]
fn a_learner_on_a_node_that_left_is_not_promoted() {
    let mut o = scaled_up();
    o.map.as_mut().expect("map").shards[1].learners = vec![7];
    // Node 7 is not a live member: the planner moves on to a fresh move instead.
    assert_eq!(
        rebalance_step(&o),
        Move::Add {
            pod: "kv-3".into(),
            shard: 0,
            node_id: 4
        }
    );
}
