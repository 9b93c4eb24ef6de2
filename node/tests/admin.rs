//! Multi-process tests of the admin API, bad input and snapshots.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use raftkv_client::admin_proto as admin;
use raftkv_client::kv_proto::{self as kv, Consistency};
use raftkv_client::{Admin, ClientError};
use support::Cluster;

fn code(e: &ClientError) -> tonic::Code {
    match e {
        ClientError::Status(s) => s.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut c = Cluster::start(3, &[]).await;
    // Before bootstrap: the node is up but refuses KV requests with a reason.
    let early = c.client_via(0).put(b"k", b"v", 0).await.unwrap_err();
    assert_eq!(code(&early), tonic::Code::FailedPrecondition, "{early}");
    assert!(early.to_string().contains("not joined"), "{early}");
    c.bootstrap(8, 3).await;
    let client = c.client();

    let invalid = [
        client.put(b"", b"v", 0).await.unwrap_err(),
        client.put(&vec![b'k'; 4097], b"v", 0).await.unwrap_err(),
        client.put(b"big", &vec![0; 1024 * 1024 + 1], 0).await.unwrap_err(),
        client.put(b"ttl", b"v", 400 * 365 * 24 * 3600).await.unwrap_err(),
        client.get(b"", Consistency::Linearizable, 0).await.unwrap_err(),
        client.delete(&vec![b'k'; 5000]).await.unwrap_err(),
        client
            .compare_and_set(kv::CompareAndSetRequest {
                key: b"cas".to_vec(),
                expected: None,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .scan(kv::ScanRequest {
                only_shard: Some(99),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .scan(kv::ScanRequest {
                start: b"b".to_vec(),
                end: b"a".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .scan(kv::ScanRequest {
                continuation: b"garbage".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .scan(kv::ScanRequest {
                limit: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ];
    for e in &invalid {
        assert_eq!(code(e), tonic::Code::InvalidArgument, "{e}");
    }
    // Nothing of a refused request was applied.
    for k in [b"big".as_slice(), b"ttl", b"cas"] {
        assert!(!client.get(k, Consistency::Linearizable, 0).await.unwrap().found);
    }

    // Admin: unknown shard, unknown node, bad bootstrap.
    let a = c.admin();
    assert_eq!(
        code(&a.add_replica(99, c.nodes[0].id).await.unwrap_err()),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(&a.add_replica(0, 12345).await.unwrap_err()),
        tonic::Code::FailedPrecondition
    );
    let again = a
        .bootstrap(admin::BootstrapRequest {
            cluster_id: "other".into(),
            shards: 8,
            replication_factor: 3,
            members: vec![c.member(0)],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            code(&again),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ),
        "{again}"
    );

    // A peer RPC meant for another identity is refused.
    let mut peer = raftkv_proto_peer_client(&format!("http://127.0.0.1:{}", c.nodes[0].ports.peer)).await;
    let wrong = peer
        .raft(raftkv_proto::peer::RaftRequest {
            target_node: 42,
            group: 0,
            kind: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::FailedPrecondition);
    assert!(wrong.message().contains("meant for node 42"), "{}", wrong.message());

    // Garbage bytes on every port: the connection fails, the node keeps serving.
    for n in &c.nodes {
        for port in [n.ports.client, n.ports.peer, n.ports.admin, n.ports.http] {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n\x00\xff\xfe not a protocol at all\n");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
        }
    }
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "node {i} died after garbage input");
        let via = c.client_via(i);
        via.put(format!("after-garbage/{i}").as_bytes(), b"ok", 0)
            .await
            .unwrap();
        assert!(
            via.get(format!("after-garbage/{i}").as_bytes(), Consistency::Linearizable, 0)
                .await
                .unwrap()
                .found
        );
    }
    let health = support::http_get(&c.nodes[0].http_url("/readyz"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

async fn raftkv_proto_peer_client(ep: &str) -> raftkv_proto::peer::peer_client::PeerClient<tonic::transport::Channel> {
    raftkv_proto::peer::peer_client::PeerClient::connect(ep.to_string())
        .await
        .expect("connect to peer port")
}

/// Waits until node `i` reports `value` for `name`: each node checks its disk
/// on its own upkeep tick, so the node asked may notice a moment after the
/// node that refused the write.
async fn wait_metric(c: &Cluster, i: usize, name: &str, value: f64) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = c.nodes[i].metric(name);
        if seen == value {
            return;
        }
        assert!(
            Instant::now() < until,
            "node {i}: {name} is {seen}, expected {value} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_replicas_by_snapshot_and_all_replicas_agree() {
    // Small snapshot and log-retention settings so logs are compacted quickly.
    let args = ["--snapshot-entries", "40", "--keep-entries", "5"];
    let mut c = Cluster::start(3, &args).await;
    c.bootstrap(8, 3).await;
    let client = c.client();
    for i in 0..600 {
        client
            .put(format!("snap/{i:04}").as_bytes(), format!("value-{i}").as_bytes(), 0)
            .await
            .unwrap();
    }
    c.wait_caught_up(Duration::from_secs(30)).await;
    let n4 = c.add_node_process(&args).await;
    let id4 = c.nodes[n4].id;
    let a = c.admin();
    let map = a.add_node(c.member(n4)).await.unwrap();
    assert!(map.nodes.iter().any(|n| n.node_id == id4));
    // Idempotent.
    a.add_node(c.member(n4)).await.unwrap();

    let mut moved = BTreeMap::new();
    for shard in 0..3u32 {
        let before = a.cluster_map().await.unwrap();
        let voters = before.shards[shard as usize].voters.clone();
        a.add_replica(shard, id4).await.unwrap();
        a.add_replica(shard, id4).await.unwrap(); // idempotent
        // Promote once caught up (refused until then).
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match a.promote_replica(shard, id4).await {
                Ok(s) => {
                    assert!(s.voters.contains(&id4));
                    break;
                }
                Err(e) if code(&e) == tonic::Code::FailedPrecondition && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("promoting node {id4} in shard {shard}: {e}"),
            }
        }
        // Remove one of the original voters that is not the leader.
        let leaders = c.leaders().await;
        let victim = *voters.iter().find(|v| Some(*v) != leaders.get(&shard)).unwrap();
        let s = a.remove_replica(shard, victim).await.unwrap();
        assert!(!s.voters.contains(&victim));
        a.remove_replica(shard, victim).await.unwrap(); // idempotent
        moved.insert(shard, victim);
    }
    let map = a.cluster_map().await.unwrap();
    for (shard, victim) in &moved {
        let r = &map.shards[*shard as usize];
        assert!(
            r.voters.contains(&id4) && !r.voters.contains(victim) && r.voters.len() == 3,
            "{r:?}"
        );
    }
    assert!(
        c.nodes[n4].metric("raftkv_network_snapshot_receive_success_total") >= 1.0,
        "no replica arrived by snapshot"
    );
    for shard in 0..8 {
        c.assert_identical(shard).await;
    }
    // Every key is readable through the new node.
    let via4 = c.client_via(n4);
    for i in (0..600).step_by(37) {
        let r = via4
            .get(format!("snap/{i:04}").as_bytes(), Consistency::Linearizable, 0)
            .await
            .unwrap();
        assert_eq!(r.value, format!("value-{i}").into_bytes());
    }
}

/// An operator killed mid-bootstrap drops its call, and with it the handler
/// on the node and the joins that node was sending: the bootstrap and every
/// join run to their end regardless, so no shard is left without a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_whose_caller_gives_up_still_joins_every_node_and_leads_every_shard() {
    let mut c = Cluster::start(3, &[]).await;
    let mut call = tonic::Request::new(c.bootstrap_request(8, 3));
    // Gone before the first join could finish (the node enforces the deadline too).
    call.set_timeout(Duration::from_millis(1));
    let mut admin0 = Admin::node(&c.nodes[0].admin_ep()).unwrap();
    assert!(admin0.bootstrap(call).await.is_err(), "the caller gave up");
    c.shards = 8;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut joined = 0;
        for n in &c.nodes {
            let s = n.status().await.unwrap();
            // The metadata group and all 8 shards on every node (RF 3 of 3).
            if s.joined && s.shards.len() == 9 {
                joined += 1;
            }
        }
        if joined == 3 && c.leaders().await.len() == 8 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{joined} of 3 nodes fully joined, leaders {:?}",
            c.leaders().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let map = c.admin().cluster_map().await.unwrap();
    assert_eq!(map.shard_count, 8);
    c.client().put(b"after-bootstrap", b"ok", 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_drain_and_an_unsafe_removal_is_refused() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(8, 3).await;
    let a = c.admin();
    // Transfer shard 0's leadership to each other node in turn.
    let leaders = c.leaders().await;
    let current = leaders[&0];
    let target = c.nodes.iter().map(|n| n.id).find(|id| *id != current).unwrap();
    let s = a.transfer_leader(0, target).await.unwrap();
    assert_eq!(s.leader, target);
    a.transfer_leader(0, target).await.unwrap(); // idempotent
    assert_eq!(c.leaders().await[&0], target);

    // Drain: the node gives up every leadership and keeps refusing it.
    let d = c.index_of(target);
    let mut admin_d = Admin::node(&c.nodes[d].admin_ep()).unwrap();
    admin_d.drain_leaders(admin::DrainRequest {}).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.nodes[d].status().await.unwrap();
        assert!(s.draining);
        if !s.shards.iter().any(|x| x.role == "leader") {
            break;
        }
        assert!(Instant::now() < until, "drained node still leads some shards");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.transfer_leader(1, target).await.is_err(),
        "a draining node must refuse leadership"
    );
    c.client().put(b"while-draining", b"ok", 0).await.unwrap();
    // The mark survives a restart.
    c.nodes[d].kill9();
    c.nodes[d].start();
    assert!(c.nodes[d].wait_up(Duration::from_secs(30)).await.draining);
    admin_d.undrain_leaders(admin::DrainRequest {}).await.unwrap();
    assert!(!c.nodes[d].status().await.unwrap().draining);

    // With one node down, removing a healthy voter would leave no caught-up quorum.
    c.wait_all_leaders(Duration::from_secs(30)).await;
    let down = (d + 1) % 3;
    let down_id = c.nodes[down].id;
    c.nodes[down].kill9();
    c.wait_all_leaders(Duration::from_secs(30)).await;
    // The leader counts a voter as healthy for a second after its last ack.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let healthy = c.nodes.iter().map(|n| n.id).find(|id| *id != down_id).unwrap();
    let refused = a.remove_replica(2, healthy).await.unwrap_err();
    assert_eq!(code(&refused), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.to_string().contains("quorum"), "{refused}");
    // Removing the dead replica is safe for quorum, but leaves the shard
    // below its replication factor: refused unless forced.
    let below = a.remove_replica(2, down_id).await.unwrap_err();
    assert_eq!(code(&below), tonic::Code::FailedPrecondition, "{below}");
    assert!(below.to_string().contains("below the replication factor"), "{below}");
    let s = a.remove_replica_with(2, down_id, true).await.unwrap();
    assert_eq!(s.voters.len(), 2);
    assert!(!a.cluster_map().await.unwrap().shards[2].voters.contains(&down_id));
}

/// Retries a call the node refuses (FAILED_PRECONDITION) until it is accepted,
/// e.g. while a new replica or metadata learner catches up.
async fn until_accepted<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if code(&e) == tonic::Code::FailedPrecondition && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The metadata group as the node at `i` sees it: (voters, learners).
async fn meta_members(c: &Cluster, i: usize) -> (Vec<u64>, Vec<u64>) {
    let s = c.nodes[i].status().await.unwrap();
    let m = s
        .shards
        .iter()
        .find(|s| s.meta)
        .expect("every joined node hosts the metadata group");
    (m.voters.clone(), m.learners.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_metadata_voter_hands_its_seat_to_a_new_node_and_leaves() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(2, 3).await;
    let client = c.client();
    for i in 0..50 {
        client.put(format!("meta/{i:02}").as_bytes(), b"v", 0).await.unwrap();
    }
    let a = c.admin();
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    assert_eq!(a.cluster_map().await.unwrap().meta_voters.len(), 3);
    // Node 0 is lost for good (its volume is gone); a new node takes its place.
    let lost = ids[0];
    c.nodes[0].kill9();
    let n = c.add_node_process(&[]).await;
    let new = c.nodes[n].id;

    // Refusals change nothing.
    let e = a.replace_meta_voter(lost, 4242).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("add the node first"), "{e}");
    let e = a.replace_meta_voter(lost, lost).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::InvalidArgument, "{e}");
    a.add_node(c.member(n)).await.unwrap();
    let e = a.replace_meta_voter(lost, ids[1]).await.unwrap_err();
    assert!(e.to_string().contains("already a voter"), "{e}");
    let e = a.replace_meta_voter(4242, new).await.unwrap_err();
    assert!(e.to_string().contains("not a voter"), "{e}");
    // Its replicas are replaced first (the map refuses to drop a node that hosts any)...
    for shard in 0..2 {
        a.add_replica(shard, new).await.unwrap();
        until_accepted("promote", || a.promote_replica(shard, new)).await;
        a.remove_replica(shard, lost).await.unwrap();
    }
    let e = a.remove_node(lost).await.unwrap_err();
    assert!(e.to_string().contains("metadata"), "{e}");
    // ...then its metadata seat (refused until the new node is a caught-up learner).
    let map = until_accepted("replace the metadata voter", || a.replace_meta_voter(lost, new)).await;
    let mut expected = vec![ids[1], ids[2], new];
    expected.sort_unstable();
    assert_eq!(map.meta_voters, expected);
    assert_eq!(
        a.replace_meta_voter(lost, new).await.unwrap().meta_voters,
        expected,
        "idempotent"
    );
    let map = a.remove_node(lost).await.unwrap();
    assert!(map.nodes.iter().all(|m| m.node_id != lost));
    for i in 1..c.nodes.len() {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (mut voters, learners) = meta_members(&c, i).await;
            voters.sort_unstable();
            if voters == expected && !learners.contains(&lost) {
                break;
            }
            assert!(
                Instant::now() < until,
                "node {i} sees metadata voters {voters:?}, learners {learners:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The proof that the seat moved: with another original node down, the
    // metadata group still has a quorum (2 of {ids[1], ids[2], new}) and takes
    // map changes; with the old voters ({lost, ids[1], ids[2]}) it would not.
    c.nodes[1].kill9();
    c.wait_all_leaders(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = a.remove_replica_with(0, ids[1], true).await.unwrap();
    assert!(!s.voters.contains(&ids[1]));
    let map = a.cluster_map().await.unwrap();
    assert!(!map.shards[0].voters.contains(&ids[1]), "{:?}", map.shards[0]);
    let via_new = c.client_via(n);
    for i in 0..50 {
        let r = via_new
            .get(format!("meta/{i:02}").as_bytes(), Consistency::Linearizable, 0)
            .await
            .unwrap();
        assert_eq!(r.value, b"v");
    }

    // Giving a seat up without a replacement (new node 0, as scale-down does):
    // refused for a live voter, whose loss would leave 1 live voter of 2...
    let e = a.replace_meta_voter(ids[2], 0).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("quorum"), "{e}");
    // ...refused for the dead one too while 3 nodes want 3 voters, unless forced:
    let e = a.replace_meta_voter(ids[1], 0).await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("would leave 2 voters"), "{e}");
    // ...then accepted, leaving the two live voters.
    let map = a.replace_meta_voter_with(ids[1], 0, true).await.unwrap();
    let mut two = vec![ids[2], new];
    two.sort_unstable();
    assert_eq!(map.meta_voters, two);
    assert_eq!(
        a.replace_meta_voter(ids[1], 0).await.unwrap().meta_voters,
        two,
        "idempotent (already done, so nothing is checked again)"
    );
    client.put(b"meta/after", b"v", 0).await.unwrap();
}

fn free_mb(path: &std::path::Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64 / (1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers() {
    // The nodes' threshold sits 512 MiB under the file system's free space
    // now; a 2 GiB file then takes the free space below it, with room for
    // other processes freeing space meanwhile.
    let probe = tempfile::Builder::new().prefix("raftkv-diskfull-").tempdir().unwrap();
    let free = free_mb(probe.path());
    assert!(
        free > 4096,
        "this test needs 4 GiB free in the temp dir, {free} MiB available"
    );
    let threshold = (free - 512).to_string();
    let mut c = Cluster::start(3, &["--min-free-mb", &threshold]).await;
    c.bootstrap(4, 3).await;
    let client = c.client();
    client.put(b"before", b"1", 0).await.unwrap();

    let filler_path = c.root.path().join("filler");
    let filler = std::fs::File::create(&filler_path).unwrap();
    nix::fcntl::posix_fallocate(&filler, 0, 2 << 30).expect("allocate 2 GiB");
    let until = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    let (refused_key, refusal) = loop {
        // A fresh key each time: attempts before the node notices the full disk succeed.
        attempt += 1;
        let key = format!("during/{attempt}");
        match client.put(key.as_bytes(), b"2", 0).await {
            Err(e) if code(&e) == tonic::Code::ResourceExhausted => break (key, e),
            other => {
                assert!(
                    Instant::now() < until,
                    "writes still accepted on a full disk: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(refusal.to_string().contains("disk full"), "{refusal}");
    wait_metric(&c, 0, "raftkv_disk_full", 1.0).await;
    // Reads are still served, and the refused write left nothing behind.
    assert_eq!(
        client.get(b"before", Consistency::Linearizable, 0).await.unwrap().value,
        b"1"
    );
    assert!(
        !client
            .get(refused_key.as_bytes(), Consistency::Linearizable, 0)
            .await
            .unwrap()
            .found
    );

    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put(b"after", b"3", 0).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < until,
                    "writes not accepted again after space returned: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    wait_metric(&c, 0, "raftkv_disk_full", 0.0).await;
    for i in 0..3 {
        assert!(c.nodes[i].is_running());
    }
}

/// Draining is refused for the node that would leave some group with no
/// other voter able to lead: draining every node is an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_node_able_to_lead_refuses_to_drain() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(4, 3).await;
    let mut admins: Vec<_> = c.nodes.iter().map(|n| Admin::node(&n.admin_ep()).unwrap()).collect();
    admins[0].drain_leaders(admin::DrainRequest {}).await.unwrap();
    admins[1].drain_leaders(admin::DrainRequest {}).await.unwrap();
    let refused = admins[2].drain_leaders(admin::DrainRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(
        refused.to_string().contains("without a voter able to lead"),
        "{refused}"
    );
    assert!(
        !c.nodes[2].status().await.unwrap().draining,
        "the refused drain left a mark"
    );
    c.wait_all_leaders(Duration::from_secs(30)).await;
    c.client().put(b"still-led", b"ok", 0).await.unwrap();
    // Once another node may lead again, the drain goes through.
    admins[1].undrain_leaders(admin::DrainRequest {}).await.unwrap();
    admins[2].drain_leaders(admin::DrainRequest {}).await.unwrap();
    assert!(c.nodes[2].status().await.unwrap().draining);
}

/// Expired keys are deleted, not only hidden: the leaders' sweeps propose
/// their deletion, every replica applies it, and the replicas' digests stay
/// equal. Keys without a TTL stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_reclaimed_on_every_replica_with_equal_digests() {
    let mut c = Cluster::start(3, &["--expiry-sweep-ms", "200"]).await;
    c.bootstrap(2, 3).await;
    let client = c.client();
    for i in 0..300 {
        client.put(format!("session/{i}").as_bytes(), b"s", 1).await.unwrap();
    }
    for i in 0..20 {
        client.put(format!("durable/{i}").as_bytes(), b"d", 0).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stored = 0;
        let mut same = true;
        for shard in 0..2 {
            let d = c.digests(shard).await;
            same &= d.len() == 3
                && d.windows(2)
                    .all(|w| w[0].applied_index == w[1].applied_index && w[0].digest == w[1].digest);
            stored += d.iter().map(|x| x.key_count).max().unwrap_or(0);
        }
        if same && stored == 20 {
            break;
        }
        assert!(
            Instant::now() < until,
            "records stored {stored} (20 without a TTL), replicas agree: {same}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let via = c.client_via(i);
        assert!(!via.get(b"session/7", Consistency::Stale, 0).await.unwrap().found);
        assert!(via.get(b"durable/7", Consistency::Stale, 0).await.unwrap().found);
    }
    let deleted = c.nodes[0].metric("raftkv_server_expired_keys_deleted_total")
        + c.nodes[1].metric("raftkv_server_expired_keys_deleted_total")
        + c.nodes[2].metric("raftkv_server_expired_keys_deleted_total");
    assert!(deleted >= 300.0, "sweeps report {deleted} deletions");
}
