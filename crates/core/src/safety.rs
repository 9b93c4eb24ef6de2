//! Safety rules for membership changes, as pure functions: the node refuses
//! (and the operator never asks for) a change that could lose quorum.

use crate::{NodeId, ReplicaId};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("node {0} is the shard's last voter; removing it would destroy the shard")]
    LastVoter(NodeId),
    #[error(
        "removing node {node} would leave {healthy} caught-up voters of {remaining}, below the quorum of {quorum}; bring replicas up to date first"
    )]
    QuorumAtRisk {
        node: NodeId,
        healthy: usize,
        remaining: usize,
        quorum: usize,
    },
    #[error("node {node} is {lag} entries behind the leader (at most {max_lag} allowed); let it catch up first")]
    NotCaughtUp { node: NodeId, lag: u64, max_lag: u64 },
    #[error(
        "removing node {node} would leave {remaining} voters, below the replication factor of {rf}; add a replacement first (or pass force, which the operator never does)"
    )]
    BelowReplicationFactor { node: NodeId, remaining: usize, rf: usize },
    #[error(
        "giving up node {node}'s metadata seat would leave {remaining} voters where {nodes} nodes need {wanted}; hand the seat to another node instead (or pass force)"
    )]
    TooFewMetaVoters {
        node: NodeId,
        remaining: usize,
        nodes: usize,
        wanted: usize,
    },
    #[error(
        "draining node {node} would leave {groups:?} without a voter able to lead (every other voter drains or does not answer)"
    )]
    NoLeaderLeft { node: NodeId, groups: Vec<String> },
}

/// Whether removing voter `node` keeps at least `rf` voters. Removing below
/// the replication factor (a shard the map says has `rf` copies, with
/// fewer) needs `force`.
pub fn check_replication_floor(voters: &[NodeId], node: NodeId, rf: u32, force: bool) -> Result<(), Refusal> {
    let remaining = voters.iter().filter(|&&v| v != node).count();
    let rf = rf as usize;
    if remaining < rf && !force {
        return Err(Refusal::BelowReplicationFactor { node, remaining, rf });
    }
    Ok(())
}

/// Whether metadata voter `node` may give its seat up without a successor:
/// only while the remaining voters are still as many as a cluster of
/// `nodes` nodes gets ([`crate::map::meta_voters`]), unless `force`.
pub fn check_meta_seat_release(voters: &[NodeId], node: NodeId, nodes: usize, force: bool) -> Result<(), Refusal> {
    let remaining = voters.iter().filter(|&&v| v != node).count();
    let ids: Vec<NodeId> = (1..=nodes as NodeId).collect();
    let wanted = crate::map::meta_voters(&ids).len();
    if remaining < wanted && !force {
        return Err(Refusal::TooFewMetaVoters {
            node,
            remaining,
            nodes,
            wanted,
        });
    }
    Ok(())
}

/// Whether `node` may drain: every group it hosts with other voters keeps
/// one (`groups`: a name and its other voters) that `can_lead` (answers
/// and is not draining). A group with no other voter is not refused: no
/// drain can move its leadership, and refusing would block a restart.
pub fn check_drain<'a>(
    node: NodeId,
    groups: impl IntoIterator<Item = (String, &'a [NodeId])>,
    can_lead: impl Fn(NodeId) -> bool,
) -> Result<(), Refusal> {
    let stuck: Vec<String> = groups
        .into_iter()
        .filter(|(_, others)| !others.is_empty() && !others.iter().any(|&o| can_lead(o)))
        .map(|(g, _)| g)
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(Refusal::NoLeaderLeft { node, groups: stuck })
    }
}

pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Whether voter `node` can be removed from `voters`, given which voters are
/// `healthy` (reachable and caught up with the leader).
pub fn check_remove_voter(voters: &[NodeId], healthy: &[NodeId], node: NodeId) -> Result<(), Refusal> {
    let remaining: Vec<NodeId> = voters.iter().copied().filter(|&v| v != node).collect();
    if remaining.is_empty() {
        return Err(Refusal::LastVoter(node));
    }
    let healthy_left = remaining.iter().filter(|v| healthy.contains(v)).count();
    let quorum = majority(remaining.len());
    if healthy_left < quorum {
        return Err(Refusal::QuorumAtRisk {
            node,
            healthy: healthy_left,
            remaining: remaining.len(),
            quorum,
        });
    }
    Ok(())
}

/// Whether voter `old` can hand its seat to `new` (already caught up, checked
/// by the caller) in one joint change: both the current voters and the new
/// set must keep a quorum of `healthy` members, or the change cannot commit.
pub fn check_replace_voter(voters: &[NodeId], healthy: &[NodeId], old: NodeId, new: NodeId) -> Result<(), Refusal> {
    let next: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|&v| v != old)
        .chain(std::iter::once(new))
        .collect();
    for set in [voters, next.as_slice()] {
        let up = set.iter().filter(|v| healthy.contains(v)).count();
        let quorum = majority(set.len());
        if up < quorum {
            return Err(Refusal::QuorumAtRisk {
                node: old,
                healthy: up,
                remaining: set.len(),
                quorum,
            });
        }
    }
    Ok(())
}

