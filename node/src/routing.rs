//! Finding a group's leader: the one loop every request that must run on a
//! leader goes through (client key requests, shard and metadata admin calls,
//! metadata proposals).
//!
//! - **Where.** Here when this node leads; else the leader this node knows
//!   (its own replica's view, then the last hint it was given), else some
//!   replica, which refuses with a hint (see [`Host::leader_of`]).
//! - **Forwarded once.** A request that arrived forwarded is never sent on:
//!   it is refused with the leader this node knows, and the node that
//!   forwarded it follows the hint.
//! - **Retried only when safe.** Another node is tried only after a refusal
//!   that guarantees nothing was applied (the retry-safe mark, or a
//!   connection that was never made), with backoff, until the deadline. Any
//!   other answer, success or not, is the answer.

use std::future::Future;
use std::time::{Duration, Instant};

use raftkv_core::{GroupId, NodeId};

use crate::error::{NodeError, hints};
use crate::host::Host;

/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_millis(300);

/// Where one try of a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// On this node's replica, which this node believes leads.
    Here,
    /// Forwarded to this node, believed to lead.
    Node(NodeId),
}

/// An error a try may end with, as the loop reads it.
pub trait Refusal: From<NodeError> {
    /// Whether the request certainly was not applied (so another node may be
    /// tried), and the leader the refusing node named, if any.
    fn retry_hint(&self) -> (bool, Option<NodeId>);
}

impl Refusal for tonic::Status {
    fn retry_hint(&self) -> (bool, Option<NodeId>) {
        (raftkv_proto::retry::retry_safe(self), hints(self).1)
    }
}

impl Refusal for NodeError {
    fn retry_hint(&self) -> (bool, Option<NodeId>) {
        let leader = match self {
            NodeError::NotLeader { leader, .. } => *leader,
            _ => None,
        };
        (self.retry_safe(), leader)
    }
}

/// Runs `attempt` on `g`'s leader (see the module doc for the rules).
/// `forwarded`: the request came from another node, so it runs here or not at all.
pub async fn on_leader<T, E, Fut>(
    host: &Host,
    g: GroupId,
    forwarded: bool,
    deadline: Duration,
    mut attempt: impl FnMut(Target) -> Fut,
) -> Result<T, E>
where
    E: Refusal,
    Fut: Future<Output = Result<T, E>>,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    let mut avoid = Vec::new();
    loop {
        let target = host.leader_of(g, &avoid)?;
        let result = match target {
            Some(l) if l == host.id => attempt(Target::Here).await,
            Some(l) if !forwarded => attempt(Target::Node(l)).await,
            leader => Err(NodeError::NotLeader { group: g, leader }.into()),
        };
        match result {
            Err(e) if !forwarded && Instant::now() < until && e.retry_hint().0 => {
                match target {
                    Some(t) => host.redirect(g, t, e.retry_hint().1, &mut avoid),
                    None => avoid.clear(),
                }
                tracing::debug!(group = %g, ?target, "refused without effect: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            other => return other,
        }
    }
}
