//! The operator against real `raftkv-node` processes and a real
//! kube-apiserver, with the nodes on loopback: the operator's pluggable
//! admin-address resolution maps each pod name to its loopback node (the
//! pod runner may run the StatefulSet's pods meanwhile; this operator never
//! talks to them). `tests/scenarios.rs` runs the same on pods. Everything the
//! operator does to the nodes is real: bootstrap through the admin API,
//! status from NodeStatus/ClusterMap, and the replacement of a node that lost
//! its volume (new identity at the same address) one step at a time.
//! Needs the local control plane and the `raftkv-node` binary
//! (`RAFTKV_BIN_DIR`, exported by `make test`, or the cargo target dir).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use raftkv_client::Admin;
use raftkv_operator::Config;
use raftkv_operator::crd::{KVCluster, OperationKind, Phase};
use tokio_util::sync::CancellationToken;

fn node_binary() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFTKV_BIN_DIR") {
        return PathBuf::from(dir).join("raftkv-node");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("target"));
    target.join("debug/raftkv-node")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One node process on loopback; killed when dropped.
struct Node {
    dir: tempfile::TempDir,
    ports: [u16; 4],
    child: Option<Child>,
}

impl Node {
    fn new() -> anyhow::Result<Self> {
        Ok(Node {
            dir: tempfile::tempdir()?,
            ports: [free_port()?, free_port()?, free_port()?, free_port()?],
            child: None,
        })
    }

    fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.ports[2])
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let [client, peer, admin, http] = self.ports.map(|p| p.to_string());
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("node.log"))?;
        let child = Command::new(node_binary())
            .args(["--data-dir", data.to_str().context("utf-8 path")?])
            .args(["--listen-host", "127.0.0.1", "--advertise-host", "127.0.0.1"])
            .args(["--client-port", &client, "--peer-port", &peer, "--admin-port", &admin])
            .args([
                "--http-port",
                &http,
                "--heartbeat-ms",
                "100",
                "--election-timeout-ms",
                "600",
            ])
            .args(["--min-free-mb", "1"])
            .env("RAFTKV_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} (build the workspace first)", node_binary().display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, delete the data directory, start again on the same ports: a pod that lost its volume.
    fn lose_volume(&mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(self.dir.path().join("data"))?;
        self.start()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(name: &str) -> anyhow::Result<KVCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name},
        "spec": {"replicas": 3, "shards": 4, "version": "0.1.0", "storage": {"size": "1Gi"}},
    }))?)
}

fn available(k: &KVCluster) -> bool {
    k.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    })
}

#[tokio::test]
async fn bootstraps_real_nodes_and_replaces_a_node_that_lost_its_volume() -> anyhow::Result<()> {
    let client = common::client().await?;
    common::install_crd(&client).await?;
    let ns = common::namespace(&client, "op-nodes").await?;

    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut n = Node::new()?;
        n.start()?;
        nodes.push(n);
    }
    let endpoints: BTreeMap<String, String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("kv-{i}"), n.admin()))
        .collect();
    let resolve = move |_: &KVCluster, pod: &Pod| endpoints.get(&pod.name_any()).cloned();
    let config = Config {
        namespace: Some(ns.clone()),
        admin_address: Arc::new(resolve),
        ..Config::new()
    };
    let shutdown = CancellationToken::new();
    let op = tokio::spawn(raftkv_operator::run(client.clone(), config.clone(), shutdown.clone()));

    let kvcs = Api::<KVCluster>::namespaced(client.clone(), &ns);
    kvcs.create(&PostParams::default(), &cluster("kv")?).await?;

    let k = common::eventually(90, "the cluster to be bootstrapped and Available", || async {
        let k = kvcs.get("kv").await?;
        Ok(available(&k).then_some(k))
    })
    .await?;
    let status = k.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Running));
    let shards = status.shards.clone().expect("shard summary");
    assert_eq!((shards.total, shards.fully_replicated, shards.leaderless), (4, 4, 0));
    assert_eq!(status.cluster_id.as_deref(), k.uid().as_deref());
    assert!(
        status
            .members
            .iter()
            .all(|m| m.joined && m.node_id.is_some() && m.replicas == 4)
    );
    assert_eq!(status.members.iter().map(|m| m.leaders).sum::<i32>(), 4);
    assert!(status.operation.is_none(), "{:?}", status.operation);
    let old_id = status.members[1].node_id.expect("node id");

    // The nodes agree: one cluster, named by the KVCluster's uid.
    let admin = Admin::new(&[nodes[0].admin()])?;
    let map = admin.cluster_map().await?;
    assert_eq!(Some(map.cluster_id.clone()), k.uid());
    assert_eq!(map.shard_count, 4);

    // Pod kv-1 loses its volume: the node comes back unjoined with a new identity.
    nodes[1].lose_volume()?;
    // The operator stops mid-replacement; a new one must resume the recorded operation.
    common::eventually(60, "the replacement to be recorded in status.operation", || async {
        let k = kvcs.get("kv").await?;
        let op = k.status.and_then(|s| s.operation);
        Ok(op.filter(|o| o.kind == OperationKind::ReplaceMember && o.target == "kv-1"))
    })
    .await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), op).await???;
    let shutdown = CancellationToken::new();
    let op = tokio::spawn(raftkv_operator::run(client.clone(), config.clone(), shutdown.clone()));
    let k = common::eventually(
        180,
        "the lost member to be replaced and the cluster Available again",
        || async {
            let k = kvcs.get("kv").await?;
            let replaced = k
                .status
                .as_ref()
                .and_then(|s| s.members.get(1))
                .is_some_and(|m| m.joined && m.node_id.is_some_and(|id| id != old_id) && m.replicas == 4);
            Ok((replaced && available(&k) && k.status.as_ref().is_some_and(|s| s.operation.is_none())).then_some(k))
        },
    )
    .await?;
    let new_id = k.status.as_ref().and_then(|s| s.members[1].node_id).expect("new id");
    // The lost node was a metadata voter: its seat went to the new node and
    // it left the map, so the cluster is not degraded.
    common::eventually(30, "the Degraded condition to clear", || async {
        let k = kvcs.get("kv").await?;
        let degraded = k
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Degraded"))
            .map(|c| (c.status, c.reason));
        Ok((degraded == Some(("False".into(), "Healthy".into()))).then_some(()))
    })
    .await?;
    let map = admin.cluster_map().await?;
    assert!(
        map.meta_voters.contains(&new_id) && !map.meta_voters.contains(&old_id),
        "metadata voters {:?} (old {old_id}, new {new_id})",
        map.meta_voters
    );
    assert!(
        map.nodes.iter().all(|n| n.node_id != old_id),
        "the lost node left the map"
    );
    for s in &map.shards {
        assert!(
            !s.voters.contains(&old_id) && !s.learners.contains(&old_id),
            "the old identity keeps no replica: {s:?}"
        );
        assert!(s.voters.contains(&new_id), "the new node took over: {s:?}");
        assert_eq!(s.voters.len(), 3, "{s:?}");
    }

    // Every step left an Event.
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    let reasons: Vec<&str> = events.items.iter().filter_map(|e| e.reason.as_deref()).collect();
    for r in ["Bootstrap", "AddNode", "ReplaceMember"] {
        assert!(reasons.contains(&r), "no {r} Event in {reasons:?}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), op).await???;
    common::delete_namespace(&client, &ns).await;
    Ok(())
}
