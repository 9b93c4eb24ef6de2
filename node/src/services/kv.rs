//! The client KV service (port 2379).
//!
//! Any node accepts any request. The key picks the shard; the request runs
//! on the shard's leader: here if this node leads it, otherwise forwarded
//! once (marked with the `x-raftkv-hop` header) to the node believed to lead
//! it. A forwarded request is never forwarded again: a node that does not
//! lead the shard refuses with a leader hint, and the first node retries
//! elsewhere. Retries happen only after refusals made before anything was
//! proposed, so a write is never applied twice by a retry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use raftkv_core::command::{Command, Expected, Response as KvResponse};
use raftkv_core::record::ValueRecord;
use raftkv_core::scan::{self, KeyRange, ShardPage};
use raftkv_core::{GroupId, ShardId, limits};
use raftkv_proto::kv::{self, Consistency, kv_client::KvClient, kv_server::Kv};
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::host::{Group, Host, now_ms};
use crate::metrics::METRICS;
use crate::raft::network::Lane;
use crate::routing::{self, Target};

use crate::error::HOP;
/// How long a request may spend finding its shard's leader.
const ROUTE_DEADLINE: Duration = Duration::from_secs(10);
const DEFAULT_SCAN_LIMIT: u32 = 1000;

pub struct KvService {
    pub host: Arc<Host>,
}

/// One shard-level operation, run on the shard's leader (or a replica, for stale reads).
#[derive(Clone)]
enum Op {
    Put(kv::PutRequest),
    Get(kv::GetRequest),
    Delete(kv::DeleteRequest),
    Cas(kv::CompareAndSetRequest),
    Scan(kv::ScanRequest),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put(_) => "put",
            Op::Get(_) => "get",
            Op::Delete(_) => "delete",
            Op::Cas(_) => "cas",
            Op::Scan(_) => "scan",
        }
    }
}

enum Reply {
    Put(kv::PutResponse),
    Get(kv::GetResponse),
    Delete(kv::DeleteResponse),
    Cas(kv::CompareAndSetResponse),
    Scan(kv::ScanResponse),
}

/// A scan's page size: the default for 0, refused over the maximum (on
/// every path, the single-shard one included).
fn scan_limit(requested: u32) -> Result<u32, NodeError> {
    match requested {
        0 => Ok(DEFAULT_SCAN_LIMIT),
        limit if limit > limits::MAX_SCAN_LIMIT => Err(limits::InputError::ScanLimitTooLarge { limit }.into()),
        limit => Ok(limit),
    }
}

fn ttl_ms(seconds: u64) -> Result<Option<u64>, NodeError> {
    limits::check_ttl(seconds)?;
    Ok((seconds > 0).then(|| seconds * 1000))
}

fn unexpected(r: KvResponse) -> NodeError {
    NodeError::Raft(format!("unexpected state machine answer {r:?}"))
}

impl KvService {
    fn check_serving(&self) -> Result<(), NodeError> {
        if self.host.shutting_down.load(Ordering::SeqCst) {
            return Err(NodeError::ShuttingDown);
        }
        if self.host.cluster_id().is_none() {
            return Err(NodeError::NotJoined);
        }
        Ok(())
    }

    /// The checks every keyed request passes before it is routed; returns its shard.
    fn admit(&self, key: &[u8], write: bool) -> Result<ShardId, NodeError> {
        self.check_serving()?;
        if write {
            self.check_writable()?;
        }
        limits::check_key(key)?;
        Ok(self.host.shard_of(key)?.0)
    }

    fn check_writable(&self) -> Result<(), NodeError> {
        if self.host.disk_full.load(Ordering::SeqCst) {
            return Err(NodeError::DiskFull);
        }
        Ok(())
    }

    /// Runs `op` on the leader of shard `shard`, retrying elsewhere only
    /// after refusals that guarantee nothing was applied.
    async fn on_leader(&self, shard: ShardId, op: Op, forwarded: bool) -> Result<Reply, Status> {
        let g = GroupId::Shard(shard);
        routing::on_leader(&self.host, g, forwarded, ROUTE_DEADLINE, |target| {
            let op = &op;
            async move {
                match target {
                    Target::Here => {
                        let group = self.host.group(g).ok_or(NodeError::NoReplica(g))?;
                        self.local(&group, shard, op).await.map_err(Status::from)
                    }
                    Target::Node(l) => self.remote(l, op).await,
                }
            }
        })
        .await
    }

