//! Test harness: start the real `raftkv-powerfs` binary on a temporary
//! backing directory and mount point, talk its stdin/stdout protocol, and
//! make sure nothing stays mounted afterwards.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long to wait for the binary to answer.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv-powerfs");

/// Fail loudly (never skip) when FUSE cannot work here.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "these tests need /dev/fuse (load the fuse module / run the container with \
         --device /dev/fuse)"
    );
    // SAFETY: trivial getter.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests mount with mount(2) and must run as root");
}

/// A running `raftkv-powerfs`.
pub struct Mounted {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Canonical mount point.
    pub mnt: PathBuf,
    /// Canonical backing directory.
    pub backing: PathBuf,
    // Dropped after the child (see Drop).
    _mnt_dir: Option<TempDir>,
    _backing_dir: Option<TempDir>,
}

impl Mounted {
    /// Mount a fresh, empty backing directory.
    pub fn start() -> Self {
        let backing = tempfile::tempdir().expect("backing tempdir");
        Self::start_on(backing)
    }

    /// Mount the given backing directory (kept alive by the harness).
    pub fn start_on(backing: TempDir) -> Self {
        require_fuse();
        let mnt = tempfile::tempdir().expect("mountpoint tempdir");
        let backing_path = backing.path().canonicalize().expect("canonical backing");
        let mnt_path = mnt.path().canonicalize().expect("canonical mountpoint");
        let mut child = Command::new(BIN)
            .arg("--backing")
            .arg(&backing_path)
            .arg(&mnt_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn raftkv-powerfs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr_buf);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().expect("stderr buffer");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut m = Mounted {
            child,
            stdin,
            lines,
            stderr: stderr_buf,
            mnt: mnt_path,
            backing: backing_path,
            _mnt_dir: Some(mnt),
            _backing_dir: Some(backing),
        };
        let first = m.next_line();
        assert_eq!(first, "ready", "first line; stderr:\n{}", m.stderr());
        assert!(is_mounted(&m.mnt), "ready but {} not in mountinfo", m.mnt.display());
        m
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(e) => panic!(
                "no answer from raftkv-powerfs ({e}); status {:?}; stderr:\n{}",
                self.child.try_wait(),
                self.stderr()
            ),
        }
    }

    /// Send one command and return its one-line answer.
    pub fn cmd(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write command");
        stdin.flush().expect("flush command");
        self.next_line()
    }

    /// `crash`, returning (bytes, files) dropped.
    pub fn crash(&mut self) -> (u64, u64) {
        let a = self.cmd("crash");
        parse_counts(&a, "crashed")
    }

    /// `stats`, returning (bytes, files) dirty.
    pub fn stats(&mut self) -> (u64, u64) {
        let a = self.cmd("stats");
        parse_counts(&a, "dirty")
    }

    /// Wait until the file system has handled every request the kernel
    /// queued before this call (e.g. the asynchronous RELEASE after a
    /// close): one synchronous GETATTR travels behind them.
    pub fn barrier(&self) {
        std::fs::metadata(&self.mnt).expect("stat mount root");
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The same path in the backing directory (the "disk").
    pub fn disk(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close stdin and wait for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.wait()
    }

    /// Wait for the process to exit (it was told to).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "raftkv-powerfs did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the process and keep the backing directory for a new mount.
    pub fn into_backing(mut self) -> TempDir {
        let status = self.stop();
        assert!(status.success(), "exit {status}; stderr:\n{}", self.stderr());
        self._backing_dir.take().expect("backing dir")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mnt) {
            // Never let TempDir's cleanup walk into a live mount.
            let c = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).expect("no NUL");
            // SAFETY: valid string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

pub fn parse_counts(answer: &str, word: &str) -> (u64, u64) {
    let parts: Vec<&str> = answer.split(' ').collect();
    assert!(
        parts.len() == 5 && parts[0] == word && parts[2] == "bytes" && parts[4] == "files",
        "unexpected answer {answer:?}"
    );
    (
        parts[1].parse().expect("bytes count"),
        parts[3].parse().expect("files count"),
    )
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_str().expect("utf-8 path").replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Deterministic test bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}
