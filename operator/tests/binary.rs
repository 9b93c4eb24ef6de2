//! The `raftkv-operator` binary out of cluster: kubeconfig from `KUBECONFIG`,
//! Lease leader election, `/metrics` and `/healthz`, JSON logs, and a clean
//! exit on SIGTERM that releases the lease. Needs the local control plane.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn operator_binary() -> PathBuf {
    match std::env::var_os("RAFTKV_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("raftkv-operator"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_raftkv-operator")),
    }
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn binary_runs_out_of_cluster_and_stops_on_sigterm() -> anyhow::Result<()> {
    let client = common::client().await?;
    common::install_crd(&client).await?;
    let ns = common::namespace(&client, "op-bin").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(operator_binary())
        .env("KUBECONFIG", common::kubeconfig().await?)
        .args(["--namespace", &ns, "--lease-namespace", &ns, "--identity", "bin-test"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--log-json"])
        .args(["--lease-seconds", "5"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", operator_binary().display()))?;

    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    common::eventually(30, "the binary to hold the lease", || async {
        let holder = leases
            .get_opt("raftkv-operator")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        Ok((holder.as_deref() == Some("bin-test")).then_some(()))
    })
    .await?;
    let health = http_get(port, "/healthz").await?;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok"), "{health}");
    let metrics = http_get(port, "/metrics").await?;
    assert!(
        metrics.contains("raftkv_operator_reconcile_duration_seconds"),
        "{metrics}"
    );

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    assert!(status.success());
    let mut exited = None;
    for _ in 0..80 {
        exited = child.try_wait()?;
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let Some(exited) = exited else {
        let _ = child.kill();
        anyhow::bail!("the operator did not exit within 20 s of SIGTERM");
    };
    let logs = std::fs::read_to_string(&log_path)?;
    assert!(exited.success(), "exit {exited:?}; log:\n{logs}");
    assert!(
        logs.lines().any(|l| l.starts_with('{') && l.contains("became leader")),
        "JSON log lines expected:\n{logs}"
    );
    // The lease was released on the way out (no holder, or an expired one).
    let released = leases
        .get("raftkv-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .is_none_or(|h| h != "bin-test");
    assert!(released, "the lease is still held after a clean exit");
    common::delete_namespace(&client, &ns).await;
    Ok(())
}
