//! What a leader decides from what it sees of its voters, as pure functions:
//! which voters are healthy (the input to every quorum-safety rule in
//! [`crate::safety`]) and whom to hand leadership to.

use std::time::Duration;

use crate::NodeId;

/// A voter reachable more recently than this counts as up.
pub const HEALTHY_ACK_WITHIN: Duration = Duration::from_secs(1);
/// A voter at most this many entries behind the leader counts as caught up.
pub const HEALTHY_MAX_LAG: u64 = 1000;

/// What a leader knows of one voter of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterView {
    pub id: NodeId,
    /// The last log index replicated to it, if any.
    pub matched: Option<u64>,
    /// How long ago it last acknowledged the leader, if ever.
    pub acked_ago: Option<Duration>,
}

/// The voters that are up and caught up, as leader `leader` at `last_index`
/// sees them; the leader itself always counts. In ascending id order.
pub fn healthy_voters(leader: NodeId, last_index: u64, voters: &[VoterView]) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = voters
        .iter()
        .filter(|v| {
            v.id == leader
                || (v.acked_ago.is_some_and(|ago| ago < HEALTHY_ACK_WITHIN)
                    && v.matched
                        .is_some_and(|m| last_index.saturating_sub(m) <= HEALTHY_MAX_LAG))
        })
        .map(|v| v.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whom leader `leader` hands leadership to: the healthy other voter with the
/// most of the log (so the transfer is quick), the lowest id among equals,
/// never one in `refusing` (nodes that drain). `None` when there is no one.
pub fn transfer_target(leader: NodeId, last_index: u64, voters: &[VoterView], refusing: &[NodeId]) -> Option<NodeId> {
    let healthy = healthy_voters(leader, last_index, voters);
    voters
        .iter()
        .filter(|v| v.id != leader && healthy.contains(&v.id) && !refusing.contains(&v.id))
        .max_by_key(|v| (v.matched, std::cmp::Reverse(v.id)))
        .map(|v| v.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: NodeId, matched: u64, acked_ms: u64) -> VoterView {
        VoterView {
            id,
            matched: Some(matched),
            acked_ago: Some(Duration::from_millis(acked_ms)),
        }
    }

    #[test]
    fn a_voter_is_healthy_when_recently_heard_and_caught_up() {
        let never_heard = VoterView {
            id: 5,
            matched: Some(100),
            acked_ago: None,
        };
        let never_replicated = VoterView {
            id: 6,
            matched: None,
            acked_ago: Some(Duration::ZERO),
        };
        let voters = [
            voter(3, 100, 0),
            voter(1, 0, 5_000), // the leader: always counted
            voter(2, 0, 999),   // 100 behind, heard just now
            voter(7, 100, 1_000),
            never_heard,
            never_replicated,
        ];
        assert_eq!(healthy_voters(1, 100, &voters), vec![1, 2, 3]);
    }

    #[test]
    fn lag_and_silence_at_the_limits() {
        let last = 5_000;
        let me = voter(1, last, 0);
        let at_limit = [me.clone(), voter(2, last - HEALTHY_MAX_LAG, 999)];
        assert_eq!(healthy_voters(1, last, &at_limit), vec![1, 2]);
        let over = [me.clone(), voter(2, last - HEALTHY_MAX_LAG - 1, 0)];
        assert_eq!(healthy_voters(1, last, &over), vec![1]);
        let silent = [me, voter(2, last, HEALTHY_ACK_WITHIN.as_millis() as u64)];
        assert_eq!(healthy_voters(1, last, &silent), vec![1]);
    }

    #[test]
    fn leadership_goes_to_the_most_caught_up_healthy_voter_that_does_not_drain() {
        let voters = [
            voter(1, 100, 0),
            voter(2, 90, 10),
            voter(3, 99, 10),
            voter(4, 100, 5_000),
        ];
        // 4 has the most log but was not heard from: not a target.
        assert_eq!(transfer_target(1, 100, &voters, &[]), Some(3));
        assert_eq!(transfer_target(1, 100, &voters, &[3]), Some(2));
        assert_eq!(transfer_target(1, 100, &voters, &[2, 3]), None);
        // Never itself, even alone.
        assert_eq!(transfer_target(1, 100, &voters[..1], &[]), None);
    }

    #[test]
    fn among_equals_the_lowest_id_is_chosen() {
        let voters = [voter(9, 100, 0), voter(7, 50, 0), voter(3, 50, 0), voter(5, 50, 0)];
        assert_eq!(transfer_target(9, 100, &voters, &[]), Some(3));
    }
}
