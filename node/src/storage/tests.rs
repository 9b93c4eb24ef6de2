use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::StorageError;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use raftkv_core::GroupId;
use raftkv_core::command::{Command, Request};

use super::*;
use crate::types::{Entry, LogId, TypeConfig};

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
/// counted, and many concurrent appends share fsyncs (group commit).
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
    let syncs = engine.wal_syncs();
    assert!((1..=400).contains(&syncs), "400 appends took {syncs} fsyncs");
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
    assert!(!engine.is_tombstoned(g).unwrap());
    engine.destroy_group(g).await.unwrap();
    assert!(engine.groups().unwrap().is_empty());
    assert!(engine.is_tombstoned(g).unwrap());
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
}
