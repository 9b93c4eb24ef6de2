//! Multi-process tests: a real 3-node cluster (8 shards) of `raftkv-node`
//! processes on loopback, every node with the durability audit on (a node
//! aborts if it ever acknowledges a write whose WAL was not fsynced).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkv_client::kv_proto::{self as kv, Consistency};
use support::Cluster;

const SHARDS: u32 = 8;

async fn three_nodes(extra: &[&str]) -> Cluster {
    let mut c = Cluster::start(3, extra).await;
    c.bootstrap(SHARDS, 3).await;
    c
}

/// Retries `f` until it succeeds or `within` passes: the liveness deadline.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let until = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_through_every_node() {
    let c = three_nodes(&[]).await;
    for i in 0..3 {
        let via = c.client_via(i);
        let other = c.client_via((i + 1) % 3);
        for k in 0..16 {
            let key = format!("n{i}/key{k}");
            let put = via
                .put(key.as_bytes(), format!("v{k}").as_bytes(), 0)
                .await
                .expect("put");
            assert!(put.version > 0 && put.shard < SHARDS);
            // A write acknowledged through node i is seen by a linearizable read through another node.
            let got = other
                .get(key.as_bytes(), Consistency::Linearizable, 0)
                .await
                .expect("get");
            assert!(got.found, "{key} not found through node {}", (i + 1) % 3);
            assert_eq!(got.value, format!("v{k}").into_bytes());
            assert_eq!(got.version, put.version);
            assert_eq!(got.shard, put.shard);
            let lease = via.get(key.as_bytes(), Consistency::Lease, 0).await.expect("lease get");
            assert_eq!(lease.value, got.value);
        }
        // Versions are per-shard revisions: an overwrite gets a higher one.
        let a = via.put(b"same", b"1", 0).await.unwrap();
        let b = via.put(b"same", b"2", 0).await.unwrap();
        assert!(b.version > a.version);
        assert_eq!(b.prev_version, a.version);

        // Compare-and-set: absent, exact version, stale version.
        let key = format!("cas/{i}");
        let cas = |expected, value: &str| kv::CompareAndSetRequest {
            key: key.clone().into_bytes(),
            expected: Some(expected),
            value: value.as_bytes().to_vec(),
            delete: false,
            ttl_seconds: 0,
        };
        use kv::compare_and_set_request::Expected;
        let first = via
            .compare_and_set(cas(Expected::ExpectedAbsent(true), "a"))
            .await
            .unwrap();
        assert!(first.succeeded);
        let again = via
            .compare_and_set(cas(Expected::ExpectedAbsent(true), "b"))
            .await
            .unwrap();
        assert!(!again.succeeded);
        assert_eq!(again.version, first.version);
        let second = other
            .compare_and_set(cas(Expected::ExpectedVersion(first.version), "c"))
            .await
            .unwrap();
        assert!(second.succeeded);
        let stale = via
            .compare_and_set(cas(Expected::ExpectedVersion(first.version), "d"))
            .await
            .unwrap();
        assert!(!stale.succeeded);
        assert_eq!(
            other
                .get(key.as_bytes(), Consistency::Linearizable, 0)
                .await
                .unwrap()
                .value,
            b"c"
        );

        // Delete, then the key is gone and a recreated key gets a new version.
        let del = via.delete(key.as_bytes()).await.unwrap();
        assert!(del.existed);
        assert!(
            !other
                .get(key.as_bytes(), Consistency::Linearizable, 0)
                .await
                .unwrap()
                .found
        );
        assert!(!via.delete(key.as_bytes()).await.unwrap().existed);
        let re = via.put(key.as_bytes(), b"again", 0).await.unwrap();
        assert!(re.version > second.version);
    }

    // Scan across shards, in key order, with pages and continuation tokens.
    let client = c.client();
    let mut all = Vec::new();
    let mut token = vec![];
    loop {
        let page = client
            .scan(kv::ScanRequest {
                prefix: b"n1/".to_vec(),
                limit: 5,
                continuation: token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 5);
        all.extend(page.items.into_iter().map(|i| String::from_utf8(i.key).unwrap()));
        token = page.continuation;
        if token.is_empty() {
            break;
        }
    }
    let mut expected: Vec<String> = (0..16).map(|k| format!("n1/key{k}")).collect();
    expected.sort();
    assert_eq!(all, expected);
    let range = client
        .scan(kv::ScanRequest {
            start: b"n0/key1".to_vec(),
            end: b"n0/key2".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = range
        .items
        .iter()
        .map(|i| String::from_utf8(i.key.clone()).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "n0/key1", "n0/key10", "n0/key11", "n0/key12", "n0/key13", "n0/key14", "n0/key15"
        ]
    );
    assert!(range.items.iter().all(|i| i.value.is_empty()));

    // A stale read from any replica says who served it and how far behind it may be.
    let stale = c.client_via(2).get(b"n0/key3", Consistency::Stale, 0).await.unwrap();
    assert!(stale.found);
    assert!(stale.read.unwrap().served_by != 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_absent_for_every_read_on_every_node_and_for_cas() {
    let c = three_nodes(&[]).await;
    let client = c.client();
    client.put(b"ephemeral", b"x", 1).await.unwrap();
    let got = client.get(b"ephemeral", Consistency::Linearizable, 0).await.unwrap();
    assert!(got.found && got.expires_at_ms > 0);
    // Wait (by the wall clock the expiry is measured in) until it has expired.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now_ms() <= got.expires_at_ms {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..3 {
        for consistency in [Consistency::Linearizable, Consistency::Lease, Consistency::Stale] {
            let r = c.client_via(i).get(b"ephemeral", consistency, 0).await.unwrap();
            assert!(
                !r.found,
                "an expired key was returned by a {consistency:?} read through node {i} (served by {:?})",
                r.read.map(|r| r.served_by)
            );
        }
    }
    // Expired counts as absent for compare-and-set too.
    let r = client
        .compare_and_set(kv::CompareAndSetRequest {
            key: b"ephemeral".to_vec(),
            expected: Some(kv::compare_and_set_request::Expected::ExpectedAbsent(true)),
            value: b"new".to_vec(),
            delete: false,
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    assert!(r.succeeded);
}

/// Writes `n` keys from concurrent tasks; returns what was acknowledged.
async fn write_acked(c: &Cluster, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let client = c.client();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in (t..n).step_by(8) {
                let (k, v) = (format!("{prefix}{i:05}"), format!("value-{i}"));
                if client.put(k.as_bytes(), v.as_bytes(), 0).await.is_ok() {
                    acked.insert(k, v);
                }
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

async fn assert_all_present(c: &Cluster, acked: &BTreeMap<String, String>) {
    let client = c.client();
    for (k, v) in acked {
        let r = eventually(Duration::from_secs(30), "reading an acknowledged key", || async {
            client
                .get(k.as_bytes(), Consistency::Linearizable, 0)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert!(r.found, "acknowledged key {k} was lost");
        assert_eq!(r.value, v.as_bytes(), "acknowledged key {k} has the wrong value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_node_loses_no_acknowledged_write() {
    let mut c = three_nodes(&[]).await;
    let acked = write_acked(&c, "durable/", 400).await;
    assert_eq!(acked.len(), 400, "all writes succeed on a healthy cluster");
    for n in &mut c.nodes {
        n.kill9();
    }
    for n in &mut c.nodes {
        n.start();
    }
    for n in &mut c.nodes {
        let s = n.wait_up(Duration::from_secs(30)).await;
        assert!(s.joined, "a restarted node keeps its identity and membership");
    }
    c.wait_all_leaders(Duration::from_secs(30)).await;
    assert_all_present(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_busiest_leader_fails_over_and_it_catches_up() {
    let mut c = three_nodes(&[]).await;
    let before = write_acked(&c, "pre/", 100).await;
    let leaders = c.leaders().await;
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for l in leaders.values() {
        *counts.entry(*l).or_default() += 1;
    }
    let (&victim, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let vi = c.index_of(victim);
    c.nodes[vi].kill9();
    // Writes to every shard succeed again within the liveness deadline.
    let survivors: Vec<String> = (0..3).filter(|&i| i != vi).map(|i| c.nodes[i].client_ep()).collect();
    let client = raftkv_client::Client::new(&survivors).unwrap();
    let mut per_shard_key: BTreeMap<u32, String> = BTreeMap::new();
    let mut i = 0;
    while per_shard_key.len() < SHARDS as usize {
        let k = format!("after/{i}");
        let shard = raftkv_core::hash::shard_for_key(k.as_bytes(), SHARDS);
        per_shard_key.entry(shard).or_insert(k);
        i += 1;
    }
    for (shard, k) in &per_shard_key {
        eventually(
            Duration::from_secs(30),
            &format!("a write to shard {shard} after kill -9"),
            || async {
                client
                    .put(k.as_bytes(), b"v", 0)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }
    let after = write_acked(&c, "post/", 50).await;
    // The killed node restarts and catches up.
    c.nodes[vi].start();
    c.nodes[vi].wait_up(Duration::from_secs(30)).await;
    c.wait_caught_up(Duration::from_secs(60)).await;
    assert_all_present(&c, &before).await;
    assert_all_present(&c, &after).await;
    for shard in 0..SHARDS {
        let r = c
            .client_via(vi)
            .get(per_shard_key[&shard].as_bytes(), Consistency::Stale, 0)
            .await
            .unwrap();
        assert!(r.found, "restarted node's replica of shard {shard} did not catch up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_leader_hands_off_leadership_and_fails_no_request() {
    let mut c = three_nodes(&[]).await;
    let leaders = c.leaders().await;
    let victim = *leaders.values().next().unwrap();
    let vi = c.index_of(victim);
    // Clients that talk to the other two nodes keep writing through the shutdown.
    let survivors: Vec<String> = (0..3).filter(|&i| i != vi).map(|i| c.nodes[i].client_ep()).collect();
    let client = raftkv_client::Client::new(&survivors).unwrap();
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4 {
        let (client, failures, done, stop) = (client.clone(), failures.clone(), done.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            let mut first_error = None;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("term/{t}/{i}");
                match client.put(k.as_bytes(), b"v", 0).await {
                    Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                        failures.fetch_add(1, Ordering::SeqCst)
                    }
                };
                i += 1;
            }
            first_error
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::block_in_place(|| c.nodes[vi].sigterm(Duration::from_secs(30)));
    assert!(status.success(), "node exited with {status} after SIGTERM");
    let log = std::fs::read_to_string(&c.nodes[vi].log).unwrap();
    assert!(
        log.contains("handed off all leaderships"),
        "leaderships were not handed off before exit:\n{log}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for w in writers {
        if let Some(e) = w.await.unwrap() {
            errors.push(e);
        }
    }
    assert!(done.load(Ordering::SeqCst) > 0);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "client requests failed during SIGTERM: {errors:?}"
    );
}

/// A request that lands on a node not leading its shard costs an extra hop;
/// the node counts each one it forwards, so the share of forwarded
/// requests can be measured (`make bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_node_not_leading_its_shard_is_forwarded_and_counted() {
    let mut c = Cluster::start(3, &[]).await;
    c.bootstrap(1, 3).await;
    let leader_id = c.leaders().await[&0];
    let leader = c.index_of(leader_id);
    let follower = (leader + 1) % 3;
    let forwarded = |c: &Cluster, i: usize, op: &str| {
        c.nodes[i].metric(&format!("raftkv_server_forwarded_requests_total{{op=\"{op}\"}}"))
    };
    c.client_via(leader)
        .put(b"k", b"1", 0)
        .await
        .expect("put via the leader");
    assert_eq!(
        forwarded(&c, leader, "put"),
        0.0,
        "the leader forwarded its own shard's put"
    );
    for _ in 0..3 {
        c.client_via(follower)
            .put(b"k", b"2", 0)
            .await
            .expect("put via a follower");
    }
    c.client_via(follower)
        .get(b"k", Consistency::Linearizable, 0)
        .await
        .expect("get via a follower");
    assert_eq!(forwarded(&c, follower, "put"), 3.0);
    assert_eq!(forwarded(&c, follower, "get"), 1.0);
    assert_eq!(forwarded(&c, leader, "put"), 0.0);
}

/// A client that has learned the routes sends key requests straight to
/// each shard's leader: no node forwards any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sends_key_requests_straight_to_each_shards_leader() {
    let c = three_nodes(&[]).await;
    let forwarded = |c: &Cluster| -> f64 {
        c.nodes
            .iter()
            .map(|n| n.metric("raftkv_server_forwarded_requests_total"))
            .sum()
    };
    let client = c.client();
    client.refresh_routes().await.expect("routes");
    let before = forwarded(&c);
    for i in 0..64 {
        let key = format!("routed/{i}");
        client.put(key.as_bytes(), b"v", 0).await.expect("put");
        let got = client
            .get(key.as_bytes(), Consistency::Linearizable, 0)
            .await
            .expect("get");
        assert!(got.found);
    }
    assert_eq!(
        forwarded(&c) - before,
        0.0,
        "requests were forwarded despite the routes"
    );
    // Through one node only, most of them are forwarded.
    let pinned = c.client_via(0);
    for i in 0..64 {
        pinned
            .put(format!("pinned/{i}").as_bytes(), b"v", 0)
            .await
            .expect("put");
    }
    assert!(
        forwarded(&c) - before > 0.0,
        "a pinned client's requests were not forwarded"
    );
}
