//! Opening the node's RocksDB and the operations that span groups.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raftkv_core::keys::{self, CF_DATA, CF_LOG, CF_STATE, tag};
use raftkv_core::{GroupId, NodeId, ReplicaId};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch};

use super::syncer::{Audit, SyncObserver, Syncer};
use super::{LogStore, ReadView, StateMachine, io_err};

pub struct EngineOptions {
    /// The RocksDB directory (inside the node's data directory).
    pub dir: PathBuf,
    /// Check RocksDB's own WAL-sync counter before every acknowledgement
    /// (see `syncer::Audit`). Costs a counter read per fsync.
    pub audit_durability: bool,
}

pub struct Engine {
    pub(crate) db: Arc<DB>,
    pub(crate) syncer: Syncer,
    pub(crate) snapshot_dir: PathBuf,
    audit: Option<Arc<Audit>>,
    /// Snapshot files created, for unique names within a process.
    pub(crate) snapshot_seq: AtomicU64,
    /// Per group: held while a snapshot is built or installed.
    pub(crate) snapshot_locks: Mutex<HashMap<GroupId, Arc<Mutex<()>>>>,
}

impl Engine {
    pub fn open(opts: EngineOptions, observe_fsync: SyncObserver) -> io::Result<Arc<Engine>> {
        std::fs::create_dir_all(&opts.dir)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        if opts.audit_durability {
            db_opts.enable_statistics();
        }
        let mut log_opts = Options::default();
        // Log entries are written once, read back soon, and deleted in ranges.
        log_opts.set_write_buffer_size(32 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_STATE, Options::default()),
            ColumnFamilyDescriptor::new(CF_DATA, Options::default()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&db_opts, opts.dir.join("db"), cfs).map_err(io_err)?);
        let audit = opts.audit_durability.then(|| {
            Arc::new(Audit {
                opts: db_opts.clone(),
                violations: AtomicU64::new(0),
            })
        });
        let syncer = Syncer::start(db.clone(), audit.clone(), observe_fsync);
        let snapshot_dir = opts.dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        let engine = Arc::new(Engine {
            db,
            syncer,
            snapshot_dir,
            audit,
            snapshot_seq: AtomicU64::new(0),
            snapshot_locks: Mutex::default(),
        });
        engine.finish_pending_installs()?;
        Ok(engine)
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created when the DB is opened")
    }

    pub fn log_store(self: &Arc<Self>, group: GroupId) -> LogStore {
        LogStore::new(group, self.clone())
    }

    pub fn state_machine(self: &Arc<Self>, group: GroupId) -> io::Result<StateMachine> {
        StateMachine::open(group, self.clone())
    }

    pub fn read_view(self: &Arc<Self>, group: GroupId) -> ReadView {
        ReadView::new(group, self.clone())
    }

    pub(crate) fn get_state(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(CF_STATE), key).map_err(io_err)
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> io::Result<()> {
        self.db.write(batch).map_err(io_err)
    }

    /// Writes `batch` and waits until it is durable.
    pub(crate) async fn write_durable(&self, batch: WriteBatch) -> io::Result<()> {
        self.write(batch)?;
        self.syncer.sync().await
    }

    /// Node-level record (not of a group).
    pub fn node_record(&self, tag: u8) -> io::Result<Option<Vec<u8>>> {
        self.get_state(&keys::node_key(tag))
    }

    pub async fn put_node_record(&self, tag: u8, value: Option<&[u8]>) -> io::Result<()> {
        let mut b = WriteBatch::default();
        match value {
            Some(v) => b.put_cf(self.cf(CF_STATE), keys::node_key(tag), v),
            None => b.delete_cf(self.cf(CF_STATE), keys::node_key(tag)),
        }
        self.write_durable(b).await
    }

    /// Groups that have any Raft state on this node, so they are reopened at start-up.
    pub fn groups(&self) -> io::Result<Vec<GroupId>> {
        let mut groups = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        it.seek_to_first();
        while let Some(key) = it.key() {
            let Some(raw) = key.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))) else {
                it.next();
                continue;
            };
            if raw == u32::MAX {
                break; // node-level records sort last
            }
            groups.push(GroupId::from_raw(raw));
            // Jump to the next group.
            match keys::prefix_end(&raw.to_be_bytes()) {
                Some(next) => it.seek(next),
                None => break,
            }
        }
        it.status().map_err(io_err)?;
        Ok(groups)
    }

    /// The highest replica id of `group` destroyed here; `node_id` for the
    /// tombstone of a release before replica ids (it destroyed that one).
    pub fn tombstone(&self, group: GroupId, node_id: ReplicaId) -> io::Result<Option<ReplicaId>> {
        let Some(v) = self.get_state(&keys::tombstone_key(group))? else {
            return Ok(None);
        };
        match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => Ok(Some(u64::from_be_bytes(b))),
            Err(_) if v.len() == 1 => Ok(Some(node_id)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tombstone of group {group}: {} bytes", v.len()),
            )),
        }
    }

    /// The Raft id of this node's replica of `group`, if it recorded one
    /// (replicas without the record have replica id = node id).
    pub fn replica_id(&self, group: GroupId) -> io::Result<Option<ReplicaId>> {
        let Some(v) = self.get_state(&keys::state_key(group, tag::REPLICA_ID))? else {
            return Ok(None);
        };
        let b = <[u8; 8]>::try_from(v.as_slice()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("replica id of group {group}: {} bytes", v.len()),
            )
        })?;
        Ok(Some(u64::from_be_bytes(b)))
    }

    /// Records (durably) that this node's replica of `group` is incarnation `id`.
    pub async fn set_replica_id(&self, group: GroupId, id: ReplicaId) -> io::Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_STATE),
            keys::state_key(group, tag::REPLICA_ID),
            id.to_be_bytes(),
        );
        self.write_durable(b).await
    }

    /// Deletes every record of `group` on this node and leaves a tombstone
    /// naming incarnation `id` (or a higher one already there), so no
    /// incarnation up to it is ever created here again.
    pub async fn destroy_group(self: &Arc<Self>, group: GroupId, id: ReplicaId, node_id: NodeId) -> io::Result<()> {
        let (start, end) = keys::group_range(group);
        let mut b = WriteBatch::default();
        for cf in [CF_LOG, CF_STATE, CF_DATA] {
            b.delete_range_cf(self.cf(cf), &start, &end);
        }
        let highest = self.tombstone(group, node_id)?.map_or(id, |t| t.max(id));
        b.put_cf(self.cf(CF_STATE), keys::tombstone_key(group), highest.to_be_bytes());
        self.write_durable(b).await?;
        // Removing the files can take a while, and waits for a snapshot
        // build of the group still running: on the blocking pool.
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.remove_snapshot_dir(group))
            .await
            .map_err(io_err)?
    }

    pub(crate) fn group_snapshot_dir(&self, group: GroupId) -> PathBuf {
        self.snapshot_dir.join(format!("g{}", group.to_raw()))
    }

    pub fn wal_syncs(&self) -> u64 {
        self.syncer.syncs.load(Ordering::Relaxed)
    }

    pub fn audit_violations(&self) -> u64 {
        self.audit.as_ref().map_or(0, |a| a.violations.load(Ordering::SeqCst))
    }

    /// A snapshot install that crashed halfway is finished before any group
    /// opens, so a group never starts from a half-replaced state.
    fn finish_pending_installs(&self) -> io::Result<()> {
        let mut pending = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        it.seek_to_first();
        while let Some(key) = it.key() {
            if key.len() == 5 && key[4] == tag::PENDING_INSTALL && key[..4] != [0xff; 4] {
                let raw = u32::from_be_bytes(key[..4].try_into().expect("4 bytes"));
                pending.push((GroupId::from_raw(raw), it.value().unwrap_or_default().to_vec()));
            }
            it.next();
        }
        it.status().map_err(io_err)?;
        for (group, record) in pending {
            tracing::warn!(%group, "finishing a snapshot install interrupted by a crash");
            super::snapshot::finish_install(self, group, &record)?;
        }
        Ok(())
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
