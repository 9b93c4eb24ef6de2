//! The FUSE passthrough file system with per-inode overlays.
//!
//! Inodes are tracked the way libfuse's `passthrough_ll` does it: every inode
//! the kernel knows about (or that still has unsynced data) holds an `O_PATH`
//! descriptor of its backing inode. All namespace operations are `*at` calls
//! relative to the parent's descriptor and data files are reopened through
//! `/proc/self/fd/N`. Compared with an inode → path map this is immune to
//! renames of ancestors, serves hard links for free (one inode, one record,
//! one overlay), keeps working on unlinked-but-open files, and — because the
//! descriptor pins the backing inode — guarantees that a backing inode
//! number cannot be reused (and so pick up a stale overlay) while we still
//! have a record for it.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::overlay::{Base, Overlay};

/// Entry and attribute time-to-live: zero, so that the kernel asks us again
/// every time and never serves a size from before a crash.
const TTL: Duration = Duration::ZERO;

/// Flushes coalesce contiguous dirty pages into writes of at most this size.
const FLUSH_CHUNK: usize = 1 << 20;

/// Counters reported by the control commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyStats {
    /// Unsynced bytes (see [`Overlay::dirty_bytes`]).
    pub bytes: u64,
    /// Files with unsynced changes (contents or size).
    pub files: u64,
}

/// The result of a [`Control::crash`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// What was dropped.
    pub dropped: DirtyStats,
    /// FUSE inode numbers whose cached kernel attributes should be
    /// invalidated (their size went back).
    pub inodes: Vec<u64>,
}

/// A backing file opened for data I/O.
#[derive(Debug)]
struct DataFile {
    file: File,
    writable: bool,
}

/// One inode known to the kernel or holding unsynced data.
#[derive(Debug)]
struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing inode.
    fd: OwnedFd,
    kind: FileType,
    /// Kernel lookup count (entries replied minus forgotten).
    nlookup: u64,
    /// Open file handles.
    open: u32,
    /// Lazily opened data descriptor (regular files only).
    data: Option<DataFile>,
    /// Unsynced contents, if any.
    overlay: Option<Overlay>,
    /// Modification time of the unsynced contents.
    dirty_mtime: Option<SystemTime>,
}

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    flags: i32,
}

#[derive(Debug, Clone)]
struct DirEnt {
    ino: u64,
    kind: FileType,
    name: OsString,
}

#[derive(Debug)]
struct OpenDir {
    ino: u64,
    entries: Vec<DirEnt>,
}

/// All mutable state, behind one mutex shared by the FUSE session thread and
/// the control loop.
#[derive(Debug)]
struct State {
    root_path: PathBuf,
    /// `st_ino` of the backing directory: it is presented as `FUSE_ROOT_ID`
    /// (and a backing inode numbered 1, if any, as this number).
    root_st_ino: u64,
    dev: u64,
    nodes: HashMap<u64, Node>,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, OpenDir>,
    next_fh: u64,
    euid: u32,
    egid: u32,
}

/// The file system, handed to `fuser`.
#[derive(Debug)]
pub struct PowerFs {
    state: Arc<Mutex<State>>,
}

/// The control side: crash, sync and stats, usable from another thread while
/// the file system is mounted (and after it is unmounted).
#[derive(Debug, Clone)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one operation must not take the whole mount down with it.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn last_errno() -> Errno {
    Errno::from(io::Error::last_os_error())
}

fn cstr(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("a formatted number has no NUL")
}

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

fn open_at(dirfd: RawFd, name: &CString, flags: libc::c_int, mode: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: `name` is a valid NUL-terminated string; the returned
    // descriptor is owned by us.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(last_errno())
    } else {
        // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn fstat(fd: RawFd) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero `stat` is a valid value; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn fstatat(dirfd: RawFd, name: &CString) -> Result<libc::stat, Errno> {
    // SAFETY: as in `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid string and out pointer.
    check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn kind_of(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as libc::time_t);
                let mut nsec = d.subsec_nanos() as libc::c_long;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// Reads the durable content of a backing file for the overlay, zero-filling
/// past its end.
struct FileBase<'a>(Option<&'a File>);

impl Base for FileBase<'_> {
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file = self
            .0
            .ok_or_else(|| io::Error::other("no data descriptor for a base read"))?;
        read_full_at(file, offset, buf)
    }
}

