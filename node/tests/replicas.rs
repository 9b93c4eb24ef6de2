//! Replica incarnations on real processes: a shard removed from a node comes
//! back to it under a new Raft id, the old incarnation's id is refused for
//! good, and a cluster written by the release before replica ids keeps
//! working after the upgrade.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use raftkv_client::kv_proto::Consistency;
use raftkv_core::map::FIRST_REPLICA_ID;
use raftkv_proto::peer::{self, peer_client::PeerClient};
use support::Cluster;

/// Small snapshots and a short log, so a replica that comes back after a
/// few hundred writes catches up by snapshot.
const SNAPSHOT_ARGS: &[&str] = &["--snapshot-entries", "50", "--keep-entries", "10"];

async fn peer_client(c: &Cluster, i: usize) -> PeerClient<tonic::transport::Channel> {
    let n = &c.nodes[i];
    PeerClient::connect(format!("http://{}:{}", n.host, n.ports.peer))
        .await
        .expect("connect to peer port")
}

async fn put_all(c: &Cluster, prefix: &str, n: usize) {
    let client = c.client();
    for i in 0..n {
        client
            .put(
                format!("{prefix}/{i:04}").as_bytes(),
                format!("{prefix}-{i}").as_bytes(),
                0,
            )
            .await
            .unwrap_or_else(|e| panic!("put {prefix}/{i}: {e}"));
    }
}

/// Every key `put_all` wrote reads back, linearizably, through node `i`.
async fn read_all_via(c: &Cluster, i: usize, prefix: &str, n: usize) {
    let client = c.client_via(i);
    for k in 0..n {
        let r = client
            .get(format!("{prefix}/{k:04}").as_bytes(), Consistency::Linearizable, 0)
            .await
            .unwrap_or_else(|e| panic!("get {prefix}/{k} via node {i}: {e}"));
        assert_eq!(r.value, format!("{prefix}-{k}").into_bytes(), "{prefix}/{k}");
    }
}

/// This node's replica id of `shard`, if it hosts one.
async fn replica_id(c: &Cluster, i: usize, shard: u32) -> Option<u64> {
    let s = c.nodes[i].status().await.expect("node status");
    s.shards
        .iter()
        .find(|s| !s.meta && s.shard == shard)
        .map(|s| s.replica_id)
}

