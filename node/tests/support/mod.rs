//! A harness that runs real `raftkv-node` processes on loopback.
//!
//! Binaries come from `RAFTKV_BIN_DIR` (exported by `make test`), falling back
//! to the one cargo built for this test run. Ports are asked of the OS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftkv_client::admin_proto as admin;
use raftkv_client::{Admin, Client};

pub mod hostile;
pub mod partition;
pub mod powerfs;

pub use powerfs::PowerFs;

pub fn node_binary() -> PathBuf {
    match std::env::var_os("RAFTKV_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("raftkv-node"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_raftkv-node")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    pub admin: u16,
    pub http: u16,
}

pub struct Node {
    pub dir: PathBuf,
    /// The loopback address the node listens on, advertises and sends from.
    pub host: String,
    pub ports: Ports,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    pub id: u64,
    /// The node's data directory is this power-loss file system's mount
    /// (declared after `child`, so the process is gone before it unmounts).
    pub disk: Option<PowerFs>,
    /// The open-file limit the process starts under (`prlimit`), if not the test's own.
    pub fd_limit: Option<u64>,
}

impl Node {
    pub fn client_ep(&self) -> String {
        format!("{}:{}", self.host, self.ports.client)
    }
    pub fn admin_ep(&self) -> String {
        format!("{}:{}", self.host, self.ports.admin)
    }
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.ports.http)
    }

    /// The sum of every series of metric `name` this node exports.
    pub fn metric(&self, name: &str) -> f64 {
        http_get(&self.http_url("/metrics"))
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let p = self.ports;
        let mut cmd = match self.fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(node_binary());
                c
            }
            None => Command::new(node_binary()),
        };
        let child = cmd
            .args(["--data-dir", self.dir.to_str().expect("utf-8 path")])
            .args(["--listen-host", &self.host, "--advertise-host", &self.host])
            .args([
                "--client-port",
                &p.client.to_string(),
                "--peer-port",
                &p.peer.to_string(),
            ])
            .args(["--admin-port", &p.admin.to_string(), "--http-port", &p.http.to_string()])
            // Quick elections, unless the test asks for its own timing.
            .args(if self.extra_args.iter().any(|a| a == "--election-timeout-ms") {
                &[][..]
            } else {
                &["--heartbeat-ms", "100", "--election-timeout-ms", "600"][..]
            })
            .arg("--audit-durability")
            // A test may set its own free-space threshold; clap refuses a flag given twice.
            .args(if self.extra_args.iter().any(|a| a == "--min-free-mb") {
                &[][..]
            } else {
                &["--min-free-mb", "1"][..]
            })
            .args(&self.extra_args)
            .env("RAFTKV_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", node_binary().display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `kill -9`: no chance to flush or hand anything off.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A power loss: `kill -9`, then everything the node had not fsynced is
    /// gone (needs a node started on a [`PowerFs`]); returns the bytes lost.
    pub fn power_loss(&mut self) -> u64 {
        self.kill9();
        self.disk
            .as_mut()
            .expect("power loss needs a node on a power-loss file system")
            .crash()
    }

    /// SIGSTOP or SIGCONT: a paused process keeps its sockets but answers nothing.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, sig);
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn sigterm(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
        let until = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > until {
                let _ = c.kill();
                panic!(
                    "node did not exit within {within:?} of SIGTERM; log: {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn status(&self) -> Result<admin::NodeStatusResponse, tonic::Status> {
        let mut c = Admin::node(&self.admin_ep()).expect("admin endpoint");
        c.node_status(admin::NodeStatusRequest {}).await.map(|r| r.into_inner())
    }

    /// Waits until the admin port answers; returns the node's status.
    pub async fn wait_up(&mut self, within: Duration) -> admin::NodeStatusResponse {
        self.start_up(within)
            .await
            .unwrap_or_else(|log| panic!("node exited during start-up; log:\n{log}"))
    }

    /// Like [`Node::wait_up`], but a node that exits during start-up is an
    /// `Err` carrying its log tail, so the caller can retry.
    async fn start_up(&mut self, within: Duration) -> Result<admin::NodeStatusResponse, String> {
        let until = Instant::now() + within;
        loop {
            if let Ok(s) = self.status().await {
                self.id = s.node_id;
                return Ok(s);
            }
            if !self.is_running() {
                return Err(self.log_tail());
            }
            assert!(
                Instant::now() < until,
                "node did not come up; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A plain HTTP/1.1 GET: the whole response (status line, headers, body),
/// or what arrived before the connection failed or went 5 s silent.
pub fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).expect("a path");
    let Ok(mut s) = std::net::TcpStream::connect(hostport) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub shards: u32,
    pub options: Options,
}

/// How a test cluster's nodes are laid out.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Each node on its own loopback address (127.a.b.c), which it also sends
    /// from, so traffic between two nodes can be cut (`partition`).
    pub own_addresses: bool,
    /// Each node's data directory on its own [`PowerFs`].
    pub power_loss_disks: bool,
    /// Each node's open-file limit (soft and hard), set with `prlimit`.
    pub fd_limit: Option<u64>,
}

/// A /24 of loopback addresses no other cluster of this machine uses now:
/// picked from the pid and a counter, so parallel tests and runs differ.
fn next_address_block() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    format!("127.{}.{}", 20 + pid % 200, (pid / 200 + n * 7) % 250 + 1)
}

impl Cluster {
    /// Starts `n` unjoined nodes.
    pub async fn start(n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_with(n, extra_args, Options::default()).await
    }

    /// Starts `n` unjoined nodes laid out as `options` says.
    pub async fn start_with(n: usize, extra_args: &[&str], options: Options) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("raftkv-test-")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster {
            root,
            nodes: Vec::new(),
            shards: 0,
            options,
        };
        for _ in 0..n {
            c.add_node_process(extra_args).await;
        }
        c
    }

    /// Starts one more (unjoined) node process.
    pub async fn add_node_process(&mut self, extra_args: &[&str]) -> usize {
        let i = self.nodes.len();
        let block = self.options.own_addresses.then(next_address_block);
        // A free port can be taken by another process between `free_port`
        // and the node's bind (tests run in parallel): then start over with
        // new ports and a fresh directory.
        for attempt in 1.. {
            let dir = self.root.path().join(format!("node{i}"));
            let host = match &block {
                Some(b) => format!("{b}.{}", 10 + i),
                None => "127.0.0.1".to_string(),
            };
            let disk = self.options.power_loss_disks.then(|| {
                let backing = self.root.path().join(format!("node{i}.disk"));
                PowerFs::mount(&backing, &dir)
            });
            let ports = Ports {
                client: free_port(),
                peer: free_port(),
                admin: free_port(),
                http: free_port(),
            };
            let mut node = Node {
                log: self.root.path().join(format!("node{i}.log")),
                dir,
                host,
                ports,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                child: None,
                id: 0,
                disk,
                fd_limit: self.options.fd_limit,
            };
            node.start();
            match node.start_up(Duration::from_secs(30)).await {
                Ok(s) => {
                    assert!(!s.joined, "a fresh node must start unjoined");
                    self.nodes.push(node);
                    return i;
                }
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    let dir = node.dir.clone();
                    let log = node.log.clone();
                    // Unmounts a power-loss disk before its directory goes.
                    drop(node);
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = std::fs::remove_dir_all(self.root.path().join(format!("node{i}.disk")));
                    let _ = std::fs::remove_file(&log);
                }
                Err(log) => panic!("node exited during start-up; log:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub fn member(&self, i: usize) -> admin::Member {
        let n = &self.nodes[i];
        admin::Member {
            node_id: n.id,
            host: n.host.clone(),
            client_port: n.ports.client.into(),
            peer_port: n.ports.peer.into(),
            admin_port: n.ports.admin.into(),
        }
    }

    /// The request that bootstraps every node of this cluster as cluster "test".
    pub fn bootstrap_request(&self, shards: u32, rf: u32) -> admin::BootstrapRequest {
        admin::BootstrapRequest {
            cluster_id: "test".into(),
            shards,
            replication_factor: rf,
            members: (0..self.nodes.len()).map(|i| self.member(i)).collect(),
        }
    }

    pub async fn bootstrap(&mut self, shards: u32, rf: u32) {
        self.shards = shards;
        let admin = Admin::new(&[self.nodes[0].admin_ep()]).expect("admin");
        admin
            .bootstrap(self.bootstrap_request(shards, rf))
            .await
            .unwrap_or_else(|e| panic!("bootstrap: {e}\n{}", self.nodes[0].log_tail()));
        self.wait_all_leaders(Duration::from_secs(30)).await;
    }

    pub fn client_eps(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_ep()).collect()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.client_eps()).expect("client")
    }

    /// A client whose first choice is node `i` (then the others in turn), so
    /// many clients spread over the nodes.
    pub fn client_from(&self, i: usize) -> Client {
        Client::new(&self.eps_from(i)).expect("client")
    }

    /// Like [`Cluster::client_from`], but never straight to a leader: every
    /// request goes to node `i` first (then the others), which forward.
    pub fn client_pinned_from(&self, i: usize) -> Client {
        Client::pinned(&self.eps_from(i)).expect("client")
    }

    fn eps_from(&self, i: usize) -> Vec<String> {
        let mut eps = self.client_eps();
        let n = eps.len().max(1);
        eps.rotate_left(i % n);
        eps
    }

    /// A client whose every request goes to node `i` (which forwards what
    /// it does not lead), never straight to a leader.
    pub fn client_via(&self, i: usize) -> Client {
        Client::pinned(&[self.nodes[i].client_ep()]).expect("client")
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.nodes.iter().map(|n| n.admin_ep()).collect::<Vec<_>>()).expect("admin")
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Shard → leader id, as the running nodes report it (leaders only).
    pub async fn leaders(&mut self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for n in &mut self.nodes {
            if !n.is_running() {
                continue;
            }
            if let Ok(s) = n.status().await {
                for sh in s.shards.iter().filter(|s| !s.meta && s.role == "leader") {
                    out.insert(sh.shard, s.node_id);
                }
            }
        }
        out
    }

    pub async fn wait_all_leaders(&mut self, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let l = self.leaders().await;
            if l.len() == self.shards as usize {
                return;
            }
            assert!(
                Instant::now() < until,
                "only shards {:?} have leaders after {within:?}",
                l.keys().collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every replica's digest of `shard` (voters and learners in the map).
    pub async fn digests(&self, shard: u32) -> Vec<admin::ShardDigestResponse> {
        let map = self.admin().cluster_map().await.expect("cluster map");
        let r = map
            .shards
            .iter()
            .find(|s| s.shard == shard)
            .expect("the shard is in the map");
        let mut out = Vec::new();
        for id in r.voters.iter().chain(r.learners.iter()) {
            let ep = self.nodes[self.index_of(*id)].admin_ep();
            let d = Admin::node(&ep)
                .expect("admin")
                .shard_digest(admin::ShardDigestRequest { shard })
                .await
                .unwrap_or_else(|e| panic!("digest of shard {shard} on node {id}: {e}"))
                .into_inner();
            out.push(d);
        }
        out
    }

    /// Waits until every replica of `shard` (at least three) has the same
    /// digest and key count at the same applied index.
    pub async fn assert_identical(&self, shard: u32) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.digests(shard).await;
            let same = d.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index
                    && w[0].digest == w[1].digest
                    && w[0].key_count == w[1].key_count
            });
            if same && d.len() >= 3 {
                return;
            }
            assert!(Instant::now() < until, "replicas of shard {shard} still differ: {d:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every running replica of every shard has applied what its leader committed.
    pub async fn wait_caught_up(&mut self, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
            let mut applied: Vec<(u32, u64, u64)> = Vec::new();
            for n in &mut self.nodes {
                if !n.is_running() {
                    continue;
                }
                if let Ok(s) = n.status().await {
                    for sh in s.shards.iter().filter(|s| !s.meta) {
                        if sh.role == "leader" {
                            committed.insert(sh.shard, sh.committed_index);
                        }
                        applied.push((sh.shard, s.node_id, sh.applied_index));
                    }
                }
            }
            let behind: Vec<_> = applied
                .iter()
                .filter(|(s, _, a)| committed.get(s).is_none_or(|c| a < c))
                .collect();
            if behind.is_empty() && committed.len() == self.shards as usize {
                return;
            }
            assert!(
                Instant::now() < until,
                "replicas still behind after {within:?}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    /// Adds a replica of `shard` on node `id` and promotes it once it has
    /// caught up (promotion is refused until then).
    pub async fn add_voter(&self, shard: u32, id: u64) -> admin::ShardStatus {
        let a = self.admin();
        a.add_replica(shard, id)
            .await
            .unwrap_or_else(|e| panic!("adding shard {shard} to node {id}: {e}"));
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match a.promote_replica(shard, id).await {
                Ok(s) => return s,
                Err(raftkv_client::ClientError::Status(st))
                    if st.code() == tonic::Code::FailedPrecondition && Instant::now() < until =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("promoting node {id} in shard {shard}: {e}"),
            }
        }
    }

    /// Starts nodes on the data directories and addresses of a cluster
    /// written earlier (`fixture`, a tar.gz of `node<i>/` directories and a
    /// `layout` file of `host client peer admin http` lines), on exactly
    /// those addresses, since its map names them.
    pub async fn start_from_fixture(fixture: &std::path::Path, shards: u32) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("raftkv-test-")
            .tempdir()
            .expect("temp dir");
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(fixture)
            .arg("-C")
            .arg(root.path())
            .status()
            .expect("run tar");
        assert!(status.success(), "unpacking {}", fixture.display());
        let layout = std::fs::read_to_string(root.path().join("layout")).expect("fixture layout");
        let mut c = Cluster {
            root,
            nodes: Vec::new(),
            shards,
            options: Options::default(),
        };
        for (i, line) in layout.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |k: usize| f[k].parse::<u16>().expect("a port");
            let ports = Ports {
                client: port(1),
                peer: port(2),
                admin: port(3),
                http: port(4),
            };
            assert_eq!(c.start_node_at(f[0], ports, &[]).await, i);
        }
        c
    }

    /// Starts node `i` (the next one) on `host` and `ports`, with whatever its
    /// directory holds; returns its index.
    async fn start_node_at(&mut self, host: &str, ports: Ports, extra_args: &[&str]) -> usize {
        let i = self.nodes.len();
        let mut node = Node {
            log: self.root.path().join(format!("node{i}.log")),
            dir: self.root.path().join(format!("node{i}")),
            host: host.to_string(),
            ports,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            id: 0,
            disk: None,
            fd_limit: None,
        };
        node.start();
        node.wait_up(Duration::from_secs(30)).await;
        self.nodes.push(node);
        i
    }

    /// Writes the `layout` file [`Cluster::start_from_fixture`] reads.
    pub fn write_layout(&self, to: &std::path::Path) {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let p = n.ports;
                format!("{} {} {} {} {}", n.host, p.client, p.peer, p.admin, p.http)
            })
            .collect();
        std::fs::write(to, lines.join("\n") + "\n").expect("write layout");
    }

    /// Starts `n` unjoined nodes on `host` at the fixed ports `base`,
    /// `base + 1`, … (four a node): for a fixture whose map must name
    /// addresses a later test can listen on again.
    pub async fn start_fixed(n: usize, host: &str, base: u16, extra_args: &[&str]) -> Cluster {
        let mut c = Cluster::start(0, extra_args).await;
        for i in 0..n {
            let at = base + 4 * i as u16;
            let ports = Ports {
                client: at,
                peer: at + 1,
                admin: at + 2,
                http: at + 3,
            };
            c.start_node_at(host, ports, extra_args).await;
        }
        c
    }
}

impl Cluster {
    fn keep_dir(&mut self) -> PathBuf {
        std::mem::replace(&mut self.root, tempfile::tempdir().expect("temp dir")).keep()
    }

    /// Stops the cluster and keeps its directory (data, logs, history).
    pub fn keep(mut self) -> PathBuf {
        let dir = self.keep_dir();
        self.nodes.clear();
        dir
    }
}

impl Drop for Cluster {
    /// A failed test keeps its data and logs, and prints each node's log tail.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!("---- node {i} ({}) log tail:\n{}", n.id, n.log_tail());
            }
            eprintln!("---- test cluster kept in {}", self.keep_dir().display());
        }
        // Processes first, then their power-loss disks, then the directory.
        self.nodes.clear();
    }
}
