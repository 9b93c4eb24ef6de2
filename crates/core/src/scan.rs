//! Cross-shard scans: the key range a request names, the opaque continuation
//! token, and the merge of per-shard pages into one page in key order.
//!
//! A scan is consistent per shard, not across shards (see DESIGN.md).

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::keys::prefix_end;
use crate::limits::InputError;

/// Format version of an encoded continuation token.
pub const TOKEN_FORMAT: u8 = 1;

/// `[start, end)`; `end = None` means to the end of the keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    pub fn between(start: Vec<u8>, end: Option<Vec<u8>>) -> Result<Self, InputError> {
        if let Some(e) = &end
            && e.as_slice() <= start.as_slice()
        {
            return Err(InputError::InvertedRange);
        }
        Ok(KeyRange { start, end })
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// The part of the range strictly after `after` (a continuation point).
    pub fn resume_after(&self, after: &[u8]) -> Self {
        let mut next = after.to_vec();
        next.push(0); // the smallest key greater than `after`
        KeyRange {
            start: next.max(self.start.clone()),
            end: self.end.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Token {
    after: Vec<u8>,
}

pub fn encode_token(after: &[u8]) -> Vec<u8> {
    codec::encode(TOKEN_FORMAT, &Token { after: after.to_vec() })
}

pub fn decode_token(bytes: &[u8]) -> Result<Vec<u8>, codec::CodecError> {
    codec::decode::<Token>("continuation token", TOKEN_FORMAT, bytes).map(|t| t.after)
}

/// Items of a page: each key with what was stored under it.
pub type Items<T> = Vec<(Vec<u8>, T)>;

/// One shard's page: up to `limit` items in key order, and whether the shard
/// has more in range after the last one.
pub struct ShardPage<T> {
    pub items: Items<T>,
    pub more: bool,
}

/// Merges shard pages into the first `limit` items overall. Returns the items
/// and the key to resume after, if anything may remain.
///
/// Correct because every shard returned its first `limit` items: the
/// `limit`-th smallest of the union is at most any truncated shard's last
/// key, so nothing a shard held back can sort before the merged page's end.
///
/// A shard may also stop early (its byte budget), with `more` set: then
/// nothing past the smallest last key of such shards is returned, since
/// what they held back may sort before it. The merged page is then cut to
/// `max_bytes` by `size` (always keeping one item, so a scan progresses).
pub fn merge_pages<T>(
    pages: Vec<ShardPage<T>>,
    limit: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> (Items<T>, Option<Vec<u8>>) {
    let any_more = pages.iter().any(|p| p.more);
    let bound: Option<Vec<u8>> = pages
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.items.last().map(|(k, _)| k.clone()))
        .min();
    let mut all: Items<T> = pages.into_iter().flat_map(|p| p.items).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(bound) = &bound {
        all.retain(|(k, _)| k <= bound);
    }
    let mut truncated = all.len() > limit;
    all.truncate(limit);
    let mut bytes = 0usize;
    if let Some(cut) = all.iter().position(|(k, v)| {
        bytes = bytes.saturating_add(k.len() + size(v));
        bytes > max_bytes
    }) {
        truncated = true;
        all.truncate(cut.max(1));
    }
    let resume = if truncated || any_more {
        all.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    (all, resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = KeyRange::prefix(b"user:");
        assert!(p.contains(b"user:1"));
        assert!(!p.contains(b"user;"));
        assert!(!p.contains(b"use"));
        assert_eq!(
            KeyRange::between(b"b".to_vec(), Some(b"a".to_vec())),
            Err(InputError::InvertedRange)
        );
        assert_eq!(
            KeyRange::between(b"b".to_vec(), Some(b"b".to_vec())),
            Err(InputError::InvertedRange)
        );
        let r = KeyRange::between(b"b".to_vec(), None).unwrap();
        assert!(r.contains(b"zzzz"));
        let resumed = r.resume_after(b"c");
        assert!(!resumed.contains(b"c"));
        assert!(resumed.contains(b"c\0"));
        assert_eq!(r.resume_after(b"a").start, b"b".to_vec());
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(b"k1")).unwrap(), b"k1".to_vec());
        assert!(decode_token(b"garbage").is_err());
        assert!(decode_token(b"").is_err());
    }

    fn page(keys: &[&str], more: bool) -> ShardPage<()> {
        ShardPage {
            items: keys.iter().map(|k| (k.as_bytes().to_vec(), ())).collect(),
            more,
        }
    }

    #[test]
    fn merge_orders_and_resumes_correctly() {
        let (items, resume) = merge_pages(
            vec![page(&["a", "d"], true), page(&["b", "c"], false)],
            3,
            usize::MAX,
            |_| 0,
        );
        let keys: Vec<_> = items
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(resume, Some(b"c".to_vec()));

        let (items, resume) = merge_pages(vec![page(&["a"], false), page(&["b"], false)], 3, usize::MAX, |_| 0);
        assert_eq!(items.len(), 2);
        assert_eq!(resume, None);

        // A shard that is exactly full but says "more" still yields a token.
        let (items, resume) = merge_pages(vec![page(&["a", "b"], true), page(&[], false)], 2, usize::MAX, |_| 0);
        assert_eq!(items.len(), 2);
        assert_eq!(resume, Some(b"b".to_vec()));
    }

    #[test]
    fn a_shard_cut_short_by_bytes_bounds_the_merged_page() {
        // Shard 0 stopped after "b" (its byte budget) though more remains;
        // shard 1 is complete. Nothing past "b" may be returned: shard 0's
        // next key could be "ba", before shard 1's "c".
        let (items, resume) = merge_pages(
            vec![page(&["a", "b"], true), page(&["aa", "c", "d"], false)],
            10,
            usize::MAX,
            |_| 0,
        );
        let keys: Vec<_> = items.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"aa".to_vec(), b"b".to_vec()]);
        assert_eq!(resume, Some(b"b".to_vec()));
    }

    #[test]
    fn the_merged_page_is_cut_to_its_byte_budget_but_never_empty() {
        let pages = || vec![page(&["a1", "b1", "c1"], false), page(&["a2", "b2"], false)];
        // 2-byte keys, 10 bytes of value each: 12 bytes an item.
        let (items, resume) = merge_pages(pages(), 10, 30, |_| 10);
        assert_eq!(items.len(), 2);
        assert_eq!(resume, Some(b"a2".to_vec()));
        let (items, resume) = merge_pages(pages(), 10, 5, |_| 10);
        assert_eq!(items.len(), 1, "one item always, so the scan moves on");
        assert_eq!(resume, Some(b"a1".to_vec()));
        let (items, resume) = merge_pages(pages(), 10, 60, |_| 10);
        assert_eq!(items.len(), 5);
        assert_eq!(resume, None);
    }
}
