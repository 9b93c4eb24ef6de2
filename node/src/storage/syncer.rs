//! Group commit: one WAL fsync acknowledges every append and vote written
//! before it, whichever groups they belong to.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::IOFlushed;
use rocksdb::DB;
use rocksdb::statistics::Ticker;

use crate::raft::types::TypeConfig;

/// Someone waiting for the writes it already made to become durable.
pub(crate) enum Waiter {
    /// A log append: openraft's callback.
    Flushed(IOFlushed<TypeConfig>),
    /// A vote or another record that must be durable before the caller goes on.
    Notify(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    fn complete(self, result: &io::Result<()>) {
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match self {
            Waiter::Flushed(cb) => cb.io_completed(result),
            Waiter::Notify(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Durability audit: each batch of waiters is completed only after RocksDB's
/// own counter of WAL syncs has moved past its value when the batch was
/// taken. If a change ever skips or weakens the fsync, the audited node
/// fails loudly instead of acknowledging writes that are only in page cache.
pub(crate) struct Audit {
    pub(crate) opts: rocksdb::Options,
    pub(crate) violations: AtomicU64,
}

pub(crate) struct Syncer {
    /// Taken on drop, which ends the thread.
    tx: std::sync::Mutex<Option<mpsc::Sender<Waiter>>>,
    /// Joined on drop, so the thread's handle on the DB is gone before the DB
    /// closes: RocksDB aborts the process if it is torn down under a live user.
    thread: Option<std::thread::JoinHandle<()>>,
    /// fsyncs done, for metrics and tests.
    pub(crate) syncs: Arc<AtomicU64>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx
            .lock()
            .expect("syncer sender lock is never poisoned: no code panics holding it")
            .take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) type SyncObserver = Box<dyn Fn(std::time::Duration, usize) + Send + Sync>;

impl Syncer {
    pub(crate) fn start(db: Arc<DB>, audit: Option<Arc<Audit>>, observe: SyncObserver) -> Syncer {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        let thread = std::thread::Builder::new()
            .name("raftkv-wal-sync".into())
            .spawn(move || {
                // Ends when every sender is gone (the engine was dropped).
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let before = audit.as_ref().map(|a| a.opts.get_ticker_count(Ticker::WalFileSynced));
                    let started = Instant::now();
                    let result = db.flush_wal(true).map_err(super::io_err);
                    observe(started.elapsed(), batch.len());
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let (Some(a), Some(before), Ok(())) = (&audit, before, &result) {
                        let after = a.opts.get_ticker_count(Ticker::WalFileSynced);
                        if after <= before {
                            a.violations.fetch_add(1, Ordering::SeqCst);
                            tracing::error!(
                                before,
                                after,
                                "durability audit: WAL was not synced before acknowledging"
                            );
                            panic!("durability audit failed: acknowledged writes whose WAL was not fsynced");
                        }
                    }
                    for w in batch {
                        w.complete(&result);
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        Syncer {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: Some(thread),
            syncs,
        }
    }

    /// Queues `waiter` behind the next fsync. The caller must have written its
    /// data already.
    pub(crate) fn submit(&self, waiter: Waiter) {
        let tx = self
            .tx
            .lock()
            .expect("syncer sender lock is never poisoned: no code panics holding it");
        let unsent = match tx.as_ref() {
            Some(tx) => tx.send(waiter).err().map(|mpsc::SendError(w)| w),
            None => Some(waiter),
        };
        if let Some(w) = unsent {
            w.complete(&Err(io::Error::other("WAL sync thread has stopped")));
        }
    }

    /// Waits until everything written so far is durable.
    pub(crate) async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Waiter::Notify(tx));
        rx.await.map_err(|_| io::Error::other("WAL sync thread has stopped"))?
    }
}
