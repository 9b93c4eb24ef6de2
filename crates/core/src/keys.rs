//! The RocksDB key layout shared by every group of a node.
//!
//! All groups live in one RocksDB (one WAL, so fsyncs are shared). Keys start
//! with the group's `u32` big-endian, so one group's keys are contiguous and a
//! group can be scanned, snapshotted or dropped as a range:
//!
//! ```text
//! cf "log"   [group:4][index:8 BE]         → encoded Raft entry
//! cf "state" [group:4][tag:1]              → vote, committed, purged, applied, snapshot meta
//! cf "data"  [group:4][user key]           → encoded ValueRecord (data shards)
//!            [group:4] (empty user key)    → never written: user keys are non-empty
//! ```

use crate::GroupId;

pub const CF_LOG: &str = "log";
pub const CF_STATE: &str = "state";
pub const CF_DATA: &str = "data";

/// Tags of the per-group records in [`CF_STATE`].
pub mod tag {
    pub const VOTE: u8 = 1;
    pub const COMMITTED: u8 = 2;
    pub const PURGED: u8 = 3;
    pub const APPLIED: u8 = 4;
    pub const SNAPSHOT_META: u8 = 5;
    pub const CLUSTER_MAP: u8 = 6;
    /// A snapshot install that began but did not finish; replayed at start-up.
    pub const PENDING_INSTALL: u8 = 7;
    /// The replica's Raft id (8 bytes, big-endian), when it is not the node id.
    pub const REPLICA_ID: u8 = 8;
}

/// Node-level records (not of any group) in [`CF_STATE`], under a prefix no
/// group uses (group ids stay below `u32::MAX`).
pub mod node_tag {
    /// The cluster this node joined (its id and the bootstrap map).
    pub const JOINED: u8 = 1;
    /// The persistent "drain leaders" mark.
    pub const DRAIN: u8 = 2;
    /// `[prefix][TOMBSTONE][group:4]`: the highest replica id of the group
    /// destroyed on this node (8 bytes, big-endian; the 1-byte value older
    /// releases wrote means the node id). Only a higher one is created here.
    pub const TOMBSTONE: u8 = 3;
    /// The join finished: every replica the joined map placed here was opened
    /// and the ones this node seeds were initialised. A node that has
    /// `JOINED` without it finishes the join at start-up.
    pub const JOIN_DONE: u8 = 4;
}

const NODE_PREFIX: [u8; 4] = [0xff; 4];

pub fn node_key(tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&NODE_PREFIX);
    k[4] = tag;
    k
}

pub fn tombstone_key(group: GroupId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..5].copy_from_slice(&node_key(node_tag::TOMBSTONE));
    k[5..].copy_from_slice(&group_prefix(group));
    k
}

pub fn group_prefix(group: GroupId) -> [u8; 4] {
    group.to_raw().to_be_bytes()
}

/// The first key after every key that starts with `prefix`, or `None` when no
/// such key exists (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group_prefix(group));
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index in a [`log_key`].
pub fn log_key_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn state_key(group: GroupId, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group_prefix(group));
    k[4] = tag;
    k
}

pub fn data_key(group: GroupId, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user_key.len());
    k.extend_from_slice(&group_prefix(group));
    k.extend_from_slice(user_key);
    k
}

/// The user key inside a [`data_key`].
pub fn data_user_key(key: &[u8]) -> &[u8] {
    key.get(4..).unwrap_or_default()
}

/// `[start, end)` covering every key of `group` in one column family.
pub fn group_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = group_prefix(group).to_vec();
    let end = prefix_end(&start).expect("group ids stay below u32::MAX, so every prefix has an end");
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let a = log_key(GroupId::Shard(1), 255);
        let b = log_key(GroupId::Shard(1), 256);
        let c = log_key(GroupId::Shard(2), 0);
        assert!(a < b && b < c);
        assert_eq!(log_key_index(&b), Some(256));
        assert_eq!(log_key_index(&[1, 2]), None);
    }

    #[test]
    fn node_keys_sort_after_every_group() {
        let (_, meta_end) = group_range(GroupId::Meta);
        assert!(node_key(node_tag::JOINED).as_slice() >= meta_end.as_slice());
        assert!(tombstone_key(GroupId::Shard(3)).starts_with(&node_key(node_tag::TOMBSTONE)));
    }

    #[test]
    fn prefix_end_handles_carries() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn group_ranges_are_disjoint_and_cover_their_keys() {
        for g in [GroupId::Shard(0), GroupId::Shard(7), GroupId::Meta] {
            let (start, end) = group_range(g);
            let k = data_key(g, b"\xff\xff\xffkey");
            assert!(start.as_slice() <= k.as_slice() && k.as_slice() < end.as_slice(), "{g}");
            assert_eq!(data_user_key(&k), b"\xff\xff\xffkey");
            assert!(log_key(g, u64::MAX).as_slice() < end.as_slice());
        }
        let (_, end0) = group_range(GroupId::Shard(0));
        let (start1, _) = group_range(GroupId::Shard(1));
        assert_eq!(end0, start1);
    }
}
