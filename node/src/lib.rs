//! The raftkv storage node.
//!
//! One process hosts many shard replicas. Every shard, and the small
//! metadata group that holds the cluster map, is its own openraft group; all
//! of them share one RocksDB (so one WAL fsync acknowledges appends of many
//! shards) and one HTTP/2 connection per peer.
//!
//! ```text
//!  client ─▶ KvService (2379) ─┐                       ┌─▶ LogStore ─┐
//!  kvctl/operator ─▶ Admin (2381) ─▶ Host ─▶ Raft per group            ├─▶ RocksDB (log/state/data CFs)
//!  peers ─▶ PeerService (2380) ─┘        └─▶ PeerPool ─▶ other nodes   └─▶ StateMachine ┘
//! ```
//!
//! # Why openraft `=0.10.0-alpha.37`
//!
//! 0.9 (stable) flushes each log append inline in the Raft core loop, which
//! rules out fsyncs shared across shards; it has no leader transfer and no
//! lease reads, and snapshots use its own chunked protocol. 0.10 submits log
//! IO and continues (our syncer fires the callbacks of many shards after one
//! fsync), has `trigger().transfer_leader()`, `ReadPolicy::LeaseRead`, and
//! lets us stream snapshot files ourselves (`full_snapshot`). The price is an
//! alpha API: the version is pinned exactly and every upgrade re-runs the
//! storage conformance suite (`storage::tests`).
//!
//! We do not use `openraft-multi`: its router only shares connections, which
//! [`network::PeerPool`] does directly over tonic, with a separate channel
//! for snapshots.
//!
//! # What it may depend on
//!
//! `raftkv-core` for every decision and format, `raftkv-proto` for the wire;
//! RocksDB, openraft and tonic stay inside this crate's adapters.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
pub mod host;
pub mod http;
pub mod identity;
pub mod kv;
pub mod metrics;
pub mod network;
pub mod peer;
pub mod storage;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use raftkv_proto::{admin::admin_server::AdminServer, kv::kv_server::KvServer, peer::peer_server::PeerServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use config::NodeConfig;
use host::Host;

const MAX_MESSAGE: usize = 64 << 20;

async fn listen(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("cannot resolve listen host {host}"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} port {addr}"))
}

/// Runs a node until `stop` is cancelled (by SIGTERM in `main`), then shuts
/// it down gracefully within the configured grace period.
pub async fn run(config: NodeConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let (identity, created) = identity::load_or_create(&config.data_dir)?;
    tracing::info!(node_id = identity.node_id, new_identity = created, data_dir = %config.data_dir.display(), "starting raftkv-node");
    let servers_stop = CancellationToken::new();
    let host = Host::open(config.clone(), identity.node_id, servers_stop.clone()).await?;

    let client_l = listen(&config.listen_host, config.client_port, "client").await?;
    let peer_l = listen(&config.listen_host, config.peer_port, "peer").await?;
    let admin_l = listen(&config.listen_host, config.admin_port, "admin").await?;
    let http_l = listen(&config.listen_host, config.http_port, "http").await?;

    let s = servers_stop.clone();
    let peer_srv = tonic::transport::Server::builder()
        .add_service(
            PeerServer::new(peer::PeerService { host: host.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(peer_l), async move { s.cancelled().await });
    let s = servers_stop.clone();
    let client_srv = tonic::transport::Server::builder()
        .add_service(
            KvServer::new(kv::KvService { host: host.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(client_l), async move { s.cancelled().await });
    let s = servers_stop.clone();
    let admin_srv = tonic::transport::Server::builder()
        .add_service(AdminServer::new(admin::AdminService { host: host.clone() }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(admin_l), async move { s.cancelled().await });
    let s = servers_stop.clone();
    let http_srv =
        axum::serve(http_l, http::router(host.clone())).with_graceful_shutdown(async move { s.cancelled().await });

    let mut servers = tokio::spawn(async move {
        let (a, b, c, d) = tokio::join!(peer_srv, client_srv, admin_srv, http_srv);
        a.context("peer server")?;
        b.context("client server")?;
        c.context("admin server")?;
        d.context("http server")?;
        anyhow::Ok(())
    });
    let upkeep = tokio::spawn({
        let host = host.clone();
        async move { host.upkeep().await }
    });
    tracing::info!(
        client = config.client_port,
        peer = config.peer_port,
        admin = config.admin_port,
        http = config.http_port,
        advertise = %config.advertise_host,
        "serving"
    );

    tokio::select! {
        _ = stop.cancelled() => {}
        r = &mut servers => {
            servers_stop.cancel();
            return match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("servers stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            };
        }
    }
    shutdown(&host, config.shutdown_grace()).await;
    servers_stop.cancel();
    let _ = upkeep.await;
    servers.await??;
    Ok(())
}

/// SIGTERM: refuse new client requests (retry-safe, so callers go
/// elsewhere), let in-flight proposals finish, hand leaderships to other
/// voters, stop Raft, flush.
async fn shutdown(host: &Arc<Host>, grace: Duration) {
    let started = Instant::now();
    tracing::info!(grace_s = grace.as_secs(), "shutting down");
    host.shutting_down.store(true, Ordering::SeqCst);
    while pending_proposals() > 0 && started.elapsed() < grace / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for g in host.groups() {
        g.raft.runtime_config().elect(false);
    }
    // Hand off leaderships, using at most half of the grace period.
    loop {
        let still = host.hand_off_leaderships().await;
        if still.is_empty() {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "handed off all leaderships"
            );
            break;
        }
        if started.elapsed() > grace / 2 {
            tracing::warn!(groups = ?still, "could not hand off every leadership before the deadline");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for g in host.groups() {
        if let Err(e) = g.raft.shutdown().await {
            tracing::warn!(group = %g.id, error = %e, "raft shutdown");
        }
    }
    if let Err(e) = host.engine.db.flush_wal(true) {
        tracing::error!(error = %e, "final WAL flush failed");
    }
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "stopped");
}

fn pending_proposals() -> i64 {
    use prometheus::core::Collector;
    metrics::METRICS
        .proposals_pending
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}
