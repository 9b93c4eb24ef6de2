//! The raftkv storage node.
//!
//! One process hosts many shard replicas. Every shard, and the small
//! metadata group that holds the cluster map, is its own openraft group; all
//! of them share one RocksDB (so one WAL fsync acknowledges appends of many
//! shards) and one HTTP/2 connection per peer.
//!
//! ```text
//!  client ─▶ services::kv (2379) ───┐                      ┌─▶ raft::group: Raft per group ─▶ storage (one RocksDB)
//!  kvctl/operator ─▶ services::admin (2381) ─▶ routing ─▶ Host
//!  peers ─▶ services::peer (2380) ──┘  (leader, once,     └─▶ raft::network: PeerPool ─▶ other nodes
//!  Prometheus ─▶ services::http       retry when safe)    upkeep: sweeps, disk, metadata learners
//! ```
//!
//! - [`services`]: the four ports, thin adapters that validate and call the host.
//! - [`routing`]: the one "find the leader, forward once, retry only when safe" loop.
//! - [`host`]: the node's state: its groups, the cluster map, joins, proposals.
//! - [`raft`]: openraft wiring: type config, the peer client, a group's lifecycle.
//! - [`storage`]: the log, state machines and snapshots over one RocksDB.
//! - [`upkeep`]: periodic work (expiry sweeps, disk watch, metadata membership, replica GC).
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
//! [`raft::network::PeerPool`] does directly over tonic, with a separate channel
//! for snapshots.
//!
//! # What it may depend on
//!
//! `raftkv-core` for every decision and format, `raftkv-proto` for the wire;
//! RocksDB, openraft and tonic stay inside this crate's adapters.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod raft;
pub mod routing;
pub mod services;
pub mod storage;
pub mod upkeep;

use services::listener::{self, Listener};
use services::{admin, http, kv, peer};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use raftkv_proto::{admin::admin_server::AdminServer, kv::kv_server::KvServer, peer::peer_server::PeerServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::NodeConfig;
use host::Host;

/// Largest gRPC message each port decodes, matched to what a legitimate
/// caller sends: a client request is one key and one value; a peer message
/// is an append batch (bounded by [`raft::network::MAX_APPEND_BYTES`]), a
/// snapshot chunk or a forwarded map; an admin request is small. Replies
/// may be larger (a scan page, a cluster map of many nodes).
pub mod message_limits {
    use raftkv_core::limits;

    pub const CLIENT_REQUEST: usize = limits::MAX_KEY_BYTES + limits::MAX_VALUE_BYTES + (64 << 10);
    pub const CLIENT_REPLY: usize = limits::MAX_SCAN_BYTES + (4 << 20);
    pub const PEER: usize = 16 << 20;
    pub const ADMIN_REQUEST: usize = 1 << 20;
    pub const ADMIN_REPLY: usize = 16 << 20;
    /// Streams one connection may have open at once.
    pub const STREAMS_PER_CONNECTION: u32 = 256;
    /// Largest request header block (gRPC metadata).
    pub const HEADER_BYTES: u32 = 16 << 10;
}

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

    let fd_limit = listener::raise_fd_limit();
    let budgets = listener::budgets(fd_limit, config.max_client_connections);
    tracing::info!(fd_limit, ?budgets, "connection budgets");
    let h = &config.listen_host;
    let client_l = Listener::new(
        listen(h, config.client_port, "client").await?,
        "client",
        budgets.client,
        None,
    );
    let peer_l = Listener::new(listen(h, config.peer_port, "peer").await?, "peer", budgets.peer, None);
    let admin_l = Listener::new(
        listen(h, config.admin_port, "admin").await?,
        "admin",
        budgets.admin,
        None,
    );
    let http_l = Listener::new(
        listen(h, config.http_port, "http").await?,
        "http",
        budgets.http,
        Some(listener::HTTP_IDLE_TIMEOUT),
    );

    use message_limits as lim;
    let server = || {
        tonic::transport::Server::builder()
            .max_concurrent_streams(lim::STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(lim::HEADER_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
    };
    let s = servers_stop.clone();
    let peer_srv = server()
        .add_service(
            PeerServer::new(peer::PeerService { host: host.clone() })
                .max_decoding_message_size(lim::PEER)
                .max_encoding_message_size(lim::PEER),
        )
        .serve_with_incoming_shutdown(peer_l.into_stream(), async move { s.cancelled().await });
    let s = servers_stop.clone();
    let client_srv = server()
        .add_service(
            KvServer::new(kv::KvService { host: host.clone() })
                .max_decoding_message_size(lim::CLIENT_REQUEST)
                .max_encoding_message_size(lim::CLIENT_REPLY),
        )
        .serve_with_incoming_shutdown(client_l.into_stream(), async move { s.cancelled().await });
    let s = servers_stop.clone();
    let admin_srv = server()
        .add_service(
            AdminServer::new(admin::AdminService { host: host.clone() })
                .max_decoding_message_size(lim::ADMIN_REQUEST)
                .max_encoding_message_size(lim::ADMIN_REPLY),
        )
        .serve_with_incoming_shutdown(admin_l.into_stream(), async move { s.cancelled().await });
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
    let sweeper = tokio::spawn({
        let host = host.clone();
        async move { host.sweep_expired().await }
    });
    let collector = tokio::spawn({
        let host = host.clone();
        async move { host.collect_replicas().await }
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
    let _ = sweeper.await;
    let _ = collector.await;
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
    while host.proposals_in_flight() > 0 && started.elapsed() < grace / 4 {
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