/// Moves `shard` from node index `from` to `to` (add, promote, remove).
async fn move_shard(c: &Cluster, shard: u32, from: usize, to: usize) {
    let s = c.add_voter(shard, c.nodes[to].id).await;
    assert!(s.voters.contains(&c.nodes[to].id), "{s:?}");
    let s = c
        .admin()
        .remove_replica(shard, c.nodes[from].id)
        .await
        .unwrap_or_else(|e| panic!("removing shard {shard} from node {from}: {e}"));
    assert!(!s.voters.contains(&c.nodes[from].id), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_removed_from_a_node_comes_back_to_it_as_a_new_incarnation_caught_up_by_snapshot() {
    let mut c = Cluster::start(4, SNAPSHOT_ARGS).await;
    c.bootstrap(4, 3).await;
    let shard = 0;
    let map = c.admin().cluster_map().await.unwrap();
    let voters = map.shards[shard as usize].voters.clone();
    let leader = c.leaders().await[&shard];
    let victim = c.index_of(*voters.iter().find(|v| **v != leader).unwrap());
    let spare = (0..4).find(|i| !voters.contains(&c.nodes[*i].id)).unwrap();
    assert_eq!(replica_id(&c, victim, shard).await, Some(c.nodes[victim].id));
    put_all(&c, "before", 200).await;

    move_shard(&c, shard, victim, spare).await;
    assert_eq!(
        replica_id(&c, victim, shard).await,
        None,
        "the removed replica is destroyed"
    );
    put_all(&c, "away", 200).await;

    // The destroyed incarnation (replica id = node id) is never created again.
    let mut p = peer_client(&c, victim).await;
    let again = p
        .create_replica(peer::CreateReplicaRequest {
            target_node: c.nodes[victim].id,
            cluster_id: "test".into(),
            group: shard,
            replica_id: c.nodes[victim].id,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert!(
        again.message().contains("was destroyed on this node"),
        "{}",
        again.message()
    );

    let snapshots_before = c.nodes[victim].metric("raftkv_network_snapshot_receive_success_total");
    move_shard(&c, shard, spare, victim).await;
    let new = replica_id(&c, victim, shard).await.expect("the shard is back");
    assert!(new >= FIRST_REPLICA_ID, "a new incarnation, not the node id: {new}");
    let map = c.admin().cluster_map().await.unwrap();
    let r = &map.shards[shard as usize];
    assert!(r.voters.contains(&c.nodes[victim].id), "{r:?}");
    assert_eq!(r.replica_ids.get(&c.nodes[victim].id), Some(&new), "{r:?}");
    assert!(map.next_replica_id > new);
    assert!(
        c.nodes[victim].metric("raftkv_network_snapshot_receive_success_total") > snapshots_before,
        "the new incarnation did not catch up by snapshot"
    );
    c.assert_identical(shard).await;
    read_all_via(&c, victim, "before", 200).await;
    read_all_via(&c, victim, "away", 200).await;

    // A message for the old incarnation never reaches the new one.
    let stale = p
        .raft(peer::RaftRequest {
            target_node: c.nodes[victim].id,
            from_node: c.nodes[spare].id,
            cluster_id: "test".into(),
            group: shard,
            kind: peer::RaftKind::Append as i32,
            target_replica: c.nodes[victim].id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::NotFound, "{stale:?}");
    assert!(
        stale.message().contains(&format!("not {}", c.nodes[victim].id)),
        "{}",
        stale.message()
    );

    // The incarnation survives a restart under its own id.
    c.nodes[victim].sigterm(Duration::from_secs(30));
    c.nodes[victim].start();
    c.nodes[victim].wait_up(Duration::from_secs(30)).await;
    c.wait_all_leaders(Duration::from_secs(30)).await;
    assert_eq!(replica_id(&c, victim, shard).await, Some(new));
    put_all(&c, "after", 50).await;
    c.assert_identical(shard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_its_node_was_down_is_collected_after_it_returns_and_members_are_kept() {
    let mut c = Cluster::start(4, &[]).await;
    c.bootstrap(4, 3).await;
    let shard = 2;
    let map = c.admin().cluster_map().await.unwrap();
    let voters = map.shards[shard as usize].voters.clone();
    let leader = c.leaders().await[&shard];
    let victim = c.index_of(*voters.iter().find(|v| **v != leader).unwrap());
    let spare = (0..4).find(|i| !voters.contains(&c.nodes[*i].id)).unwrap();
    let kept: Vec<u32> = (0..4)
        .filter(|s| *s != shard && map.shards[*s as usize].voters.contains(&c.nodes[victim].id))
        .collect();
    put_all(&c, "gc", 100).await;
    c.nodes[victim].kill9();
    // The removal commits without the victim; its DestroyReplica cannot arrive.
    move_shard(&c, shard, victim, spare).await;
    c.nodes[victim].start();
    c.nodes[victim].wait_up(Duration::from_secs(30)).await;
    assert!(
        replica_id(&c, victim, shard).await.is_some(),
        "the removed replica is still on the node that was down"
    );
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while replica_id(&c, victim, shard).await.is_some() {
        assert!(
            std::time::Instant::now() < until,
            "the removed replica was never collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.nodes[victim].metric("raftkv_server_replicas_collected_total"), 1.0);
    // Every shard it is still a member of stays, and agrees with its peers.
    for s in &kept {
        assert_eq!(replica_id(&c, victim, *s).await, Some(c.nodes[victim].id), "shard {s}");
        c.assert_identical(*s).await;
    }
    read_all_via(&c, victim, "gc", 100).await;
}

/// The data directories of a 3-node cluster (4 shards, RF 3, keys `old/*`)
/// written by the release before replica ids (commit 123c1d7), with the
/// addresses its map names: `write_the_fixture_of_the_release_before_replica_ids`.
fn fixture() -> PathBuf {
    let repo = std::env::var_os("RAFTKV_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    repo.join("node/tests/fixtures/cluster-before-replica-ids.tar.gz")
}

const FIXTURE_KEYS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_written_by_the_release_before_replica_ids_keeps_its_data_and_moves_a_shard_away_and_back() {
    let mut c = Cluster::start_from_fixture(&fixture(), 4).await;
    c.wait_all_leaders(Duration::from_secs(30)).await;
    let map = c.admin().cluster_map().await.unwrap();
    assert_eq!(map.next_replica_id, FIRST_REPLICA_ID, "nothing allocated yet");
    for i in 0..3 {
        read_all_via(&c, i, "old", FIXTURE_KEYS).await;
    }

    let n = c.add_node_process(&[]).await;
    c.admin().add_node(c.member(n)).await.unwrap();
    let shard = 1;
    let voters = map.shards[shard as usize].voters.clone();
    let leader = c.leaders().await[&shard];
    let victim = c.index_of(*voters.iter().find(|v| **v != leader).unwrap());
    move_shard(&c, shard, victim, n).await;
    put_all(&c, "new", 40).await;
    move_shard(&c, shard, n, victim).await;
    let new = replica_id(&c, victim, shard).await.expect("the shard is back");
    assert!(new >= FIRST_REPLICA_ID, "{new}");
    c.assert_identical(shard).await;

    // Every node restarts on the new format and still has everything.
    for i in 0..c.nodes.len() {
        c.nodes[i].sigterm(Duration::from_secs(30));
        c.nodes[i].start();
        c.nodes[i].wait_up(Duration::from_secs(30)).await;
    }
    c.wait_all_leaders(Duration::from_secs(30)).await;
    assert_eq!(replica_id(&c, victim, shard).await, Some(new));
    assert!(c.admin().cluster_map().await.unwrap().next_replica_id > new);
    read_all_via(&c, victim, "old", FIXTURE_KEYS).await;
    read_all_via(&c, n, "new", 40).await;
    for s in 0..4 {
        c.assert_identical(s).await;
    }
}

/// Writes the fixture above: run with `RAFTKV_BIN_DIR` pointing at the
/// binaries of the release before replica ids and `RAFTKV_FIXTURE_OUT` at
/// the tar.gz to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fixture; run by hand with an old release's binaries"]
async fn write_the_fixture_of_the_release_before_replica_ids() {
    let out = PathBuf::from(std::env::var_os("RAFTKV_FIXTURE_OUT").expect("RAFTKV_FIXTURE_OUT"));
    // A loopback address and ports no other test uses (the harness takes
    // 127.20-219.*.* and ephemeral ports).
    let mut c = Cluster::start_fixed(3, "127.250.0.1", 24100, &[]).await;
    c.bootstrap(4, 3).await;
    put_all(&c, "old", FIXTURE_KEYS).await;
    c.wait_caught_up(Duration::from_secs(30)).await;
    for n in &mut c.nodes {
        assert!(n.sigterm(Duration::from_secs(30)).success());
    }
    c.write_layout(&c.root.path().join("layout"));
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(c.root.path())
        .args(["layout", "node0", "node1", "node2"])
        .status()
        .expect("run tar");
    assert!(status.success());
}
