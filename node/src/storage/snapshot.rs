//! Shard snapshots as SST files.
//!
//! Build: the group's data range, read in key order, goes into one SST file
//! (RocksDB's own versioned format) next to a record of the snapshot meta in
//! our versioned encoding. Install: record a "pending install" marker
//! durably, delete the group's range, ingest the file, write the applied
//! state, clear the marker. A crash in between is finished at start-up
//! (`Engine::open`), so a group never runs on a half-installed snapshot.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use raftkv_core::GroupId;
use raftkv_core::keys::{self, CF_DATA, CF_STATE, tag};
use rocksdb::{IngestExternalFileOptions, Options, ReadOptions, SstFileWriter, WriteBatch};
use serde::{Deserialize, Serialize};

use super::engine::path_str;
use super::{Engine, decode, encode, io_err};
use crate::types::{Snapshot, SnapshotMeta};

/// A snapshot's data: a file on this node's disk, streamed in chunks when sent.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    /// Bytes; 0 means the group had no data (an SST cannot be empty).
    pub len: u64,
}

/// What the state CF records about a snapshot (current or being installed).
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    path: String,
    len: u64,
}

impl Engine {
    /// A fresh path for a snapshot file of `group`.
    pub(crate) fn new_snapshot_path(&self, group: GroupId, what: &str) -> io::Result<PathBuf> {
        let dir = self.group_snapshot_dir(group);
        std::fs::create_dir_all(&dir)?;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(dir.join(format!("{what}-{nanos}-{seq}.sst")))
    }
}

pub(crate) fn build(engine: &Engine, group: GroupId, meta: SnapshotMeta) -> io::Result<Snapshot> {
    let path = engine.new_snapshot_path(group, "built")?;
    let (start, end) = keys::group_range(group);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end);
    let mut it = engine.db.raw_iterator_cf_opt(engine.cf(CF_DATA), ro);
    it.seek(start);
    let opts = Options::default();
    let mut writer: Option<SstFileWriter> = None;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let w = SstFileWriter::create(&opts);
                w.open(&path).map_err(io_err)?;
                writer.insert(w)
            }
        };
        w.put(k, v).map_err(io_err)?;
        it.next();
    }
    it.status().map_err(io_err)?;
    match writer {
        Some(mut w) => w.finish().map_err(io_err)?,
        None => {
            std::fs::File::create(&path)?.sync_all()?;
        }
    }
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
    tracing::info!(%group, last_log_id = ?meta.last_log_id, bytes = len, "built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: SnapshotFile { path, len },
    })
}

pub(crate) fn current(engine: &Engine, group: GroupId) -> io::Result<Option<Snapshot>> {
    let Some(b) = engine.get_state(&keys::state_key(group, tag::SNAPSHOT_META))? else {
        return Ok(None);
    };
    let r: SnapshotRecord = decode("snapshot record", &b)?;
    let path = PathBuf::from(r.path);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Snapshot {
        meta: r.meta,
        snapshot: SnapshotFile { path, len: r.len },
    }))
}

pub(crate) async fn install(
    engine: &Engine,
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
    finish_install(engine, group, &record)?;
    tracing::info!(%group, last_log_id = ?meta.last_log_id, bytes = data.len, "installed snapshot");
    Ok(())
}

/// Replaces the group's data with the snapshot's and records it as applied.
/// Idempotent, so it can be replayed after a crash.
pub(crate) fn finish_install(engine: &Engine, group: GroupId, record: &[u8]) -> io::Result<()> {
    let r: SnapshotRecord = decode("pending snapshot install", record)?;
    let (start, end) = keys::group_range(group);
    let mut b = WriteBatch::default();
    b.delete_range_cf(engine.cf(CF_DATA), &start, &end);
    engine.write(b)?;
    if r.len > 0 {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(false);
        engine
            .db
            .ingest_external_file_cf_opts(engine.cf(CF_DATA), &opts, vec![&r.path])
            .map_err(io_err)?;
    }
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
    remove_other_snapshots(engine, group, &PathBuf::from(&r.path));
    Ok(())
}

/// Keeps only the current snapshot file of the group (best effort: a file
/// left behind is only wasted space, and is removed by the next snapshot).
fn remove_other_snapshots(engine: &Engine, group: GroupId, keep: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(engine.group_snapshot_dir(group)) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let incoming = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("incoming-"));
        if p != keep && !incoming {
            let _ = std::fs::remove_file(&p);
        }
    }
}
