//! `kvctl`: the raftkv CLI.
//!
//! `get` prints the raw value on stdout and exits 1 with "not found" on
//! stderr for a missing key; every command takes `--output json`; any error
//! exits non-zero.

mod bench;
mod cluster;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use raftkv_client::kv_proto::{self as kv, Consistency};
use raftkv_client::{Admin, Client};
use serde_json::json;

#[derive(Parser)]
#[command(name = "kvctl", version, about = "raftkv command line")]
struct Cli {
    /// Client endpoints (host:port of any nodes' client ports), comma-separated.
    #[arg(long, env = "KVCTL_ENDPOINTS", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Admin endpoints; by default each client endpoint's host with its port + 2
    /// (the default port layout: client 2379, peer 2380, admin 2381).
    #[arg(long, env = "KVCTL_ADMIN_ENDPOINTS", value_delimiter = ',', global = true)]
    admin_endpoints: Vec<String>,
    #[arg(long, short, value_enum, default_value = "text", global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Expire the key after this many seconds.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Read a key: prints the raw value; exit 1 if not found.
    Get {
        key: String,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
        /// For --consistency=stale: refuse data older than this (ms).
        #[arg(long, default_value_t = 0)]
        max_staleness_ms: u64,
    },
    /// Delete a key.
    Del { key: String },
    /// List keys by prefix or range, in key order (consistent per shard).
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        start: String,
        #[arg(long, default_value = "")]
        end: String,
        /// Total number of items to print (pages are followed).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        keys_only: bool,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Compare-and-set: write (or delete) only if the key is at the expected version.
    Cas {
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "expect_absent")]
        expect_version: Option<u64>,
        #[arg(long)]
        expect_absent: bool,
        #[arg(long)]
        delete: bool,
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Cluster inspection.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Admin operations (what the operator does).
    Admin {
        #[command(subcommand)]
        cmd: cluster::AdminCmd,
    },
    /// Load generator: prints ops/s and latency percentiles.
    Bench(bench::BenchArgs),
}

fn admin_endpoints(cli: &Cli) -> Vec<String> {
    if !cli.admin_endpoints.is_empty() {
        return cli.admin_endpoints.clone();
    }
    cli.endpoints
        .iter()
        .filter_map(|e| {
            let (host, port) = e.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            Some(format!("{host}:{}", port + 2))
        })
        .collect()
}

pub fn print_json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).expect("JSON values serialize"));
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = cli.output;
    match &cli.cmd {
        Cmd::Put { key, value, ttl } => {
            let r = Client::new(&cli.endpoints)?
                .put(key.as_bytes(), value.as_bytes(), *ttl)
                .await?;
            match out {
                Output::Json => print_json(
                    json!({"key": key, "version": r.version, "shard": r.shard, "prev_version": r.prev_version}),
                ),
                Output::Text => println!("OK version={} shard={}", r.version, r.shard),
            }
        }
        Cmd::Get {
            key,
            consistency,
            max_staleness_ms,
        } => {
            let r = Client::new(&cli.endpoints)?
                .get(key.as_bytes(), (*consistency).into(), *max_staleness_ms)
                .await?;
            let read = r.read.unwrap_or_default();
            if out == Output::Json {
                print_json(json!({
                    "key": key, "found": r.found, "value": String::from_utf8_lossy(&r.value), "version": r.version,
                    "shard": r.shard, "expires_at_ms": r.expires_at_ms,
                    "served_by": read.served_by, "applied_index": read.applied_index, "staleness_ms": read.staleness_ms,
                }));
                return Ok(if r.found { ExitCode::SUCCESS } else { ExitCode::from(1) });
            }
            if !r.found {
                eprintln!("not found");
                return Ok(ExitCode::from(1));
            }
            std::io::stdout().write_all(&r.value)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!();
            }
        }
        Cmd::Del { key } => {
            let r = Client::new(&cli.endpoints)?.delete(key.as_bytes()).await?;
            match out {
                Output::Json => print_json(
                    json!({"key": key, "existed": r.existed, "prev_version": r.prev_version, "shard": r.shard}),
                ),
                Output::Text => println!(
                    "{}",
                    if r.existed {
                        "deleted"
                    } else {
                        "not found (nothing deleted)"
                    }
                ),
            }
        }
        Cmd::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            consistency,
        } => {
            let client = Client::new(&cli.endpoints)?;
            let mut token = vec![];
            let mut items = vec![];
            loop {
                let page = client
                    .scan(kv::ScanRequest {
                        prefix: prefix.as_bytes().to_vec(),
                        start: start.as_bytes().to_vec(),
                        end: end.as_bytes().to_vec(),
                        limit: (*limit - items.len() as u32).min(1000),
                        continuation: token,
                        consistency: Consistency::from(*consistency) as i32,
                        max_staleness_ms: 0,
                        keys_only: *keys_only,
                        only_shard: None,
                    })
                    .await?;
                items.extend(page.items);
                token = page.continuation;
                if token.is_empty() || items.len() as u32 >= *limit {
                    break;
                }
            }
            match out {
                Output::Json => print_json(json!(
                    items
                        .iter()
                        .map(|i| json!({
                    "key": String::from_utf8_lossy(&i.key), "value": String::from_utf8_lossy(&i.value),
                    "version": i.version, "shard": i.shard}))
                        .collect::<Vec<_>>()
                )),
                Output::Text => {
                    for i in &items {
                        if *keys_only {
                            println!("{}", String::from_utf8_lossy(&i.key));
                        } else {
                            println!(
                                "{}\t{}",
                                String::from_utf8_lossy(&i.key),
                                String::from_utf8_lossy(&i.value)
                            );
                        }
                    }
                }
            }
        }
        Cmd::Cas {
            key,
            value,
            expect_version,
            expect_absent,
            delete,
            ttl,
        } => {
            use kv::compare_and_set_request::Expected;
            let expected = match (expect_version, expect_absent) {
                (Some(v), false) => Expected::ExpectedVersion(*v),
                (None, true) => Expected::ExpectedAbsent(true),
                _ => bail!("give exactly one of --expect-version or --expect-absent"),
            };
            if value.is_none() && !delete {
                bail!("give a value, or --delete");
            }
            let r = Client::new(&cli.endpoints)?
                .compare_and_set(kv::CompareAndSetRequest {
                    key: key.as_bytes().to_vec(),
                    expected: Some(expected),
                    value: value.clone().unwrap_or_default().into_bytes(),
                    delete: *delete,
                    ttl_seconds: *ttl,
                })
                .await?;
            match out {
                Output::Json => {
                    print_json(json!({"key": key, "succeeded": r.succeeded, "version": r.version, "shard": r.shard}))
                }
                Output::Text if r.succeeded => println!("OK version={}", r.version),
                Output::Text => println!("FAILED current_version={}", r.version),
            }
            if !r.succeeded {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Cluster { cmd } => {
            let admin = Admin::new(&admin_endpoints(&cli)).context("admin endpoints")?;
            return cluster::cluster(cmd, &admin, out).await;
        }
        Cmd::Admin { cmd } => {
            let endpoints = admin_endpoints(&cli);
            return cluster::admin(cmd, &endpoints, out).await;
        }
        Cmd::Bench(args) => bench::run(args, &cli.endpoints, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}
