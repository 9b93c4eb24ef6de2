//! The robustness suite: real nodes under faults, a recorded history, and a
//! linearizability check of it (etcd's `tests/robustness` is the model).
//!
//! ```text
//!   clients (traffic.rs) ──get/put/CAS/delete──▶ raftkv-node × N ◀── nemesis.rs (kill, power loss,
//!        │                                         (own 127.x address,      pause, SIGTERM, partition,
//!        └─ every op: invoke, return, outcome       own power-loss disk)    leader moves, replica moves)
//!                 │
//!                 ▼
//!   history ──▶ raftkv_linearizability::check  (per key, versioned register)
//!           ──▶ versions::check_versions        (unique, increasing, no read below an acked write)
//!   end: every acknowledged write still there, every shard's replicas identical
//! ```
//!
//! `make test` runs the bounded tests below; `make robustness` runs
//! `full_matrix` (every nemesis alone, `RAFTKV_ROBUSTNESS_SECONDS` each) and
//! prints a summary per nemesis.

#[path = "../support/mod.rs"]
mod support;

mod nemesis;
mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nemesis::{Injector, Nemesis};
use raftkv_client::Admin;
use raftkv_client::admin_proto as admin;
use raftkv_linearizability::{Budget, Input, Operation, Outcome, Output, Verdict, check, text, versions};
use rand::SeedableRng;
use rand::rngs::StdRng;
use support::{Cluster, Options};
use traffic::Workload;

struct Plan {
    name: String,
    /// Node flags beyond the harness's.
    args: Vec<&'static str>,
    nodes: usize,
    nemeses: Vec<Nemesis>,
    duration: Duration,
    /// Quiet time between two faults.
    quiet: Duration,
    clients: usize,
    seed: u64,
}

impl Plan {
    fn new(name: &str, nemeses: &[Nemesis], seconds: u64) -> Plan {
        Plan {
            name: name.to_string(),
            args: Vec::new(),
            nodes: if nemeses.contains(&Nemesis::MoveReplica) { 4 } else { 3 },
            nemeses: nemeses.to_vec(),
            duration: Duration::from_secs(seconds),
            quiet: Duration::from_secs(2),
            clients: 6,
            seed: std::env::var("RAFTKV_ROBUSTNESS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(rand::random),
        }
    }
}

/// What one run found.
struct Report {
    name: String,
    ok: usize,
    failed: usize,
    ambiguous: usize,
    faults: usize,
    bytes_lost: u64,
    verdict: Verdict,
    version_violations: Vec<String>,
    acked_writes_lost: Vec<String>,
    digests: Result<(), String>,
    longest_write_gap: Duration,
    history_file: std::path::PathBuf,
    seed: u64,
}

impl Report {
    fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Linearizable)
            && self.version_violations.is_empty()
            && self.acked_writes_lost.is_empty()
            && self.digests.is_ok()
    }

    fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::Illegal { .. } => "ILLEGAL",
            Verdict::Unknown { .. } => "unknown",
        }
    }

    fn header() -> String {
        format!(
            "| {:<34} | {:>6} | {:>6} | {:>9} | {:>6} | {:>12} | {:>8} | {:>10} | {:>8} | {:>12} |",
            "nemesis",
            "ok",
            "failed",
            "ambiguous",
            "faults",
            "checker",
            "versions",
            "acked lost",
            "digests",
            "longest gap"
        )
    }

    fn row(&self) -> String {
        format!(
            "| {:<34} | {:>6} | {:>6} | {:>9} | {:>6} | {:>12} | {:>8} | {:>10} | {:>8} | {:>10.2} s |",
            self.name,
            self.ok,
            self.failed,
            self.ambiguous,
            self.faults,
            self.verdict_word(),
            self.version_violations.len(),
            self.acked_writes_lost.len(),
            if self.digests.is_ok() { "equal" } else { "DIFFER" },
            self.longest_write_gap.as_secs_f64()
        )
    }

    fn details(&self) -> String {
        let mut out = format!("{} (seed {}):\n", self.name, self.seed);
        match &self.verdict {
            Verdict::Linearizable => {}
            Verdict::Illegal { detail, .. } | Verdict::Unknown { detail, .. } => {
                out += &format!("  checker: {detail}\n");
            }
        }
        for v in self.version_violations.iter().take(10) {
            out += &format!("  versions: {v}\n");
        }
        for l in self.acked_writes_lost.iter().take(10) {
            out += &format!("  lost: {l}\n");
        }
        if let Err(e) = &self.digests {
            out += &format!("  digests: {e}\n");
        }
        if self.bytes_lost > 0 {
            out += &format!("  power losses dropped {} unsynced bytes\n", self.bytes_lost);
        }
        out += &format!("  history: {}\n", self.history_file.display());
        out
    }
}

