//! Prometheus metrics. Names mirror etcd's where a counterpart exists, with
//! the `raftkv_` prefix and a `shard` label for per-shard figures (the
//! metadata group is `shard="meta"`).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use raftkv_core::GroupId;

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGaugeVec,
    pub is_leader: IntGaugeVec,
    pub leader_changes: IntCounterVec,
    pub proposals_committed: IntGaugeVec,
    pub proposals_applied: IntGaugeVec,
    pub proposals_failed: IntCounterVec,
    pub expired_deleted: IntCounterVec,
    pub proposals_pending: IntGaugeVec,
    pub replica_lag: IntGaugeVec,
    pub wal_fsync: Histogram,
    pub wal_fsync_batch: Histogram,
    pub snapshot_send_success: IntCounterVec,
    pub snapshot_send_bytes: IntCounterVec,
    pub snapshot_send_duration: HistogramVec,
    pub snapshot_receive_success: IntCounterVec,
    pub snapshot_receive_bytes: IntCounterVec,
    pub snapshot_receive_duration: HistogramVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub disk_full: IntGauge,
    pub draining: IntGauge,
    pub shards_hosted: IntGauge,
    pub forwarded: IntCounterVec,
    pub replicas_collected: IntCounterVec,
    pub connections: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub connections_timed_out: IntCounterVec,
}

fn shard_label(g: GroupId) -> String {
    g.to_string()
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let hist_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let latency = prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid buckets");
        let slow = prometheus::exponential_buckets(0.01, 2.0, 16).expect("valid buckets");
        Metrics {
            has_leader: gauge(
                "raftkv_server_has_leader",
                "Whether the shard has a known leader (1) or not (0).",
            ),
            is_leader: gauge("raftkv_server_is_leader", "Whether this node leads the shard."),
            leader_changes: counter(
                "raftkv_server_leader_changes_seen_total",
                "Leader changes seen by this replica.",
                &["shard"],
            ),
            proposals_committed: gauge(
                "raftkv_server_proposals_committed_total",
                "Committed log index of the shard.",
            ),
            proposals_applied: gauge(
                "raftkv_server_proposals_applied_total",
                "Applied log index of the shard.",
            ),
            proposals_failed: counter(
                "raftkv_server_proposals_failed_total",
                "Proposals that failed (not leader, shutdown, storage).",
                &["shard"],
            ),
            expired_deleted: counter(
                "raftkv_server_expired_keys_deleted_total",
                "Expired keys deleted by the leader's expiry sweeps (counted where proposed).",
                &["shard"],
            ),
            proposals_pending: gauge("raftkv_server_proposals_pending", "Proposals waiting to be applied."),
            replica_lag: gauge(
                "raftkv_server_replica_lag_entries",
                "Committed but not yet applied entries here.",
            ),
            wal_fsync: hist(
                "raftkv_disk_wal_fsync_duration_seconds",
                "Duration of WAL fsyncs.",
                latency.clone(),
            ),
            wal_fsync_batch: hist(
                "raftkv_disk_wal_fsync_batch_size",
                "Appends and votes made durable by one fsync (group commit).",
                prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
            ),
            snapshot_send_success: counter(
                "raftkv_network_snapshot_send_success_total",
                "Snapshots sent successfully.",
                &["shard"],
            ),
            snapshot_send_bytes: counter(
                "raftkv_network_snapshot_send_bytes_total",
                "Snapshot bytes sent.",
                &["shard"],
            ),
            snapshot_send_duration: hist_vec(
                "raftkv_network_snapshot_send_total_duration_seconds",
                "Time to send a snapshot.",
                &["shard"],
                slow.clone(),
            ),
            snapshot_receive_success: counter(
                "raftkv_network_snapshot_receive_success_total",
                "Snapshots received and installed.",
                &["shard"],
            ),
            snapshot_receive_bytes: counter(
                "raftkv_network_snapshot_receive_bytes_total",
                "Snapshot bytes received.",
                &["shard"],
            ),
            snapshot_receive_duration: hist_vec(
                "raftkv_network_snapshot_receive_total_duration_seconds",
                "Time to receive and install a snapshot.",
                &["shard"],
                slow,
            ),
            requests: counter(
                "raftkv_grpc_requests_total",
                "Client requests by operation and gRPC code.",
                &["op", "code"],
            ),
            request_duration: hist_vec(
                "raftkv_grpc_request_duration_seconds",
                "Client request latency by operation.",
                &["op"],
                latency,
            ),
            disk_full: int_gauge("raftkv_disk_full", "1 while writes are refused for lack of disk space."),
            draining: int_gauge(
                "raftkv_server_draining",
                "1 while the node refuses leadership (drain mark set).",
            ),
            shards_hosted: int_gauge("raftkv_server_shards_hosted", "Shard replicas hosted by this node."),
            forwarded: counter(
                "raftkv_server_forwarded_requests_total",
                "Client requests this node sent on to the shard's leader (it did not lead the shard), by operation.",
                &["op"],
            ),
            replicas_collected: counter(
                "raftkv_server_replicas_collected_total",
                "Replicas this node deleted because the shard's leader confirmed they had left the shard (replica GC), by shard.",
                &["shard"],
            ),
            connections: {
                let g = IntGaugeVec::new(
                    Opts::new("raftkv_network_connections", "Open connections by port."),
                    &["port"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            connections_refused: counter(
                "raftkv_network_connections_refused_total",
                "Connections closed on accept because the port's connection budget was full.",
                &["port"],
            ),
            connections_timed_out: counter(
                "raftkv_network_connections_timed_out_total",
                "Connections closed for sending too little within the handshake timeout, or for idling.",
                &["port"],
            ),
            registry: r,
        }
    }

    pub fn snapshot_sent(&self, g: GroupId, bytes: u64, took: Duration) {
        let l = shard_label(g);
        self.snapshot_send_success.with_label_values(&[&l]).inc();
        self.snapshot_send_bytes.with_label_values(&[&l]).inc_by(bytes);
        self.snapshot_send_duration
            .with_label_values(&[&l])
            .observe(took.as_secs_f64());
    }

    pub fn snapshot_received(&self, g: GroupId, bytes: u64, took: Duration) {
        let l = shard_label(g);
        self.snapshot_receive_success.with_label_values(&[&l]).inc();
        self.snapshot_receive_bytes.with_label_values(&[&l]).inc_by(bytes);
        self.snapshot_receive_duration
            .with_label_values(&[&l])
            .observe(took.as_secs_f64());
    }

    pub fn request(&self, op: &str, code: tonic::Code, took: Duration) {
        self.requests.with_label_values(&[op, &format!("{code:?}")]).inc();
        self.request_duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    pub fn group(
        &self,
        g: GroupId,
        m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>,
        replica: raftkv_core::ReplicaId,
    ) {
        let l = shard_label(g);
        let l = [l.as_str()];
        self.has_leader
            .with_label_values(&l)
            .set(m.current_leader.is_some() as i64);
        self.is_leader
            .with_label_values(&l)
            .set((m.current_leader == Some(replica)) as i64);
        let committed = m.local_committed.as_ref().map_or(0, |c| c.index);
        let applied = m.last_applied.as_ref().map_or(0, |c| c.index);
        self.proposals_committed.with_label_values(&l).set(committed as i64);
        self.proposals_applied.with_label_values(&l).set(applied as i64);
        self.replica_lag
            .with_label_values(&l)
            .set(committed.saturating_sub(applied) as i64);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text format is UTF-8")
    }
}
