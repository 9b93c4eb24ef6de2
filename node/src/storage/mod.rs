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

mod engine;
mod log;
mod sm;
mod snapshot;
mod syncer;

pub use engine::{Engine, EngineOptions};
pub use log::LogStore;
pub use sm::{ReadView, StateMachine};
pub use snapshot::SnapshotFile;

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
