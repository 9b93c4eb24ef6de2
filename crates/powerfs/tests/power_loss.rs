//! End-to-end tests: the real binary, a real FUSE mount, std::fs through it.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use common::{Mounted, bytes, is_mounted};

#[test]
fn fsynced_data_survives_a_power_loss_and_unsynced_data_is_dropped() {
    let mut m = Mounted::start();
    let a = bytes(10_000, 1);
    let b = bytes(5_000, 2);
    let path = m.path("f");
    let mut f = File::create(&path).expect("create");
    f.write_all(&a).expect("write A");
    f.sync_all().expect("fsync");
    f.write_all(&b).expect("write B");
    drop(f);

    let mut ab = a.clone();
    ab.extend_from_slice(&b);
    assert_eq!(fs::read(&path).expect("read before crash"), ab);
    assert_eq!(fs::metadata(&path).expect("stat").len(), 15_000);
    assert_eq!(fs::read(m.disk("f")).expect("disk"), a, "B is not on disk");
    assert_eq!(m.stats(), (5_000, 1));

    assert_eq!(m.crash(), (5_000, 1));
    assert_eq!(fs::metadata(&path).expect("stat").len(), 10_000);
    assert_eq!(fs::read(&path).expect("read after crash"), a);
    assert_eq!(m.stats(), (0, 0));
    assert!(m.stop().success());
}

#[test]
fn a_file_created_but_never_fsynced_is_empty_after_a_crash_and_renames_are_durable() {
    let mut m = Mounted::start();
    fs::create_dir(m.path("dir")).expect("mkdir");
    fs::write(m.path("dir/new"), b"never synced").expect("write");
    assert_eq!(fs::read(m.path("dir/new")).expect("read"), b"never synced");

    let mut f = File::create(m.path("synced.tmp")).expect("create");
    f.write_all(b"synced content").expect("write");
    f.sync_data().expect("fdatasync");
    drop(f);
    fs::rename(m.path("synced.tmp"), m.path("synced")).expect("rename");
    // An unsynced file renamed: the name is durable, the content is not.
    fs::write(m.path("u.tmp"), b"unsynced").expect("write");
    fs::rename(m.path("u.tmp"), m.path("u")).expect("rename");

    let (_, files) = m.crash();
    assert_eq!(files, 2);
    assert!(m.path("dir").is_dir(), "mkdir is durable");
    assert_eq!(fs::read(m.path("dir/new")).expect("still exists"), b"");
    assert_eq!(fs::read(m.path("synced")).expect("renamed"), b"synced content");
    assert!(!m.path("synced.tmp").exists());
    assert_eq!(fs::read(m.path("u")).expect("renamed unsynced"), b"");
    assert!(!m.path("u.tmp").exists());
}

#[test]
fn truncation_without_fsync_is_undone_by_a_crash() {
    let mut m = Mounted::start();
    let content = bytes(20_000, 3);
    let mut f = File::create(m.path("t")).expect("create");
    f.write_all(&content).expect("write");
    f.sync_all().expect("fsync");

    f.set_len(3).expect("truncate down");
    assert_eq!(fs::read(m.path("t")).expect("read"), content[..3]);
    f.set_len(9_000).expect("extend");
    let got = fs::read(m.path("t")).expect("read");
    assert_eq!(got[..3], content[..3]);
    assert!(got[3..].iter().all(|&b| b == 0), "no old bytes after re-extend");
    drop(f);
    assert_eq!(m.crash().1, 1);
    assert_eq!(fs::read(m.path("t")).expect("read"), content);

    // O_TRUNC (via std::fs::write on an existing file) is buffered too.
    fs::write(m.path("t"), b"x").expect("rewrite with O_TRUNC");
    assert_eq!(fs::read(m.path("t")).expect("read"), b"x");
    assert_eq!(fs::read(m.disk("t")).expect("disk"), content);
    m.crash();
    assert_eq!(fs::read(m.path("t")).expect("read"), content);

    // And a synced truncation is durable.
    let f = OpenOptions::new().write(true).open(m.path("t")).expect("open");
    f.set_len(100).expect("truncate");
    f.sync_all().expect("fsync");
    m.crash();
    assert_eq!(fs::read(m.path("t")).expect("read"), content[..100]);
}

