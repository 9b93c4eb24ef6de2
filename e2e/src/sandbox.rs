//! The `enter` and `join` helpers of `raftkv-podrunner`: what a container
//! runtime does between fork and exec, done in a fresh single-threaded
//! process (the runner re-executes itself) so no multi-threaded fork hazard
//! exists, and finishing with `execve`, so the pid the runner recorded *is*
//! the container's process.
//!
//! `enter` builds the pod's view of the filesystem without touching the
//! host's:
//!
//! 1. join the pod's network namespace; new mount and UTS namespaces; the
//!    pod's hostname; every mount private (nothing propagates back);
//! 2. a tmpfs root R, into which each top-level directory of the host is
//!    bind-mounted (`/usr`, `/etc`, `/proc`, ...), with fresh tmpfs `/run`
//!    and `/tmp`;
//! 3. the pod's volumes, hosts file and resolv.conf bind-mounted at their
//!    paths. A mount point missing from a host-backed directory is never
//!    created on the host: that directory is first *shadowed* in R (a tmpfs
//!    over it, re-populated with binds of its entries) and the mount point
//!    made in the tmpfs. Inside a volume, missing mount points are created
//!    in the volume, as runc does;
//! 4. chroot into R, setsid, exec the container's program.
//!
//! Shadows are planned in a dry run over every mount target and made
//! shallowest first before any bind, because a shadow made later would hide
//! the binds already made under it.
//!
//! Mounts live in the pod's mount namespace only and vanish with its last
//! process, so nothing is left mounted on the host.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One bind mount into the pod's root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything `enter` needs, written by the runner as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    pub netns: PathBuf,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
}

fn sys<T>(what: impl Into<String>, r: nix::Result<T>) -> Result<T> {
    r.map_err(|errno| Error::Sandbox {
        what: what.into(),
        errno,
    })
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(what, e))
}

fn cstring(s: impl AsRef<std::ffi::OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|e| {
        Error::io(
            "argument with a NUL byte",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    sys(
        format!("bind {} on {}", source.display(), target.display()),
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )
}

fn tmpfs(target: &Path, mode: &str) -> Result<()> {
    sys(
        format!("tmpfs on {}", target.display()),
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(mode),
        ),
    )
}

/// Makes an empty mount point of the same kind as `host` at `at`.
fn mount_point_like(host: &Path, at: &Path) -> Result<Option<()>> {
    let meta = io(format!("stat {}", host.display()), std::fs::symlink_metadata(host))?;
    if meta.file_type().is_symlink() {
        let t = io("readlink", std::fs::read_link(host))?;
        io(format!("symlink {}", at.display()), std::os::unix::fs::symlink(t, at))?;
        return Ok(None);
    }
    if meta.is_dir() {
        io(format!("mkdir {}", at.display()), std::fs::create_dir(at))?;
    } else {
        io(format!("create {}", at.display()), std::fs::write(at, b""))?;
    }
    Ok(Some(()))
}

/// The pod's root under construction: which paths are host-backed (must not
/// be written) and which are ours (tmpfs or volume).
struct Root {
    dir: PathBuf,
    /// rel path → true when ours. The deepest recorded ancestor decides.
    ours: BTreeMap<PathBuf, bool>,
    /// Planning pass: record the directories that need a shadow, change nothing.
    dry_run: bool,
    planned: Vec<PathBuf>,
}

impl Root {
    fn is_ours(&self, rel: &Path) -> bool {
        rel.ancestors().find_map(|a| self.ours.get(a)).copied().unwrap_or(true)
    }

    /// Replaces host-backed directory `rel` by a tmpfs holding binds of its entries.
    fn shadow(&mut self, rel: &Path) -> Result<()> {
        if self.is_ours(rel) {
            return Ok(());
        }
        if self.dry_run {
            self.planned.push(rel.to_path_buf());
            self.ours.insert(rel.to_path_buf(), true);
            return Ok(());
        }
        let host = Path::new("/").join(rel);
        let at = self.dir.join(rel);
        let entries = io(format!("list {}", host.display()), std::fs::read_dir(&host))?;
        tmpfs(&at, "mode=755")?;
        for e in entries {
            let e = io("read dir entry", e)?;
            let (h, a) = (e.path(), at.join(e.file_name()));
            if mount_point_like(&h, &a)?.is_some() {
                bind(&h, &a)?;
                self.ours.insert(rel.join(e.file_name()), false);
            }
        }
        self.ours.insert(rel.to_path_buf(), true);
        Ok(())
    }

    /// Makes `rel` exist inside R as a directory (`want_dir`) or a file,
    /// following symlinks within R, and returns the resolved path.
    fn ensure(&mut self, rel: &Path, want_dir: bool) -> Result<PathBuf> {
        let mut comps = walk_parts(rel);
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = comps.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let full = self.dir.join(&next);
            let last = comps.is_empty();
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(Error::io(
                            format!("resolve {}", rel.display()),
                            std::io::Error::other("symlink loop"),
                        ));
                    }
                    let target = io("readlink", std::fs::read_link(&full))?;
                    if target.is_absolute() {
                        cur = PathBuf::new();
                    }
                    let mut front = walk_parts(&target);
                    front.extend(comps);
                    comps = front;
                }
                Ok(m) if last && m.is_dir() == want_dir => return Ok(next),
                Ok(_) if last => {
                    // Wrong kind (a file where a directory must be): replace it in a shadow.
                    self.shadow(&cur)?;
                    if self.dry_run {
                        return Ok(next);
                    }
                    let _ = umount2(&full, MntFlags::MNT_DETACH);
                    self.ours.remove(&next);
                    if full.is_dir() {
                        io("rmdir", std::fs::remove_dir(&full))?;
                    } else {
                        io("rm", std::fs::remove_file(&full))?;
                    }
                    self.create(&full, want_dir)?;
                    return Ok(next);
                }
                Ok(m) if m.is_dir() => cur = next,
                Ok(_) => {
                    return Err(Error::io(
                        format!("mount point {}", rel.display()),
                        std::io::Error::other(format!("{} is not a directory", next.display())),
                    ));
                }
                Err(_) => {
                    self.shadow(&cur)?;
                    self.create(&full, want_dir || !last)?;
                    if last {
                        return Ok(next);
                    }
                    cur = next;
                }
            }
        }
        Ok(cur)
    }

    fn create(&self, full: &Path, dir: bool) -> Result<()> {
        if self.dry_run {
            Ok(())
        } else if dir {
            io(format!("mkdir {}", full.display()), std::fs::create_dir_all(full))
        } else {
            io(format!("create {}", full.display()), std::fs::write(full, b""))
        }
    }
}

