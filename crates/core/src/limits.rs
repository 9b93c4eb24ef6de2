//! Input limits. Every client request is checked against these before it is
//! proposed, so nothing oversized ever reaches a Raft log.

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes (etcd's default request limit is 1.5 MiB;
/// we keep a value under one gRPC message with room for the envelope).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest page a scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Most bytes (keys + values) a scan page carries; a page stops early at
/// this budget (always with at least one item) and says there is more.
pub const MAX_SCAN_BYTES: usize = 4 << 20;
/// Smallest per-shard byte budget of a scan across shards (each shard
/// gets `MAX_SCAN_BYTES / shards`, at least this).
pub const MIN_SHARD_SCAN_BYTES: usize = 64 << 10;

/// The byte budget of one shard's page in a scan over `shards` shards.
pub fn shard_scan_bytes(shards: u32) -> usize {
    (MAX_SCAN_BYTES / shards.max(1) as usize).max(MIN_SHARD_SCAN_BYTES)
}
/// Largest TTL, in seconds (10 years): a bigger one is almost certainly a unit mistake.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes; the limit is {MAX_KEY_BYTES} bytes")]
    KeyTooLarge { len: usize },
    #[error("value is {len} bytes; the limit is {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge { len: usize },
    #[error("ttl of {seconds} s is over the limit of {MAX_TTL_SECONDS} s")]
    TtlTooLarge { seconds: u64 },
    #[error("scan limit {limit} is over the maximum of {MAX_SCAN_LIMIT}")]
    ScanLimitTooLarge { limit: u32 },
    #[error("scan range is empty or inverted: start must be below end")]
    InvertedRange,
}

pub fn check_key(key: &[u8]) -> Result<(), InputError> {
    if key.is_empty() {
        return Err(InputError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(InputError::KeyTooLarge { len: key.len() });
    }
    Ok(())
}

pub fn check_value(value: &[u8]) -> Result<(), InputError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(InputError::ValueTooLarge { len: value.len() });
    }
    Ok(())
}

pub fn check_ttl(seconds: u64) -> Result<(), InputError> {
    if seconds > MAX_TTL_SECONDS {
        return Err(InputError::TtlTooLarge { seconds });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(check_key(b""), Err(InputError::EmptyKey));
        assert_eq!(check_key(b"a"), Ok(()));
        assert_eq!(check_key(&vec![0; MAX_KEY_BYTES]), Ok(()));
        assert_eq!(
            check_key(&vec![0; MAX_KEY_BYTES + 1]),
            Err(InputError::KeyTooLarge { len: MAX_KEY_BYTES + 1 })
        );
    }

    #[test]
    fn values_and_ttl() {
        assert_eq!(check_value(b""), Ok(()));
        assert_eq!(check_value(&vec![0; MAX_VALUE_BYTES]), Ok(()));
        assert!(check_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert_eq!(check_ttl(MAX_TTL_SECONDS), Ok(()));
        assert!(check_ttl(MAX_TTL_SECONDS + 1).is_err());
    }
}
