//! A raftkv client. Any node accepts any request and routes it to the
//! shard's leader, so the client only needs some node that answers: it tries
//! the endpoints in turn when one is unreachable or refuses with a retry-safe
//! answer (refused before anything was proposed).
//!
//! To save that hop, a [`Client`] also learns where each shard's leader is
//! (the `Routes` call, refreshed every few seconds and after a refusal) and
//! sends key requests straight there. A request sent straight to a node is
//! answered exactly as if it had come through another node: the node still
//! forwards it if it no longer leads. Only a retry-safe refusal (nothing was
//! proposed) makes the client fall back to its endpoints, so routing never
//! repeats a write that may have been applied. A leader address that cannot
//! be reached (a cluster-internal name seen from outside) is skipped for a
//! while.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raftkv_proto::admin::admin_client::AdminClient;
use raftkv_proto::kv::kv_client::KvClient;
use raftkv_proto::{admin, kv};
use tonic::transport::{Channel, Endpoint};

pub use raftkv_proto::{admin as admin_proto, kv as kv_proto};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given (use --endpoints or KVCTL_ENDPOINTS)")]
    NoEndpoints,
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

/// Channels to a set of nodes (client or admin ports).
#[derive(Clone)]
pub struct Pool {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    next: std::sync::Arc<AtomicUsize>,
}