/// `pread` until `buf` is full, zero-filling past EOF.
fn read_full_at(file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                break;
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Permission check for `access(2)` against the request's credentials
/// (primary group only; root passes except `X_OK` on a file without any
/// execute bit).
fn access_allowed(st: &libc::stat, uid: u32, gid: u32, mask: AccessFlags) -> bool {
    let want = mask.bits() & (libc::R_OK | libc::W_OK | libc::X_OK);
    if want == 0 {
        return true;
    }
    let mode = st.st_mode;
    if uid == 0 {
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        return want & libc::X_OK == 0 || is_dir || mode & 0o111 != 0;
    }
    let bits = if st.st_uid == uid {
        (mode >> 6) & 7
    } else if st.st_gid == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    } as i32;
    bits & want == want
}

impl State {
    /// Backing `st_ino` → FUSE inode number (a swap of the root's number and 1,
    /// which makes the mapping its own inverse).
    fn map_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            fuser::INodeNo::ROOT.0
        } else if st_ino == fuser::INodeNo::ROOT.0 {
            self.root_st_ino
        } else {
            st_ino
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ESTALE)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ESTALE)
    }

    fn node_fd(&self, ino: u64) -> Result<RawFd, Errno> {
        Ok(self.node(ino)?.fd.as_raw_fd())
    }

    fn alloc_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    fn attr(&self, ino: u64, st: &libc::stat) -> FileAttr {
        let mut attr = FileAttr {
            ino: INodeNo(ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: system_time(st.st_atime, st.st_atime_nsec),
            mtime: system_time(st.st_mtime, st.st_mtime_nsec),
            ctime: system_time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        };
        if let Some(node) = self.nodes.get(&ino) {
            if let Some(ov) = &node.overlay {
                attr.size = ov.size();
                attr.blocks = ov.size().div_ceil(512);
            }
            if let Some(t) = node.dirty_mtime {
                attr.mtime = t;
                attr.ctime = attr.ctime.max(t);
            }
        }
        attr
    }

    fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let st = fstat(self.node_fd(ino)?)?;
        Ok(self.attr(ino, &st))
    }

    /// Look `name` up in `parent`, taking one kernel reference on the result.
    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        if parent == INodeNo::ROOT.0 && (name == ".." || name == ".") {
            // Never let the kernel walk out of the backing directory.
            let st = fstat(self.node_fd(parent)?)?;
            let attr = self.attr(parent, &st);
            self.node_mut(parent)?.nlookup += 1;
            return Ok(attr);
        }
        let pfd = self.node_fd(parent)?;
        let cname = cstr(name)?;
        let fd = open_at(pfd, &cname, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = fstat(fd.as_raw_fd())?;
        if st.st_dev != self.dev {
            // Another file system mounted inside the backing directory: its
            // inode numbers could collide with ours.
            return Err(Errno::EXDEV);
        }
        let ino = self.map_ino(st.st_ino);
        match self.nodes.entry(ino) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().nlookup += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Node {
                    fd,
                    kind: kind_of(st.st_mode),
                    nlookup: 1,
                    open: 0,
                    data: None,
                    overlay: None,
                    dirty_mtime: None,
                });
            }
        }
        Ok(self.attr(ino, &st))
    }

    /// Give a newly created inode to the requesting user (we run as root).
    fn chown_new(&self, dirfd: RawFd, name: &CString, uid: u32, gid: u32) -> Result<(), Errno> {
        if uid == self.euid && gid == self.egid {
            return Ok(());
        }
        // SAFETY: valid descriptor and string.
        check(unsafe { libc::fchownat(dirfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// The node, which must be a regular file (`EISDIR` for a directory,
    /// `EINVAL` for anything else).
    fn file_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let node = self.node_mut(ino)?;
        if node.kind != FileType::RegularFile {
            return Err(if node.kind == FileType::Directory {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        Ok(node)
    }

    /// Make sure the node has a data descriptor (writable if asked).
    fn ensure_data(&mut self, ino: u64, writable: bool) -> Result<(), Errno> {
        let node = self.file_mut(ino)?;
        if let Some(d) = &node.data
            && (d.writable || !writable)
        {
            return Ok(());
        }
        let path = proc_path(node.fd.as_raw_fd());
        let data = match open_at(libc::AT_FDCWD, &path, libc::O_RDWR, 0) {
            Ok(fd) => DataFile {
                file: File::from(fd),
                writable: true,
            },
            Err(e) if writable => return Err(e),
            Err(_) => DataFile {
                file: File::from(open_at(libc::AT_FDCWD, &path, libc::O_RDONLY, 0)?),
                writable: false,
            },
        };
        node.data = Some(data);
        Ok(())
    }

    /// The node's overlay, creating an empty one over the current backing
    /// length if there is none.
    fn overlay_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let node = self.file_mut(ino)?;
        if node.overlay.is_none() {
            let st = fstat(node.fd.as_raw_fd())?;
            node.overlay = Some(Overlay::new(st.st_size as u64));
        }
        Ok(node)
    }

    /// Buffered truncate (`setattr` size, `O_TRUNC`).
    fn set_size(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let node = self.node(ino)?;
        if node.overlay.is_none() {
            let st = fstat(node.fd.as_raw_fd())?;
            if st.st_size as u64 == size {
                return Ok(()); // no content change
            }
        }
        let node = self.overlay_mut(ino)?;
        let ov = node.overlay.as_mut().expect("overlay_mut creates it");
        ov.set_size(size).map_err(Errno::from)?;
        node.dirty_mtime = Some(SystemTime::now());
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.ensure_data(ino, false)?;
        let node = self.node(ino)?;
        let file = &node.data.as_ref().expect("ensure_data opened it").file;
        if let Some(ov) = &node.overlay {
            return ov
                .read(offset, size as usize, &mut FileBase(Some(file)))
                .map_err(Errno::from);
        }
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        // The data descriptor serves the read-modify-write of partial pages.
        self.ensure_data(ino, false)?;
        let node = self.overlay_mut(ino)?;
        let file = node.data.as_ref().map(|d| &d.file);
        let ov = node.overlay.as_mut().expect("overlay_mut creates it");
        ov.write(offset, data, &mut FileBase(file)).map_err(Errno::from)?;
        node.dirty_mtime = Some(SystemTime::now());
        Ok(())
    }

    /// Write the node's overlay to the backing file and forget it.
    fn flush(&mut self, ino: u64) -> Result<(), Errno> {
        let Some(node) = self.nodes.get(&ino) else {
            return Ok(());
        };
        if node.overlay.is_none() {
            return Ok(());
        }
        self.ensure_data(ino, true)?;
        let node = self.node_mut(ino)?;
        let ov = node.overlay.take().expect("checked above");
        let file = &node.data.as_ref().expect("ensure_data opened it").file;
        if let Err(e) = apply_flush(file, &ov) {
            // Still consistent: the cut (if any) only removed invisible bytes
            // and the pages override whatever was written.
            node.overlay = Some(ov);
            return Err(e.into());
        }
        node.dirty_mtime = None;
        self.release_resources(ino);
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), Errno> {
        let inos: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.overlay.is_some())
            .map(|(&i, _)| i)
            .collect();
        let mut result = Ok(());
        for ino in inos {
            if let Err(e) = self.flush(ino) {
                result = Err(e);
            }
        }
        result
    }

    fn stats(&self) -> DirtyStats {
        let mut s = DirtyStats::default();
        for ov in self.nodes.values().filter_map(|n| n.overlay.as_ref()) {
            s.bytes += ov.dirty_bytes();
            s.files += 1;
        }
        s
    }

    fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        for (&ino, node) in &mut self.nodes {
            if let Some(ov) = node.overlay.take() {
                report.dropped.bytes += ov.dirty_bytes();
                report.dropped.files += 1;
                report.inodes.push(ino);
            }
            node.dirty_mtime = None;
        }
        for &ino in &report.inodes {
            self.release_resources(ino);
        }
        report
    }

    // `st_nlink` is u64 on x86_64 but u32 on aarch64.
    #[allow(clippy::unnecessary_cast)]
    fn nlink(&self, ino: u64) -> Option<u64> {
        let node = self.nodes.get(&ino)?;
        fstat(node.fd.as_raw_fd()).ok().map(|st| st.st_nlink as u64)
    }

    /// After an inode lost a name (unlink, rename over it) or a handle:
    /// drop its overlay once no name and no handle is left, close its data
    /// descriptor when unused, and forget the record when nobody needs it.
    fn release_resources(&mut self, ino: u64) {
        let nlink = self.nlink(ino);
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.open > 0 {
            return;
        }
        let gone = nlink == Some(0);
        if gone {
            node.overlay = None;
            node.dirty_mtime = None;
        }
        if node.overlay.is_none() {
            node.data = None;
        }
        if ino != INodeNo::ROOT.0 && node.nlookup == 0 && node.overlay.is_none() {
            self.nodes.remove(&ino);
        }
    }

    /// Finishes a call that took a name away from `victim` (the inode that
    /// name pointed at, if any), given the call's return value: on success,
    /// releases what that inode no longer needs.
    fn name_removed(&mut self, victim: Option<u64>, ret: libc::c_int) -> Result<(), Errno> {
        check(ret)?;
        if let Some(v) = victim {
            self.release_resources(v);
        }
        Ok(())
    }

    /// The FUSE inode currently named `name` in the directory `dirfd`.
    fn ino_at(&self, dirfd: RawFd, name: &CString) -> Option<u64> {
        fstatat(dirfd, name).ok().map(|st| self.map_ino(st.st_ino))
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEnt>, Errno> {
        let fd = self.node_fd(ino)?;
        let parent = if ino == INodeNo::ROOT.0 {
            ino
        } else {
            fstatat(fd, &CString::new("..").expect("no NUL"))
                .map(|st| self.map_ino(st.st_ino))
                .unwrap_or(ino)
        };
        let mut entries = vec![
            DirEnt {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEnt {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        let path = PathBuf::from(OsStr::from_bytes(proc_path(fd).as_bytes()));
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let kind = match entry.file_type() {
                Ok(t) => FileType::from_std(t).unwrap_or(FileType::RegularFile),
                // Raced with an unlink: skip it.
                Err(_) => continue,
            };
            entries.push(DirEnt {
                ino: self.map_ino(entry.ino()),
                kind,
                name: entry.file_name(),
            });
        }
        Ok(entries)
    }
}

/// Make `ov` durable in `file`, per its flush plan.
fn apply_flush(file: &File, ov: &Overlay) -> io::Result<()> {
    let plan = ov.flush_plan();
    if let Some(cut) = plan.cut_to {
        file.set_len(cut)?;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_off = 0u64;
    for w in &plan.writes {
        let contiguous = !buf.is_empty() && buf_off + buf.len() as u64 == w.offset;
        if contiguous && buf.len() + w.data.len() <= FLUSH_CHUNK {
            buf.extend_from_slice(w.data);
            continue;
        }
        if !buf.is_empty() {
            file.write_all_at(&buf, buf_off)?;
            buf.clear();
        }
        buf_off = w.offset;
        buf.extend_from_slice(w.data);
    }
    if !buf.is_empty() {
        file.write_all_at(&buf, buf_off)?;
    }
    file.set_len(plan.final_len)?;
    Ok(())
}

impl PowerFs {
    /// A file system over the backing directory `backing`.
    pub fn new(backing: &Path) -> io::Result<Self> {
        let root_path = backing.canonicalize()?;
        let cpath = CString::new(root_path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let fd = open_at(libc::AT_FDCWD, &cpath, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node {
                fd,
                kind: FileType::Directory,
                nlookup: 1,
                open: 0,
                data: None,
                overlay: None,
                dirty_mtime: None,
            },
        );
        // SAFETY: trivial getters.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let state = State {
            root_path,
            root_st_ino: st.st_ino,
            dev: st.st_dev,
            nodes,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 0,
            euid,
            egid,
        };
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// A handle for the control commands.
    pub fn control(&self) -> Control {
        Control {
            state: Arc::clone(&self.state),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Control {
    /// Unsynced data currently held.
    pub fn stats(&self) -> DirtyStats {
        lock(&self.state).stats()
    }

    /// Power loss: drop every overlay. The caller should then invalidate the
    /// kernel's cached attributes of `CrashReport::inodes` (outside of any
    /// lock of ours).
    pub fn crash(&self) -> CrashReport {
        lock(&self.state).crash()
    }

    /// Make everything durable, as if every file had been fsynced.
    pub fn sync_all(&self) -> io::Result<()> {
        lock(&self.state)
            .flush_all()
            .map_err(|e| io::Error::from_raw_os_error(e.code()))
    }
}

impl Filesystem for PowerFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        // Nothing to negotiate: fuser's defaults request neither the
        // writeback cache nor POSIX/flock locks (so the kernel keeps locks
        // local) nor atomic O_TRUNC (so O_TRUNC arrives as a setattr).
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut st = self.state();
        if let Some(node) = st.nodes.get_mut(&ino.0) {
            node.nlookup = node.nlookup.saturating_sub(nlookup);
            if ino != INodeNo::ROOT {
                st.release_resources(ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let node = st.node(ino.0)?;
            let fd = node.fd.as_raw_fd();
            let is_link = node.kind == FileType::Symlink;
            let path = proc_path(fd);
            let empty = CString::default();
            if uid.is_some() || gid.is_some() {
                // SAFETY: valid descriptor and (empty) string.
                check(unsafe {
                    libc::fchownat(
                        fd,
                        empty.as_ptr(),
                        uid.unwrap_or(u32::MAX),
                        gid.unwrap_or(u32::MAX),
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            if let Some(mode) = mode {
                if is_link {
                    return Err(Errno::EOPNOTSUPP);
                }
                // SAFETY: valid string.
                check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
            }
            if let Some(size) = size {
                st.set_size(ino.0, size)?;
            }
            if (atime.is_some() || mtime.is_some()) && !is_link {
                let times = [timespec(atime), timespec(mtime)];
                // SAFETY: valid string and a two-element array.
                check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
                if mtime.is_some()
                    && let Some(node) = st.nodes.get_mut(&ino.0)
                {
                    node.dirty_mtime = None;
                }
            }
            st.getattr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.state();
        let result = (|| -> Result<Vec<u8>, Errno> {
            let fd = st.node_fd(ino.0)?;
            let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
            let empty = CString::default();
            // SAFETY: valid descriptor, string and buffer of the given length.
            let n = unsafe { libc::readlinkat(fd, empty.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(last_errno());
            }
            buf.truncate(n as usize);
            Ok(buf)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let mut st = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(name)?;
            let mode = (mode & libc::S_IFMT) | (mode & !umask & 0o7777);
            // SAFETY: valid descriptor and string.
            check(unsafe { libc::mknodat(pfd, cname.as_ptr(), mode, libc::dev_t::from(rdev)) })?;
            st.chown_new(pfd, &cname, req.uid(), req.gid())?;
            st.lookup(parent.0, name)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut st = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(name)?;
            // SAFETY: valid descriptor and string.
            check(unsafe { libc::mkdirat(pfd, cname.as_ptr(), mode & !umask & 0o7777) })?;
            st.chown_new(pfd, &cname, req.uid(), req.gid())?;
            st.lookup(parent.0, name)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state();
        let result = (|| -> Result<(), Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(name)?;
            let victim = st.ino_at(pfd, &cname);
            // SAFETY: valid descriptor and string.
            let ret = unsafe { libc::unlinkat(pfd, cname.as_ptr(), 0) };
            st.name_removed(victim, ret)
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.state();
        let result = (|| -> Result<(), Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(name)?;
            // SAFETY: valid descriptor and string.
            check(unsafe { libc::unlinkat(pfd, cname.as_ptr(), libc::AT_REMOVEDIR) })
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let mut st = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(link_name)?;
            let ctarget = cstr(target.as_os_str())?;
            // SAFETY: valid descriptor and strings.
            check(unsafe { libc::symlinkat(ctarget.as_ptr(), pfd, cname.as_ptr()) })?;
            st.chown_new(pfd, &cname, req.uid(), req.gid())?;
            st.lookup(parent.0, link_name)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        let result = (|| -> Result<(), Errno> {
            let supported = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
            if !supported.contains(flags) {
                return Err(Errno::EINVAL);
            }
            let pfd = st.node_fd(parent.0)?;
            let npfd = st.node_fd(newparent.0)?;
            let cname = cstr(name)?;
            let cnew = cstr(newname)?;
            let source = st.ino_at(pfd, &cname);
            let victim = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                None
            } else {
                st.ino_at(npfd, &cnew).filter(|&v| Some(v) != source)
            };
            // SAFETY: valid descriptors and strings.
            let ret = unsafe { libc::renameat2(pfd, cname.as_ptr(), npfd, cnew.as_ptr(), flags.bits()) };
            st.name_removed(victim, ret)
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut st = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let fd = st.node_fd(ino.0)?;
            let npfd = st.node_fd(newparent.0)?;
            let cnew = cstr(newname)?;
            let path = proc_path(fd);
            // SAFETY: valid descriptors and strings. Following the
            // /proc/self/fd magic link links the inode itself.
            check(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    npfd,
                    cnew.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })?;
            st.lookup(newparent.0, newname)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state();
        let result = (|| -> Result<u64, Errno> {
            let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
            st.ensure_data(ino.0, writable)?;
            if flags.0 & libc::O_TRUNC != 0 {
                st.set_size(ino.0, 0)?;
            }
            let fh = st.alloc_fh();
            st.files.insert(
                fh,
                OpenFile {
                    ino: ino.0,
                    flags: flags.0,
                },
            );
            st.node_mut(ino.0)?.open += 1;
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state();
        let result = (|| -> Result<(), Errno> {
            st.write(ino.0, offset, data)?;
            // With FOPEN_DIRECT_IO the kernel does not follow an O_SYNC or
            // O_DSYNC write with an fsync, so honour them here.
            let open_flags = st.files.get(&fh.0).map_or(0, |f| f.flags);
            if (open_flags | flags.0) & libc::O_DSYNC != 0 {
                st.flush(ino.0)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() does not make anything durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state();
        if let Some(file) = st.files.remove(&fh.0)
            && let Some(node) = st.nodes.get_mut(&file.ino)
        {
            node.open = node.open.saturating_sub(1);
            st.release_resources(file.ino);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state().flush(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state();
        let result = (|| -> Result<u64, Errno> {
            if st.node(ino.0)?.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            let entries = st.read_dir(ino.0)?;
            let fh = st.alloc_fh();
            st.dirs.insert(fh, OpenDir { ino: ino.0, entries });
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut st = self.state();
        let Some(dir_ino) = st.dirs.get(&fh.0).map(|d| d.ino) else {
            reply.error(Errno::EBADF);
            return;
        };
        if offset == 0 {
            // rewinddir(): take a fresh snapshot.
            match st.read_dir(dir_ino) {
                Ok(entries) => {
                    if let Some(d) = st.dirs.get_mut(&fh.0) {
                        d.entries = entries;
                    }
                }
                Err(e) => {
                    reply.error(e);
                    return;
                }
            }
        }
        let Some(dir) = st.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in dir.entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The namespace is durable as soon as an operation returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = {
            let st = self.state();
            CString::new(st.root_path.as_os_str().as_bytes())
        };
        let Ok(path) = path else {
            reply.error(Errno::EINVAL);
            return;
        };
        // SAFETY: an all-zero statvfs is valid; statvfs fills it.
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid string and out pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut sv) } < 0 {
            reply.error(last_errno());
            return;
        }
        reply.statfs(
            sv.f_blocks,
            sv.f_bfree,
            sv.f_bavail,
            sv.f_files,
            sv.f_ffree,
            sv.f_bsize as u32,
            sv.f_namemax as u32,
            sv.f_frsize as u32,
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let st = self.state();
        match st.node_fd(ino.0).and_then(fstat) {
            Ok(s) if access_allowed(&s, req.uid(), req.gid(), mask) => reply.ok(),
            Ok(_) => reply.error(Errno::EACCES),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state();
        let result = (|| -> Result<(FileAttr, u64), Errno> {
            let pfd = st.node_fd(parent.0)?;
            let cname = cstr(name)?;
            // Never pass O_TRUNC to the backing file: durable contents may
            // only change on fsync. Create exclusively first to know whether
            // the file is new (and so must be given to the caller).
            let perm = mode & !umask & 0o7777;
            let excl = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
            let (data, created) = match open_at(pfd, &cname, excl, perm) {
                Ok(fd) => (fd, true),
                Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                    // Raced with another creator (the kernel only sends
                    // CREATE for names it believes absent). Never follow a
                    // symlink out of the backing directory.
                    (open_at(pfd, &cname, libc::O_RDWR | libc::O_NOFOLLOW, 0)?, false)
                }
                Err(e) => return Err(e),
            };
            let data = File::from(data);
            if created {
                st.chown_new(pfd, &cname, req.uid(), req.gid())?;
            }
            let data_ino = st.map_ino(fstat(data.as_raw_fd())?.st_ino);
            let attr = st.lookup(parent.0, name)?;
            let ino = attr.ino.0;
            if data_ino != ino {
                // Only possible if the backing directory is changed behind
                // our back; give the reference back and let the caller retry.
                st.node_mut(ino)?.nlookup -= 1;
                st.release_resources(ino);
                return Err(Errno::EAGAIN);
            }
            let node = st.node_mut(ino)?;
            if node.data.as_ref().is_none_or(|d| !d.writable) {
                node.data = Some(DataFile {
                    file: data,
                    writable: true,
                });
            }
            if flags & libc::O_TRUNC != 0 {
                st.set_size(ino, 0)?;
            }
            let fh = st.alloc_fh();
            st.files.insert(fh, OpenFile { ino, flags });
            st.node_mut(ino)?.open += 1;
            Ok((st.getattr(ino)?, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = match mode {
            0 => {
                let mut st = self.state();
                match offset.checked_add(length) {
                    None => Err(Errno::EFBIG),
                    Some(end) => st.getattr(ino.0).and_then(|attr| {
                        if end > attr.size {
                            st.set_size(ino.0, end)
                        } else {
                            Ok(())
                        }
                    }),
                }
            }
            // Preallocation without a size change (RocksDB does this for WAL
            // and SST files): nothing observable, nothing to do.
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_with(mode: u32, uid: u32, gid: u32) -> libc::stat {
        // SAFETY: all-zero is a valid stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    #[test]
    fn access_checks_owner_group_other_and_root() {
        let f = stat_with(libc::S_IFREG | 0o640, 1000, 100);
        assert!(access_allowed(&f, 1000, 5, AccessFlags::R_OK | AccessFlags::W_OK));
        assert!(!access_allowed(&f, 1000, 5, AccessFlags::X_OK));
        assert!(access_allowed(&f, 2000, 100, AccessFlags::R_OK));
        assert!(!access_allowed(&f, 2000, 100, AccessFlags::W_OK));
        assert!(!access_allowed(&f, 2000, 200, AccessFlags::R_OK));
        assert!(access_allowed(&f, 2000, 200, AccessFlags::F_OK));
        assert!(access_allowed(&f, 0, 0, AccessFlags::W_OK));
        assert!(!access_allowed(&f, 0, 0, AccessFlags::X_OK));
        let d = stat_with(libc::S_IFDIR | 0o600, 1, 1);
        assert!(access_allowed(&d, 0, 0, AccessFlags::X_OK));
    }

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let ts = timespec(Some(TimeOrNow::SpecificTime(t)));
        assert_eq!(system_time(ts.tv_sec, ts.tv_nsec), t);
        let t = UNIX_EPOCH - Duration::new(10, 250);
        let ts = timespec(Some(TimeOrNow::SpecificTime(t)));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-11, 999_999_750));
        assert_eq!(system_time(ts.tv_sec, ts.tv_nsec), t);
        assert_eq!(timespec(None).tv_nsec, libc::UTIME_OMIT);
    }

    /// The state machine without the kernel: lookups, writes, flush and crash
    /// directly on `State`, against a real backing directory.
    #[test]
    fn state_write_flush_crash_without_fuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"durable").expect("seed");
        let fs = PowerFs::new(dir.path()).expect("fs");
        let control = fs.control();
        let mut st = fs.state();
        let attr = st.lookup(INodeNo::ROOT.0, OsStr::new("f")).expect("lookup");
        let ino = attr.ino.0;
        assert_eq!(attr.size, 7);
        st.write(ino, 7, b"+more").expect("write");
        assert_eq!(st.getattr(ino).expect("attr").size, 12);
        assert_eq!(st.read(ino, 0, 100).expect("read"), b"durable+more");
        assert_eq!(
            std::fs::read(dir.path().join("f")).expect("backing"),
            b"durable",
            "nothing reaches the backing file before fsync"
        );
        st.flush(ino).expect("flush");
        assert_eq!(std::fs::read(dir.path().join("f")).expect("backing"), b"durable+more");
        st.set_size(ino, 3).expect("truncate");
        st.write(ino, 3, b"!").expect("write");
        assert_eq!(st.stats(), DirtyStats { bytes: 1, files: 1 });
        drop(st);
        let report = control.crash();
        assert_eq!(report.dropped, DirtyStats { bytes: 1, files: 1 });
        assert_eq!(report.inodes, vec![ino]);
        let mut st = fs.state();
        assert_eq!(st.read(ino, 0, 100).expect("read"), b"durable+more");
        assert_eq!(st.stats(), DirtyStats::default());
    }
}
