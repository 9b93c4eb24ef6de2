//! What a caller with nothing but network access to a node's peer port can
//! do to a cluster: nothing but be refused. Each test sends, through a
//! hostile peer speaking the protocol directly with the cluster's real (and
//! public) ids, a request that once broke a cluster for good, and then
//! checks that the cluster is unchanged and still serves.

mod support;

use std::time::{Duration, Instant};

use raftkv_client::Client;
use raftkv_client::kv_proto::Consistency;
use raftkv_core::GroupId;
use raftkv_core::command::Command;
use raftkv_core::map::ClusterMap;
use support::hostile::HostilePeer;
use support::{Cluster, Options};

const CLUSTER: &str = "test";

async fn hostile(c: &Cluster, i: usize) -> HostilePeer {
    let n = &c.nodes[i];
    HostilePeer::connect(&n.host, n.ports.peer, n.id, CLUSTER).await
}

async fn current_map(c: &Cluster) -> ClusterMap {
    let proto = c.admin().cluster_map().await.expect("cluster map");
    ClusterMap::try_from(&proto).expect("a valid map")
}

fn assert_refused(what: &str, r: Result<(), tonic::Status>, code: tonic::Code) {
    match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {}", s.message()),
    }
}

async fn write_and_read_back(c: &Cluster, prefix: &str) {
    write_and_read_back_via(&c.client(), prefix).await;
}

async fn write_and_read_back_via(client: &Client, prefix: &str) {
    for i in 0..16 {
        let key = format!("{prefix}/{i}");
        client
            .put(key.as_bytes(), b"v", 0)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let got = client
            .get(key.as_bytes(), Consistency::Linearizable, 0)
            .await
            .expect("get");
        assert!(got.found, "{key} not found after its put");
    }
}

