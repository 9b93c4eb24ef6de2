//! `kvctl cluster …` (inspection) and `kvctl admin …` (operations).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use raftkv_client::Admin;
use raftkv_client::admin_proto as admin;
use serde_json::json;

use crate::{Output, print_json};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes, shards, leaders and lag.
    Status,
    /// The cluster map: nodes and shard placement.
    Map,
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Bootstrap a new cluster from unjoined nodes (the admin endpoints given).
    Bootstrap {
        #[arg(long)]
        cluster_id: String,
        #[arg(long, default_value_t = 8)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        replication_factor: u32,
    },
    /// Status of one node (the first admin endpoint, or --node).
    NodeStatus {
        #[arg(long)]
        node: Option<u64>,
    },
    /// Add the node answering at ENDPOINT (its admin host:port) to the cluster.
    AddNode { endpoint: String },
    /// Remove a node that hosts no replicas.
    RemoveNode { node: u64 },
    /// Hand metadata voter OLD's seat (a lost node) to NODE, a member caught up as a learner
    /// (NODE 0: give the seat up, when every staying node already has one).
    ReplaceMetaVoter {
        old: u64,
        node: u64,
        /// With NODE 0: give the seat up even below the voter count the cluster's size wants.
        #[arg(long)]
        force: bool,
    },
    /// Add NODE as a learner of SHARD (it catches up by snapshot if needed).
    AddReplica { shard: u32, node: u64 },
    /// Make a caught-up learner a voter.
    PromoteReplica { shard: u32, node: u64 },
    /// Remove NODE's replica of SHARD (refused if quorum would be at risk, or
    /// below the replication factor without --force).
    RemoveReplica {
        shard: u32,
        node: u64,
        /// Remove even below the replication factor (the shard keeps fewer copies).
        #[arg(long)]
        force: bool,
    },
    /// Move SHARD's leadership (to NODE, or any caught-up voter).
    TransferLeader {
        shard: u32,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Persistently make NODE give up and refuse leadership.
    Drain { node: u64 },
    /// Clear NODE's drain mark.
    Undrain { node: u64 },
    /// Compare SHARD's data digest on every replica.
    Digest { shard: u32 },
}

async fn map_of(admin: &Admin) -> anyhow::Result<admin::ClusterMapResponse> {
    admin.cluster_map().await.context("reading the cluster map")
}

fn admin_endpoint_of(map: &admin::ClusterMapResponse, node: u64) -> anyhow::Result<String> {
    let m = map
        .nodes
        .iter()
        .find(|n| n.node_id == node)
        .with_context(|| format!("node {node} is not in the cluster map"))?;
    Ok(format!("{}:{}", m.host, m.admin_port))
}

async fn node_status(endpoint: &str) -> anyhow::Result<admin::NodeStatusResponse> {
    Ok(Admin::node(endpoint)?
        .node_status(admin::NodeStatusRequest {})
        .await?
        .into_inner())
}

fn shard_json(s: &admin::ShardStatus) -> serde_json::Value {
    json!({
        "shard": if s.meta { json!("meta") } else { json!(s.shard) }, "role": s.role, "term": s.term, "leader": s.leader,
        "last_log_index": s.last_log_index, "committed_index": s.committed_index, "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index, "purged_index": s.purged_index, "voters": s.voters, "learners": s.learners,
        "lag": s.lag, "replica_id": s.replica_id,
        "progress": s.progress.iter().map(|p| json!({"node": p.node_id, "matched": p.matched_index, "lag": p.lag, "voter": p.voter})).collect::<Vec<_>>(),
    })
}

fn status_json(s: &admin::NodeStatusResponse) -> serde_json::Value {
    json!({
        "node_id": s.node_id, "build_version": s.build_version, "joined": s.joined, "cluster_id": s.cluster_id,
        "ready": s.ready, "draining": s.draining, "shutting_down": s.shutting_down, "disk_full": s.disk_full,
        "map_version": s.map_version, "advertise_host": s.advertise_host,
        "ports": {"client": s.client_port, "peer": s.peer_port, "admin": s.admin_port},
        "shards": s.shards.iter().map(shard_json).collect::<Vec<_>>(),
    })
}

