//! Group snapshots as files in the validated [`raftkv_core::snapshot`] format.
//!
//! Every step that touches a whole group runs on the blocking pool, never on
//! an async worker (a stalled worker delays every group's heartbeats):
//!
//! - **Build**, from one RocksDB point-in-time view: the applied state (written
//!   in the same batch as the data it describes) and the group's data, so
//!   applies go on meanwhile and the file is still one consistent state.
//! - **Receive**: the node streams the file to disk, bounded by its free space,
//!   and [`validate`]s it entry by entry before openraft sees it.
//! - **Install**: record a "pending install" marker durably, then rewrite the
//!   file (checking it again) into a local SST holding a range deletion of the
//!   whole group plus the snapshot's keys, and ingest it. An SST's range
//!   deletion does not cover the keys in the same file, so readers see the old
//!   data and then the new, never an empty or half-filled group. Then the
//!   applied state is written and the marker cleared; a crash in between is
//!   finished at start-up (`Engine::open`).
//!
//! Build and install of one group hold the group's snapshot lock, so neither
//! removes a file the other is writing, and an older build never replaces the
//! record of a newer installed snapshot.

use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use raftkv_core::GroupId;
use raftkv_core::keys::{self, CF_DATA, CF_STATE, tag};
use raftkv_core::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use rocksdb::{IngestExternalFileOptions, Options, ReadOptions, SstFileWriter, WriteBatch};
use serde::{Deserialize, Serialize};

use super::engine::path_str;
use super::{Engine, decode, encode, io_err};
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StoredMembership};

/// A snapshot's data: a file on this node's disk, streamed in chunks when sent.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub len: u64,
}

/// What the state CF records about a snapshot (current or being installed).
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    path: String,
    len: u64,
}

