//! The snapshot file format: a group's data as it travels between nodes.
//!
//! A snapshot file arrives from the network, so a node never hands its bytes
//! to RocksDB: it reads them with [`SnapshotReader`], which checks every
//! length against the limits, keys in strictly ascending order, every value
//! against its own format and the whole file against a checksum, and yields
//! user keys (the receiving node adds its own group prefix, so a snapshot can
//! never write outside the group it was sent for).
//!
//! ```text
//!   header   "RKVSNAP" 0x01 | group u32
//!   entry    0x01 | key_len u32 | key | value_len u32 | value     (ascending keys)
//!   trailer  0x00 | entries u64 | xxh3-64 of every byte before the trailer
//! ```
//! Integers are big-endian.

use std::io::{self, Read, Write};

use xxhash_rust::xxh3::Xxh3;

use crate::GroupId;
use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::map::ClusterMap;
use crate::record::ValueRecord;

const MAGIC: &[u8; 8] = b"RKVSNAP\x01";
const ENTRY: u8 = 1;
const END: u8 = 0;

/// The one key of the metadata group's data: the cluster map.
pub const MAP_KEY: &[u8] = b"cluster-map";

/// A stored value record is the value plus a few dozen bytes of version and expiry.
const MAX_RECORD_BYTES: usize = MAX_VALUE_BYTES + 64;
/// An encoded cluster map at its limits (65,536 shards, 4,096 nodes) stays well below this.
const MAX_MAP_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] io::Error),
    #[error("not a raftkv snapshot (or a format this node does not know)")]
    BadMagic,
    #[error("the snapshot is of group {found}, not of group {expected}")]
    WrongGroup { expected: GroupId, found: GroupId },
    #[error("the snapshot ends before its trailer")]
    Truncated,
    #[error("entry {index}: {what}")]
    BadEntry { index: u64, what: String },
    #[error("the trailer counts {claimed} entries; the file has {found}")]
    WrongCount { claimed: u64, found: u64 },
    #[error("checksum mismatch: the snapshot is corrupt")]
    Checksum,
    #[error("bytes after the trailer")]
    TrailingBytes,
}

/// Writes a snapshot file: [`SnapshotWriter::put`] in ascending key order,
/// then [`SnapshotWriter::finish`].
pub struct SnapshotWriter<W: Write> {
    out: W,
    hash: Xxh3,
    entries: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(mut out: W, group: GroupId) -> io::Result<Self> {
        let mut hash = Xxh3::new();
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&group.to_raw().to_be_bytes());
        out.write_all(&header)?;
        hash.update(&header);
        Ok(SnapshotWriter { out, hash, entries: 0 })
    }

    /// Adds one user key and its stored value; keys must come in ascending order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let too_long = |n: usize| io::Error::other(format!("{n} bytes do not fit a snapshot entry"));
        let klen = u32::try_from(key.len()).map_err(|_| too_long(key.len()))?;
        let vlen = u32::try_from(value.len()).map_err(|_| too_long(value.len()))?;
        for part in [&[ENTRY][..], &klen.to_be_bytes(), key, &vlen.to_be_bytes(), value] {
            self.out.write_all(part)?;
            self.hash.update(part);
        }
        self.entries += 1;
        Ok(())
    }

    /// Writes the trailer and returns the output and the number of entries.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let digest = self.hash.digest();
        self.out.write_all(&[END])?;
        self.out.write_all(&self.entries.to_be_bytes())?;
        self.out.write_all(&digest.to_be_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.entries))
    }
}