/// Whether a learner is close enough to the leader's log to become a voter
/// without stalling commits.
pub fn check_promote(node: NodeId, leader_last_index: u64, matched: Option<u64>, max_lag: u64) -> Result<(), Refusal> {
    let lag = leader_last_index.saturating_sub(matched.unwrap_or(0));
    if matched.is_none() || lag > max_lag {
        return Err(Refusal::NotCaughtUp { node, lag, max_lag });
    }
    Ok(())
}

/// What a shard's leader knows of one of its replica ids, for replica GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView<'a> {
    /// The leader confirmed with a quorum that it still leads (read index).
    pub confirmed: bool,
    /// Voters and learners of its latest membership.
    pub members: &'a [ReplicaId],
    /// Log index of that membership, and the leader's commit index.
    pub membership_index: u64,
    pub committed_index: u64,
    /// The leader's cluster map: the next replica id it would allocate, and
    /// whether the replica is pending there (allocated, being added).
    pub map_next_replica_id: ReplicaId,
    pub pending: bool,
}

/// Why a replica is not (yet) known to be gone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StillNeeded {
    #[error("the answering node has not confirmed its leadership")]
    Unconfirmed,
    #[error("replica {0} is a member of the shard")]
    Member(ReplicaId),
    #[error("replica {0} is being added (pending in the cluster map)")]
    Pending(ReplicaId),
    #[error("the leader's latest membership is not committed yet")]
    MembershipUncommitted,
    #[error("the leader's cluster map predates replica {0}")]
    MapTooOld(ReplicaId),
}