/// File name prefixes of snapshots still arriving, or arrived and not yet installed.
const IN_TRANSIT: [&str; 2] = ["incoming-", "received-"];
const IN_TRANSIT_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Engine {
    /// A fresh path for a snapshot file of `group`.
    pub(crate) fn new_snapshot_path(&self, group: GroupId, what: &str) -> io::Result<PathBuf> {
        let dir = self.group_snapshot_dir(group);
        std::fs::create_dir_all(&dir)?;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(dir.join(format!("{what}-{nanos}-{seq}.snap")))
    }

    /// Removes every snapshot file of a destroyed group. Blocking.
    pub(crate) fn remove_snapshot_dir(&self, group: GroupId) -> io::Result<()> {
        let lock = self.snapshot_lock(group);
        let _held = lock.lock().expect("snapshot lock");
        match std::fs::remove_dir_all(self.group_snapshot_dir(group)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn snapshot_lock(&self, group: GroupId) -> Arc<Mutex<()>> {
        self.snapshot_locks
            .lock()
            .expect("snapshot locks")
            .entry(group)
            .or_default()
            .clone()
    }
}

fn invalid(e: SnapshotError) -> io::Error {
    match e {
        SnapshotError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Builds a snapshot of `group` as it is now. Blocking.
pub(crate) fn build(engine: &Engine, group: GroupId) -> io::Result<Snapshot> {
    let lock = engine.snapshot_lock(group);
    let _held = lock.lock().expect("snapshot lock");
    let view = engine.db.snapshot();
    let (last_log_id, last_membership): (Option<LogId>, StoredMembership) = match view
        .get_cf(engine.cf(CF_STATE), keys::state_key(group, tag::APPLIED))
        .map_err(io_err)?
    {
        Some(b) => decode("applied state", &b)?,
        None => (None, StoredMembership::default()),
    };
    if let Some(existing) = current(engine, group)?
        && existing.meta.last_log_id >= last_log_id
    {
        // An installed snapshot is as new as anything built now would be.
        return Ok(existing);
    }
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let path = engine.new_snapshot_path(group, "built")?;
    let mut w = SnapshotWriter::new(BufWriter::new(std::fs::File::create(&path)?), group)?;
    let (start, end) = keys::group_range(group);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end);
    let mut it = view.raw_iterator_cf_opt(engine.cf(CF_DATA), ro);
    it.seek(start);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        w.put(keys::data_user_key(k), v)?;
        it.next();
    }
    it.status().map_err(io_err)?;
    let (out, entries) = w.finish()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let len = std::fs::metadata(&path)?.len();
    let record = SnapshotRecord {
        meta: meta.clone(),
        path: path_str(&path),
        len,
    };
    let mut b = WriteBatch::default();
    b.put_cf(
        engine.cf(CF_STATE),
        keys::state_key(group, tag::SNAPSHOT_META),
        encode(&record),
    );
    engine.write(b)?;
    engine.db.flush_wal(true).map_err(io_err)?;
    remove_other_snapshots(engine, group, &path);
    tracing::info!(%group, last_log_id = ?meta.last_log_id, entries, bytes = len, "built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: SnapshotFile { path, len },
    })
}

/// The group's current snapshot, if its file is still there and in this
/// node's format (a file of an older format is rebuilt, not sent).
pub(crate) fn current(engine: &Engine, group: GroupId) -> io::Result<Option<Snapshot>> {
    let Some(b) = engine.get_state(&keys::state_key(group, tag::SNAPSHOT_META))? else {
        return Ok(None);
    };
    let r: SnapshotRecord = decode("snapshot record", &b)?;
    let path = PathBuf::from(r.path);
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    if SnapshotReader::new(file, group).is_err() {
        return Ok(None);
    }
    Ok(Some(Snapshot {
        meta: r.meta,
        snapshot: SnapshotFile { path, len: r.len },
    }))
}

/// Checks a received snapshot file of `group` entry by entry; the number of
/// entries. Blocking.
pub fn validate(path: &Path, group: GroupId) -> Result<u64, SnapshotError> {
    raftkv_core::snapshot::validate(BufReader::new(std::fs::File::open(path)?), group)
}

pub(crate) async fn install(
    engine: &Arc<Engine>,
    group: GroupId,
    meta: &SnapshotMeta,
    data: &SnapshotFile,
) -> io::Result<()> {
    let record = encode(&SnapshotRecord {
        meta: meta.clone(),
        path: path_str(&data.path),
        len: data.len,
    });
    let mut b = WriteBatch::default();
    b.put_cf(
        engine.cf(CF_STATE),
        keys::state_key(group, tag::PENDING_INSTALL),
        &record,
    );
    engine.write_durable(b).await?;
    let e = engine.clone();
    tokio::task::spawn_blocking(move || finish_install(&e, group, &record))
        .await
        .map_err(io_err)??;
    tracing::info!(%group, last_log_id = ?meta.last_log_id, bytes = data.len, "installed snapshot");
    Ok(())
}

/// Replaces the group's data with the snapshot's, in one step readers see
/// whole, and records it as applied. Idempotent, so it can be replayed after
/// a crash. Blocking.
pub(crate) fn finish_install(engine: &Engine, group: GroupId, record: &[u8]) -> io::Result<()> {
    let r: SnapshotRecord = decode("pending snapshot install", record)?;
    let lock = engine.snapshot_lock(group);
    let _held = lock.lock().expect("snapshot lock");
    let sst = engine.new_snapshot_path(group, "ingest")?.with_extension("sst");
    let mut reader = SnapshotReader::new(BufReader::new(std::fs::File::open(&r.path)?), group).map_err(invalid)?;
    let sst_opts = Options::default();
    let mut w = SstFileWriter::create(&sst_opts);
    w.open(&sst).map_err(io_err)?;
    let (start, end) = keys::group_range(group);
    w.delete_range(&start, &end).map_err(io_err)?;
    while let Some((key, value)) = reader.next_entry().map_err(invalid)? {
        w.put(keys::data_key(group, &key), value).map_err(io_err)?;
    }
    w.finish().map_err(io_err)?;
    let mut opts = IngestExternalFileOptions::default();
    opts.set_move_files(true);
    engine
        .db
        .ingest_external_file_cf_opts(engine.cf(CF_DATA), &opts, vec![&sst])
        .map_err(io_err)?;
    let mut b = WriteBatch::default();
    let state = engine.cf(CF_STATE);
    b.put_cf(
        state,
        keys::state_key(group, tag::APPLIED),
        encode(&(r.meta.last_log_id, r.meta.last_membership.clone())),
    );
    b.put_cf(state, keys::state_key(group, tag::SNAPSHOT_META), record);
    b.delete_cf(state, keys::state_key(group, tag::PENDING_INSTALL));
    engine.write(b)?;
    engine.db.flush_wal(true).map_err(io_err)?;
    remove_other_snapshots(engine, group, Path::new(&r.path));
    Ok(())
}

/// Keeps only the current snapshot file of the group and the ones in
/// transit (best effort: a file left behind is only wasted space, and is
/// removed by the next snapshot). A file in transit is waiting for openraft to
/// install it, which takes seconds; one older than [`IN_TRANSIT_FOR`] was
/// abandoned (a failed install, or a stream cut by a crash).
fn remove_other_snapshots(engine: &Engine, group: GroupId, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(engine.group_snapshot_dir(group)) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let in_transit = p
            .file_name()
            .is_some_and(|n| IN_TRANSIT.iter().any(|t| n.to_string_lossy().starts_with(t)))
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < IN_TRANSIT_FOR));
        if p != keep && !in_transit {
            let _ = std::fs::remove_file(&p);
        }
    }
}
