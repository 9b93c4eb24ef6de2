#![allow(dead_code)]
//! What every fuzz target checks, shared by the libFuzzer targets
//! (`fuzz_targets/`, run by `make fuzz`) and the corpus replay test that
//! `make test` runs on stable (`crates/core/tests/fuzz_corpus.rs`).
//!
//! Each check feeds arbitrary bytes to one decoder of bytes that come from
//! the network or a disk. The claim: it never panics, never allocates
//! without bound, and what it accepts survives a round trip and is handled
//! totally by the code that consumes it (validation, apply).

use std::collections::BTreeMap;

use raftkv_core::GroupId;
use raftkv_core::command::{Proposal, Request, apply_kv, apply_map};
use raftkv_core::map::{ClusterMap, NodeAddr};
use raftkv_core::record::ValueRecord;
use raftkv_core::{scan, snapshot};

/// One target's check of one input.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (the corpus directory of each).
pub const TARGETS: &[(&str, Check)] = &[
    ("command", command),
    ("map", map),
    ("record", record),
    ("token", token),
    ("snapshot", snapshot),
];

pub fn small_map() -> ClusterMap {
    let node = |id: u64| NodeAddr {
        host: format!("node-{id}"),
        client_port: 2379,
        peer_port: 2380,
        admin_port: 2381,
    };
    let nodes: BTreeMap<u64, NodeAddr> = (1..=3).map(|id| (id, node(id))).collect();
    ClusterMap::bootstrap("fuzz".into(), nodes, 4, 3).expect("a valid map")
}

/// A Raft log entry's payload: decoded, validated for both kinds of group,
/// and applied by both state machines, with and without current state.
pub fn command(data: &[u8]) {
    let Ok(req) = Request::decode(data) else { return };
    assert_eq!(Request::decode(&req.encode()).expect("re-decode"), req);
    for group in [GroupId::Meta, GroupId::Shard(0)] {
        let _ = Proposal::new(group, req.clone());
    }
    let current = ValueRecord {
        version: 3,
        expires_at_ms: Some(req.proposed_at_ms.wrapping_add(1)),
        value: b"v".to_vec(),
    };
    let _ = apply_kv(&req, u64::MAX, None);
    let _ = apply_kv(&req, 4, Some(&current));
    let map = small_map();
    let _ = apply_map(&req.command, None);
    if let (Some(next), _) = apply_map(&req.command, Some(&map)) {
        next.validate().expect("apply_map produced an invalid map");
    }
}

/// A cluster map from a disk or a `Join`: accepted only if valid.
pub fn map(data: &[u8]) {
    let Ok(m) = ClusterMap::decode(data) else { return };
    m.validate().expect("decode accepted an invalid map");
    assert_eq!(ClusterMap::decode(&m.encode()).expect("re-decode"), m);
    for shard in 0..m.shard_count {
        m.replicas(shard).expect("a valid map has every shard");
    }
}

/// A stored value record.
pub fn record(data: &[u8]) {
    let Ok(r) = ValueRecord::decode(data) else { return };
    assert_eq!(ValueRecord::decode(&r.encode()).expect("re-decode"), r);
    let _ = r.is_live(u64::MAX);
}

/// A scan continuation token from a client.
pub fn token(data: &[u8]) {
    let Ok(after) = scan::decode_token(data) else { return };
    assert_eq!(
        scan::decode_token(&scan::encode_token(&after)).expect("re-decode"),
        after
    );
}

/// A snapshot file from a peer, for a data shard and for the metadata
/// group; every entry read is one the limits allow.
pub fn snapshot(data: &[u8]) {
    for group in [GroupId::Shard(0), GroupId::Meta] {
        let Ok(mut reader) = snapshot::SnapshotReader::new(data, group) else {
            continue;
        };
        while let Ok(Some((key, value))) = reader.next_entry() {
            assert!(!key.is_empty() && key.len() <= raftkv_core::limits::MAX_KEY_BYTES || key == snapshot::MAP_KEY);
            assert!(value.len() <= data.len());
        }
        let _ = snapshot::validate(data, group);
    }
}
