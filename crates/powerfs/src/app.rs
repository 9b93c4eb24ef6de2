//! The binary: argument parsing, mounting, the stdin/stdout control protocol
//! and a clean shutdown.
//!
//! Protocol (one command per stdin line, one answer line per command on
//! stdout, flushed):
//!
//! | command | answer |
//! |---------|--------|
//! | `crash` | `crashed <N> bytes <M> files` (unsynced data dropped) |
//! | `stats` | `dirty <N> bytes <M> files` |
//! | `sync`  | `synced` (or `error sync failed: <reason>`) |
//! | other   | `error unknown command` |
//!
//! Before the first command the process prints `ready` once the mount is
//! live. stdin EOF, SIGTERM, SIGINT or SIGHUP unmount (falling back to a lazy
//! `MNT_DETACH` unmount when busy), write any unsynced data to the backing
//! directory and exit 0.

use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};

use crate::fs::{Control, PowerFs};

const USAGE: &str = "usage: raftkv-powerfs --backing <DIR> <MOUNTPOINT>";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The backing directory (the "disk").
    pub backing: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Parse `--backing <DIR> <MOUNTPOINT>` (also `--backing=<DIR>`).
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut backing = None;
    let mut mountpoint = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--backing" {
            let v = it.next().ok_or("--backing needs a value")?;
            backing = Some(PathBuf::from(v));
        } else if let Some(v) = bytes.strip_prefix(b"--backing=") {
            backing = Some(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        } else if bytes == b"-h" || bytes == b"--help" {
            return Err(USAGE.to_string());
        } else if bytes.starts_with(b"-") {
            return Err(format!("unknown option {}", arg.to_string_lossy()));
        } else if mountpoint.is_none() {
            mountpoint = Some(PathBuf::from(arg));
        } else {
            return Err(format!("unexpected argument {}", arg.to_string_lossy()));
        }
    }
    Ok(Args {
        backing: backing.ok_or("missing --backing <DIR>")?,
        mountpoint: mountpoint.ok_or("missing <MOUNTPOINT>")?,
    })
}

/// Answer one protocol line. Returns the answer and the FUSE inodes whose
/// kernel caches must be invalidated (after a crash).
pub fn respond(control: &Control, line: &str) -> (String, Vec<u64>) {
    match line.trim() {
        "crash" => {
            let r = control.crash();
            (
                format!("crashed {} bytes {} files", r.dropped.bytes, r.dropped.files),
                r.inodes,
            )
        }
        "stats" => {
            let s = control.stats();
            (format!("dirty {} bytes {} files", s.bytes, s.files), Vec::new())
        }
        "sync" => match control.sync_all() {
            Ok(()) => ("synced".to_string(), Vec::new()),
            Err(e) => (format!("error sync failed: {e}"), Vec::new()),
        },
        _ => ("error unknown command".to_string(), Vec::new()),
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// True if `path` (canonical) is a mount point in this mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn detach(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

enum Event {
    Line(String),
    Eof,
    Signal(i32),
}

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block the shutdown signals in this thread (and so in every thread spawned
/// afterwards, including fuser's) and deliver them as events from a
/// dedicated `sigwait` thread.
fn spawn_signal_thread(tx: mpsc::Sender<Event>) -> io::Result<()> {
    let set = shutdown_signals();
    // SAFETY: valid set pointer; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: valid set and out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                let _ = tx.send(Event::Signal(sig));
                return;
            }
        }
    })?;
    Ok(())
}

fn spawn_stdin_thread(tx: mpsc::Sender<Event>) -> io::Result<()> {
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let stdin = io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Event::Line(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::Eof);
    })?;
    Ok(())
}

fn raise_fd_limit() {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn say(out: &mut impl Write, line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

fn mount(args: &Args) -> Result<(BackgroundSession, Control, PathBuf), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing (load the fuse module, or give the container \
             --device /dev/fuse)"
            .into());
    }
    let backing = args
        .backing
        .canonicalize()
        .map_err(|e| format!("backing directory {}: {e}", args.backing.display()))?;
    if !backing.is_dir() {
        return Err(format!("backing {} is not a directory", backing.display()));
    }
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!("mountpoint {} is not a directory", mountpoint.display()));
    }
    if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
        // Either way the file system would end up calling into its own mount
        // (a self-deadlock for a single-threaded FUSE server).
        return Err("the backing directory and the mountpoint must not contain each other".into());
    }
    let fs = PowerFs::new(&backing).map_err(|e| format!("backing {}: {e}", backing.display()))?;
    let control = fs.control();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("raftkv-powerfs".into()),
        MountOption::Subtype("raftkv-powerfs".into()),
        // Let the kernel check permissions from the attributes we report.
        MountOption::DefaultPermissions,
    ];
    // Processes of any user may use the mount (the node need not run as root).
    config.acl = SessionACL::All;
    let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(|e| {
        // SAFETY: trivial getter.
        let root = unsafe { libc::geteuid() } == 0;
        let hint = if root { "" } else { " (not running as root)" };
        format!("mounting {} failed: {e}{hint}", mountpoint.display())
    })?;
    Ok((session, control, mountpoint))
}

