//! The one encoding of every persisted or replicated record: a format version
//! byte followed by a postcard body. A reader refuses versions it does not know
//! instead of misreading them; a new format gets a new version and a migration.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty record: expected a format version byte")]
    Empty,
    #[error("{what}: unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("{what}: corrupt record: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// Encodes `value` as `[version][postcard body]`.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // postcard only fails on writer errors or unsupported serde features;
    // a Vec writer and our plain derive types have neither.
    let body = postcard::to_allocvec(value).expect("postcard encoding of plain derive types cannot fail");
    out.extend_from_slice(&body);
    out
}

/// Decodes a record written by [`encode`] with the same `version`.
pub fn decode<T: DeserializeOwned>(what: &'static str, version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    let (&found, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != version {
        return Err(CodecError::UnsupportedVersion {
            what,
            found,
            supported: version,
        });
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u64,
        b: Vec<u8>,
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let s = Sample {
            a: 42,
            b: vec![1, 2, 3],
        };
        let bytes = encode(3, &s);
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<Sample>("sample", 3, &bytes).unwrap(), s);
        assert_eq!(
            decode::<Sample>("sample", 4, &bytes),
            Err(CodecError::UnsupportedVersion {
                what: "sample",
                found: 3,
                supported: 4
            })
        );
        assert_eq!(decode::<Sample>("sample", 3, &[]), Err(CodecError::Empty));
        assert!(matches!(
            decode::<Sample>("sample", 3, &[3, 0xff]),
            Err(CodecError::Corrupt { .. })
        ));
    }
}
