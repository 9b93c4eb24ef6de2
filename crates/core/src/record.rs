//! The stored form of a value in a shard's state machine.

use serde::{Deserialize, Serialize};

use crate::codec;

/// Format version of an encoded [`ValueRecord`].
pub const RECORD_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueRecord {
    /// The shard revision (Raft log index) of the write that produced this
    /// value. Log indexes only grow, so a deleted and recreated key never
    /// reuses a version.
    pub version: u64,
    /// Wall-clock expiry in Unix milliseconds, fixed by the leader when the
    /// write was proposed; absent means the value never expires.
    pub expires_at_ms: Option<u64>,
    pub value: Vec<u8>,
}

impl ValueRecord {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(RECORD_FORMAT, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode("value record", RECORD_FORMAT, bytes)
    }

    /// Whether the value is still visible at `now_ms`. An expired value is
    /// treated as absent by every read and by compare-and-set.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_expiry() {
        let r = ValueRecord {
            version: 7,
            expires_at_ms: Some(1000),
            value: b"v".to_vec(),
        };
        assert_eq!(ValueRecord::decode(&r.encode()).unwrap(), r);
        assert!(r.is_live(999));
        assert!(!r.is_live(1000));
        let forever = ValueRecord {
            expires_at_ms: None,
            ..r
        };
        assert!(forever.is_live(u64::MAX));
    }
}
