//! The CRD and the examples on a real kube-apiserver (v1.36, built from
//! source by `e2e/k8s`): schema bounds and CEL rules reject bad specs with
//! their messages, printer columns and the scale subresource work, and the
//! example manifests apply. Needs the local control plane (started if down).

mod common;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use raftkv_operator::crd::KVCluster;

fn kvc(name: &str, spec: serde_json::Value) -> anyhow::Result<KVCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

fn base() -> serde_json::Value {
    serde_json::json!({"replicas": 3, "shards": 8, "version": "0.1.0", "storage": {"size": "1Gi"}})
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    v[key] = value;
    v
}

/// Creates `spec` and returns the apiserver's refusal message.
async fn rejected(api: &Api<KVCluster>, name: &str, spec: serde_json::Value) -> anyhow::Result<String> {
    match api.create(&PostParams::default(), &kvc(name, spec)?).await {
        Ok(_) => anyhow::bail!("{name} was accepted but should have been rejected"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            Ok(s.message)
        }
        Err(e) => Err(e.into()),
    }
}

async fn setup(prefix: &str) -> anyhow::Result<(Client, String)> {
    let client = common::client().await?;
    common::install_crd(&client).await?;
    let ns = common::namespace(&client, prefix).await?;
    Ok((client, ns))
}

#[tokio::test]
async fn crd_rejects_bad_specs_with_clear_messages() -> anyhow::Result<()> {
    let (client, ns) = setup("op-crd").await?;
    let api = Api::<KVCluster>::namespaced(client.clone(), &ns);

    let created = api.create(&PostParams::default(), &kvc("good", base())?).await?;
    assert_eq!(
        created.spec.replication_factor, 3,
        "the default is applied by the apiserver"
    );

    let msg = rejected(&api, "too-few", with(base(), "replicas", 2.into())).await?;
    assert!(
        msg.contains("spec.replicas must be at least spec.replicationFactor"),
        "{msg}"
    );
    let msg = rejected(&api, "negative", with(base(), "replicas", (-1).into())).await?;
    assert!(
        msg.contains("spec.replicas") && msg.contains("greater than or equal to 1"),
        "{msg}"
    );
    let msg = rejected(&api, "no-shards", with(base(), "shards", 0.into())).await?;
    assert!(
        msg.contains("spec.shards") && msg.contains("greater than or equal to 1"),
        "{msg}"
    );
    let msg = rejected(&api, "many-shards", with(base(), "shards", 65_537.into())).await?;
    assert!(msg.contains("less than or equal to 65536"), "{msg}");
    let msg = rejected(&api, "even", with(base(), "replicationFactor", 2.into())).await?;
    assert!(msg.contains("spec.replicationFactor must be odd"), "{msg}");
    let msg = rejected(&api, "bad-version", with(base(), "version", "1.0 beta".into())).await?;
    assert!(msg.contains("spec.version must be an image tag"), "{msg}");

    // Immutable after creation.
    let patch = |spec: serde_json::Value| Patch::Merge(serde_json::json!({"spec": spec}));
    let err = api
        .patch(
            "good",
            &PatchParams::default(),
            &patch(serde_json::json!({"shards": 16})),
        )
        .await
        .expect_err("changing shards must be refused");
    assert!(
        err.to_string().contains("spec.shards cannot be changed after creation"),
        "{err}"
    );
    let err = api
        .patch(
            "good",
            &PatchParams::default(),
            &patch(serde_json::json!({"storage": {"size": "2Gi"}})),
        )
        .await
        .expect_err("changing storage must be refused");
    assert!(err.to_string().contains("spec.storage cannot be changed"), "{err}");
    // Other fields change freely.
    let scaled = api
        .patch(
            "good",
            &PatchParams::default(),
            &patch(serde_json::json!({"replicas": 5, "paused": true})),
        )
        .await?;
    assert_eq!((scaled.spec.replicas, scaled.spec.paused), (5, true));

    common::delete_namespace(&client, &ns).await;
    Ok(())
}

