//! Nemeses: the faults a run injects while the traffic runs, one at a time,
//! each undone before the next (etcd's failpoints and Jepsen's nemeses are
//! the model). A fault's schedule is time, not a condition: the point is to
//! hit the cluster while it is busy.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use raftkv_linearizability::Input;
use rand::Rng;
use rand::rngs::StdRng;

use crate::support::Cluster;
use crate::support::partition::Partitions;
use crate::traffic::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// `kill -9` the leader of shard 0, restart it 2 s later.
    Kill9Leader,
    /// `kill -9` the leader of shard 0 and restart it at once: what a
    /// restarted leader costs in write availability.
    CrashRestartLeader,
    /// `kill -9` a random node, restart it.
    Kill9Random,
    /// `kill -9` every node at once, restart them all.
    Kill9All,
    /// Power loss of shard 0's leader: `kill -9`, its unsynced writes gone.
    PowerLossLeader,
    /// Power loss of every node at once.
    PowerLossAll,
    /// SIGSTOP shard 0's leader, SIGCONT 2 s later.
    Pause,
    /// SIGTERM shard 0's leader (it hands off and exits), restart it.
    SigtermRestart,
    /// Cut shard 0's leader off from the other nodes, heal 3 s later.
    PartitionLeader,
    /// Cut a random node off from the others.
    PartitionRandom,
    /// Move a random shard's leadership to another voter.
    TransferLeader,
    /// Move a replica to a node that never hosted that shard: learner,
    /// promoted once caught up, then an old voter removed (needs 4 nodes).
    MoveReplica,
}

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill9Leader => "kill -9 leader",
            Nemesis::CrashRestartLeader => "kill -9 leader, restart at once",
            Nemesis::Kill9Random => "kill -9 random node",
            Nemesis::Kill9All => "kill -9 all nodes",
            Nemesis::PowerLossLeader => "power loss of leader",
            Nemesis::PowerLossAll => "power loss of all nodes",
            Nemesis::Pause => "SIGSTOP leader",
            Nemesis::SigtermRestart => "SIGTERM restart of leader",
            Nemesis::PartitionLeader => "partition leader",
            Nemesis::PartitionRandom => "partition random node",
            Nemesis::TransferLeader => "transfer leader",
            Nemesis::MoveReplica => "move replica (add/promote/remove)",
        }
    }

    pub fn needs_power_loss_disks(self) -> bool {
        matches!(self, Nemesis::PowerLossLeader | Nemesis::PowerLossAll)
    }
}

/// Carries what the faults need between steps.
pub struct Injector {
    pub partitions: Partitions,
    /// For the reads that greet a restarted node.
    work: Workload,
    /// Shards already moved once: a node a replica left is tombstoned for
    /// that shard, so each shard can move to its one unused node only once.
    moved: BTreeSet<u32>,
    pub faults: usize,
    pub log: Vec<String>,
    pub bytes_lost: u64,
}

const DOWN: Duration = Duration::from_secs(2);

/// Client ids of the reads that greet a restarted node (one per key).
const GREETER: u64 = 1 << 32;

impl Injector {
    pub fn new(work: Workload) -> Injector {
        Injector {
            partitions: Partitions::new(),
            work,
            moved: BTreeSet::new(),
            faults: 0,
            log: Vec::new(),
            bytes_lost: 0,
        }
    }

    fn note(&mut self, start: Instant, what: String) {
        self.log.push(format!("{:>8.3} {what}", start.elapsed().as_secs_f64()));
    }

    /// The node leading shard 0 now, else a random running node.
    async fn target(&self, c: &mut Cluster, rng: &mut StdRng, leader: bool) -> usize {
        if leader && let Some(id) = c.leaders().await.get(&0) {
            return c.index_of(*id);
        }
        rng.random_range(0..c.nodes.len())
    }