/// `host:port` or a full URL.
pub fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl Pool {
    pub fn new(endpoints: &[String]) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut channels = Vec::new();
        let mut names = Vec::new();
        for e in endpoints {
            let url = normalize(e);
            let ch = Endpoint::from_shared(url.clone())
                .map_err(|err| ClientError::BadEndpoint(e.clone(), err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push(ch);
            names.push(url);
        }
        Ok(Pool {
            endpoints: names,
            channels,
            next: Default::default(),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn pick(&self, attempt: usize) -> Channel {
        let start = self.next.load(Ordering::Relaxed);
        self.channels[(start + attempt) % self.channels.len()].clone()
    }

    /// Runs `call` against the endpoints, moving on when one cannot serve it.
    async fn with_retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let attempts = self.channels.len() * 3;
        let mut last = None;
        for attempt in 0..attempts {
            match call(self.pick(attempt)).await {
                Ok(v) => {
                    if attempt > 0 {
                        self.next.fetch_add(attempt, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(s) if retryable(&s) => {
                    last = Some(s);
                    if attempt + 1 >= self.channels.len() {
                        tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1).min(10))).await;
                    }
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last.expect("at least one attempt").into())
    }
}

/// Refused before anything happened (the node's retry-safe mark), or the
/// node was never reached. A call cut off midway is not retried: a write may
/// have been applied, and only the caller knows whether repeating it is safe.
fn retryable(s: &tonic::Status) -> bool {
    raftkv_proto::retry::retry_safe(s)
}

/// How long learned routes are used before they are asked for again.
const ROUTES_FRESH: Duration = Duration::from_secs(5);
/// How long a leader address that could not be reached is skipped.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// Each shard's leader, as a node told this client.
struct Routes {
    shard_count: u32,
    /// Index = shard: the leader's client address, if known and reachable.
    leaders: Vec<Option<String>>,
    learned: Instant,
}

/// The routes a `Routes` reply describes, keeping the leader addresses
/// `usable` accepts; `None` for a reply no valid cluster sends (no shards,
/// or more than a cluster map may have), so a bad reply routes nothing.
fn routes_from(r: &kv::RoutesResponse, usable: impl Fn(&str) -> bool) -> Option<Routes> {
    if r.shard_count == 0 || r.shard_count > raftkv_core::map::MAX_SHARDS {
        return None;
    }
    let leaders = (0..r.shard_count as usize)
        .map(|s| r.leaders.get(s).filter(|a| !a.is_empty() && usable(a)).cloned())
        .collect();
    Some(Routes {
        shard_count: r.shard_count,
        leaders,
        learned: Instant::now(),
    })
}

/// What a client knows about leaders, shared by its clones.
#[derive(Default)]
struct Router {
    routes: RwLock<Option<Routes>>,
    refreshing: AtomicBool,
    channels: Mutex<HashMap<String, Channel>>,
    unreachable: Mutex<HashMap<String, Instant>>,
}

/// KV calls.
#[derive(Clone)]
pub struct Client {
    pool: Pool,
    /// `None`: every request goes through the endpoints (see [`Client::pinned`]).
    router: Option<Arc<Router>>,
}

impl Client {
    /// A client that sends key requests straight to shard leaders once it
    /// has learned where they are, and through `endpoints` otherwise.
    pub fn new(endpoints: &[String]) -> Result<Self, ClientError> {
        Ok(Client {
            pool: Pool::new(endpoints)?,
            router: Some(Arc::default()),
        })
    }

    /// A client that sends every request to `endpoints` only (the nodes
    /// forward), e.g. to exercise one node's forwarding.
    pub fn pinned(endpoints: &[String]) -> Result<Self, ClientError> {
        Ok(Client {
            pool: Pool::new(endpoints)?,
            router: None,
        })
    }

    /// Asks the endpoints where each shard's leader is, now. A leader
    /// address is used only once a connection to it was made here, in the
    /// background of requests, so an address this client cannot reach (or
    /// resolve) never delays one.
    pub async fn refresh_routes(&self) -> Result<(), ClientError> {
        let Some(router) = &self.router else { return Ok(()) };
        let r = self
            .pool
            .with_retry(|ch| async move { Self::kv(ch).routes(kv::RoutesRequest {}).await.map(|r| r.into_inner()) })
            .await?;
        let mut reachable = HashMap::new();
        let shards = r.shard_count.min(raftkv_core::map::MAX_SHARDS) as usize;
        for address in r.leaders.iter().take(shards).filter(|a| !a.is_empty()) {
            if reachable.contains_key(address) {
                continue;
            }
            reachable.insert(address.clone(), self.connect_to(router, address).await);
        }
        *router.routes.write().expect("routes lock") = routes_from(&r, |a| reachable.get(a) == Some(&true));
        Ok(())
    }

    /// Whether a channel to `address` is open (made now if need be), unless
    /// it failed within [`UNREACHABLE_FOR`].
    async fn connect_to(&self, router: &Router, address: &str) -> bool {
        if router.channels.lock().expect("channel lock").contains_key(address) {
            return true;
        }
        if router
            .unreachable
            .lock()
            .expect("unreachable lock")
            .get(address)
            .is_some_and(|t| t.elapsed() < UNREACHABLE_FOR)
        {
            return false;
        }
        let Ok(endpoint) = Endpoint::from_shared(normalize(address)) else {
            return false;
        };
        let endpoint = endpoint.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true);
        match tokio::time::timeout(Duration::from_secs(2), endpoint.connect()).await {
            Ok(Ok(ch)) => {
                router
                    .channels
                    .lock()
                    .expect("channel lock")
                    .insert(address.to_string(), ch);
                true
            }
            _ => {
                router
                    .unreachable
                    .lock()
                    .expect("unreachable lock")
                    .insert(address.to_string(), Instant::now());
                false
            }
        }
    }

    /// The channel to `key`'s shard leader, if known; starts a refresh in
    /// the background when the routes are missing or old.
    fn leader_channel(&self, key: &[u8]) -> Option<(String, Channel)> {
        let router = self.router.as_ref()?;
        let (address, stale) = {
            let routes = router.routes.read().expect("routes lock");
            match routes.as_ref() {
                Some(r) => {
                    let shard = raftkv_core::hash::shard_for_key(key, r.shard_count) as usize;
                    (
                        r.leaders.get(shard).cloned().flatten(),
                        r.learned.elapsed() > ROUTES_FRESH,
                    )
                }
                None => (None, true),
            }
        };
        if stale && !router.refreshing.swap(true, Ordering::SeqCst) {
            let client = self.clone();
            tokio::spawn(async move {
                let _ = client.refresh_routes().await;
                if let Some(router) = &client.router {
                    router.refreshing.store(false, Ordering::SeqCst);
                }
            });
        }
        let address = address?;
        let ch = router.channels.lock().expect("channel lock").get(&address)?.clone();
        Some((address, ch))
    }

    /// Forgets the routes after a refusal, and an address that could not be reached.
    fn route_failed(&self, address: &str, s: &tonic::Status) {
        let Some(router) = &self.router else { return };
        if raftkv_proto::retry::never_connected(s) {
            router.channels.lock().expect("channel lock").remove(address);
            router
                .unreachable
                .lock()
                .expect("unreachable lock")
                .insert(address.to_string(), Instant::now());
        }
        *router.routes.write().expect("routes lock") = None;
    }

    /// Runs a key request on the key's shard leader when it is known, else
    /// (or after a retry-safe refusal there) through the endpoints.
    async fn keyed<T, F, Fut>(&self, key: &[u8], call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        if let Some((address, ch)) = self.leader_channel(key) {
            match call(ch).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) => self.route_failed(&address, &s),
                Err(s) => return Err(s.into()),
            }
        }
        self.pool.with_retry(call).await
    }

    fn kv(ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn put(&self, key: &[u8], value: &[u8], ttl_seconds: u64) -> Result<kv::PutResponse, ClientError> {
        let req = kv::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_seconds,
        };
        self.keyed(key, |ch| {
            let r = req.clone();
            async move { Self::kv(ch).put(r).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn get(
        &self,
        key: &[u8],
        consistency: kv::Consistency,
        max_staleness_ms: u64,
    ) -> Result<kv::GetResponse, ClientError> {
        let req = kv::GetRequest {
            key: key.to_vec(),
            consistency: consistency as i32,
            max_staleness_ms,
        };
        self.keyed(key, |ch| {
            let r = req.clone();
            async move { Self::kv(ch).get(r).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<kv::DeleteResponse, ClientError> {
        let req = kv::DeleteRequest { key: key.to_vec() };
        self.keyed(key, |ch| {
            let r = req.clone();
            async move { Self::kv(ch).delete(r).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn scan(&self, req: kv::ScanRequest) -> Result<kv::ScanResponse, ClientError> {
        self.pool
            .with_retry(|ch| {
                let r = req.clone();
                async move { Self::kv(ch).scan(r).await.map(|r| r.into_inner()) }
            })
            .await
    }

    pub async fn compare_and_set(
        &self,
        req: kv::CompareAndSetRequest,
    ) -> Result<kv::CompareAndSetResponse, ClientError> {
        let key = req.key.clone();
        self.keyed(&key, |ch| {
            let r = req.clone();
            async move { Self::kv(ch).compare_and_set(r).await.map(|r| r.into_inner()) }
        })
        .await
    }
}

/// Admin calls. Most go to any node; node-local ones (status, drain, digest)
/// go to the one endpoint they are asked of.
#[derive(Clone)]
pub struct Admin {
    pool: Pool,
}

impl Admin {
    pub fn new(endpoints: &[String]) -> Result<Self, ClientError> {
        Ok(Admin {
            pool: Pool::new(endpoints)?,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        self.pool.endpoints()
    }

    /// A client for one specific node.
    pub fn node(endpoint: &str) -> Result<AdminClient<Channel>, ClientError> {
        let ch = Endpoint::from_shared(normalize(endpoint))
            .map_err(|e| ClientError::BadEndpoint(endpoint.to_string(), e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(AdminClient::new(ch))
    }

    /// The cluster map as of now: the metadata leader confirms it still leads
    /// before answering, so the map shows every admin change that returned.
    pub async fn cluster_map(&self) -> Result<admin::ClusterMapResponse, ClientError> {
        self.pool
            .with_retry(|ch| async move {
                AdminClient::new(ch)
                    .cluster_map(admin::ClusterMapRequest { linearizable: true })
                    .await
                    .map(|r| r.into_inner())
            })
            .await
    }

    pub async fn bootstrap(&self, req: admin::BootstrapRequest) -> Result<admin::BootstrapResponse, ClientError> {
        let ch = self.pool.pick(0);
        Ok(AdminClient::new(ch).bootstrap(req).await?.into_inner())
    }

    pub async fn add_node(&self, member: admin::Member) -> Result<admin::ClusterMapResponse, ClientError> {
        let req = admin::AddNodeRequest { member: Some(member) };
        self.pool
            .with_retry(|ch| {
                let r = req.clone();
                async move { AdminClient::new(ch).add_node(r).await.map(|r| r.into_inner()) }
            })
            .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<admin::ClusterMapResponse, ClientError> {
        let req = admin::RemoveNodeRequest { node_id };
        self.pool
            .with_retry(|ch| async move { AdminClient::new(ch).remove_node(req).await.map(|r| r.into_inner()) })
            .await
    }

    /// Hands lost metadata voter `old_node_id`'s seat to `new_node_id`.
    pub async fn replace_meta_voter(
        &self,
        old_node_id: u64,
        new_node_id: u64,
    ) -> Result<admin::ClusterMapResponse, ClientError> {
        self.replace_meta_voter_with(old_node_id, new_node_id, false).await
    }

    /// [`Admin::replace_meta_voter`]; with `force`, a seat is given up (new
    /// node 0) even below the voter count the cluster's size wants.
    pub async fn replace_meta_voter_with(
        &self,
        old_node_id: u64,
        new_node_id: u64,
        force: bool,
    ) -> Result<admin::ClusterMapResponse, ClientError> {
        let req = admin::ReplaceMetaVoterRequest {
            old_node_id,
            new_node_id,
            force,
        };
        self.pool
            .with_retry(|ch| async move {
                AdminClient::new(ch)
                    .replace_meta_voter(req)
                    .await
                    .map(|r| r.into_inner())
            })
            .await
    }

    pub async fn add_replica(&self, shard: u32, node_id: u64) -> Result<admin::ShardStatus, ClientError> {
        let req = admin::ReplicaRequest {
            shard,
            node_id,
            force: false,
        };
        self.pool
            .with_retry(|ch| async move { AdminClient::new(ch).add_replica(req).await.map(|r| r.into_inner()) })
            .await
    }

    pub async fn promote_replica(&self, shard: u32, node_id: u64) -> Result<admin::ShardStatus, ClientError> {
        let req = admin::ReplicaRequest {
            shard,
            node_id,
            force: false,
        };
        self.pool
            .with_retry(|ch| async move { AdminClient::new(ch).promote_replica(req).await.map(|r| r.into_inner()) })
            .await
    }

    /// Removes `node_id`'s replica of `shard`; refused below the replication factor.
    pub async fn remove_replica(&self, shard: u32, node_id: u64) -> Result<admin::ShardStatus, ClientError> {
        self.remove_replica_with(shard, node_id, false).await
    }

    /// [`Admin::remove_replica`]; with `force`, even below the replication factor.
    pub async fn remove_replica_with(
        &self,
        shard: u32,
        node_id: u64,
        force: bool,
    ) -> Result<admin::ShardStatus, ClientError> {
        let req = admin::ReplicaRequest { shard, node_id, force };
        self.pool
            .with_retry(|ch| async move { AdminClient::new(ch).remove_replica(req).await.map(|r| r.into_inner()) })
            .await
    }

    pub async fn transfer_leader(&self, shard: u32, to_node: u64) -> Result<admin::ShardStatus, ClientError> {
        let req = admin::TransferLeaderRequest { shard, to_node };
        self.pool
            .with_retry(|ch| async move { AdminClient::new(ch).transfer_leader(req).await.map(|r| r.into_inner()) })
            .await
    }
}

#[cfg(test)]
mod tests {
    use raftkv_proto::kv::{GetRequest, kv_client::KvClient};
    use raftkv_proto::retry::{never_connected, retry_safe};
    use tonic::transport::Endpoint;

    /// Whether a write may be retried elsewhere is decided by tonic's typed
    /// connect error, never by the words of a message.
    #[tokio::test]
    async fn only_a_connection_never_made_counts_as_never_connected() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let refused = KvClient::new(channel)
            .get(GetRequest::default())
            .await
            .expect_err("nothing listens on the port");
        assert!(never_connected(&refused), "{refused:?}");
        assert!(retry_safe(&refused));

        let worded = tonic::Status::unavailable("tcp connect error: connection refused");
        assert!(
            !never_connected(&worded),
            "a message that mentions connecting is not a connect error"
        );
        assert!(!retry_safe(&worded));
    }

    /// A `Routes` reply is bytes from the network: one that names no shards
    /// or more than a map may hold routes nothing (the shard hash would
    /// panic on zero), and only usable, non-empty leader addresses are kept.
    #[test]
    fn a_routes_reply_no_cluster_sends_routes_nothing() {
        use raftkv_proto::kv::RoutesResponse;
        let reply = |shard_count, leaders: &[&str]| RoutesResponse {
            shard_count,
            leaders: leaders.iter().map(|s| s.to_string()).collect(),
            map_version: 1,
        };
        assert!(super::routes_from(&reply(0, &["a:1"]), |_| true).is_none());
        assert!(super::routes_from(&reply(raftkv_core::map::MAX_SHARDS + 1, &[]), |_| true).is_none());
        let r = super::routes_from(&reply(3, &["a:1", "", "b:2", "c:3"]), |a| a != "b:2").expect("valid");
        assert_eq!(r.shard_count, 3);
        assert_eq!(r.leaders, vec![Some("a:1".to_string()), None, None]);
    }
}