fn options_power_loss(nemeses: &[Nemesis]) -> bool {
    nemeses.iter().any(|n| n.needs_power_loss_disks())
}

/// Starts a cluster, runs traffic and faults, checks the history.
async fn run(plan: Plan) -> (Report, Cluster) {
    let options = Options {
        own_addresses: true,
        power_loss_disks: options_power_loss(&plan.nemeses),
        ..Options::default()
    };
    let mut c = Cluster::start_with(plan.nodes, &plan.args, options).await;
    let shards = 8;
    c.bootstrap(shards, 3).await;
    let start = Instant::now();
    let work = Workload {
        keys: Arc::new(traffic::keys_in_shards(shards, 4, 2)),
        shards,
        start,
        history: Arc::new(Mutex::new(Vec::new())),
        stop: Arc::new(AtomicBool::new(false)),
        pace: Duration::from_millis(15),
        op_timeout: Duration::from_secs(5),
    };
    let mut clients = Vec::new();
    for id in 0..plan.clients as u64 {
        // Half the clients go straight to shard leaders, half through one
        // node each, so both the direct and the forwarded path meet the faults.
        let client = if id % 2 == 0 {
            c.client_from(id as usize)
        } else {
            c.client_pinned_from(id as usize)
        };
        clients.push(tokio::spawn(work.clone().client_loop(
            id,
            client,
            plan.seed.wrapping_add(id),
        )));
    }
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut inj = Injector::new(work.clone());
    let mut k = 0;
    while start.elapsed() < plan.duration {
        tokio::time::sleep(plan.quiet).await;
        let n = plan.nemeses[k % plan.nemeses.len()];
        k += 1;
        inj.step(n, &mut c, &mut rng, start).await;
    }
    tokio::time::sleep(plan.quiet).await;
    work.stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.expect("client task");
    }

    // Everything healed and up, then the final word on every key.
    inj.partitions.heal();
    for n in &mut c.nodes {
        n.signal(nix::sys::signal::Signal::SIGCONT);
        if !n.is_running() {
            n.start();
        }
    }
    c.wait_all_leaders(Duration::from_secs(60)).await;
    c.wait_caught_up(Duration::from_secs(60)).await;
    let final_client = c.client();
    for key in work.keys.iter() {
        let until = Instant::now() + Duration::from_secs(30);
        while !matches!(work.run(u64::MAX, &final_client, key, Input::Get).await, Outcome::Ok(_)) {
            assert!(Instant::now() < until, "final read of {key:?} never succeeded");
        }
    }
    let digests = equal_digests(&c).await;
    if options_power_loss(&plan.nemeses) {
        // Otherwise the run proved nothing about fsync.
        assert!(inj.bytes_lost > 0, "the power losses dropped no unsynced data");
    }

    let ops = std::mem::take(&mut *work.history.lock().expect("history lock"));
    let history_file = c.root.path().join("history.txt");
    std::fs::write(&history_file, text::to_text(&ops)).expect("write history");
    let mut faults_log = inj.log.join("\n");
    faults_log.push('\n');
    std::fs::write(c.root.path().join("faults.txt"), faults_log).expect("write fault log");
    let count = |f: fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let report = Report {
        name: plan.name,
        ok: count(|o| matches!(o, Outcome::Ok(_))),
        failed: count(|o| matches!(o, Outcome::Failed)),
        ambiguous: count(|o| matches!(o, Outcome::Ambiguous)),
        faults: inj.faults,
        bytes_lost: inj.bytes_lost,
        verdict: check(&ops, &Budget::default()),
        version_violations: versions::check_versions(&ops),
        acked_writes_lost: acked_writes_lost(&ops),
        digests,
        longest_write_gap: longest_write_gap(&ops),
        history_file,
        seed: plan.seed,
    };
    (report, c)
}