#[test]
fn fdatasync_counts_as_a_sync() {
    let mut m = Mounted::start();
    let mut f = File::create(m.path("d")).expect("create");
    f.write_all(b"hello ").expect("write");
    f.sync_data().expect("fdatasync");
    f.write_all(b"world").expect("write");
    assert_eq!(m.stats(), (5, 1));
    // fsync on a different, read-only handle of the same inode works too.
    let r = File::open(m.path("d")).expect("open ro");
    r.sync_data().expect("fdatasync ro handle");
    assert_eq!(m.stats(), (0, 0));
    f.write_all(b"!").expect("write");
    drop((f, r));
    assert_eq!(m.crash(), (1, 1));
    assert_eq!(fs::read(m.path("d")).expect("read"), b"hello world");
}

#[test]
fn a_hard_link_shares_the_overlay() {
    let mut m = Mounted::start();
    fs::write(m.path("a"), b"abc").expect("write");
    fs::hard_link(m.path("a"), m.path("b")).expect("link");
    assert_eq!(
        fs::metadata(m.path("a")).expect("a").ino(),
        fs::metadata(m.path("b")).expect("b").ino()
    );
    assert_eq!(fs::metadata(m.path("b")).expect("b").nlink(), 2);
    assert_eq!(fs::read(m.path("b")).expect("read b"), b"abc");
    // Write through b, read through a.
    let mut fb = OpenOptions::new().append(true).open(m.path("b")).expect("open b");
    fb.write_all(b"def").expect("append b");
    assert_eq!(fs::read(m.path("a")).expect("read a"), b"abcdef");
    assert_eq!(m.stats(), (6, 1), "one inode, one overlay");
    // fsync through b makes a durable.
    fb.sync_all().expect("fsync b");
    fb.write_all(b"ghi").expect("append b");
    drop(fb);
    assert_eq!(m.crash(), (3, 1));
    assert_eq!(fs::read(m.path("a")).expect("read a"), b"abcdef");
    assert_eq!(fs::read(m.disk("b")).expect("disk b"), b"abcdef");
    // Unlinking one name keeps the other (and its unsynced data).
    fs::write(m.path("a"), b"new").expect("write a");
    fs::remove_file(m.path("a")).expect("unlink a");
    assert_eq!(fs::read(m.path("b")).expect("read b"), b"new");
    assert_eq!(m.stats().1, 1);
}

#[test]
fn a_write_fsync_loop_loses_only_the_tail_after_the_last_fsync() {
    let mut m = Mounted::start();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.path("wal"))
        .expect("open wal");
    let mut expect = Vec::new();
    let mut synced_len = 0;
    for i in 0..2_005u32 {
        let record = bytes(100, i as u8);
        f.write_all(&record).expect("append");
        expect.extend_from_slice(&record);
        if (i + 1) % 10 == 0 {
            f.sync_data().expect("fdatasync");
            synced_len = expect.len();
        }
    }
    assert_eq!(synced_len, 200_000);
    assert_eq!(fs::metadata(m.path("wal")).expect("stat").len(), 200_500);
    assert_eq!(fs::read(m.path("wal")).expect("read"), expect);
    assert_eq!(m.stats(), (500, 1));
    drop(f);
    assert_eq!(m.crash(), (500, 1));
    assert_eq!(fs::read(m.path("wal")).expect("read"), expect[..synced_len]);
    // Appending after the crash continues at the durable end.
    let mut f = OpenOptions::new().append(true).open(m.path("wal")).expect("reopen");
    f.write_all(b"after").expect("append");
    f.sync_all().expect("fsync");
    let got = fs::read(m.path("wal")).expect("read");
    assert_eq!(got.len(), synced_len + 5);
    assert_eq!(&got[synced_len..], b"after");
}