/// Whether replica `id` is certainly gone from its shard, so the node
/// hosting it may delete it (TiKV's stale-peer check): a leader that
/// confirmed its leadership, whose committed membership does not name it,
/// and whose map is new enough to list it if it were being added. An id is
/// never added again once it left (adds allocate a fresh one), so a
/// replica gone by this rule stays gone. Anything less keeps the replica.
pub fn check_replica_gone(id: ReplicaId, leader: &LeaderView<'_>) -> Result<(), StillNeeded> {
    if !leader.confirmed {
        return Err(StillNeeded::Unconfirmed);
    }
    if leader.members.contains(&id) {
        return Err(StillNeeded::Member(id));
    }
    if leader.membership_index > leader.committed_index {
        return Err(StillNeeded::MembershipUncommitted);
    }
    if id >= crate::map::FIRST_REPLICA_ID && leader.map_next_replica_id <= id {
        return Err(StillNeeded::MapTooOld(id));
    }
    if leader.pending {
        return Err(StillNeeded::Pending(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_a_healthy_quorum() {
        // 3 voters, all healthy: removing one leaves 2 of 2.
        assert_eq!(check_remove_voter(&[1, 2, 3], &[1, 2, 3], 3), Ok(()));
        // 3 voters, one down: removing a healthy one leaves 1 healthy of 2 (quorum 2).
        assert_eq!(
            check_remove_voter(&[1, 2, 3], &[1, 2], 2),
            Err(Refusal::QuorumAtRisk {
                node: 2,
                healthy: 1,
                remaining: 2,
                quorum: 2
            })
        );
        // ...but removing the dead one is safe.
        assert_eq!(check_remove_voter(&[1, 2, 3], &[1, 2], 3), Ok(()));
        // 4 voters (during a move), one lagging: removing another leaves 2 healthy of 3.
        assert_eq!(check_remove_voter(&[1, 2, 3, 4], &[1, 2, 3], 1), Ok(()));
        assert!(check_remove_voter(&[1, 2, 3, 4], &[1, 2], 1).is_err());
        assert_eq!(check_remove_voter(&[7], &[7], 7), Err(Refusal::LastVoter(7)));
        // Removing a non-voter changes nothing about quorum.
        assert_eq!(check_remove_voter(&[1, 2, 3], &[1, 2, 3], 9), Ok(()));
    }

    #[test]
    fn replacing_a_voter_keeps_quorum_in_both_configurations() {
        // 1 lost, 4 caught up: {1,2,3} has 2 of 3 up, {2,3,4} has 3 of 3.
        assert_eq!(check_replace_voter(&[1, 2, 3], &[2, 3, 4], 1, 4), Ok(()));
        // 1 and 2 lost: the current voters have no quorum, nothing can commit.
        assert_eq!(
            check_replace_voter(&[1, 2, 3], &[3, 4], 1, 4),
            Err(Refusal::QuorumAtRisk {
                node: 1,
                healthy: 1,
                remaining: 3,
                quorum: 2
            })
        );
        // 5 voters, 1 lost and 5 lagging: 3 of 5 up before, 4 of 5 after.
        assert_eq!(check_replace_voter(&[1, 2, 3, 4, 5], &[2, 3, 4, 6], 1, 6), Ok(()));
        // ...and with 4 lagging too, the current voters have 2 of 5 up.
        assert_eq!(
            check_replace_voter(&[1, 2, 3, 4, 5], &[2, 3, 6], 1, 6),
            Err(Refusal::QuorumAtRisk {
                node: 1,
                healthy: 2,
                remaining: 5,
                quorum: 3
            })
        );
        // A single voter hands over to a caught-up node.
        assert_eq!(check_replace_voter(&[1], &[1, 2], 1, 2), Ok(()));
    }

    #[test]
    fn promotion_needs_a_caught_up_learner() {
        assert_eq!(check_promote(4, 100, Some(95), 10), Ok(()));
        assert_eq!(
            check_promote(4, 100, Some(50), 10),
            Err(Refusal::NotCaughtUp {
                node: 4,
                lag: 50,
                max_lag: 10
            })
        );
        assert_eq!(
            check_promote(4, 100, None, 10),
            Err(Refusal::NotCaughtUp {
                node: 4,
                lag: 100,
                max_lag: 10
            })
        );
        assert_eq!(majority(1), 1);
        assert_eq!(majority(4), 3);
    }

    #[test]
    fn removal_below_the_replication_factor_needs_force() {
        assert_eq!(check_replication_floor(&[1, 2, 3, 4], 4, 3, false), Ok(()));
        assert_eq!(
            check_replication_floor(&[1, 2, 3], 3, 3, false),
            Err(Refusal::BelowReplicationFactor {
                node: 3,
                remaining: 2,
                rf: 3
            })
        );
        assert_eq!(check_replication_floor(&[1, 2, 3], 3, 3, true), Ok(()));
        // Removing a node that is not a voter never lowers the count.
        assert_eq!(check_replication_floor(&[1, 2, 3], 9, 3, false), Ok(()));
    }

    #[test]
    fn a_metadata_seat_is_given_up_only_down_to_the_size_the_cluster_wants() {
        // 5 nodes want 5 voters; 4 nodes want 3; 3 want 3; 2 want 1.
        assert!(check_meta_seat_release(&[1, 2, 3, 4, 5], 5, 5, false).is_err());
        assert_eq!(check_meta_seat_release(&[1, 2, 3, 4, 5], 5, 4, false), Ok(()));
        assert_eq!(
            check_meta_seat_release(&[1, 2, 3], 3, 4, false),
            Err(Refusal::TooFewMetaVoters {
                node: 3,
                remaining: 2,
                nodes: 4,
                wanted: 3
            })
        );
        assert_eq!(check_meta_seat_release(&[1, 2, 3], 3, 2, false), Ok(()));
        assert_eq!(check_meta_seat_release(&[1, 2, 3], 3, 4, true), Ok(()));
    }

    #[test]
    fn a_drain_keeps_a_voter_able_to_lead_every_group() {
        let others_a = [2, 3];
        let others_b = [3];
        let groups = || {
            vec![
                ("a".to_string(), &others_a[..]),
                ("b".to_string(), &others_b[..]),
                ("solo".to_string(), &[][..]),
            ]
        };
        assert_eq!(check_drain(1, groups(), |n| n == 3), Ok(()));
        assert_eq!(
            check_drain(1, groups(), |n| n == 2),
            Err(Refusal::NoLeaderLeft {
                node: 1,
                groups: vec!["b".to_string()]
            })
        );
        assert_eq!(
            check_drain(1, groups(), |_| false),
            Err(Refusal::NoLeaderLeft {
                node: 1,
                groups: vec!["a".to_string(), "b".to_string()]
            })
        );
    }

    #[test]
    fn a_replica_is_gone_only_when_a_confirmed_leader_committed_a_membership_without_it_and_knows_its_id() {
        use crate::map::FIRST_REPLICA_ID as F;
        let members = [1, 2, F + 3];
        let view = LeaderView {
            confirmed: true,
            members: &members,
            membership_index: 40,
            committed_index: 50,
            map_next_replica_id: F + 10,
            pending: false,
        };
        assert_eq!(check_replica_gone(F + 5, &view), Ok(()));
        assert_eq!(check_replica_gone(4, &view), Ok(()), "a removed node-id replica");
        assert_eq!(check_replica_gone(F + 3, &view), Err(StillNeeded::Member(F + 3)));
        assert_eq!(check_replica_gone(2, &view), Err(StillNeeded::Member(2)));
        let unconfirmed = LeaderView {
            confirmed: false,
            ..view.clone()
        };
        assert_eq!(check_replica_gone(F + 5, &unconfirmed), Err(StillNeeded::Unconfirmed));
        let uncommitted = LeaderView {
            membership_index: 51,
            ..view.clone()
        };
        assert_eq!(
            check_replica_gone(F + 5, &uncommitted),
            Err(StillNeeded::MembershipUncommitted)
        );
        let old_map = LeaderView {
            map_next_replica_id: F + 5,
            ..view.clone()
        };
        assert_eq!(check_replica_gone(F + 5, &old_map), Err(StillNeeded::MapTooOld(F + 5)));
        assert_eq!(check_replica_gone(4, &old_map), Ok(()), "node ids predate every map");
        let pending = LeaderView {
            pending: true,
            ..view.clone()
        };
        assert_eq!(check_replica_gone(F + 5, &pending), Err(StillNeeded::Pending(F + 5)));
    }
}