/// An acknowledged write that the end state does not reflect: the key's
/// highest acknowledged version is above what the final read returns, and no
/// delete that might have come later was issued.
fn acked_writes_lost(ops: &[Operation]) -> Vec<String> {
    let mut out = Vec::new();
    let mut keys: Vec<&Vec<u8>> = ops.iter().map(|o| &o.key).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let on_key: Vec<&Operation> = ops.iter().filter(|o| &o.key == key).collect();
        let newest = on_key
            .iter()
            .filter_map(|o| match o.outcome {
                Outcome::Ok(Output::Put { version, .. }) => Some((version, o)),
                Outcome::Ok(Output::Cas {
                    succeeded: true,
                    version,
                    ..
                }) if version > 0 => Some((version, o)),
                _ => None,
            })
            .max_by_key(|(v, _)| *v);
        let Some((version, w)) = newest else { continue };
        let deleted_later = on_key.iter().any(|o| {
            let deletes = matches!(o.input, Input::Delete | Input::Cas { value: None, .. });
            let may_follow = matches!(o.outcome, Outcome::Ambiguous) || o.ret > w.call;
            deletes && may_follow && !matches!(o.outcome, Outcome::Failed)
        });
        let last = on_key.iter().rfind(|o| o.client == u64::MAX);
        if let (
            false,
            Some(Operation {
                outcome: Outcome::Ok(Output::Get {
                    found, version: seen, ..
                }),
                ..
            }),
        ) = (deleted_later, last)
            && (!found || *seen < version)
        {
            out.push(format!(
                "key {:?}: write acknowledged at version {version} (client {}), final read {}",
                String::from_utf8_lossy(key),
                w.client,
                if *found {
                    format!("version {seen}")
                } else {
                    "not found".into()
                }
            ));
        }
    }
    out
}

