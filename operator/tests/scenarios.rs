//! The operator's scenario suite on the local control plane with pods as
//! real processes (the e2e harness): the operator runs as a pod with the
//! example RBAC (in-cluster config), the example KVCluster becomes Available
//! with three real `raftkv-node` processes, kvctl-style traffic goes through
//! the client Service, and the cluster survives a deleted pod and a pod whose
//! volume was wiped (a metadata voter, whose seat moves to the new node)
//! without losing an acknowledged write.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use raftkv_client::kv_proto::Consistency;
use raftkv_client::{Admin, Client};
use raftkv_e2e::{Harness, TestNamespace, skip_requested};
use raftkv_operator::Config;
use raftkv_operator::crd::{KVCluster, KVClusterStatus};
use raftkv_operator::nodes::PodIp;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(180);
const KEYS: usize = 40;

fn repo_file(path: &str) -> String {
    let full = raftkv_e2e::harness::repo_dir().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// examples/operator.yaml, moved into the test's namespace and watching only
/// it, so it never acts on another test's clusters (or a demo's).
fn operator_manifest(ns: &str) -> String {
    let text = repo_file("examples/operator.yaml");
    let docs: Vec<&str> = text
        .split("\n---")
        .filter(|d| !d.contains("\nkind: Namespace"))
        .collect();
    docs.join("\n---")
        .replace("namespace: raftkv-system", &format!("namespace: {ns}"))
        .replace("name: raftkv-operator\n", &format!("name: raftkv-operator-{ns}\n"))
        .replace(
            "serviceAccountName: raftkv-operator\n",
            &format!("serviceAccountName: raftkv-operator-{ns}\n"),
        )
        .replace(
            "args: [\"--log-json\"]",
            &format!("args: [\"--log-json\", \"--namespace\", \"{ns}\"]"),
        )
}

async fn available(ns: &TestNamespace, what: &str) -> anyhow::Result<KVCluster> {
    let api = ns.api::<KVCluster>();
    ns.wait_until(what, T, || {
        let api = api.clone();
        async move {
            let kvc = api.get("example").await?;
            let status = kvc.status.clone().unwrap_or_default();
            let ok = condition_true(&status, "Available");
            let replicated = status.shards.as_ref().is_some_and(|s| s.under_replicated == 0);
            Ok(if ok && replicated {
                Ok(kvc)
            } else {
                Err(format!(
                    "conditions {:?}, shards {:?}",
                    status.conditions, status.shards
                ))
            })
        }
    })
    .await
}

/// Applies the CRD and waits until the apiserver serves the resource (a
/// freshly applied CRD answers 404 for a moment).
async fn install_crd(ns: &TestNamespace) -> anyhow::Result<()> {
    ns.apply_yaml(&repo_file("crds/raftkv.io_kvclusters.yaml")).await?;
    let api = ns.api::<KVCluster>();
    ns.wait_until("the KVCluster resource to be served", T, || async {
        Ok(match api.list(&ListParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        })
    })
    .await
}

/// Runs `body` in a namespace of its own on the local cluster (kept with
/// its logs on failure), unless `RAFTKV_E2E_SKIP` names the test.
async fn run_scenario<F, Fut>(test: &str, prefix: &str, body: F)
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if skip_requested(test) {
        return;
    }
    let h = Harness::get().await.expect("cluster");
    h.run_in_namespace(prefix, body).await.unwrap();
}

/// An operator run in the test process, watching only the test's namespace.
fn in_process_config(ns: &TestNamespace) -> Config {
    let mut c = Config::new();
    c.namespace = Some(ns.name().to_string());
    // The test runs on the host, which reaches pod IPs through the harness
    // network but cannot resolve cluster DNS names.
    c.admin_address = Arc::new(PodIp);
    c
}