fn invalidate(notifier: &Notifier, inodes: &[u64]) {
    for &ino in inodes {
        // Attributes and any cached pages; ENOENT (not cached) is fine.
        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
    }
}

fn unmount(session: BackgroundSession, mountpoint: &Path) {
    if let Err(e) = session.umount_and_join() {
        eprintln!("raftkv-powerfs: unmount: {e}; detaching lazily");
        if let Err(e) = detach(mountpoint) {
            eprintln!("raftkv-powerfs: lazy unmount: {e}");
        }
    }
    if is_mount_point(mountpoint) {
        // Someone mounted over us or the unmount silently failed.
        if let Err(e) = detach(mountpoint) {
            eprintln!("raftkv-powerfs: {} is still mounted: {e}", mountpoint.display());
        }
    }
}

/// The whole program.
pub fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("raftkv-powerfs: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: umask always succeeds. Modes from the kernel are already
    // masked by the caller's umask; ours must not mask them again.
    unsafe { libc::umask(0) };
    raise_fd_limit();

    let (tx, rx) = mpsc::channel();
    // Before any other thread exists, so that all of them block the signals.
    if let Err(e) = spawn_signal_thread(tx.clone()) {
        eprintln!("raftkv-powerfs: signal setup: {e}");
        return ExitCode::FAILURE;
    }
    let (session, control, mountpoint) = match mount(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("raftkv-powerfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = session.notifier();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut serving = say(&mut out, "ready").is_ok();
    if serving && let Err(e) = spawn_stdin_thread(tx) {
        eprintln!("raftkv-powerfs: stdin thread: {e}");
        serving = false;
    }
    while serving {
        match rx.recv() {
            Ok(Event::Line(line)) => {
                let (answer, inodes) = respond(&control, &line);
                invalidate(&notifier, &inodes);
                // Nobody listening any more is a shutdown too.
                serving = say(&mut out, &answer).is_ok();
            }
            Ok(Event::Signal(sig)) => {
                eprintln!("raftkv-powerfs: signal {sig}, unmounting");
                serving = false;
            }
            Ok(Event::Eof) | Err(_) => serving = false,
        }
    }
    unmount(session, &mountpoint);
    let left = control.stats();
    if let Err(e) = control.sync_all() {
        eprintln!("raftkv-powerfs: writing unsynced data on exit: {e}");
        return ExitCode::FAILURE;
    }
    if left.files > 0 {
        eprintln!(
            "raftkv-powerfs: wrote {} unsynced bytes of {} files on exit",
            left.bytes, left.files
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(OsString::from))
    }

    #[test]
    fn parses_the_documented_forms() {
        let want = Args {
            backing: "/b".into(),
            mountpoint: "/m".into(),
        };
        assert_eq!(args(&["--backing", "/b", "/m"]), Ok(want.clone()));
        assert_eq!(args(&["/m", "--backing=/b"]), Ok(want));
        assert!(args(&["/m"]).is_err());
        assert!(args(&["--backing", "/b"]).is_err());
        assert!(args(&["--backing", "/b", "/m", "/x"]).is_err());
        assert!(args(&["--bogus", "/b", "/m"]).is_err());
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\\c"), b"/tmp/a b\\\\c");
        assert_eq!(unescape_mountinfo(r"\134"), b"\\");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
    }

    #[test]
    fn protocol_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = PowerFs::new(dir.path()).expect("fs");
        let c = fs.control();
        assert_eq!(respond(&c, "stats").0, "dirty 0 bytes 0 files");
        assert_eq!(respond(&c, "crash\r").0, "crashed 0 bytes 0 files");
        assert_eq!(respond(&c, "sync").0, "synced");
        assert_eq!(respond(&c, "reboot").0, "error unknown command");
        assert_eq!(respond(&c, "").0, "error unknown command");
    }
}
