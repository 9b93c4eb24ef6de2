use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::StorageError;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use raftkv_core::GroupId;
use raftkv_core::command::{Command, Request};
use raftkv_core::keys::{self, CF_DATA, CF_STATE, tag};

use super::*;
use crate::raft::types::{Entry, LogId, TypeConfig};

fn open_engine(dir: &std::path::Path, audit: bool) -> Arc<Engine> {
    Engine::open(
        EngineOptions {
            dir: dir.to_path_buf(),
            audit_durability: audit,
        },
        Box::new(|_, _| {}),
    )
    .unwrap()
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = open_engine(dir.path(), true);
        // A non-zero shard id, so keys of other groups would show up if ranges leaked.
        let group = GroupId::Shard(3);
        let sm = engine.state_machine(group).expect("open state machine");
        Ok((dir, engine.log_store(group), sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { Suite::test_all(Builder).await.unwrap() });
}

fn entry(index: u64) -> Entry {
    let req = Request {
        proposed_at_ms: 0,
        command: Command::Put {
            key: format!("k{index}").into_bytes(),
            value: vec![1; 64],
            ttl_ms: None,
        },
    };
    Entry {
        log_id: LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(req),
    }
}

/// Every append is acknowledged only after a WAL fsync that RocksDB itself
/// counted, and appends in flight together share fsyncs (group commit: at
/// least four appends per fsync on average).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_acknowledged_only_after_a_counted_wal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), true);
    let mut waits = Vec::new();
    let acked_before_sync = Arc::new(AtomicU64::new(0));
    for g in 0..8u32 {
        let mut log = engine.log_store(GroupId::Shard(g));
        for i in 1..=50u64 {
            let (tx, rx) = TypeConfig::oneshot();
            let syncs_at_write = engine.wal_syncs();
            log.append([entry(i)], IOFlushed::signal(tx)).await.unwrap();
            let engine = engine.clone();
            let early = acked_before_sync.clone();
            waits.push(tokio::spawn(async move {
                rx.await.unwrap().unwrap();
                if engine.wal_syncs() <= syncs_at_write {
                    early.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
    }
    for w in waits {
        w.await.unwrap();
    }
    assert_eq!(
        acked_before_sync.load(Ordering::SeqCst),
        0,
        "an append was acknowledged before any fsync"
    );
    assert_eq!(engine.audit_violations(), 0);
    // Shared: one fsync per append would be 400.
    let syncs = engine.wal_syncs();
    assert!((1..=100).contains(&syncs), "400 appends took {syncs} fsyncs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_groups_leave_a_tombstone_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), false);
    let g = GroupId::Shard(1);
    let mut log = engine.log_store(g);
    let (tx, rx) = TypeConfig::oneshot();
    log.append([entry(1), entry(2)], IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
    log.save_vote(&openraft::impls::Vote::new(1, 1)).await.unwrap();
    assert_eq!(engine.groups().unwrap(), vec![g]);
    assert_eq!(engine.tombstone(g, 7).unwrap(), None);
    engine.destroy_group(g, 7, 7).await.unwrap();
    assert!(engine.groups().unwrap().is_empty());
    assert_eq!(engine.tombstone(g, 7).unwrap(), Some(7));
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_keeps_the_highest_destroyed_incarnation_and_reads_the_old_format() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), false);
    let g = GroupId::Shard(2);
    let new = raftkv_core::map::FIRST_REPLICA_ID + 4;
    engine.set_replica_id(g, new).await.unwrap();
    assert_eq!(engine.replica_id(g).unwrap(), Some(new));
    engine.destroy_group(g, new, 7).await.unwrap();
    assert_eq!(engine.replica_id(g).unwrap(), None, "the record goes with the replica");
    // Destroying an older incarnation later never lowers the mark.
    engine.destroy_group(g, new - 2, 7).await.unwrap();
    assert_eq!(engine.tombstone(g, 7).unwrap(), Some(new));
    // The release before replica ids wrote a 1-byte tombstone: it destroyed the node-id replica.
    let mut b = rocksdb::WriteBatch::default();
    b.put_cf(engine.cf(CF_STATE), keys::tombstone_key(GroupId::Shard(3)), b"1");
    engine.write(b).unwrap();
    assert_eq!(engine.tombstone(GroupId::Shard(3), 7).unwrap(), Some(7));
}

/// Writes `n` records `{prefix}{i}` straight into `group`'s data, with an
/// applied id of `index`.
fn fill(engine: &Engine, group: GroupId, prefix: &str, n: usize, index: u64) {
    let mut b = rocksdb::WriteBatch::default();
    for i in 0..n {
        let rec = raftkv_core::record::ValueRecord {
            version: index,
            expires_at_ms: None,
            value: vec![7; 100],
        };
        b.put_cf(
            engine.cf(CF_DATA),
            keys::data_key(group, format!("{prefix}{i:05}").as_bytes()),
            rec.encode(),
        );
    }
    let applied: (Option<LogId>, crate::raft::types::StoredMembership) = (
        Some(LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1), index)),
        Default::default(),
    );
    b.put_cf(
        engine.cf(CF_STATE),
        keys::state_key(group, tag::APPLIED),
        encode(&applied),
    );
    engine.write(b).unwrap();
}

fn count(engine: &Arc<Engine>, group: GroupId) -> usize {
    let all = raftkv_core::scan::KeyRange {
        start: vec![],
        end: None,
    };
    engine
        .read_view(group)
        .scan(&all, usize::MAX, usize::MAX, 0)
        .unwrap()
        .0
        .len()
}

/// Installing a snapshot replaces a group's data in one step: a reader sees
/// the old records or the new ones, never an empty or half-filled group, and
/// other groups are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_is_atomic_for_readers_and_stays_in_its_group() {
    let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open_engine(src_dir.path(), false), open_engine(dst_dir.path(), false));
    let (g, other) = (GroupId::Shard(2), GroupId::Shard(3));
    fill(&src, g, "new/", 2_000, 10);
    let new = snapshot::build(&src, g).unwrap();
    fill(&dst, g, "old/", 1_000, 5);
    fill(&dst, other, "x/", 10, 1);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (dst, stop) = (dst.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                seen.insert(count(&dst, g));
            }
            seen
        })
    };
    let old = snapshot::build(&dst, g).unwrap();
    // Kept apart: an install removes the group's other snapshot files.
    let apart = tempfile::tempdir().unwrap();
    let [new_file, old_file] = [("new", &new), ("old", &old)].map(|(name, s)| {
        let path = apart.path().join(name);
        std::fs::copy(&s.snapshot.path, &path).unwrap();
        SnapshotFile {
            path,
            len: s.snapshot.len,
        }
    });
    for _ in 0..10 {
        snapshot::install(&dst, g, &new.meta, &new_file).await.unwrap();
        snapshot::install(&dst, g, &old.meta, &old_file).await.unwrap();
    }
    snapshot::install(&dst, g, &new.meta, &new_file).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    assert_eq!(seen, [1_000, 2_000].into(), "a reader saw these record counts");
    assert_eq!(count(&dst, g), 2_000);
    assert_eq!(count(&dst, other), 10, "another group's records changed");
    assert_eq!(sm::read_applied(&dst, g).unwrap().0, new.meta.last_log_id);
}

/// A snapshot whose bytes were changed on the way is refused before it
/// changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_file_is_refused_and_the_group_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), false);
    let g = GroupId::Shard(1);
    fill(&engine, g, "k/", 50, 3);
    let s = snapshot::build(&engine, g).unwrap();
    assert_eq!(validate_snapshot(&s.snapshot.path, g).unwrap(), 50);
    let mut bytes = std::fs::read(&s.snapshot.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    assert!(validate_snapshot(&bad, g).is_err());
    let file = SnapshotFile {
        path: bad,
        len: bytes.len() as u64,
    };
    assert!(snapshot::install(&engine, g, &s.meta, &file).await.is_err());
    assert_eq!(count(&engine, g), 50);
}