/// Shard → term, as the leaders report it.
async fn terms(c: &mut Cluster) -> Vec<(u32, bool, u64)> {
    let mut out = Vec::new();
    for n in &mut c.nodes {
        let s = n.status().await.expect("status");
        for sh in s.shards.iter().filter(|s| s.role == "leader") {
            out.push((sh.shard, sh.meta, sh.term));
        }
    }
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_proposals_are_refused_and_the_cluster_survives_a_restart() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(4, 3).await;
    write_and_read_back(&c, "before").await;
    let map = current_map(&c).await;
    let mut zero_shards = map.clone();
    zero_shards.version += 1;
    zero_shards.shard_count = 0;
    zero_shards.shards.clear();
    let put = Command::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ttl_ms: None,
    };
    let huge = Command::Put {
        key: vec![b'k'; 5 << 20],
        value: vec![0; 30 << 20],
        ttl_ms: None,
    };
    let long_key = Command::Put {
        key: vec![b'k'; 5 << 10],
        value: vec![0; 1 << 20],
        ttl_ms: None,
    };
    for i in 0..c.nodes.len() {
        let mut h = hostile(&c, i).await;
        let invalid = tonic::Code::InvalidArgument;
        assert_refused(
            "a put on the metadata group",
            h.propose(GroupId::Meta, put.clone()).await,
            invalid,
        );
        assert_refused(
            "an init-map on a data shard",
            h.propose(GroupId::Shard(0), Command::InitMap(map.clone())).await,
            invalid,
        );
        assert_refused(
            "a put on a data shard",
            h.propose(GroupId::Shard(1), put.clone()).await,
            invalid,
        );
        assert_refused(
            "an update-map to zero shards",
            h.propose(
                GroupId::Meta,
                Command::UpdateMap {
                    expected_version: map.version,
                    map: zero_shards.clone(),
                },
            )
            .await,
            invalid,
        );
        assert_refused(
            "a 35 MiB put (over the peer port's message limit)",
            h.propose(GroupId::Meta, huge.clone()).await,
            tonic::Code::OutOfRange,
        );
        assert_refused(
            "a put with a 5 KiB key on its shard",
            h.propose(GroupId::Shard(2), long_key.clone()).await,
            invalid,
        );
        h.cluster_id = String::new();
        assert_refused(
            "a proposal without the cluster id",
            h.propose(GroupId::Meta, Command::InitMap(map.clone())).await,
            tonic::Code::FailedPrecondition,
        );
    }
    assert_eq!(current_map(&c).await, map, "a refused proposal changed the map");
    write_and_read_back(&c, "after").await;

    // Nothing was written that could poison a replay.
    for n in &mut c.nodes {
        n.kill9();
    }
    for n in &mut c.nodes {
        n.start();
    }
    for n in &mut c.nodes {
        n.wait_up(Duration::from_secs(30)).await;
    }
    c.wait_all_leaders(Duration::from_secs(30)).await;
    write_and_read_back(&c, "restarted").await;
    assert_eq!(current_map(&c).await, map);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_votes_appends_and_transfers_are_refused_and_no_term_moves() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(4, 3).await;
    let before = terms(&mut c).await;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let stranger = 4_242;
    let denied = tonic::Code::PermissionDenied;
    let invalid = tonic::Code::InvalidArgument;
    for i in 0..c.nodes.len() {
        let mut h = hostile(&c, i).await;
        let member = ids[(i + 1) % ids.len()];
        let other = ids[(i + 2) % ids.len()];
        for g in [GroupId::Meta, GroupId::Shard(0), GroupId::Shard(3)] {
            let term = 1_000;
            assert_refused(
                "a vote from a non-member",
                h.vote(g, stranger, stranger, term).await,
                denied,
            );
            assert_refused(
                "a vote whose candidate is not the sender",
                h.vote(g, member, other, term).await,
                invalid,
            );
            assert_refused(
                "a vote at term u64::MAX",
                h.vote(g, member, member, u64::MAX).await,
                invalid,
            );
            assert_refused(
                "a leadership transfer from a non-member",
                h.transfer_leader(g, stranger, term).await,
                denied,
            );
            assert_refused("an append from a non-member", h.append(g, stranger, term).await, denied);
            assert_refused(
                "an append at term u64::MAX",
                h.append(g, member, u64::MAX).await,
                invalid,
            );
        }
    }
    assert_eq!(
        terms(&mut c).await,
        before,
        "a refused message moved a term or a leader"
    );
    write_and_read_back(&c, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_the_map_still_places_is_never_destroyed() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(2, 3).await;
    write_and_read_back(&c, "before").await;
    for i in 0..2 {
        let mut h = hostile(&c, i).await;
        for cluster_id in ["", CLUSTER] {
            assert_refused(
                "destroying a placed replica",
                h.destroy_replica(GroupId::Shard(0), cluster_id).await,
                tonic::Code::FailedPrecondition,
            );
        }
        assert_refused(
            "destroying the metadata replica",
            h.destroy_replica(GroupId::Meta, CLUSTER).await,
            tonic::Code::InvalidArgument,
        );
        assert_refused(
            "creating a replica of a shard the cluster does not have",
            h.create_replica(GroupId::Shard(9_999)).await,
            tonic::Code::InvalidArgument,
        );
    }
    for n in &mut c.nodes {
        let s = n.status().await.expect("status");
        assert!(
            s.shards.iter().any(|sh| !sh.meta && sh.shard == 0),
            "node {} lost its replica of shard 0",
            n.id
        );
    }
    write_and_read_back(&c, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_never_rewrites_a_joined_node_nor_plants_an_invalid_map() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(4, 3).await;
    let map = current_map(&c).await;
    let version = c.nodes[1].status().await.expect("status").map_version;

    let mut bumped = map.clone();
    bumped.version = 1_000;
    let mut zero_shards = bumped.clone();
    zero_shards.shard_count = 0;
    zero_shards.shards.clear();
    let mut h = hostile(&c, 1).await;
    assert_refused(
        "a join with zero shards",
        h.join(&zero_shards).await,
        tonic::Code::InvalidArgument,
    );
    // A valid map for the same cluster is accepted as a retried join, and ignored.
    h.join(&bumped).await.expect("a retried join is idempotent");
    let status = c.nodes[1].status().await.expect("status");
    assert_eq!(status.map_version, version, "a join rewrote the node's map");

    // An unjoined node refuses an invalid map and stays unjoined.
    let fresh = c.add_node_process(&[]).await;
    let n = &c.nodes[fresh];
    let mut h = HostilePeer::connect(&n.host, n.ports.peer, n.id, CLUSTER).await;
    let mut short = map.clone();
    short
        .nodes
        .insert(n.id, map.nodes.values().next().expect("a node").clone());
    short.shards.truncate(1);
    assert_refused(
        "a join with a short shard list",
        h.join(&short).await,
        tonic::Code::InvalidArgument,
    );
    let status = c.nodes[fresh].status().await.expect("status");
    assert!(!status.joined, "the node joined with an invalid map");
    write_and_read_back(&c, "after").await;
}

/// A flood of silent connections on one node's client port, three times
/// the node's open-file limit: the peer, admin and HTTP ports keep serving
/// while the flood is held open, the node closes every flood connection
/// (past the port's budget at once, the rest by the handshake timeout), and
/// then its client port serves again with the flood's sockets still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_on_the_client_port_leaves_every_other_port_serving() {
    const FD_LIMIT: u64 = 2048;
    let options = Options {
        fd_limit: Some(FD_LIMIT),
        ..Options::default()
    };
    let mut c = Cluster::start_with(3, &[], options).await;
    c.bootstrap(4, 3).await;
    c.wait_all_leaders(Duration::from_secs(30)).await;
    // Nodes forward client requests to a leader's client port over
    // long-lived connections; these are made before the flood.
    let others = Client::pinned(&[c.nodes[1].client_ep(), c.nodes[2].client_ep()]).expect("client");
    write_and_read_back_via(&others, "before-flood").await;
    let target: std::net::SocketAddr = c.nodes[0].client_ep().parse().expect("an address");
    let flood = tokio::task::spawn_blocking(move || {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
        // A connect loop outruns any accept loop now and then, and the
        // kernel drops a SYN when the accept queue is full (retried after
        // 1 s): a node that stopped accepting fails ten connects in a row.
        let mut open = Vec::new();
        let mut errors = Vec::new();
        while open.len() < 3 * FD_LIMIT as usize && errors.len() < 10 {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
                Ok(s) => {
                    open.push(s);
                    errors.clear();
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (open, errors)
    })
    .await
    .expect("flood");
    let (flood, errors) = flood;
    assert_eq!(
        flood.len(),
        3 * FD_LIMIT as usize,
        "the node stopped accepting after {} connections: {errors:?}",
        flood.len()
    );

    // With the flood held open: health, admin and writes through the other
    // nodes, whose forwarded proposals reach node 0 over its peer port.
    let health = support::http_get(&c.nodes[0].http_url("/healthz"));
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "/healthz during the flood: {health:?}"
    );
    c.nodes[0].status().await.expect("admin NodeStatus during the flood");
    write_and_read_back_via(&others, "during-flood").await;

    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let refused = c.nodes[0].metric("raftkv_network_connections_refused_total{port=\"client\"}");
        let timed_out = c.nodes[0].metric("raftkv_network_connections_timed_out_total{port=\"client\"}");
        if refused + timed_out >= flood.len() as f64 {
            assert!(refused > 0.0, "no connection was refused for the budget");
            assert!(timed_out > 0.0, "no connection was closed by the handshake timeout");
            break;
        }
        assert!(
            Instant::now() < until,
            "node 0 closed {refused} + {timed_out} of {} flood connections within 30 s",
            flood.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    write_and_read_back_via(&c.client_via(0), "after-flood").await;
    drop(flood);
}