    async fn remote(&self, target: u64, op: &Op) -> Result<Reply, Status> {
        let channel = self
            .host
            .pool
            .channel(target, Lane::Client)
            .map_err(|e| NodeError::Peer(e.to_string()))?;
        let mut client = KvClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        fn hop<T>(m: T) -> Request<T> {
            let mut r = Request::new(m);
            r.metadata_mut()
                .insert(HOP, tonic::metadata::MetadataValue::from_static("1"));
            r
        }
        METRICS.forwarded.with_label_values(&[op.name()]).inc();
        let result = match op.clone() {
            Op::Put(r) => client.put(hop(r)).await.map(|r| Reply::Put(r.into_inner())),
            Op::Get(r) => client.get(hop(r)).await.map(|r| Reply::Get(r.into_inner())),
            Op::Delete(r) => client.delete(hop(r)).await.map(|r| Reply::Delete(r.into_inner())),
            Op::Cas(r) => client.compare_and_set(hop(r)).await.map(|r| Reply::Cas(r.into_inner())),
            Op::Scan(r) => client.scan(hop(r)).await.map(|r| Reply::Scan(r.into_inner())),
        };
        let read = matches!(op, Op::Get(_) | Op::Scan(_));
        result.map_err(|s| {
            // Never reached the node (nothing was proposed), or a read, which
            // is safe to repeat: let the caller try elsewhere.
            if raftkv_proto::retry::never_connected(&s) || (read && s.code() == tonic::Code::Unavailable) {
                let mut retry: Status = NodeError::Peer(format!("node {target}: {}", s.message())).into();
                retry.metadata_mut().insert(
                    crate::error::RETRY_SAFE,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                retry
            } else {
                s
            }
        })
    }

    async fn local(&self, group: &Group, shard: ShardId, op: &Op) -> Result<Reply, NodeError> {
        match op {
            Op::Put(r) => {
                self.check_writable()?;
                let cmd = Command::Put {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    ttl_ms: ttl_ms(r.ttl_seconds)?,
                };
                match self.host.propose(group.id, cmd).await? {
                    KvResponse::Put { version, prev_version } => Ok(Reply::Put(kv::PutResponse {
                        version,
                        shard,
                        prev_version: prev_version.unwrap_or(0),
                    })),
                    other => Err(unexpected(other)),
                }
            }
            Op::Delete(r) => {
                self.check_writable()?;
                match self
                    .host
                    .propose(group.id, Command::Delete { key: r.key.clone() })
                    .await?
                {
                    KvResponse::Delete { prev_version } => Ok(Reply::Delete(kv::DeleteResponse {
                        existed: prev_version.is_some(),
                        prev_version: prev_version.unwrap_or(0),
                        shard,
                    })),
                    other => Err(unexpected(other)),
                }
            }
            Op::Cas(r) => {
                self.check_writable()?;
                let expected = match r.expected {
                    Some(kv::compare_and_set_request::Expected::ExpectedVersion(v)) => Expected::Version(v),
                    Some(kv::compare_and_set_request::Expected::ExpectedAbsent(true)) => Expected::Absent,
                    _ => {
                        return Err(NodeError::BadRequest(
                            "compare-and-set needs expected_version or expected_absent".into(),
                        ));
                    }
                };
                let value = (!r.delete).then(|| r.value.clone());
                let cmd = Command::Cas {
                    key: r.key.clone(),
                    expected,
                    value,
                    ttl_ms: ttl_ms(r.ttl_seconds)?,
                };
                match self.host.propose(group.id, cmd).await? {
                    KvResponse::Cas { succeeded, version } => Ok(Reply::Cas(kv::CompareAndSetResponse {
                        succeeded,
                        version: version.unwrap_or(0),
                        shard,
                    })),
                    other => Err(unexpected(other)),
                }
            }
            Op::Get(r) => {
                let read = self.confirm_read(group, r.consistency(), r.max_staleness_ms).await?;
                let now = now_ms();
                let rec = group.view.get(&r.key)?.filter(|rec| rec.is_live(now));
                Ok(Reply::Get(get_response(rec, shard, read)))
            }
            Op::Scan(r) => {
                let read = self.confirm_read(group, r.consistency(), r.max_staleness_ms).await?;
                let _ = read;
                let range = KeyRange::between(r.start.clone(), (!r.end.is_empty()).then(|| r.end.clone()))?;
                let limit = scan_limit(r.limit)? as usize;
                let map = self.host.map().ok_or(NodeError::NotJoined)?;
                let max_bytes = limits::shard_scan_bytes(map.shard_count);
                let view = group.view.clone();
                let now = now_ms();
                let (items, more) = self
                    .host
                    .storage(move || view.scan(&range, limit, max_bytes, now))
                    .await?;
                Ok(Reply::Scan(kv::ScanResponse {
                    items: items
                        .into_iter()
                        .map(|(key, rec)| kv::KeyValue {
                            key,
                            value: if r.keys_only { vec![] } else { rec.value },
                            version: rec.version,
                            shard,
                        })
                        .collect(),
                    continuation: vec![],
                    more,
                }))
            }
        }
    }

    /// Makes a read on this replica safe at the requested consistency and
    /// says how it was served.
    async fn confirm_read(
        &self,
        group: &Group,
        c: Consistency,
        max_staleness_ms: u64,
    ) -> Result<kv::ReadInfo, NodeError> {
        let g = group.id;
        let not_leader = |e: RaftError<_, LinearizableReadError<_>>| match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => NodeError::NotLeader {
                group: g,
                leader: f.leader_id.and_then(|r| group.node_of(r)),
            },
            RaftError::APIError(other) => NodeError::NotLeader { group: g, leader: None }.or_log(other),
            RaftError::Fatal(f) => NodeError::Raft(f.to_string()),
        };
        let mut staleness_ms = 0;
        match c {
            Consistency::Linearizable => {
                group
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map_err(not_leader)?;
            }
            Consistency::Lease => {
                if group.raft.ensure_linearizable(ReadPolicy::LeaseRead).await.is_err() {
                    // Lease expired or unknown: fall back to a read-index round.
                    group
                        .raft
                        .ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .map_err(not_leader)?;
                }
            }
            Consistency::Stale => {
                staleness_ms = if group.is_leader() {
                    // A leader is as fresh as a quorum last confirmed it: a
                    // leader cut off from its followers stays Leader in
                    // openraft until it hears of a new term, while another
                    // leader takes writes.
                    use openraft::Instant as _;
                    use openraft::async_runtime::WatchReceiver;
                    group
                        .raft
                        .metrics()
                        .borrow_watched()
                        .last_quorum_acked
                        .as_ref()
                        .map_or(u64::MAX, |t| t.elapsed().as_millis() as u64)
                } else {
                    group
                        .leader_contact
                        .lock()
                        .expect("contact lock")
                        .map_or(u64::MAX, |t| t.elapsed().as_millis() as u64)
                };
                if max_staleness_ms > 0 && staleness_ms > max_staleness_ms {
                    return Err(NodeError::TooStale {
                        staleness_ms,
                        bound_ms: max_staleness_ms,
                    });
                }
            }
        }
        let applied_index = group.applied_index();
        Ok(kv::ReadInfo {
            consistency: c as i32,
            served_by: self.host.id,
            applied_index,
            staleness_ms,
        })
    }