/// One entry of a snapshot: a user key and its stored value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Reads and validates a snapshot file entry by entry, in bounded memory.
pub struct SnapshotReader<R: Read> {
    input: R,
    group: GroupId,
    hash: Xxh3,
    entries: u64,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Checks the header: the format and that the snapshot is of `group`.
    pub fn new(mut input: R, group: GroupId) -> Result<Self, SnapshotError> {
        let mut header = [0u8; 12];
        read_exact(&mut input, &mut header)?;
        if &header[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let found = GroupId::from_raw(u32::from_be_bytes(header[8..].try_into().expect("4 bytes")));
        if found != group {
            return Err(SnapshotError::WrongGroup { expected: group, found });
        }
        let mut hash = Xxh3::new();
        hash.update(&header);
        Ok(SnapshotReader {
            input,
            group,
            hash,
            entries: 0,
            last_key: None,
            done: false,
        })
    }

    /// The next (user key, stored value), or `None` after a valid trailer.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.input, &mut tag)?;
        match tag[0] {
            ENTRY => {}
            END => {
                self.read_trailer()?;
                self.done = true;
                return Ok(None);
            }
            other => return Err(self.bad(format!("unknown entry tag {other}"))),
        }
        self.hash.update(&tag);
        let key = self.read_part("key", MAX_KEY_BYTES.max(MAP_KEY.len()))?;
        let value = self.read_part("value", self.max_value())?;
        self.check_entry(&key, &value)?;
        self.entries += 1;
        self.last_key = Some(key.clone());
        Ok(Some((key, value)))
    }

    fn max_value(&self) -> usize {
        match self.group {
            GroupId::Meta => MAX_MAP_BYTES,
            GroupId::Shard(_) => MAX_RECORD_BYTES,
        }
    }

    fn read_part(&mut self, what: &str, max: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut len = [0u8; 4];
        read_exact(&mut self.input, &mut len)?;
        self.hash.update(&len);
        let n = u32::from_be_bytes(len) as usize;
        if n > max {
            return Err(self.bad(format!("{what} of {n} bytes; the limit is {max}")));
        }
        // Grown as bytes arrive, so a length claimed by a truncated file
        // allocates no more than the file holds.
        let mut buf = Vec::new();
        (&mut self.input).take(n as u64).read_to_end(&mut buf)?;
        if buf.len() < n {
            return Err(SnapshotError::Truncated);
        }
        self.hash.update(&buf);
        Ok(buf)
    }

    fn check_entry(&self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        if self.last_key.as_deref().is_some_and(|last| key <= last) {
            return Err(self.bad("keys are not in strictly ascending order".into()));
        }
        match self.group {
            GroupId::Meta => {
                if key != MAP_KEY {
                    return Err(self.bad("the metadata group holds the cluster map only".into()));
                }
                ClusterMap::decode(value).map_err(|e| self.bad(e.to_string()))?;
            }
            GroupId::Shard(_) => {
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return Err(self.bad(format!("a key of {} bytes", key.len())));
                }
                let record = ValueRecord::decode(value).map_err(|e| self.bad(e.to_string()))?;
                if record.value.len() > MAX_VALUE_BYTES {
                    return Err(self.bad(format!("a value of {} bytes", record.value.len())));
                }
            }
        }
        Ok(())
    }

    fn read_trailer(&mut self) -> Result<(), SnapshotError> {
        let mut trailer = [0u8; 16];
        read_exact(&mut self.input, &mut trailer)?;
        let claimed = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
        let digest = u64::from_be_bytes(trailer[8..].try_into().expect("8 bytes"));
        if claimed != self.entries {
            return Err(SnapshotError::WrongCount {
                claimed,
                found: self.entries,
            });
        }
        if digest != self.hash.digest() {
            return Err(SnapshotError::Checksum);
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra)? {
            0 => Ok(()),
            _ => Err(SnapshotError::TrailingBytes),
        }
    }

    fn bad(&self, what: String) -> SnapshotError {
        SnapshotError::BadEntry {
            index: self.entries,
            what,
        }
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(e),
    })
}

