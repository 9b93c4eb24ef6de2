//! A group's Raft log and vote, in the shared RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use raftkv_core::GroupId;
use raftkv_core::keys::{self, CF_LOG, CF_STATE, tag};
use rocksdb::{ReadOptions, WriteBatch};

use super::syncer::Waiter;
use super::{Engine, decode, encode, io_err};
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    engine: Arc<Engine>,
}

impl LogStore {
    pub(crate) fn new(group: GroupId, engine: Arc<Engine>) -> Self {
        LogStore { group, engine }
    }

    fn state<T: serde::de::DeserializeOwned>(&self, t: u8, what: &'static str) -> io::Result<Option<T>> {
        self.engine
            .get_state(&keys::state_key(self.group, t))?
            .map(|b| decode(what, &b))
            .transpose()
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let (start, end) = keys::group_range(self.group);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start);
        ro.set_iterate_upper_bound(end);
        let mut it = self.engine.db.raw_iterator_cf_opt(self.engine.cf(CF_LOG), ro);
        it.seek_to_last();
        match it.value() {
            Some(v) => Ok(Some(decode::<Entry>("log entry", v)?.log_id)),
            None => it.status().map(|_| None).map_err(io_err),
        }
    }
}

fn index_range(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = index_range(&range);
        let upper = match end {
            Some(e) => keys::log_key(self.group, e).to_vec(),
            None => keys::group_range(self.group).1,
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = self.engine.db.raw_iterator_cf_opt(self.engine.cf(CF_LOG), ro);
        it.seek(keys::log_key(self.group, start));
        let mut out = Vec::new();
        while let Some(v) = it.value() {
            out.push(decode::<Entry>("log entry", v)?);
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.state(tag::VOTE, "vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.state(tag::PURGED, "purged log id")?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.engine.cf(CF_STATE),
            keys::state_key(self.group, tag::VOTE),
            encode(vote),
        );
        // Durable before returning: a vote forgotten in a crash could be cast twice.
        self.engine.write_durable(b).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.engine.cf(CF_STATE),
            keys::state_key(self.group, tag::COMMITTED),
            encode(&committed),
        );
        // Not synced: losing it only means re-discovering the commit index.
        self.engine.write(b)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self
            .state::<Option<LogId>>(tag::COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = <TypeConfig as RaftTypeConfig>::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.engine.cf(CF_LOG);
        let mut b = WriteBatch::default();
        for e in entries {
            b.put_cf(cf, keys::log_key(self.group, e.log_id.index), encode(&e));
        }
        // Readable as soon as written; acknowledged by the syncer once durable.
        self.engine.write(b)?;
        self.engine.syncer.submit(Waiter::Flushed(callback));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            self.engine.cf(CF_LOG),
            keys::log_key(self.group, from).to_vec(),
            keys::group_range(self.group).1,
        );
        // Ordered before any later append in the shared WAL, which the
        // append's sync makes durable together with this.
        self.engine.write(b)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.engine.cf(CF_STATE),
            keys::state_key(self.group, tag::PURGED),
            encode(&log_id),
        );
        b.delete_range_cf(
            self.engine.cf(CF_LOG),
            keys::log_key(self.group, 0),
            keys::log_key(self.group, log_id.index + 1),
        );
        self.engine.write(b)
    }
}