    /// Stale reads run on a local replica when there is one; everything else on the leader.
    async fn read(&self, shard: ShardId, op: Op, forwarded: bool, c: Consistency) -> Result<Reply, Status> {
        if c == Consistency::Stale
            && let Some(group) = self.host.group(GroupId::Shard(shard))
        {
            match self.local(&group, shard, &op).await {
                Err(NodeError::TooStale { .. }) if !forwarded => {} // ask the leader instead
                other => return other.map_err(Status::from),
            }
        }
        self.on_leader(shard, op, forwarded).await
    }

    async fn scan_all(&self, r: kv::ScanRequest) -> Result<kv::ScanResponse, Status> {
        let map = self.host.map().ok_or(NodeError::NotJoined)?;
        let range = if !r.prefix.is_empty() {
            KeyRange::prefix(&r.prefix)
        } else {
            KeyRange::between(r.start.clone(), (!r.end.is_empty()).then(|| r.end.clone())).map_err(NodeError::from)?
        };
        let range = if r.continuation.is_empty() {
            range
        } else {
            let after = scan::decode_token(&r.continuation)
                .map_err(|e| NodeError::BadRequest(format!("bad continuation token: {e}")))?;
            range.resume_after(&after)
        };
        let limit = scan_limit(r.limit)?;
        let per_shard = kv::ScanRequest {
            prefix: vec![],
            start: range.start.clone(),
            end: range.end.clone().unwrap_or_default(),
            limit,
            continuation: vec![],
            consistency: r.consistency,
            max_staleness_ms: r.max_staleness_ms,
            keys_only: r.keys_only,
            only_shard: None,
        };
        let c = r.consistency();
        let pages = join_all((0..map.shard_count).map(|s| {
            let req = kv::ScanRequest {
                only_shard: Some(s),
                ..per_shard.clone()
            };
            self.read(s, Op::Scan(req), false, c)
        }))
        .await;
        let mut shard_pages = Vec::with_capacity(pages.len());
        for p in pages {
            let Reply::Scan(p) = p? else {
                unreachable!("a scan op answers with a scan reply")
            };
            shard_pages.push(ShardPage {
                items: p.items.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
                more: p.more,
            });
        }
        let (items, resume) =
            scan::merge_pages(shard_pages, limit as usize, limits::MAX_SCAN_BYTES, |kv| kv.value.len());
        Ok(kv::ScanResponse {
            items: items.into_iter().map(|(_, kv)| kv).collect(),
            continuation: resume.map(|k| scan::encode_token(&k)).unwrap_or_default(),
            more: false,
        })
    }
}