/// Reads a whole snapshot, checking it: the number of entries.
pub fn validate(input: impl Read, group: GroupId) -> Result<u64, SnapshotError> {
    let mut r = SnapshotReader::new(input, group)?;
    while r.next_entry()?.is_some() {}
    Ok(r.entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: &[u8]) -> Vec<u8> {
        ValueRecord {
            version: 7,
            expires_at_ms: None,
            value: v.to_vec(),
        }
        .encode()
    }

    type Entries<'a> = Vec<(&'a [u8], Vec<u8>)>;

    fn file(group: GroupId, entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), group).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
        w.finish().unwrap().0
    }

    fn read_all(bytes: &[u8], group: GroupId) -> Result<Vec<Entry>, SnapshotError> {
        let mut r = SnapshotReader::new(bytes, group)?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn a_written_snapshot_reads_back_entry_for_entry() {
        let g = GroupId::Shard(3);
        let entries = [
            (&b"a"[..], record(b"1")),
            (b"b", record(b"")),
            (b"zz", record(&[9; 1000])),
        ];
        let got = read_all(&file(g, &entries), g).unwrap();
        let want: Vec<_> = entries.iter().map(|(k, v)| (k.to_vec(), v.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(validate(&file(g, &[])[..], g).unwrap(), 0);
    }

    #[test]
    fn a_snapshot_of_another_group_or_format_is_refused() {
        let bytes = file(GroupId::Shard(3), &[(b"a", record(b"1"))]);
        assert!(matches!(
            validate(&bytes[..], GroupId::Shard(4)),
            Err(SnapshotError::WrongGroup { .. })
        ));
        assert!(matches!(
            validate(&bytes[..], GroupId::Meta),
            Err(SnapshotError::WrongGroup { .. })
        ));
        let mut sst = bytes.clone();
        sst[0] = 0;
        assert!(matches!(
            validate(&sst[..], GroupId::Shard(3)),
            Err(SnapshotError::BadMagic)
        ));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let g = GroupId::Shard(1);
        let bytes = file(g, &[(b"k1", record(b"v1")), (b"k2", record(b"v2"))]);
        for cut in 0..bytes.len() {
            assert!(validate(&bytes[..cut], g).is_err(), "a file cut at {cut} was accepted");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(validate(&bad[..], g).is_err(), "a flipped byte at {i} was accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(validate(&longer[..], g), Err(SnapshotError::TrailingBytes)));
    }

    #[test]
    fn entries_out_of_order_oversized_or_malformed_are_refused() {
        let g = GroupId::Shard(0);
        let cases: [(&str, Entries); 5] = [
            ("descending keys", vec![(b"b", record(b"1")), (b"a", record(b"2"))]),
            ("a repeated key", vec![(b"a", record(b"1")), (b"a", record(b"2"))]),
            ("an empty key", vec![(b"", record(b"1"))]),
            ("a value that is not a record", vec![(b"a", b"garbage".to_vec())]),
            (
                "a value over the limit",
                vec![(b"a", record(&vec![0; MAX_VALUE_BYTES + 1]))],
            ),
        ];
        for (what, entries) in cases {
            let err = validate(&file(g, &entries)[..], g).expect_err(what);
            assert!(matches!(err, SnapshotError::BadEntry { .. }), "{what}: {err}");
        }
        let mut huge_len = file(g, &[]);
        huge_len.truncate(12);
        huge_len.extend_from_slice(&[ENTRY, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            validate(&huge_len[..], g),
            Err(SnapshotError::BadEntry { .. })
        ));
    }

    #[test]
    fn the_metadata_snapshot_holds_one_valid_map_only() {
        let g = GroupId::Meta;
        let other = file(g, &[(b"other", record(b"x"))]);
        assert!(matches!(validate(&other[..], g), Err(SnapshotError::BadEntry { .. })));
        let not_a_map = file(g, &[(MAP_KEY, b"nope".to_vec())]);
        assert!(matches!(
            validate(&not_a_map[..], g),
            Err(SnapshotError::BadEntry { .. })
        ));
        let addr = crate::map::NodeAddr {
            host: "n1".into(),
            client_port: 1,
            peer_port: 2,
            admin_port: 3,
        };
        let map = ClusterMap::bootstrap("c".into(), [(1, addr)].into(), 4, 1).unwrap();
        assert_eq!(validate(&file(g, &[(MAP_KEY, map.encode())])[..], g).unwrap(), 1);
    }
}