#[test]
fn a_clean_exit_on_stdin_eof_unmounts_and_writes_unsynced_data() {
    let mut m = Mounted::start();
    fs::write(m.path("left"), b"unsynced at exit").expect("write");
    assert!(is_mounted(&m.mnt));
    let status = m.stop();
    assert!(status.success(), "exit {status}; stderr:\n{}", m.stderr());
    assert!(!is_mounted(&m.mnt), "still mounted after exit");
    assert_eq!(
        fs::read(m.disk("left")).expect("disk"),
        b"unsynced at exit",
        "a clean unmount writes everything, like a real disk"
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let mut m = Mounted::start();
    fs::write(m.path("x"), b"1").expect("write");
    // SAFETY: signalling our own child.
    let rc = unsafe { libc::kill(m.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = m.wait();
    assert!(status.success(), "exit {status}; stderr:\n{}", m.stderr());
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn remounting_the_backing_directory_shows_the_durable_state() {
    let mut m = Mounted::start();
    let mut f = File::create(m.path("keep")).expect("create");
    f.write_all(b"durable").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b" lost").expect("write");
    drop(f);
    m.crash();
    let backing = m.into_backing();
    let m2 = Mounted::start_on(backing);
    assert_eq!(fs::read(m2.path("keep")).expect("read"), b"durable");
}

#[test]
fn unknown_commands_and_sync() {
    let mut m = Mounted::start();
    assert_eq!(m.cmd("reboot"), "error unknown command");
    fs::write(m.path("s1"), b"one").expect("write");
    fs::create_dir(m.path("sub")).expect("mkdir");
    fs::write(m.path("sub/s2"), b"two").expect("write");
    assert_eq!(m.stats(), (6, 2));
    assert_eq!(m.cmd("sync"), "synced");
    assert_eq!(m.stats(), (0, 0));
    assert_eq!(m.crash(), (0, 0));
    assert_eq!(fs::read(m.path("s1")).expect("read"), b"one");
    assert_eq!(fs::read(m.path("sub/s2")).expect("read"), b"two");
}

#[test]
fn unlink_drops_the_overlay_and_a_recycled_inode_number_starts_clean() {
    let mut m = Mounted::start();
    for round in 0..20 {
        fs::write(m.path("victim"), bytes(3000, round)).expect("write");
        assert_eq!(m.stats(), (3000, 1));
        fs::remove_file(m.path("victim")).expect("unlink");
        assert_eq!(m.stats(), (0, 0), "round {round}");
        // ext4 and tmpfs readily reuse the freed inode number here.
        File::create(m.path("victim")).expect("create");
        assert_eq!(fs::read(m.path("victim")).expect("read"), b"");
        fs::remove_file(m.path("victim")).expect("unlink");
    }
    // An unlinked file that is still open keeps its data until closed.
    let mut f = File::create(m.path("open")).expect("create");
    f.write_all(b"still here").expect("write");
    fs::remove_file(m.path("open")).expect("unlink");
    assert_eq!(m.stats(), (10, 1));
    let mut buf = String::new();
    // File::create is write-only; read through /proc/self/fd instead.
    let mut r = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("reopen");
    r.read_to_string(&mut buf).expect("read");
    assert_eq!(buf, "still here");
    assert_eq!(f.metadata().expect("fstat").len(), 10);
    drop((f, r));
    // The kernel sends RELEASE asynchronously after close(); a synchronous
    // request behind it in the (FIFO) queue makes sure it was handled.
    m.barrier();
    assert_eq!(m.stats(), (0, 0));
}

#[test]
fn rename_over_an_existing_file_and_rename_flags() {
    let mut m = Mounted::start();
    let mut old = File::create(m.path("CURRENT")).expect("create");
    old.write_all(b"MANIFEST-1\n").expect("write");
    old.sync_all().expect("fsync");
    drop(old);
    // Unsynced data of the file that gets replaced must not leak anywhere.
    fs::write(m.path("CURRENT"), b"garbage").expect("overwrite, unsynced");
    let mut tmp = File::create(m.path("CURRENT.tmp")).expect("create");
    tmp.write_all(b"MANIFEST-2\n").expect("write");
    tmp.sync_all().expect("fsync");
    drop(tmp);
    fs::rename(m.path("CURRENT.tmp"), m.path("CURRENT")).expect("rename over");
    assert_eq!(m.stats(), (0, 0), "replaced inode's overlay is gone");
    m.crash();
    assert_eq!(fs::read(m.path("CURRENT")).expect("read"), b"MANIFEST-2\n");

    // RENAME_NOREPLACE and RENAME_EXCHANGE go through renameat2.
    fs::write(m.path("x"), b"x").expect("write");
    fs::write(m.path("y"), b"y").expect("write");
    let rename2 = |a: &str, b: &str, flags: libc::c_uint| -> i32 {
        let a = std::ffi::CString::new(m.path(a).into_os_string().into_encoded_bytes()).expect("path");
        let b = std::ffi::CString::new(m.path(b).into_os_string().into_encoded_bytes()).expect("path");
        // SAFETY: valid strings.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    assert_eq!(rename2("x", "y", libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(rename2("x", "y", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("x")).expect("read"), b"y");
    assert_eq!(fs::read(m.path("y")).expect("read"), b"x");
    assert_eq!(rename2("x", "z", libc::RENAME_WHITEOUT), libc::EINVAL);
}

#[test]
fn a_rocksdb_like_sequence_works() {
    let mut m = Mounted::start();
    let db = m.path("db");
    fs::create_dir_all(db.join("archive")).expect("mkdir -p");
    // LOCK file with POSIX locks handled locally by the kernel. Two open file
    // descriptions in one process conflict with OFD locks.
    let lock_a = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(db.join("LOCK"))
        .expect("LOCK");
    let lock_b = OpenOptions::new().write(true).open(db.join("LOCK")).expect("LOCK");
    let ofd_lock = |f: &File| -> i32 {
        // SAFETY: all-zero flock is valid; fields set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: valid fd and flock pointer.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    assert_eq!(ofd_lock(&lock_a), 0);
    let second = ofd_lock(&lock_b);
    assert!(
        second == libc::EAGAIN || second == libc::EACCES,
        "second lock must conflict, got errno {second}"
    );

    // WAL with preallocation (fallocate KEEP_SIZE), appends, fdatasync.
    let mut wal = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(db.join("000003.log"))
        .expect("wal");
    // SAFETY: valid fd.
    let rc = unsafe { libc::fallocate(wal.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) };
    assert_eq!(rc, 0, "fallocate KEEP_SIZE");
    assert_eq!(wal.metadata().expect("stat").len(), 0);
    wal.write_all(b"record1").expect("append");
    wal.sync_data().expect("fdatasync");
    wal.write_all(b"record2").expect("append");

    // SST written to a temp name, fsynced, renamed, directory fsynced.
    let sst = bytes(70_000, 9);
    let mut t = File::create(db.join("000004.sst.tmp")).expect("sst");
    t.write_all(&sst).expect("write sst");
    t.sync_all().expect("fsync sst");
    drop(t);
    fs::rename(db.join("000004.sst.tmp"), db.join("000004.sst")).expect("rename");
    File::open(&db).expect("open dir").sync_all().expect("fsyncdir");
    // Ingest-style hard link, then delete the original name.
    fs::hard_link(db.join("000004.sst"), db.join("archive/000004.sst")).expect("link");
    fs::remove_file(db.join("000004.sst")).expect("unlink");
    // MANIFEST + CURRENT swap.
    let mut man = File::create(db.join("MANIFEST-000005")).expect("manifest");
    man.write_all(b"edit").expect("write");
    man.sync_all().expect("fsync");
    fs::write(db.join("CURRENT.tmp"), b"MANIFEST-000005\n").expect("write");
    File::open(db.join("CURRENT.tmp"))
        .expect("open")
        .sync_all()
        .expect("fsync");
    fs::rename(db.join("CURRENT.tmp"), db.join("CURRENT")).expect("rename");

    let mut names: Vec<String> = fs::read_dir(&db)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["000003.log", "CURRENT", "LOCK", "MANIFEST-000005", "archive"]);

    drop((wal, lock_a, lock_b, man));
    assert_eq!(m.crash(), (7, 1), "only the unsynced WAL tail is dirty");
    assert_eq!(fs::read(db.join("000003.log")).expect("wal"), b"record1");
    assert_eq!(fs::read(db.join("archive/000004.sst")).expect("sst"), sst);
    assert_eq!(fs::read(db.join("CURRENT")).expect("current"), b"MANIFEST-000005\n");
    assert_eq!(fs::read(db.join("MANIFEST-000005")).expect("manifest"), b"edit");
    fs::remove_dir_all(db.join("archive")).expect("rm -r");
    assert!(!db.join("archive").exists());
}

#[test]
fn fallocate_extends_the_logical_size_until_a_crash() {
    let mut m = Mounted::start();
    let f = File::create(m.path("fa")).expect("create");
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 10_000) }, 0);
    assert_eq!(f.metadata().expect("stat").len(), 10_000);
    assert_eq!(fs::read(m.path("fa")).expect("read"), vec![0u8; 10_000]);
    // SAFETY: valid fd.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            10,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));
    drop(f);
    assert_eq!(m.crash(), (0, 1));
    assert_eq!(fs::metadata(m.path("fa")).expect("stat").len(), 0);
}

#[test]
fn dirty_files_survive_renaming_their_directory() {
    let mut m = Mounted::start();
    fs::create_dir_all(m.path("a/b")).expect("mkdir");
    let mut f = File::create(m.path("a/b/f")).expect("create");
    f.write_all(b"before").expect("write");
    fs::rename(m.path("a"), m.path("z")).expect("rename dir");
    f.write_all(b"+after").expect("write after rename");
    f.sync_all().expect("fsync after rename");
    drop(f);
    m.crash();
    assert_eq!(fs::read(m.path("z/b/f")).expect("read"), b"before+after");
    assert_eq!(fs::read(m.disk("z/b/f")).expect("disk"), b"before+after");
}

#[test]
fn two_handles_see_each_others_writes_immediately_and_o_append_is_at_the_end() {
    let m = Mounted::start();
    let mut w1 = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.path("shared"))
        .expect("w1");
    let mut w2 = OpenOptions::new().append(true).open(m.path("shared")).expect("w2");
    let mut r = File::open(m.path("shared")).expect("r");
    w1.write_all(b"one,").expect("w1");
    w2.write_all(b"two,").expect("w2");
    w1.write_all(b"three").expect("w1");
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    assert_eq!(s, "one,two,three");
    // O_SYNC writes are durable without an explicit fsync.
    let mut sync = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(m.path("shared"))
        .expect("o_sync");
    sync.write_all(b"ONE").expect("write");
    assert_eq!(fs::read(m.disk("shared")).expect("disk"), b"ONE,two,three");
}