impl NodeError {
    fn or_log(self, cause: impl std::fmt::Display) -> Self {
        tracing::debug!(%cause, "read refused");
        self
    }
}

fn get_response(rec: Option<ValueRecord>, shard: ShardId, read: kv::ReadInfo) -> kv::GetResponse {
    match rec {
        Some(r) => kv::GetResponse {
            found: true,
            value: r.value,
            version: r.version,
            shard,
            read: Some(read),
            expires_at_ms: r.expires_at_ms.unwrap_or(0),
        },
        None => kv::GetResponse {
            found: false,
            value: vec![],
            version: 0,
            shard,
            read: Some(read),
            expires_at_ms: 0,
        },
    }
}

fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().get(HOP).is_some()
}

/// Runs a request handler, recording its latency and outcome.
async fn timed<T>(op: &str, handler: impl Future<Output = Result<T, Status>>) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler.await;
    METRICS.request(
        op,
        result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        started.elapsed(),
    );
    result.map(Response::new)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<kv::PutRequest>) -> Result<Response<kv::PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        timed("put", async {
            limits::check_value(&r.value).map_err(NodeError::from)?;
            ttl_ms(r.ttl_seconds)?;
            let shard = self.admit(&r.key, true)?;
            match self.on_leader(shard, Op::Put(r), forwarded).await? {
                Reply::Put(p) => Ok(p),
                _ => unreachable!("a put op answers with a put reply"),
            }
        })
        .await
    }

    async fn routes(&self, _request: Request<kv::RoutesRequest>) -> Result<Response<kv::RoutesResponse>, Status> {
        timed("routes", async {
            self.check_serving()?;
            let map = self.host.map().ok_or(NodeError::NotJoined)?;
            let leaders = (0..map.shard_count)
                .map(|s| {
                    self.host
                        .known_leader(GroupId::Shard(s))
                        .and_then(|id| map.node(id).ok())
                        .map(|a| format!("{}:{}", a.host, a.client_port))
                        .unwrap_or_default()
                })
                .collect();
            Ok(kv::RoutesResponse {
                shard_count: map.shard_count,
                leaders,
                map_version: map.version,
            })
        })
        .await
    }

    async fn get(&self, request: Request<kv::GetRequest>) -> Result<Response<kv::GetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        timed("get", async {
            let shard = self.admit(&r.key, false)?;
            let c = r.consistency();
            match self.read(shard, Op::Get(r), forwarded, c).await? {
                Reply::Get(g) => Ok(g),
                _ => unreachable!("a get op answers with a get reply"),
            }
        })
        .await
    }

    async fn delete(&self, request: Request<kv::DeleteRequest>) -> Result<Response<kv::DeleteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        timed("delete", async {
            let shard = self.admit(&r.key, true)?;
            match self.on_leader(shard, Op::Delete(r), forwarded).await? {
                Reply::Delete(d) => Ok(d),
                _ => unreachable!("a delete op answers with a delete reply"),
            }
        })
        .await
    }

    async fn compare_and_set(
        &self,
        request: Request<kv::CompareAndSetRequest>,
    ) -> Result<Response<kv::CompareAndSetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        timed("cas", async {
            limits::check_value(&r.value).map_err(NodeError::from)?;
            ttl_ms(r.ttl_seconds)?;
            if r.expected.is_none() {
                return Err(
                    NodeError::BadRequest("compare-and-set needs expected_version or expected_absent".into()).into(),
                );
            }
            let shard = self.admit(&r.key, true)?;
            match self.on_leader(shard, Op::Cas(r), forwarded).await? {
                Reply::Cas(c) => Ok(c),
                _ => unreachable!("a cas op answers with a cas reply"),
            }
        })
        .await
    }

    async fn scan(&self, request: Request<kv::ScanRequest>) -> Result<Response<kv::ScanResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        timed("scan", async {
            self.check_serving()?;
            scan_limit(r.limit)?;
            match r.only_shard {
                Some(s) => {
                    let map = self.host.map().ok_or(NodeError::NotJoined)?;
                    if s >= map.shard_count {
                        return Err(NodeError::BadRequest(format!(
                            "unknown shard {s}: the cluster has {} shards",
                            map.shard_count
                        ))
                        .into());
                    }
                    let c = r.consistency();
                    match self.read(s, Op::Scan(r), forwarded, c).await? {
                        Reply::Scan(p) => Ok(p),
                        _ => unreachable!("a scan op answers with a scan reply"),
                    }
                }
                None => self.scan_all(r).await,
            }
        })
        .await
    }
}