#[tokio::test]
async fn printer_columns_and_scale_subresource() -> anyhow::Result<()> {
    let (client, ns) = setup("op-cols").await?;
    let api = Api::<KVCluster>::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &kvc("cols", base())?).await?;

    let (ok, out, err) = common::kubectl(&["get", "kvc", "-n", &ns]).await?;
    assert!(ok, "kubectl get kvc failed: {err}");
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "NODES", "SHARDS", "VERSION", "PHASE", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..1], ["cols"], "{out}");
    assert!(
        row.contains(&"3") && row.contains(&"8"),
        "nodes and shards shown: {out}"
    );

    // The scale subresource reads and writes spec.replicas.
    let scale = api.get_scale("cols").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let (ok, _, err) = common::kubectl(&["scale", "kvc/cols", "-n", &ns, "--replicas=4"]).await?;
    assert!(ok, "kubectl scale failed: {err}");
    assert_eq!(api.get("cols").await?.spec.replicas, 4);

    common::delete_namespace(&client, &ns).await;
    Ok(())
}

#[tokio::test]
async fn examples_apply() -> anyhow::Result<()> {
    let (client, ns) = setup("op-examples").await?;
    let root = common::repo_root();
    let example = root.join("examples/kvcluster.yaml");
    let example = example.to_str().context("path")?;
    let (ok, out, err) = common::kubectl(&["apply", "--server-side", "-n", &ns, "-f", example]).await?;
    assert!(ok, "examples/kvcluster.yaml: {err}");
    assert!(out.contains("kvcluster.raftkv.io/example serverside-applied"), "{out}");
    let kv = Api::<KVCluster>::namespaced(client.clone(), &ns).get("example").await?;
    assert_eq!(
        (kv.spec.replicas, kv.spec.shards, kv.spec.replication_factor),
        (3, 8, 3)
    );

    let operator = root.join("examples/operator.yaml");
    let operator = operator.to_str().context("path")?;
    let (ok, _, err) = common::kubectl(&["apply", "--server-side", "--dry-run=server", "-f", operator]).await?;
    // The dry run cannot create the namespace the other objects go into; apply for real instead when it is the only complaint.
    if !ok {
        assert!(err.contains("namespaces \"raftkv-system\" not found"), "{err}");
    }
    let (ok, out, err) = common::kubectl(&["apply", "--server-side", "-f", operator]).await?;
    assert!(ok, "examples/operator.yaml: {err}");
    assert!(
        out.contains("deployment.apps/raftkv-operator serverside-applied"),
        "{out}"
    );
    let d = Api::<Deployment>::namespaced(client.clone(), "raftkv-system")
        .get("raftkv-operator")
        .await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(2));

    // Least privilege: what the operator needs, and nothing it does not.
    let sa = "system:serviceaccount:raftkv-system:raftkv-operator";
    for (verb, resource, extra, allowed) in [
        ("watch", "kvclusters.raftkv.io", vec!["-A"], true),
        (
            "patch",
            "kvclusters.raftkv.io",
            vec!["-n", &ns, "--subresource", "status"],
            true,
        ),
        ("patch", "statefulsets.apps", vec!["-n", &ns], true),
        ("create", "services", vec!["-n", &ns], true),
        ("delete", "pods", vec!["-n", &ns], true),
        ("create", "events.events.k8s.io", vec!["-n", &ns], true),
        ("patch", "leases.coordination.k8s.io", vec!["-n", "raftkv-system"], true),
        ("patch", "leases.coordination.k8s.io", vec!["-n", &ns], false),
        ("delete", "kvclusters.raftkv.io", vec!["-n", &ns], false),
        ("patch", "kvclusters.raftkv.io", vec!["-n", &ns], false),
        ("get", "secrets", vec!["-n", &ns], false),
        ("delete", "persistentvolumeclaims", vec!["-n", &ns], false),
    ] {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
        args.extend(extra);
        let (_, out, _) = common::kubectl(&args).await?;
        let answer = out.trim() == "yes";
        assert_eq!(answer, allowed, "can the operator {verb} {resource}? got {out:?}");
    }
    let (ok, _, err) = common::kubectl(&["delete", "-f", operator, "--wait=false"]).await?;
    assert!(ok, "{err}");
    common::delete_namespace(&client, &ns).await;
    Ok(())
}