/// Builds the sandbox and execs the container; returns only on failure.
pub fn enter(spec: &SandboxSpec) -> Result<std::convert::Infallible> {
    // The binary is opened on the host, before anything is hidden: it may
    // live under /tmp or /run (a target dir there), which the pod gets fresh.
    let program = io(
        format!("open {}", spec.program.display()),
        std::fs::File::open(&spec.program),
    )?;
    let ns = io(
        format!("open {}", spec.netns.display()),
        std::fs::File::open(&spec.netns),
    )?;
    sys("setns(net)", setns(&ns, CloneFlags::CLONE_NEWNET))?;
    drop(ns);
    sys(
        "unshare(mount, uts)",
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS),
    )?;
    sys("sethostname", nix::unistd::sethostname(&spec.hostname))?;
    sys(
        "make / private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    // Our own /run (in this namespace only) holds R, so R is never inside a
    // host directory that is bind-mounted into R.
    tmpfs(Path::new("/run"), "mode=755")?;
    let dir = PathBuf::from("/run/raftkv-pod-root");
    io("mkdir root", std::fs::create_dir(&dir))?;
    tmpfs(&dir, "mode=755")?;
    let mut root = Root {
        dir: dir.clone(),
        ours: BTreeMap::new(),
        dry_run: false,
        planned: Vec::new(),
    };
    root.ours.insert(PathBuf::new(), true);
    for e in io("list /", std::fs::read_dir("/"))? {
        let e = io("read dir entry", e)?;
        let name = e.file_name();
        if name == "run" || name == "tmp" {
            continue;
        }
        let at = dir.join(&name);
        if mount_point_like(&e.path(), &at)?.is_some() {
            bind(&e.path(), &at)?;
            root.ours.insert(PathBuf::from(&name), false);
        }
    }
    for (d, mode) in [("run", "mode=755"), ("tmp", "mode=1777")] {
        io("mkdir", std::fs::create_dir_all(dir.join(d)))?;
        tmpfs(&dir.join(d), mode)?;
    }
    // Parents before children, as the kubelet sorts mounts.
    let mut mounts = spec.mounts.clone();
    mounts.sort_by_key(|m| m.target.components().count());
    let mut targets = Vec::new();
    for m in &mounts {
        let is_dir = io(format!("stat {}", m.source.display()), std::fs::metadata(&m.source))?.is_dir();
        targets.push((m.target.strip_prefix("/").unwrap_or(&m.target).to_path_buf(), is_dir));
    }
    let workdir = if spec.workdir.is_empty() {
        "/".to_string()
    } else {
        spec.workdir.clone()
    };
    let wd_rel = Path::new(&workdir)
        .strip_prefix("/")
        .unwrap_or(Path::new(&workdir))
        .to_path_buf();
    // Shadowing a directory hides what was mounted under it, so every shadow
    // is planned first and made, shallowest first, before any bind.
    let initial = root.ours.clone();
    root.dry_run = true;
    for (rel, is_dir) in &targets {
        root.ensure(rel, *is_dir)?;
    }
    root.ensure(&wd_rel, true)?;
    let mut planned = std::mem::take(&mut root.planned);
    planned.sort_by_key(|p| p.components().count());
    root.ours = initial;
    root.dry_run = false;
    for d in &planned {
        root.shadow(d)?;
    }
    for (m, (rel, is_dir)) in mounts.iter().zip(&targets) {
        let rel = root.ensure(rel, *is_dir)?;
        let at = dir.join(&rel);
        bind(&m.source, &at)?;
        if m.read_only {
            sys(
                format!("read-only {}", at.display()),
                mount(
                    None::<&str>,
                    &at,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                ),
            )?;
        }
        root.ours.insert(rel, true);
    }
    root.ensure(&wd_rel, true)?;
    sys("chdir root", nix::unistd::chdir(&dir))?;
    sys("chroot", nix::unistd::chroot("."))?;
    sys(format!("chdir {workdir}"), nix::unistd::chdir(workdir.as_str()))?;
    exec(&spec.program, Some(&program), &spec.argv, &spec.env)
}