pub async fn cluster(cmd: &ClusterCmd, admin: &Admin, out: Output) -> anyhow::Result<ExitCode> {
    let map = map_of(admin).await?;
    match cmd {
        ClusterCmd::Map => match out {
            Output::Json => print_json(json!({
                "cluster_id": map.cluster_id, "version": map.version, "shard_count": map.shard_count,
                "replication_factor": map.replication_factor, "meta_voters": map.meta_voters,
                "nodes": map.nodes.iter().map(|n| json!({"id": n.node_id, "host": n.host, "client_port": n.client_port, "peer_port": n.peer_port, "admin_port": n.admin_port})).collect::<Vec<_>>(),
                "next_replica_id": map.next_replica_id,
                "shards": map.shards.iter().map(|s| json!({
                    "shard": s.shard, "voters": s.voters, "learners": s.learners,
                    "replica_ids": s.replica_ids.iter().map(|(n, r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
                    "pending": s.pending.iter().map(|(n, r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            })),
            Output::Text => {
                println!(
                    "cluster {}  map version {}  shards {}  replication factor {}",
                    map.cluster_id, map.version, map.shard_count, map.replication_factor
                );
                println!("{:<20} {:<40}", "NODE", "ADDRESS (client/peer/admin)");
                for n in &map.nodes {
                    println!(
                        "{:<20} {}:{}/{}/{}",
                        n.node_id, n.host, n.client_port, n.peer_port, n.admin_port
                    );
                }
                println!("{:<6} {:<62} LEARNERS", "SHARD", "VOTERS");
                for s in &map.shards {
                    println!("{:<6} {:<62} {:?}", s.shard, format!("{:?}", s.voters), s.learners);
                }
            }
        },
        ClusterCmd::Status => {
            let mut statuses = Vec::new();
            for n in &map.nodes {
                let ep = format!("{}:{}", n.host, n.admin_port);
                statuses.push((n.node_id, ep.clone(), node_status(&ep).await));
            }
            if out == Output::Json {
                print_json(json!({
                    "cluster_id": map.cluster_id, "map_version": map.version,
                    "nodes": statuses.iter().map(|(id, ep, s)| match s {
                        Ok(s) => status_json(s),
                        Err(e) => json!({"node_id": id, "endpoint": ep, "error": format!("{e:#}")}),
                    }).collect::<Vec<_>>(),
                }));
                return Ok(ExitCode::SUCCESS);
            }
            println!("cluster {}  map version {}", map.cluster_id, map.version);
            println!(
                "{:<20} {:<24} {:<6} {:<6} {:<7} {:<6}",
                "NODE", "ADMIN", "READY", "DRAIN", "SHARDS", "LEADS"
            );
            for (id, ep, s) in &statuses {
                match s {
                    Ok(s) => {
                        let data: Vec<_> = s.shards.iter().filter(|x| !x.meta).collect();
                        let leads = data.iter().filter(|x| x.role == "leader").count();
                        println!(
                            "{:<20} {:<24} {:<6} {:<6} {:<7} {:<6}",
                            id,
                            ep,
                            s.ready,
                            s.draining,
                            data.len(),
                            leads
                        );
                    }
                    Err(e) => println!("{:<20} {:<24} unreachable: {e:#}", id, ep),
                }
            }
            println!();
            println!(
                "{:<6} {:<20} {:<6} {:<10} {:<10} {:<40}",
                "SHARD", "LEADER", "TERM", "COMMIT", "APPLIED", "REPLICAS (node:lag)"
            );
            for shard in 0..map.shard_count {
                let replicas: Vec<&admin::ShardStatus> = statuses
                    .iter()
                    .filter_map(|(_, _, s)| s.as_ref().ok())
                    .flat_map(|s| s.shards.iter())
                    .filter(|x| !x.meta && x.shard == shard)
                    .collect();
                let leader = replicas.iter().find(|r| r.role == "leader");
                let progress = leader
                    .map(|l| {
                        l.progress
                            .iter()
                            .map(|p| format!("{}:{}", p.node_id, p.lag))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<6} {:<20} {:<6} {:<10} {:<10} {}",
                    shard,
                    leader.map_or("NONE".to_string(), |l| l.leader.to_string()),
                    leader.map_or(0, |l| l.term),
                    leader.map_or(0, |l| l.committed_index),
                    leader.map_or(0, |l| l.applied_index),
                    progress
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_shard(out: Output, s: &admin::ShardStatus) {
    match out {
        Output::Json => print_json(shard_json(s)),
        Output::Text => println!(
            "shard {} leader {} term {} voters {:?} learners {:?} commit {}",
            s.shard, s.leader, s.term, s.voters, s.learners, s.committed_index
        ),
    }
}

pub async fn admin(cmd: &AdminCmd, endpoints: &[String], out: Output) -> anyhow::Result<ExitCode> {
    let admin = Admin::new(endpoints).context("admin endpoints")?;
    match cmd {
        AdminCmd::Bootstrap {
            cluster_id,
            shards,
            replication_factor,
        } => {
            let mut members = Vec::new();
            for ep in endpoints {
                let s = node_status(ep).await.with_context(|| format!("node at {ep}"))?;
                members.push(admin::Member {
                    node_id: s.node_id,
                    host: s.advertise_host,
                    client_port: s.client_port,
                    peer_port: s.peer_port,
                    admin_port: s.admin_port,
                });
            }
            let r = admin
                .bootstrap(admin::BootstrapRequest {
                    cluster_id: cluster_id.clone(),
                    shards: *shards,
                    replication_factor: *replication_factor,
                    members,
                })
                .await?;
            let map = r.map.unwrap_or_default();
            match out {
                Output::Json => print_json(
                    json!({"cluster_id": map.cluster_id, "version": map.version, "nodes": map.nodes.len(), "shards": map.shard_count}),
                ),
                Output::Text => println!(
                    "bootstrapped cluster {} with {} nodes and {} shards",
                    map.cluster_id,
                    map.nodes.len(),
                    map.shard_count
                ),
            }
        }
        AdminCmd::NodeStatus { node } => {
            let ep = match node {
                Some(n) => admin_endpoint_of(&map_of(&admin).await?, *n)?,
                None => endpoints.first().cloned().context("no admin endpoint")?,
            };
            let s = node_status(&ep).await?;
            match out {
                Output::Json => print_json(status_json(&s)),
                Output::Text => {
                    println!(
                        "node {} cluster {:?} joined {} ready {} draining {} disk_full {}",
                        s.node_id, s.cluster_id, s.joined, s.ready, s.draining, s.disk_full
                    );
                    for sh in &s.shards {
                        println!("  {}", shard_json(sh));
                    }
                }
            }
        }
        AdminCmd::AddNode { endpoint } => {
            let s = node_status(endpoint)
                .await
                .with_context(|| format!("node at {endpoint}"))?;
            let member = admin::Member {
                node_id: s.node_id,
                host: s.advertise_host,
                client_port: s.client_port,
                peer_port: s.peer_port,
                admin_port: s.admin_port,
            };
            let map = admin.add_node(member).await?;
            match out {
                Output::Json => print_json(json!({"node_id": s.node_id, "map_version": map.version})),
                Output::Text => println!("added node {} (map version {})", s.node_id, map.version),
            }
        }
        AdminCmd::RemoveNode { node } => {
            let map = admin.remove_node(*node).await?;
            match out {
                Output::Json => print_json(json!({"node_id": node, "map_version": map.version})),
                Output::Text => println!("removed node {node} (map version {})", map.version),
            }
        }
        AdminCmd::ReplaceMetaVoter { old, node, force } => {
            let map = admin.replace_meta_voter_with(*old, *node, *force).await?;
            match out {
                Output::Json => print_json(json!({"meta_voters": map.meta_voters, "map_version": map.version})),
                Output::Text => println!(
                    "metadata voters are now {:?} (map version {})",
                    map.meta_voters, map.version
                ),
            }
        }
        AdminCmd::AddReplica { shard, node } => print_shard(out, &admin.add_replica(*shard, *node).await?),
        AdminCmd::PromoteReplica { shard, node } => print_shard(out, &admin.promote_replica(*shard, *node).await?),
        AdminCmd::RemoveReplica { shard, node, force } => {
            print_shard(out, &admin.remove_replica_with(*shard, *node, *force).await?)
        }
        AdminCmd::TransferLeader { shard, to } => print_shard(out, &admin.transfer_leader(*shard, *to).await?),
        AdminCmd::Drain { node } | AdminCmd::Undrain { node } => {
            let ep = admin_endpoint_of(&map_of(&admin).await?, *node)?;
            let mut c = Admin::node(&ep)?;
            let r = if matches!(cmd, AdminCmd::Drain { .. }) {
                c.drain_leaders(admin::DrainRequest {}).await?
            } else {
                c.undrain_leaders(admin::DrainRequest {}).await?
            }
            .into_inner();
            match out {
                Output::Json => {
                    print_json(json!({"node_id": node, "draining": r.draining, "still_leading": r.leading}))
                }
                Output::Text => println!(
                    "node {node} draining={} still leading shards {:?}",
                    r.draining, r.leading
                ),
            }
        }
        AdminCmd::Digest { shard } => {
            let map = map_of(&admin).await?;
            let replicas = map
                .shards
                .iter()
                .find(|s| s.shard == *shard)
                .with_context(|| format!("unknown shard {shard}"))?;
            let mut rows = Vec::new();
            for n in replicas.voters.iter().chain(replicas.learners.iter()) {
                let ep = admin_endpoint_of(&map, *n)?;
                let d = Admin::node(&ep)?
                    .shard_digest(admin::ShardDigestRequest { shard: *shard })
                    .await?
                    .into_inner();
                rows.push(d);
            }
            let same = rows
                .windows(2)
                .all(|w| w[0].digest == w[1].digest && w[0].key_count == w[1].key_count);
            match out {
                Output::Json => print_json(
                    json!({"shard": shard, "identical": same, "replicas": rows.iter().map(|d| json!({
                    "node": d.node_id, "applied_index": d.applied_index, "keys": d.key_count, "digest": format!("{:016x}", d.digest)})).collect::<Vec<_>>()}),
                ),
                Output::Text => {
                    for d in &rows {
                        println!(
                            "node {:<20} applied {:<10} keys {:<8} digest {:016x}",
                            d.node_id, d.applied_index, d.key_count, d.digest
                        );
                    }
                    println!("{}", if same { "identical" } else { "DIFFERENT" });
                }
            }
            if !same {
                bail!("replicas of shard {shard} differ (they may still be applying: retry)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
