//! `raftkv-powerfs`: a FUSE file system that simulates power loss, the
//! project's own [LazyFS](https://github.com/dsrhaslab/lazyfs).
//!
//! # Why
//!
//! raftkv's durability claims ("an acknowledged write survives a crash") are
//! only as good as its fsync discipline, and `kill -9` cannot test that: the
//! page cache survives the process, so data that was written but never
//! fsynced is still there on restart. A power loss is different: everything
//! the kernel had not yet been told to make durable is gone. This crate
//! mounts a passthrough file system over a backing directory that keeps file
//! data written since the last fsync in its own memory, and forgets it on
//! command (`crash`), so a test can kill a node, pull the plug, restart it on
//! the same directory and check what survived.
//!
//! # Semantics (the LazyFS model)
//!
//! * **Namespace operations are durable at once**: create, mknod, mkdir,
//!   rmdir, unlink, rename (including over an existing file, and with
//!   `RENAME_NOREPLACE`/`RENAME_EXCHANGE`), link, symlink, chmod/chown/utimes
//!   go straight to the backing directory. `fsync` on a directory is a no-op
//!   success.
//! * **File contents and size are durable only once fsynced**: writes,
//!   truncations (`ftruncate`, `O_TRUNC`) and `fallocate` size extensions live
//!   in a per-inode in-memory [`overlay::Overlay`] (4 KiB pages plus the
//!   logical size) until `fsync` or `fdatasync` of that inode on any handle
//!   (or an `O_SYNC`/`O_DSYNC` write), which writes the dirty pages and the
//!   length to the backing file and drops the overlay. The backing file
//!   system is "the disk" and never loses power, so the backing file itself
//!   is not fsynced. A file that was created and never fsynced comes back
//!   empty; a truncation that was never fsynced is undone.
//! * **Reads** merge the overlay over the backing file; `stat` reports the
//!   logical size.
//! * **`crash`** drops every overlay: afterwards every file reads exactly as at
//!   its last fsync. The caller must have killed (and reaped) the processes
//!   using the mount first; their handles are not revoked.
//! * **Unlinked files**: the overlay of an inode whose last name is gone is
//!   dropped when its last handle is released.
//! * **Clean exit** (stdin EOF, SIGTERM, SIGINT, SIGHUP): the file system is
//!   unmounted and then everything still unsynced is written to the backing
//!   directory, like unmounting a real disk. To lose data, send `crash` first.
//!
//! # Kernel caching
//!
//! Every file is opened with `FOPEN_DIRECT_IO` (no page cache, so nothing the
//! kernel cached can outlive a crash), never `FOPEN_KEEP_CACHE`; entry and
//! attribute TTLs are zero and the writeback cache is not negotiated. After a
//! crash the kernel's cached attributes of the affected inodes are also
//! invalidated. Consequence: `mmap(MAP_SHARED)` fails with `ENODEV`
//! (RocksDB does not mmap by default; SQLite's WAL mode needs
//! `locking_mode=EXCLUSIVE` to avoid its shared-memory file), while
//! `MAP_PRIVATE` read mappings work. File locks are not implemented by the file
//! system, so the kernel keeps POSIX and `flock` locks locally (RocksDB's
//! `LOCK` file works).
//!
//! # Inodes
//!
//! FUSE inode numbers are the backing `st_ino` (the backing directory is
//! `FUSE_ROOT_ID`; a backing inode numbered 1, if any, takes the root's
//! number). Each known inode holds an `O_PATH` descriptor of its backing
//! inode (see [`fs`]), so hard links share one record and one overlay, renames
//! need no bookkeeping, and inode numbers cannot be recycled under an overlay.
//! A mount point nested inside the backing directory is refused (`EXDEV`).
//!
//! # Binary
//!
//! `raftkv-powerfs --backing <DIR> <MOUNTPOINT>` mounts (as root, with
//! `mount(2)`, no libfuse), prints `ready`, then answers one line per command
//! read from stdin: `crash` → `crashed <N> bytes <M> files`, `stats` →
//! `dirty <N> bytes <M> files`, `sync` → `synced`, anything else →
//! `error unknown command`. See [`app`].

pub mod app;
pub mod fs;
pub mod overlay;

pub use fs::{Control, CrashReport, DirtyStats, PowerFs};
pub use overlay::Overlay;