    /// Injects one fault and undoes it.
    pub async fn step(&mut self, n: Nemesis, c: &mut Cluster, rng: &mut StdRng, start: Instant) {
        self.faults += 1;
        match n {
            Nemesis::Kill9Leader | Nemesis::Kill9Random | Nemesis::PowerLossLeader | Nemesis::CrashRestartLeader => {
                let i = self.target(c, rng, n != Nemesis::Kill9Random).await;
                if n == Nemesis::PowerLossLeader {
                    let lost = c.nodes[i].power_loss();
                    self.bytes_lost += lost;
                    self.note(
                        start,
                        format!("power loss of node {} ({lost} unsynced bytes lost)", c.nodes[i].id),
                    );
                } else {
                    c.nodes[i].kill9();
                    self.note(start, format!("kill -9 node {}", c.nodes[i].id));
                }
                if n != Nemesis::CrashRestartLeader {
                    tokio::time::sleep(DOWN).await;
                }
                c.nodes[i].start();
                self.note(start, format!("restarted node {}", c.nodes[i].id));
                self.greet(c.nodes[i].client_ep()).await;
            }
            Nemesis::Kill9All | Nemesis::PowerLossAll => {
                for i in 0..c.nodes.len() {
                    if n == Nemesis::PowerLossAll {
                        self.bytes_lost += c.nodes[i].power_loss();
                    } else {
                        c.nodes[i].kill9();
                    }
                }
                self.note(start, n.name().to_string());
                tokio::time::sleep(DOWN).await;
                for node in &mut c.nodes {
                    node.start();
                }
                self.note(start, "restarted all nodes".into());
            }
            Nemesis::Pause => {
                let i = self.target(c, rng, true).await;
                c.nodes[i].signal(Signal::SIGSTOP);
                self.note(start, format!("SIGSTOP node {}", c.nodes[i].id));
                tokio::time::sleep(DOWN).await;
                c.nodes[i].signal(Signal::SIGCONT);
                self.note(start, format!("SIGCONT node {}", c.nodes[i].id));
            }
            Nemesis::SigtermRestart => {
                let i = self.target(c, rng, true).await;
                let status = tokio::task::block_in_place(|| c.nodes[i].sigterm(Duration::from_secs(30)));
                self.note(start, format!("SIGTERM node {} ({status})", c.nodes[i].id));
                c.nodes[i].start();
                self.note(start, format!("restarted node {}", c.nodes[i].id));
            }
            Nemesis::PartitionLeader | Nemesis::PartitionRandom => {
                let i = self.target(c, rng, n == Nemesis::PartitionLeader).await;
                let hosts: Vec<String> = c.nodes.iter().map(|n| n.host.clone()).collect();
                self.partitions.isolate(&hosts[i], &hosts);
                let other = (i + 1) % c.nodes.len();
                assert!(
                    !Partitions::can_connect(&hosts[i], &hosts[other], c.nodes[other].ports.peer),
                    "the partition did not cut {} from {}",
                    hosts[i],
                    hosts[other]
                );
                self.note(start, format!("isolated node {}", c.nodes[i].id));
                tokio::time::sleep(DOWN + Duration::from_secs(1)).await;
                self.partitions.heal();
                let other = (i + 1) % c.nodes.len();
                assert!(
                    Partitions::can_connect(&hosts[i], &hosts[other], c.nodes[other].ports.peer),
                    "healing did not reconnect {} to {}",
                    hosts[i],
                    hosts[other]
                );
                self.note(start, "healed".into());
            }
            Nemesis::TransferLeader => {
                let shard = rng.random_range(0..c.shards);
                let r = c.admin().transfer_leader(shard, 0).await;
                self.note(
                    start,
                    format!(
                        "transfer leader of shard {shard}: {}",
                        r.map_or_else(|e| e.to_string(), |s| format!("leader {}", s.leader))
                    ),
                );
                tokio::time::sleep(DOWN).await;
            }
            Nemesis::MoveReplica => {
                let what = self.move_replica(c, rng).await;
                self.note(start, what);
                tokio::time::sleep(DOWN).await;
            }
        }
    }

    /// Clients that were waiting for a restarted node: linearizable reads of
    /// every key sent to it the moment its client port accepts, recorded in
    /// the history like any other. A node that serves before it knows what was
    /// committed (a leader restored in its old term) is caught here, in the
    /// first milliseconds, rather than by chance.
    async fn greet(&self, endpoint: String) {
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&endpoint).await.is_err() {
            if Instant::now() > until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let Ok(client) = raftkv_client::Client::pinned(std::slice::from_ref(&endpoint)) else {
            return;
        };
        let readers = self.work.keys.iter().enumerate().map(|(k, key)| {
            let (work, client) = (self.work.clone(), client.clone());
            async move {
                for _ in 0..5 {
                    work.run(GREETER + k as u64, &client, key, Input::Get).await;
                }
            }
        });
        futures::future::join_all(readers).await;
    }

    async fn move_replica(&mut self, c: &mut Cluster, rng: &mut StdRng) -> String {
        let admin = c.admin();
        let Ok(map) = admin.cluster_map().await else {
            return "move replica: map unavailable".into();
        };
        let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
        let candidates: Vec<(u32, u64)> = map
            .shards
            .iter()
            .filter(|s| !self.moved.contains(&s.shard) && s.learners.is_empty())
            .filter_map(|s| ids.iter().find(|id| !s.voters.contains(id)).map(|id| (s.shard, *id)))
            .collect();
        if candidates.is_empty() {
            return "move replica: every shard has moved once".into();
        }
        let (shard, to) = candidates[rng.random_range(0..candidates.len())];
        self.moved.insert(shard);
        if let Err(e) = admin.add_replica(shard, to).await {
            return format!("move shard {shard} to node {to}: add refused: {e}");
        }
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match admin.promote_replica(shard, to).await {
                Ok(_) => break,
                Err(e) if Instant::now() > until => return format!("move shard {shard} to node {to}: promote: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let leader = c.leaders().await.get(&shard).copied();
        let Some(victim) = map
            .shards
            .iter()
            .find(|s| s.shard == shard)
            .and_then(|s| s.voters.iter().copied().find(|v| Some(*v) != leader))
        else {
            return format!("moved shard {shard} to node {to}: no voter to remove");
        };
        match admin.remove_replica(shard, victim).await {
            Ok(_) => format!("moved shard {shard} from node {victim} to node {to}"),
            Err(e) => format!("move shard {shard} to node {to}: remove {victim}: {e}"),
        }
    }
}