/// Execs `program` (through `opened`, a descriptor of it, when given).
fn exec(
    program: &Path,
    opened: Option<&std::fs::File>,
    argv: &[String],
    env: &[(String, String)],
) -> Result<std::convert::Infallible> {
    // setsid: the container is its own process group, so the runner can
    // stop or kill everything it started at once.
    sys("setsid", nix::unistd::setsid())?;
    let prog = cstring(program)?;
    let argv: Vec<CString> = argv.iter().map(cstring).collect::<Result<_>>()?;
    let env: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}")))
        .collect::<Result<_>>()?;
    let what = format!("exec {}", program.display());
    match opened {
        Some(file) => sys(what, nix::unistd::fexecve(file, &argv, &env)),
        None => sys(what, nix::unistd::execve(&prog, &argv, &env)),
    }
}

/// Runs `argv` inside the namespaces and root of container process `pid`
/// with that process's environment (exec probes); returns only on failure.
pub fn join(pid: i32, argv: &[String]) -> Result<std::convert::Infallible> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let environ = io("read environ", std::fs::read(proc_dir.join("environ")))?;
    let env: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let open = |n: &str| {
        io(
            format!("open {}/{n}", proc_dir.display()),
            std::fs::File::open(proc_dir.join(n)),
        )
    };
    let (net, mnt, uts, root) = (open("ns/net")?, open("ns/mnt")?, open("ns/uts")?, open("root")?);
    sys("setns(net)", setns(&net, CloneFlags::CLONE_NEWNET))?;
    sys("setns(uts)", setns(&uts, CloneFlags::CLONE_NEWUTS))?;
    sys("setns(mnt)", setns(&mnt, CloneFlags::CLONE_NEWNS))?;
    sys("fchdir root", nix::unistd::fchdir(&root))?;
    sys("chroot", nix::unistd::chroot("."))?;
    sys("chdir /", nix::unistd::chdir("/"))?;
    let first = argv
        .first()
        .ok_or_else(|| Error::io("exec", std::io::Error::other("empty command")))?;
    let program = if first.contains('/') {
        PathBuf::from(first)
    } else {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| crate::env::DEFAULT_PATH.into());
        path.split(':')
            .map(|d| Path::new(d).join(first))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::io(
                    format!("exec {first}"),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?
    };
    exec(&program, None, argv, &env)
}

/// The parts of `p` a walk inside the sandbox root follows: names and `..`
/// (the root and `.` mean nothing there).
fn walk_parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}
