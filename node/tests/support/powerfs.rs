//! A node's disk that can lose power: `raftkv-powerfs` (crates/powerfs)
//! mounted over a backing directory. It keeps what was written since the last
//! fsync in memory and forgets it on `crash`, the way LazyFS does for etcd's
//! robustness tests; `kill -9` alone cannot show a missing fsync because the
//! page cache outlives the process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub fn powerfs_binary() -> PathBuf {
    match std::env::var_os("RAFTKV_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("raftkv-powerfs"),
        None => super::node_binary().with_file_name("raftkv-powerfs"),
    }
}

pub struct PowerFs {
    pub mountpoint: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PowerFs {
    /// Mounts a power-loss file system at `mountpoint`, its durable contents
    /// in `backing`. Needs /dev/fuse and root, which CI has.
    pub fn mount(backing: &Path, mountpoint: &Path) -> PowerFs {
        std::fs::create_dir_all(backing).expect("create backing dir");
        std::fs::create_dir_all(mountpoint).expect("create mountpoint");
        assert!(
            Path::new("/dev/fuse").exists(),
            "power-loss tests need /dev/fuse (and root) to mount raftkv-powerfs"
        );
        let mut child = Command::new(powerfs_binary())
            .arg("--backing")
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", powerfs_binary().display()));
        let stdin = child.stdin.take();
        let mut fs = PowerFs {
            mountpoint: mountpoint.to_path_buf(),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
            child,
            stdin,
        };
        let ready = fs.read_line();
        assert_eq!(ready, "ready", "raftkv-powerfs did not mount {}", mountpoint.display());
        fs
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from raftkv-powerfs");
        line.trim_end().to_string()
    }

    fn command(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("raftkv-powerfs stdin open");
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .expect("write to raftkv-powerfs");
        self.read_line()
    }

    /// Drops every byte not fsynced; the processes using the mount must be
    /// dead and reaped. Returns the bytes dropped.
    pub fn crash(&mut self) -> u64 {
        let answer = self.command("crash");
        // "crashed <N> bytes <M> files"
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer to crash: {answer:?}"))
    }
}

impl Drop for PowerFs {
    /// Closing stdin unmounts and ends the file system.
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}
