//! The node's command line. Every flag has an environment variable, so the
//! same binary is configured by a StatefulSet's env or by hand.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "raftkv-node", version, about = "raftkv storage node")]
pub struct NodeConfig {
    /// Data directory. An empty one starts an unjoined node with a new identity.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "RAFTKV_LISTEN_HOST", default_value = "0.0.0.0")]
    pub listen_host: String,
    /// The name peers and clients use to reach this node (a stable DNS name in Kubernetes).
    #[arg(long, env = "RAFTKV_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    #[arg(long, env = "RAFTKV_CLIENT_PORT", default_value_t = 2379)]
    pub client_port: u16,
    #[arg(long, env = "RAFTKV_PEER_PORT", default_value_t = 2380)]
    pub peer_port: u16,
    #[arg(long, env = "RAFTKV_ADMIN_PORT", default_value_t = 2381)]
    pub admin_port: u16,
    #[arg(long, env = "RAFTKV_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Raft heartbeat interval, milliseconds.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout, milliseconds (the maximum is twice this).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// A shard takes a snapshot (and may then compact its log) after this many entries.
    #[arg(long, env = "RAFTKV_SNAPSHOT_ENTRIES", default_value_t = 20_000)]
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, so a slightly lagging follower
    /// catches up from the log rather than a whole snapshot.
    #[arg(long, env = "RAFTKV_KEEP_ENTRIES", default_value_t = 5_000)]
    pub keep_entries: u64,
    /// Writes are refused (reads still served) while the data directory's
    /// file system has less free space than this, in MiB.
    #[arg(long, env = "RAFTKV_MIN_FREE_MB", default_value_t = 256)]
    pub min_free_mb: u64,
    /// How often a shard's leader sweeps for expired keys and proposes their
    /// deletion, milliseconds (each sweep reads a bounded slice of the shard).
    #[arg(long, env = "RAFTKV_EXPIRY_SWEEP_MS", default_value_t = 1000)]
    pub expiry_sweep_ms: u64,
    /// How long a SIGTERM may take (leadership hand-off, in-flight requests, flush).
    #[arg(long, env = "RAFTKV_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
    /// Most client connections open at once (the client port also gets no more
    /// than the open-file limit leaves after the other ports and RocksDB).
    #[arg(long, env = "RAFTKV_MAX_CLIENT_CONNECTIONS", default_value_t = 10_000)]
    pub max_client_connections: usize,
    /// Check RocksDB's WAL-sync counter before every acknowledgement and abort on a
    /// violation (for tests that prove durability; negligible cost).
    #[arg(long, env = "RAFTKV_AUDIT_DURABILITY", default_value_t = false)]
    pub audit_durability: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "RAFTKV_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

impl NodeConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}