#[test]
fn permissions_times_statfs_and_symlinks_pass_through() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::start();
    fs::write(m.path("p"), b"x").expect("write");
    fs::set_permissions(m.path("p"), fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(
        fs::metadata(m.disk("p")).expect("disk").permissions().mode() & 0o7777,
        0o640
    );
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(m.path("p"))
        .expect("open")
        .set_modified(when)
        .expect("utimes");
    assert_eq!(fs::metadata(m.disk("p")).expect("disk").mtime(), 1_000_000_000);

    std::os::unix::fs::symlink("p", m.path("l")).expect("symlink");
    assert_eq!(fs::read_link(m.path("l")).expect("readlink"), std::path::Path::new("p"));
    assert_eq!(fs::read(m.path("l")).expect("follow"), b"x");

    let c = std::ffi::CString::new(m.mnt.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: zeroed statvfs is valid; valid string and out pointer.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0 && sv.f_bavail > 0, "statfs passes through");
}

#[test]
fn mount_failure_is_reported_with_a_nonzero_exit() {
    let backing = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::BIN)
        .arg("--backing")
        .arg(backing.path())
        .arg("/nonexistent/mountpoint")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mountpoint"), "stderr: {err}");
    assert!(out.stdout.is_empty(), "no ready line on failure");

    // A mountpoint inside the backing directory would deadlock the file
    // system on itself: refused.
    fs::create_dir(backing.path().join("mnt")).expect("mkdir");
    let out = std::process::Command::new(common::BIN)
        .arg("--backing")
        .arg(backing.path())
        .arg(backing.path().join("mnt"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must not contain each other"), "stderr: {err}");

    let out = std::process::Command::new(common::BIN).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn concurrent_writers_and_control_commands() {
    let mut m = Mounted::start();
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let path = m.path(&format!("w{w}"));
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().create(true).append(true).open(&path).expect("open");
                let mut all = Vec::new();
                let mut synced = 0;
                for i in 0..300u32 {
                    let rec = bytes(37 + (i as usize % 50), w.wrapping_add(i as u8));
                    f.write_all(&rec).expect("append");
                    all.extend_from_slice(&rec);
                    if i % 7 == 0 {
                        f.sync_data().expect("fdatasync");
                        synced = all.len();
                    }
                }
                (path, all, synced)
            })
        })
        .collect();
    // Control commands race with the writers.
    let mut polls = 0;
    while writers.iter().any(|h| !h.is_finished()) || polls < 5 {
        let (_, files) = m.stats();
        assert!(files <= 4);
        polls += 1;
    }
    let results: Vec<_> = writers.into_iter().map(|h| h.join().expect("writer")).collect();
    for (path, all, _) in &results {
        assert_eq!(&fs::read(path).expect("read"), all);
    }
    m.crash();
    for (path, all, synced) in &results {
        assert_eq!(fs::read(path).expect("read"), all[..*synced]);
    }
}
