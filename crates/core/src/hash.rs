//! The key → shard function.
//!
//! `shard = xxh3_64(key, seed 0) mod shard_count`. XXH3 is a published,
//! frozen algorithm, so this mapping never changes for an existing cluster;
//! the shard count is fixed when the cluster is bootstrapped. Changing either
//! would move keys between shards and is therefore never done in place.

use crate::ShardId;
use xxhash_rust::xxh3::xxh3_64;

/// The shard that owns `key` in a cluster of `shard_count` shards.
///
/// # Panics
/// If `shard_count` is zero: a cluster always has at least one shard, which
/// the cluster map's validation guarantees before this is ever called.
pub fn shard_for_key(key: &[u8], shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a cluster has at least one shard");
    (xxh3_64(key) % u64::from(shard_count)) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_frozen() {
        // These values pin the algorithm: if they change, existing clusters
        // would look for their keys in the wrong shards.
        assert_eq!(xxh3_64(b""), 0x2d06800538d394c2);
        assert_eq!(xxh3_64(b"user:1"), xxh3_64(b"user:1"));
        let pinned: Vec<ShardId> = [b"a".as_slice(), b"user:1", b"user:2", b"zzz"]
            .iter()
            .map(|k| shard_for_key(k, 16))
            .collect();
        let again: Vec<ShardId> = [b"a".as_slice(), b"user:1", b"user:2", b"zzz"]
            .iter()
            .map(|k| (xxh3_64(k) % 16) as ShardId)
            .collect();
        assert_eq!(pinned, again);
    }

    #[test]
    fn spreads_keys_over_all_shards() {
        let shards = 8;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..8000 {
            counts[shard_for_key(format!("key-{i}").as_bytes(), shards) as usize] += 1;
        }
        for (s, c) in counts.iter().enumerate() {
            assert!((800..1200).contains(c), "shard {s} got {c} of 8000 keys");
        }
    }

    #[test]
    fn stays_in_range() {
        for n in 1..50u32 {
            for k in 0..100 {
                assert!(shard_for_key(&[k as u8, 1, 2], n) < n);
            }
        }
    }

    #[test]
    #[should_panic(expected = "at least one shard")]
    fn zero_shards_is_a_bug() {
        shard_for_key(b"k", 0);
    }
}
