//! A group's state machine: data shards hold key/value records, the metadata
//! group holds the cluster map. Applying only does I/O; the rules are in
//! `raftkv_core::command`.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use raftkv_core::GroupId;
use raftkv_core::command::{self, Command, Effect, Response};
use raftkv_core::keys::{self, CF_DATA, CF_STATE, tag};
use raftkv_core::map::ClusterMap;
use raftkv_core::record::ValueRecord;
use raftkv_core::scan::KeyRange;
/// Where the metadata group keeps the map in its data range.
use raftkv_core::snapshot::MAP_KEY;
use rocksdb::{ReadOptions, WriteBatch};
use tokio::sync::watch;

use super::snapshot::{self, SnapshotFile};
use super::{Engine, decode, encode, io_err};
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

pub type MapWatch = watch::Receiver<Option<Arc<ClusterMap>>>;

pub struct StateMachine {
    group: GroupId,
    engine: Arc<Engine>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Metadata group only: the current map, for the rest of the node.
    map_tx: Option<watch::Sender<Option<Arc<ClusterMap>>>>,
}

pub(crate) fn read_applied(engine: &Engine, group: GroupId) -> io::Result<(Option<LogId>, StoredMembership)> {
    match engine.get_state(&keys::state_key(group, tag::APPLIED))? {
        Some(b) => decode("applied state", &b),
        None => Ok((None, StoredMembership::default())),
    }
}

impl StateMachine {
    pub(crate) fn open(group: GroupId, engine: Arc<Engine>) -> io::Result<Self> {
        let (applied, membership) = read_applied(&engine, group)?;
        let map_tx = match group {
            GroupId::Meta => Some(watch::Sender::new(
                ReadView::new(group, engine.clone()).map()?.map(Arc::new),
            )),
            GroupId::Shard(_) => None,
        };
        Ok(StateMachine {
            group,
            engine,
            applied,
            membership,
            map_tx,
        })
    }

    /// Metadata group only: follows the applied cluster map.
    pub fn subscribe_map(&self) -> Option<MapWatch> {
        self.map_tx.as_ref().map(|tx| tx.subscribe())
    }

    fn publish_map(&self) -> io::Result<()> {
        if let Some(tx) = &self.map_tx {
            let map = ReadView::new(self.group, self.engine.clone()).map()?.map(Arc::new);
            tx.send_replace(map);
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let data_cf = self.engine.cf(CF_DATA);
        let mut batch = WriteBatch::default();
        // Writes of earlier entries in this batch, which the DB does not show yet.
        let mut overlay: HashMap<Vec<u8>, Option<ValueRecord>> = HashMap::new();
        let mut map_overlay: Option<ClusterMap> = None;
        let mut map_changed = false;
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            self.applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Empty
                }
                EntryPayload::Normal(req) => match self.group {
                    GroupId::Meta => {
                        let current = match map_overlay.take() {
                            Some(m) => Some(m),
                            None => ReadView::new(self.group, self.engine.clone()).map()?,
                        };
                        let (next, response) = command::apply_map(&req.command, current.as_ref());
                        match next {
                            Some(next) => {
                                batch.put_cf(data_cf, keys::data_key(self.group, MAP_KEY), next.encode());
                                map_overlay = Some(next);
                                map_changed = true;
                            }
                            None => map_overlay = current,
                        }
                        response
                    }
                    GroupId::Shard(_) => {
                        let group = self.group;
                        let engine = &self.engine;
                        let read = |key: &[u8]| -> io::Result<Option<ValueRecord>> {
                            match overlay.get(key) {
                                Some(v) => Ok(v.clone()),
                                None => ReadView::new(group, engine.clone()).get(key),
                            }
                        };
                        let mut effects = Vec::new();
                        let response = match (&req.command, req.command.key()) {
                            (Command::Expire { keys: expired }, _) => {
                                for key in expired {
                                    if command::expires(&req, read(key)?.as_ref()) {
                                        effects.push((key.clone(), Effect::Delete));
                                    }
                                }
                                Response::Expired {
                                    deleted: effects.len() as u64,
                                }
                            }
                            (_, Some(key)) => {
                                let current = read(key)?;
                                let (effect, response) = command::apply_kv(&req, entry.log_id.index, current.as_ref());
                                effects.push((key.to_vec(), effect));
                                response
                            }
                            // Not a data command: `apply_kv` rejects it, changing nothing.
                            (_, None) => command::apply_kv(&req, entry.log_id.index, None).1,
                        };
                        for (key, effect) in effects {
                            let dk = keys::data_key(self.group, &key);
                            match effect {
                                Effect::Write(rec) => {
                                    batch.put_cf(data_cf, &dk, rec.encode());
                                    overlay.insert(key, Some(rec));
                                }
                                Effect::Delete => {
                                    batch.delete_cf(data_cf, &dk);
                                    overlay.insert(key, None);
                                }
                                Effect::Nothing => {}
                            }
                        }
                        response
                    }
                },
            };
            if let Some(r) = responder {
                replies.push((r, response));
            }
        }
        batch.put_cf(
            self.engine.cf(CF_STATE),
            keys::state_key(self.group, tag::APPLIED),
            encode(&(self.applied, self.membership.clone())),
        );
        self.engine.write(batch)?;
        if map_changed {
            self.publish_map()?;
        }
        for (r, response) in replies {
            r.send(response);
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            group: self.group,
            engine: self.engine.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: SnapshotFile) -> io::Result<()> {
        snapshot::install(&self.engine, self.group, meta, &data).await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish_map()
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        snapshot::current(&self.engine, self.group)
    }
}

