//! Shared by the tests that need a real Kubernetes control plane: they bring
//! it up with `e2e/k8s/cluster-up.sh` (idempotent; honours
//! `RAFTKV_CLUSTER_DIR` and the `RAFTKV_*_PORT` variables, so a developer's
//! own cluster is used), install the checked-in CRD and give each test its
//! own namespace. The control plane is left running for the next run;
//! `make cluster-down` stops it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

pub fn repo_root() -> PathBuf {
    raftkv_e2e::harness::repo_dir()
}

static UP: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// The admin kubeconfig of a running control plane (started if needed).
pub async fn kubeconfig() -> anyhow::Result<PathBuf> {
    UP.get_or_try_init(|| async {
        let script = repo_root().join("e2e/k8s/cluster-up.sh");
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "this test needs the local control plane and {} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let path = last
            .strip_prefix("export KUBECONFIG=")
            .with_context(|| format!("cluster-up.sh did not end with the export line: {last:?}"))?;
        Ok(PathBuf::from(path))
    })
    .await
    .cloned()
}

pub async fn client() -> anyhow::Result<Client> {
    let path = kubeconfig().await?;
    let kc = Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The kubectl built with the control plane (never a host one).
pub fn kubectl_path() -> PathBuf {
    if let Ok(bin) = std::env::var("K8S_BIN") {
        return PathBuf::from(bin).join("kubectl");
    }
    let versions = std::fs::read_to_string(repo_root().join("e2e/k8s/versions.env")).unwrap_or_default();
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .unwrap_or("v1.36.3")
        .trim_matches('"')
        .to_string();
    let cache = std::env::var("RAFTKV_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/raftkv"));
    cache.join("k8s").join(version).join("bin/kubectl")
}

/// Runs kubectl against the test cluster; returns (success, stdout, stderr).
pub async fn kubectl(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let kc = kubeconfig().await?;
    let out = Command::new(kubectl_path())
        .env("KUBECONFIG", &kc)
        .args(args)
        .output()
        .with_context(|| format!("running {}", kubectl_path().display()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Applies `crds/raftkv.io_kvclusters.yaml` and waits until it is established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(repo_root().join("crds/raftkv.io_kvclusters.yaml"))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        "kvclusters.raftkv.io",
        &PatchParams::apply("raftkv-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    for _ in 0..100 {
        let c = api.get("kvclusters.raftkv.io").await?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the KVCluster CRD did not become Established in 10 s")
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{}", std::process::id() % 100_000);
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(&name, &DeleteParams::default()).await;
    // A namespace of an earlier run with the same pid may still be terminating.
    for _ in 0..300 {
        if api.get_opt(&name).await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(name)
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Polls `check` until it returns Some, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if tokio::time::Instant::now() > until {
            bail!("timed out after {secs} s waiting for {what}; last error: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
