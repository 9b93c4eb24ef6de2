//! Storage work on a shard of a gigabyte: snapshots built while it is
//! written, every replica digested, the whole shard sent to a new replica.
//! All of it runs off the async runtime, so heartbeats keep flowing and no
//! election starts. Its own test binary, so nothing else runs beside it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_client::admin_proto as admin;
use raftkv_client::{Admin, ClientError};
use support::Cluster;

const VALUE_BYTES: usize = 1 << 20;

/// Shard data written, in MiB (`RAFTKV_HEAVY_MIB`, default 1024).
fn mebibytes() -> usize {
    std::env::var("RAFTKV_HEAVY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Group (`None` for the metadata group) → the highest term any replica reports.
async fn terms(c: &mut Cluster) -> BTreeMap<Option<u32>, u64> {
    let mut out = BTreeMap::new();
    for n in &mut c.nodes {
        let s = n.status().await.expect("status");
        for sh in &s.shards {
            let group = (!sh.meta).then_some(sh.shard);
            let t = out.entry(group).or_insert(0);
            *t = sh.term.max(*t);
        }
    }
    out
}

/// A value no compression shrinks: xorshift bytes, the key's number first.
fn value(i: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
    let mut v = Vec::with_capacity(VALUE_BYTES);
    v.extend_from_slice(&(i as u64).to_be_bytes());
    while v.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_shard_is_snapshotted_digested_and_sent_to_a_new_replica_without_an_election() {
    // Production timing (the harness's default elections are quicker), and
    // a snapshot every 256 entries, so several are built while the data grows.
    let args = [
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "1000",
        "--snapshot-entries",
        "256",
        "--keep-entries",
        "64",
    ];
    let mut c = Cluster::start(3, &args).await;
    c.bootstrap(1, 3).await;
    let terms_before = terms(&mut c).await;

    let values = mebibytes();
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = c.client_from(w);
            tokio::spawn(async move {
                for i in (w..values).step_by(4) {
                    let key = format!("big/{i:05}");
                    let v = value(i);
                    client
                        .put(key.as_bytes(), &v, 0)
                        .await
                        .unwrap_or_else(|e: ClientError| panic!("put {key}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    eprintln!("wrote {values} MiB in {:?}", started.elapsed());
    c.wait_caught_up(Duration::from_secs(120)).await;

    // Every replica digests the whole shard, twice, all at once.
    let started = Instant::now();
    let digests: Vec<_> = (0..2)
        .flat_map(|_| c.nodes.iter().map(|n| n.admin_ep()))
        .map(|ep| {
            tokio::spawn(async move {
                Admin::node(&ep)
                    .expect("admin")
                    .shard_digest(admin::ShardDigestRequest { shard: 0 })
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    for d in digests {
        let d = d.await.expect("digest task").expect("digest");
        assert_eq!(d.key_count, values as u64, "node {} digested {d:?}", d.node_id);
    }
    eprintln!("6 digests in {:?}", started.elapsed());

    // A fourth node gets the shard: too far behind for the log, so the
    // leader builds a snapshot and streams the gigabyte to it.
    let started = Instant::now();
    let n4 = c.add_node_process(&args).await;
    let id4 = c.nodes[n4].id;
    let a = c.admin();
    a.add_node(c.member(n4)).await.expect("add node");
    a.add_replica(0, id4).await.expect("add replica");
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        match a.promote_replica(0, id4).await {
            Ok(_) => break,
            Err(ClientError::Status(s)) if s.code() == tonic::Code::FailedPrecondition && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("promoting the new replica: {e}"),
        }
    }
    eprintln!("new replica caught up in {:?}", started.elapsed());
    assert!(
        c.nodes[n4].metric("raftkv_network_snapshot_receive_success_total") >= 1.0,
        "the new replica caught up without a snapshot"
    );
    c.assert_identical(0).await;

    let mut terms_after = terms(&mut c).await;
    // The new node's replica reports the term it joined in, no higher.
    terms_after.retain(|g, _| terms_before.contains_key(g));
    // A replica whose election timer fires raises its term, so equal terms
    // mean no heartbeat was late enough to start an election.
    assert_eq!(terms_after, terms_before, "an election started during the storage work");
}