/// Applies the CRD and the example KVCluster, then runs `scenario` with an
/// in-process operator, stopped afterwards either way.
async fn with_operator(
    ns: &TestNamespace,
    scenario: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    install_crd(ns).await?;
    ns.apply_yaml(&repo_file("examples/kvcluster.yaml")).await?;
    let stop = CancellationToken::new();
    let operator = tokio::spawn(raftkv_operator::run(ns.client(), in_process_config(ns), stop.clone()));
    let result = scenario.await;
    stop.cancel();
    let _ = operator.await;
    result
}

async fn client_service(ns: &TestNamespace) -> anyhow::Result<Client> {
    let ip = ns
        .api::<Service>()
        .get("example")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("client Service has no ClusterIP")?;
    let client = Client::pinned(&[format!("{ip}:2379")])?;
    // kube-proxy programs a new Service's ClusterIP a moment after its
    // endpoints are ready (longer on a loaded machine): wait until it answers.
    ns.wait_until("the client Service to answer", T, || async {
        Ok(match client.get(b"probe", Consistency::Linearizable, 0).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        })
    })
    .await?;
    Ok(client)
}

fn condition_true(status: &KVClusterStatus, type_: &str) -> bool {
    status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Merges `spec` into the example KVCluster's spec.
async fn patch_spec(ns: &TestNamespace, spec: serde_json::Value) -> anyhow::Result<()> {
    let patch = Patch::Merge(serde_json::json!({ "spec": spec }));
    ns.api::<KVCluster>()
        .patch("example", &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

fn node_id(kvc: &KVCluster, pod: &str) -> Option<u64> {
    kvc.status.as_ref()?.members.iter().find(|m| m.pod == pod)?.node_id
}

async fn all_keys_readable(client: &Client) -> anyhow::Result<()> {
    read_back(client, (0..KEYS).map(|i| (format!("key/{i}"), format!("value-{i}")))).await
}

/// Reads every (key, value) written back linearizably; a missing or changed one is an error.
async fn read_back(client: &Client, written: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
    for (key, value) in written {
        let got = client
            .get(key.as_bytes(), Consistency::Linearizable, 0)
            .await
            .with_context(|| format!("get {key}"))?;
        ensure!(
            got.found && got.value == value.as_bytes(),
            "{key} was acknowledged but is lost or changed: {got:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_operator_pod_runs_the_example_and_heals_lost_pods_and_volumes() {
    run_scenario(
        "e2e_operator_pod_runs_the_example_and_heals_lost_pods_and_volumes",
        "kvc",
        |ns| async move {
            install_crd(&ns).await?;
            let op = operator_manifest(ns.name());
            let result = scenario(&ns, &op).await;
            // The ClusterRole/Binding are cluster-scoped: remove them either way.
            let name = format!("raftkv-operator-{}", ns.name());
            let dp = DeleteParams::default();
            let _ = Api::<ClusterRoleBinding>::all(ns.client()).delete(&name, &dp).await;
            let _ = Api::<ClusterRole>::all(ns.client()).delete(&name, &dp).await;
            result
        },
    )
    .await;
}

async fn scenario(ns: &TestNamespace, operator: &str) -> anyhow::Result<()> {
    ns.apply_yaml(operator).await?;
    ns.apply_yaml(&repo_file("examples/kvcluster.yaml")).await?;
    let kvc = available(ns, "the example KVCluster to become Available").await?;

    // Writes through the client Service, as a user's kvctl would.
    let client = client_service(ns).await?;
    for i in 0..KEYS {
        client
            .put(format!("key/{i}").as_bytes(), format!("value-{i}").as_bytes(), 0)
            .await
            .with_context(|| format!("put key/{i}"))?;
    }
    all_keys_readable(&client).await?;

    // A deleted pod comes back with its volume and its identity.
    let before = node_id(&kvc, "example-1").context("example-1 has no node id")?;
    let uid = ns.pod("example-1").await?.metadata.uid;
    ns.api::<Pod>().delete("example-1", &DeleteParams::default()).await?;
    ns.wait_until("example-1 to be re-created", T, || async {
        let p = ns.pod("example-1").await?;
        Ok(if p.metadata.uid != uid {
            Ok(())
        } else {
            Err("old pod".into())
        })
    })
    .await?;
    ns.wait_for_pod_ready("example-1", T).await?;
    let kvc = available(ns, "Available again after deleting example-1").await?;
    ensure!(
        node_id(&kvc, "example-1") == Some(before),
        "example-1 changed identity without losing its volume"
    );
    all_keys_readable(&client).await?;

    // A pod whose volume was wiped rejoins as a new member and the shards
    // return to full replication on it.
    let old = node_id(&kvc, "example-2").context("example-2 has no node id")?;
    ns.wipe_claim("data-example-2").await?;
    ns.api::<Pod>().delete("example-2", &DeleteParams::default()).await?;
    let kvc = ns
        .wait_until(
            "example-2 to rejoin under a new node id with full replication",
            T,
            || async {
                let kvc = available(ns, "Available").await?;
                Ok(match node_id(&kvc, "example-2") {
                    Some(id) if id != old => Ok(kvc),
                    seen => Err(format!("example-2 node id {seen:?} (old {old})")),
                })
            },
        )
        .await?;
    let status = kvc.status.context("no status")?;
    let member = status
        .members
        .iter()
        .find(|m| m.pod == "example-2")
        .context("no member")?;
    ensure!(member.replicas == 8, "example-2 hosts {} of 8 shards", member.replicas);
    all_keys_readable(&client).await?;

    // The lost node was a metadata voter: its seat goes to the new node and
    // it leaves the map, so nothing stays degraded.
    let new = member.node_id.context("example-2 has no node id")?;
    ns.wait_until("the Degraded condition to clear", T, || async {
        let kvc = ns.api::<KVCluster>().get("example").await?;
        let status = kvc.status.unwrap_or_default();
        let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
        Ok(match degraded {
            Some(c) if c.status == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    // Removing the lost node from the map is the operator's last step, after
    // the seat moved (Degraded may clear a reconcile before it).
    let ip = ns.pod_ip("example-0").await?;
    let admin = Admin::new(&[format!("{ip}:2381")])?;
    ns.wait_until("the lost node to leave the map and its seat to move", T, || async {
        let map = admin.cluster_map().await?;
        let voters_ok = map.meta_voters.contains(&new) && !map.meta_voters.contains(&old) && map.meta_voters.len() == 3;
        let nodes_ok = map.nodes.len() == 3 && map.nodes.iter().all(|n| n.node_id != old);
        Ok(if voters_ok && nodes_ok {
            Ok(())
        } else {
            Err(format!(
                "metadata voters {:?}, nodes {:?} (old node {old}, new node {new})",
                map.meta_voters,
                map.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>()
            ))
        })
    })
    .await?;
    all_keys_readable(&client).await?;
    Ok(())
}

/// The operator is aborted (its task dropped mid-await, as a crash would)
/// the moment it announces the bootstrap; a fresh operator converges to one
/// bootstrapped cluster with every node joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_operator_killed_mid_bootstrap_converges() {
    run_scenario(
        "e2e_operator_killed_mid_bootstrap_converges",
        "kvc-crash",
        |ns| async move {
            install_crd(&ns).await?;
            ns.apply_yaml(&repo_file("examples/kvcluster.yaml")).await?;
            let config = || in_process_config(&ns);
            let first = tokio::spawn(raftkv_operator::run(ns.client(), config(), CancellationToken::new()));
            let events = ns.api::<Event>();
            ns.wait_until("the operator to announce the bootstrap", T, || async {
                let list = events.list(&ListParams::default()).await?;
                Ok(if list.items.iter().any(|e| e.reason.as_deref() == Some("Bootstrap")) {
                    Ok(())
                } else {
                    Err(format!("{} events, none with reason Bootstrap", list.items.len()))
                })
            })
            .await?;
            first.abort();
            let _ = first.await;

            let second = CancellationToken::new();
            let task = tokio::spawn(raftkv_operator::run(ns.client(), config(), second.clone()));
            let kvc = available(&ns, "Available after the operator restarted mid-bootstrap").await;
            second.cancel();
            let _ = task.await;
            let kvc = kvc?;
            let status = kvc.status.context("no status")?;
            ensure!(
                status.cluster_id.as_deref() == kvc.metadata.uid.as_deref(),
                "cluster id {:?} is not the KVCluster's uid",
                status.cluster_id
            );
            ensure!(status.members.len() == 3 && status.members.iter().all(|m| m.joined && m.replicas == 8));
            // One cluster: every node reports the same map.
            let ip = ns.pod_ip("example-0").await?;
            let map = raftkv_client::Admin::new(&[format!("{ip}:2381")])?
                .cluster_map()
                .await?;
            ensure!(map.nodes.len() == 3, "cluster map has {} nodes", map.nodes.len());
            ensure!(
                Some(map.cluster_id.as_str()) == kvc.metadata.uid.as_deref(),
                "map of cluster {}",
                map.cluster_id
            );
            Ok(())
        },
    )
    .await;
}

/// A version change rolls through the pods one at a time, highest ordinal
/// first, each drained of its leaderships before it is deleted, while a
/// writer keeps going: every acknowledged write survives, and the cluster ends
/// Available on the new version with no node left drained. (The image table
/// maps every `raftkv/raftkv-node` tag to the same binary, so this exercises
/// the operator's rollout, not a format change between versions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_operator_rolls_a_version_change_one_pod_at_a_time() {
    run_scenario(
        "e2e_operator_rolls_a_version_change_one_pod_at_a_time",
        "kvc-upgrade",
        |ns| async move { with_operator(&ns, rolling_upgrade(&ns)).await },
    )
    .await;
}

async fn rolling_upgrade(ns: &TestNamespace) -> anyhow::Result<()> {
    available(ns, "the example KVCluster to become Available").await?;
    let pods = ["example-0", "example-1", "example-2"];
    let mut uids = Vec::new();
    for p in pods {
        uids.push(ns.pod(p).await?.metadata.uid);
    }
    let client = client_service(ns).await?;

    // A writer that keeps going through the whole rollout.
    let done = CancellationToken::new();
    let writer = {
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0usize);
            let mut i = 0usize;
            while !done.is_cancelled() {
                let key = format!("upgrade/{i:05}");
                match client.put(key.as_bytes(), key.as_bytes(), 0).await {
                    Ok(_) => acked.push(key),
                    Err(_) => failed += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        })
    };

    let api = ns.api::<KVCluster>();
    patch_spec(ns, serde_json::json!({"version": "0.1.1"})).await?;
    let kvc = ns
        .wait_until("every pod to run 0.1.1 and the cluster to be Available", T, || async {
            let kvc = api.get("example").await?;
            let status = kvc.status.clone().unwrap_or_default();
            let available = condition_true(&status, "Available");
            Ok(
                if available && status.current_version.as_deref() == Some("0.1.1") && status.operation.is_none() {
                    Ok(kvc)
                } else {
                    Err(format!(
                        "currentVersion {:?}, operation {:?}",
                        status.current_version, status.operation
                    ))
                },
            )
        })
        .await?;
    // Let the writer see the settled cluster before it stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.cancel();
    let (acked, failed) = writer.await?;
    ensure!(!acked.is_empty(), "no write was acknowledged during the rollout");
    println!(
        "rolling upgrade: {} writes acknowledged, {failed} failed (retried by the caller)",
        acked.len()
    );

    // Each pod was re-created exactly once, highest ordinal first.
    let mut created = Vec::new();
    for (p, old_uid) in pods.iter().zip(&uids) {
        let pod = ns.pod(p).await?;
        ensure!(pod.metadata.uid != *old_uid, "{p} was not restarted");
        let image = pod
            .spec
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default();
        ensure!(image.ends_with(":0.1.1"), "{p} runs {image}");
        created.push(pod.metadata.creation_timestamp.context("no creation time")?.0);
    }
    ensure!(
        created[2] <= created[1] && created[1] <= created[0],
        "pods were not restarted highest ordinal first: {created:?}"
    );
    let status = kvc.status.context("no status")?;
    ensure!(
        status.members.iter().all(|m| m.joined && m.replicas == 8),
        "members after the rollout: {:?}",
        status.members
    );
    for p in pods {
        let ip = ns.pod_ip(p).await?;
        let s = Admin::node(&format!("{ip}:2381"))?
            .node_status(raftkv_client::admin_proto::NodeStatusRequest {})
            .await?
            .into_inner();
        ensure!(!s.draining, "{p} is still drained after the rollout");
    }
    let events = ns.api::<Event>().list(&ListParams::default()).await?;
    let reasons: Vec<&str> = events.items.iter().filter_map(|e| e.reason.as_deref()).collect();
    ensure!(
        reasons.contains(&"Upgrade") && reasons.contains(&"UpgradeSucceeded"),
        "no Upgrade Events: {reasons:?}"
    );
    read_back(&client, acked.into_iter().map(|k| (k.clone(), k))).await
}

/// Scale-up: a fourth node joins and the operator moves replicas onto it
/// (learner, caught up, promoted, then the old copy removed) and evens out
/// leaders, until every node hosts 6 of the 24 replicas; no key is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_operator_scale_up_moves_replicas_and_leaders_onto_the_new_node() {
    run_scenario(
        "e2e_operator_scale_up_moves_replicas_and_leaders_onto_the_new_node",
        "kvc-scale",
        |ns| async move { with_operator(&ns, scale_up(&ns)).await },
    )
    .await;
}

async fn scale_up(ns: &TestNamespace) -> anyhow::Result<()> {
    available(ns, "the example KVCluster to become Available").await?;
    let client = client_service(ns).await?;
    for i in 0..KEYS {
        client
            .put(format!("key/{i}").as_bytes(), format!("value-{i}").as_bytes(), 0)
            .await
            .with_context(|| format!("put key/{i}"))?;
    }
    let api = ns.api::<KVCluster>();
    patch_spec(ns, serde_json::json!({"replicas": 4})).await?;
    let kvc = ns
        .wait_until("4 nodes hosting 6 replicas and leading 2 shards each", T, || async {
            let kvc = api.get("example").await?;
            let status = kvc.status.clone().unwrap_or_default();
            let available = condition_true(&status, "Available");
            let spread: Vec<(i32, i32)> = status.members.iter().map(|m| (m.replicas, m.leaders)).collect();
            let even = spread.len() == 4 && spread.iter().all(|(r, l)| *r == 6 && *l == 2);
            Ok(if available && even && status.operation.is_none() {
                Ok(kvc)
            } else {
                Err(format!(
                    "(replicas, leaders) per member {spread:?}, operation {:?}",
                    status.operation
                ))
            })
        })
        .await?;
    let ip = ns.pod_ip("example-3").await?;
    let map = Admin::new(&[format!("{ip}:2381")])?.cluster_map().await?;
    ensure!(map.nodes.len() == 4, "{} nodes in the map", map.nodes.len());
    for s in &map.shards {
        ensure!(s.voters.len() == 3 && s.learners.is_empty(), "shard {}: {s:?}", s.shard);
    }
    let events = ns.api::<Event>().list(&ListParams::default()).await?;
    ensure!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RebalanceSucceeded")),
        "no RebalanceSucceeded Event"
    );
    ensure!(
        kvc.status
            .is_some_and(|s| s.shards.is_some_and(|s| s.under_replicated == 0))
    );
    all_keys_readable(&client).await
}
