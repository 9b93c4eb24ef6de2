//! Storage: one RocksDB for every group of the node.
//!
//! ```text
//!   LogStore(group) ──WriteBatch (no sync)──▶ RocksDB ◀── StateMachine(group)
//!        │                                      ▲
//!        └──IOFlushed──▶ Syncer ──flush_wal(true)┘  one fsync for many groups' appends
//! ```
//!
//! The shared WAL makes every write to any column family part of one ordered
//! log, so a single `flush_wal(sync)` makes everything written before it
//! durable: that is the group commit. Votes go through the same syncer.
//! State-machine writes are not synced: after a crash the applied index (in
//! the same batch as the data) tells openraft what to re-apply from the log.
//!
//! # What a power loss may take
//!
//! A power loss (unlike `kill -9`, which leaves the page cache to the kernel)
//! drops every write the WAL had not fsynced. RocksDB recovers the WAL up to
//! the first missing record (point-in-time recovery), so what survives is
//! always a *prefix* of the node's writes in WAL order. Each piece of Raft
//! state is safe to lose for its own reason:
//!
//! | state | synced? | why losing the unsynced tail is safe |
//! |---|---|---|
//! | log entries (`append`) | yes, before `IOFlushed` fires | openraft counts an entry towards a quorum only after the callback, so an entry lost here was never acknowledged by this node |
//! | vote (`save_vote`) | yes, before returning | a forgotten vote could be cast twice in one term |
//! | `truncate_after` | no | it precedes, in the WAL, the append that replaces the entries; losing both leaves the old entries, which this node never acknowledged as replaced |
//! | `purge` | no | losing it keeps more log than needed; a durable purge implies (WAL prefix) that the applies it follows are durable too |
//! | committed id (`save_committed`) | no | written after the entries it names, so a surviving committed id never points past the surviving log; losing it only means learning the commit index again from a leader |
//! | applies (state machine) | no | the applied id is in the same batch as the data, so the state machine is always a consistent prefix of the log and openraft re-applies the rest |
//!
//! The last two are safe only because a restarted node cannot serve as a
//! leader before it has learned what was committed. openraft's default
//! `enable_leader_restore` breaks that: a node that was leader resumes
//! leadership in the *same term* without an election and without
//! committing a blank entry, so after a power loss it serves linearizable
//! reads from a state machine that lost acknowledged writes (a bug found by
//! a history-checked test). It also breaks Raft's log matching: a leader
//! whose own append was lost while followers made it durable would, in the
//! same term, assign that (term, index) to a different entry. Persisting the
//! committed id or committing a blank entry in the old term cures only the
//! first; a new term cures both. So every group runs with
//! `enable_leader_restore = false` (`Host::open`): a restarted leader is a
//! follower until an election in a higher term, and the winner commits a blank
//! entry of its term before it serves a read. The cost is one election after
//! a leader *crashes*; planned restarts (SIGTERM, rolling upgrades) hand
//! leadership off first and do not pay it.

mod engine;
mod log;
mod sm;
mod snapshot;
mod syncer;

pub use engine::{Engine, EngineOptions};
pub use log::LogStore;
pub use sm::{ReadView, StateMachine};
pub use snapshot::{SnapshotFile, validate as validate_snapshot};

use std::io;

/// Format version of Raft state records (entries, votes, log ids, memberships).
pub const RAFT_FORMAT: u8 = 1;

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

pub fn encode_raft<T: serde::Serialize>(value: &T) -> Vec<u8> {
    raftkv_core::codec::encode(RAFT_FORMAT, value)
}

pub fn decode_raft<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> io::Result<T> {
    raftkv_core::codec::decode(what, RAFT_FORMAT, bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) use {decode_raft as decode, encode_raft as encode};

#[cfg(test)]
mod tests;