/// Builds a group's snapshot on the blocking pool, from a RocksDB
/// point-in-time view (applies go on meanwhile; see `snapshot`).
pub struct SnapshotBuilder {
    group: GroupId,
    engine: Arc<Engine>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (engine, group) = (self.engine.clone(), self.group);
        tokio::task::spawn_blocking(move || snapshot::build(&engine, group))
            .await
            .map_err(io_err)?
    }
}

/// What an expiry sweep read: the expired keys, and the last key read
/// (where the next sweep goes on; `None` when the group's end was reached).
pub type ExpirySlice = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Records of a scan: each user key with its stored record.
pub type ScanItems = Vec<(Vec<u8>, ValueRecord)>;

/// Reads a group's applied state directly from RocksDB, for the read paths
/// (after openraft has confirmed the read index) and for digests.
#[derive(Clone)]
pub struct ReadView {
    group: GroupId,
    engine: Arc<Engine>,
}

/// A digest of a group's data at one applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub applied_index: u64,
    pub key_count: u64,
    pub digest: u64,
}

impl ReadView {
    pub(crate) fn new(group: GroupId, engine: Arc<Engine>) -> Self {
        ReadView { group, engine }
    }

    pub fn get(&self, key: &[u8]) -> io::Result<Option<ValueRecord>> {
        let v = self
            .engine
            .db
            .get_pinned_cf(self.engine.cf(CF_DATA), keys::data_key(self.group, key))
            .map_err(io_err)?;
        v.map(|b| ValueRecord::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
            .transpose()
    }

    pub fn map(&self) -> io::Result<Option<ClusterMap>> {
        let v = self
            .engine
            .db
            .get_pinned_cf(self.engine.cf(CF_DATA), keys::data_key(self.group, MAP_KEY))
            .map_err(io_err)?;
        v.map(|b| ClusterMap::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
            .transpose()
    }

    /// Up to `limit` live records in `range`, in key order, and whether more
    /// remain; stops early once the page holds `max_bytes` of keys and
    /// values (one record at least). Blocking: run it off the async workers.
    pub fn scan(&self, range: &KeyRange, limit: usize, max_bytes: usize, now_ms: u64) -> io::Result<(ScanItems, bool)> {
        let (_, group_end) = keys::group_range(self.group);
        let upper = match &range.end {
            Some(e) => keys::data_key(self.group, e),
            None => group_end,
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = self.engine.db.raw_iterator_cf_opt(self.engine.cf(CF_DATA), ro);
        it.seek(keys::data_key(self.group, &range.start));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let rec = ValueRecord::decode(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if rec.is_live(now_ms) {
                let key = keys::data_user_key(k);
                let size = key.len() + rec.value.len();
                if out.len() == limit || (!out.is_empty() && bytes + size > max_bytes) {
                    return Ok((out, true));
                }
                bytes += size;
                out.push((key.to_vec(), rec));
            }
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok((out, false))
    }

    /// Keys of expired records, reading at most `budget` records from just
    /// after `after` (the start of the group when `None`), and at most
    /// [`command::MAX_EXPIRE_KEYS`] of them; with where the next sweep goes
    /// on (`None`: the end was reached, start over). Blocking.
    pub fn expired_keys(&self, after: Option<&[u8]>, budget: usize, now_ms: u64) -> io::Result<ExpirySlice> {
        let (start, end) = keys::group_range(self.group);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        let mut it = self.engine.db.raw_iterator_cf_opt(self.engine.cf(CF_DATA), ro);
        match after {
            Some(a) => {
                let from = keys::data_key(self.group, a);
                it.seek(&from);
                if it.key() == Some(from.as_slice()) {
                    it.next();
                }
            }
            None => it.seek(start),
        }
        let mut expired = Vec::new();
        let mut read = 0;
        let mut last: Option<Vec<u8>> = None;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if read == budget || expired.len() == command::MAX_EXPIRE_KEYS {
                return Ok((expired, last));
            }
            read += 1;
            let user_key = keys::data_user_key(k).to_vec();
            let rec = ValueRecord::decode(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if !rec.is_live(now_ms) {
                expired.push(user_key.clone());
            }
            last = Some(user_key);
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok((expired, None))
    }

    /// A checksum of every stored record of the group, taken from one
    /// RocksDB snapshot together with the applied index it reflects.
    pub fn digest(&self) -> io::Result<Digest> {
        let snap = self.engine.db.snapshot();
        let applied: (Option<LogId>, StoredMembership) = match snap
            .get_cf(self.engine.cf(CF_STATE), keys::state_key(self.group, tag::APPLIED))
            .map_err(io_err)?
        {
            Some(b) => decode("applied state", &b)?,
            None => (None, StoredMembership::default()),
        };
        let (start, end) = keys::group_range(self.group);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        let mut it = snap.raw_iterator_cf_opt(self.engine.cf(CF_DATA), ro);
        it.seek(start);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut key_count = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            hasher.update(&(k.len() as u64).to_be_bytes());
            hasher.update(k);
            hasher.update(&(v.len() as u64).to_be_bytes());
            hasher.update(v);
            key_count += 1;
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(Digest {
            applied_index: applied.0.map_or(0, |l| l.index),
            key_count,
            digest: hasher.digest(),
        })
    }
}