/// The longest time one shard went without acknowledging a write: how long
/// the faults kept it from accepting writes.
fn longest_write_gap(ops: &[Operation]) -> Duration {
    let mut by_shard: std::collections::BTreeMap<Option<u32>, Vec<u64>> = Default::default();
    for o in ops {
        if o.client != u64::MAX && !matches!(o.input, Input::Get) && matches!(o.outcome, Outcome::Ok(_)) {
            by_shard.entry(o.shard).or_default().push(o.ret);
        }
    }
    let gap = by_shard
        .values_mut()
        .map(|done| {
            done.sort_unstable();
            done.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    Duration::from_nanos(gap)
}

/// Every replica of every shard has the same data at the same applied index.
async fn equal_digests(c: &Cluster) -> Result<(), String> {
    let map = c.admin().cluster_map().await.map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(60);
    'shards: for s in &map.shards {
        loop {
            let mut seen = Vec::new();
            for id in s.voters.iter().chain(s.learners.iter()) {
                let ep = c.nodes[c.index_of(*id)].admin_ep();
                let d = match Admin::node(&ep) {
                    Ok(mut a) => a
                        .shard_digest(admin::ShardDigestRequest { shard: s.shard })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                seen.push((*id, d));
            }
            let same = seen.windows(2).all(|w| match (&w[0].1, &w[1].1) {
                (Ok(a), Ok(b)) => a.applied_index == b.applied_index && a.digest == b.digest,
                _ => false,
            }) && seen.iter().all(|(_, d)| d.is_ok());
            if same {
                continue 'shards;
            }
            if Instant::now() > until {
                return Err(format!("shard {}: {seen:?}", s.shard));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn run_and_assert(plan: Plan) {
    let (report, c) = run(plan).await;
    println!("{}\n{}\n{}", Report::header(), report.row(), report.details());
    // Panicking with the cluster alive keeps its data, logs and history
    // (see `Cluster`'s drop) for the post-mortem.
    assert!(report.passed(), "{}", report.details());
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_power_loss_never_serves_a_stale_read_or_loses_a_write() {
    // The production timing (heartbeat 100 ms, elections after 1-2 s plus the
    // leader lease): the other voters are still waiting out the lease when
    // the leader comes back 2 s later, which is when a restored leader would
    // serve from a state machine that lost acknowledged writes.
    let mut plan = Plan::new("power loss of leader", &[Nemesis::PowerLossLeader], 24);
    plan.args = vec!["--election-timeout-ms", "1000"];
    plan.clients = 12;
    run_and_assert(plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_and_kill_9_of_every_node_keep_the_history_linearizable() {
    run_and_assert(Plan::new(
        "power loss / kill -9 of all nodes",
        &[Nemesis::PowerLossAll, Nemesis::Kill9All],
        16,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_keep_the_history_linearizable() {
    run_and_assert(Plan::new(
        "partitions (leader, random node)",
        &[Nemesis::PartitionLeader, Nemesis::PartitionRandom],
        20,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_pauses_and_restarts_keep_the_history_linearizable() {
    run_and_assert(Plan::new(
        "kill -9, SIGSTOP, SIGTERM restart",
        &[
            Nemesis::Kill9Leader,
            Nemesis::Pause,
            Nemesis::Kill9Random,
            Nemesis::SigtermRestart,
        ],
        24,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_moves_and_leader_transfers_under_load_keep_the_history_linearizable() {
    run_and_assert(Plan::new(
        "replica moves, leader transfers",
        &[Nemesis::MoveReplica, Nemesis::TransferLeader],
        24,
    ))
    .await;
}

/// `make robustness`: every nemesis alone, then all of them together; prints
/// the summary table and fails if any run failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run by `make robustness`"]
async fn full_matrix() {
    let seconds = std::env::var("RAFTKV_ROBUSTNESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let all = [
        Nemesis::Kill9Leader,
        Nemesis::CrashRestartLeader,
        Nemesis::Kill9Random,
        Nemesis::Kill9All,
        Nemesis::PowerLossLeader,
        Nemesis::PowerLossAll,
        Nemesis::Pause,
        Nemesis::SigtermRestart,
        Nemesis::PartitionLeader,
        Nemesis::PartitionRandom,
        Nemesis::TransferLeader,
        Nemesis::MoveReplica,
    ];
    // A comma-separated list of name fragments picks runs (e.g. "power,partition").
    let only: Vec<String> = std::env::var("RAFTKV_ROBUSTNESS_ONLY")
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut plans: Vec<Plan> = all.iter().map(|n| Plan::new(n.name(), &[*n], seconds)).collect();
    plans.push(Plan::new("all of them, in turn", &all, seconds * 2));
    plans.retain(|p| only.is_empty() || only.iter().any(|o| p.name.contains(o.as_str())));
    for p in &mut plans {
        // The production timing, so failover figures are what users get.
        p.args = vec!["--election-timeout-ms", "1000"];
    }
    let mut reports = Vec::new();
    for plan in plans {
        let (report, c) = run(plan).await;
        println!("{}", report.row());
        if !report.passed() {
            println!("{}  cluster kept in {}", report.details(), c.keep().display());
        }
        reports.push(report);
    }
    println!("\n{}", Report::header());
    for r in &reports {
        println!("{}", r.row());
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
    for r in &failed {
        println!("{}", r.details());
    }
    assert!(failed.is_empty(), "{} of {} runs failed", failed.len(), reports.len());
}
