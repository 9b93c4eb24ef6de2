//! The test harness: the real cluster of `e2e/k8s/cluster-up.sh` (started
//! once per test binary, reused when already up), one namespace per test,
//! manifests applied with server-side apply, waits that say what they
//! expected and what they last saw, pods reached from the host by pod IP,
//! fault injection, and logs printed when a test fails.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use std::time::Duration;
//! if raftkv_e2e::skip_requested("my_test") { return Ok(()); }
//! let h = raftkv_e2e::Harness::get().await?;
//! h.run_in_namespace("my-test", |ns| async move {
//!     ns.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").await?;
//!     let pod = ns.wait_for_pod_ready("db-0", Duration::from_secs(60)).await?;
//!     Ok(())
//! }).await
//! # }
//! ```

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::httpc;
use crate::image::ImageTable;
use crate::net::{self, NetConfig};
use crate::podstate::{self, PodRecord};

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "raftkv-e2e";

/// Whether the environment asked to skip e2e tests (`RAFTKV_E2E_SKIP=1`);
/// says so loudly, because a skipped test proves nothing.
pub fn skip_requested(test: &str) -> bool {
    let skip = std::env::var("RAFTKV_E2E_SKIP").is_ok_and(|v| !v.is_empty() && v != "0");
    if skip {
        eprintln!("\n**************************************************************");
        eprintln!("** SKIPPED e2e test `{test}`: RAFTKV_E2E_SKIP is set.");
        eprintln!("** Nothing was verified against a real cluster.");
        eprintln!("**************************************************************\n");
    }
    skip
}

fn cache_dir() -> PathBuf {
    std::env::var_os("RAFTKV_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/raftkv")
        })
}

/// The state dir cluster-up.sh uses (`$RAFTKV_CLUSTER_DIR`, default `~/.cache/raftkv/cluster`).
pub fn state_dir() -> PathBuf {
    std::env::var_os("RAFTKV_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("cluster"))
}

/// The checkout the tests run from: `$RAFTKV_REPO_DIR` (the Makefile sets
/// it), else the one this crate was compiled in. Build caches are shared
/// between checkouts, so a test binary may have been compiled in another one.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("RAFTKV_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// `e2e/k8s` of this checkout.
pub fn k8s_dir() -> PathBuf {
    repo_dir().join("e2e/k8s")
}

/// Where the workspace's binaries are: `$RAFTKV_BIN_DIR`, else next to the
/// running test binary (`target/debug/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RAFTKV_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) })
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Starts (or reuses) the cluster once per process; the result is shared.
fn ensure_cluster() -> Result<PathBuf, String> {
    static UP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    UP.get_or_init(|| {
        let script = k8s_dir().join("cluster-up.sh");
        let t0 = Instant::now();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env("RAFTKV_BIN_DIR", bin_dir())
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            return Err(format!(
                "{} failed ({}); last lines:\n{}",
                script.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        eprintln!(
            "raftkv-e2e: cluster up in {:.1}s (state {})",
            t0.elapsed().as_secs_f64(),
            state_dir().display()
        );
        Ok(std::fs::canonicalize(state_dir()).unwrap_or_else(|_| state_dir()))
    })
    .clone()
}

/// Polls `f` until it returns `Ok(Ok(value))`. `Ok(Err(seen))` means "not
/// yet, this is what I see"; `Err(e)` is an error worth retrying (API
/// hiccup). On timeout the error names `what` and the last thing seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for {what}; last seen: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The shared cluster, seen from one test.
#[derive(Clone)]
pub struct Harness {
    client: kube::Client,
    state: PathBuf,
    net: NetConfig,
}

impl Harness {
    /// Starts the cluster if needed (once per test binary, through
    /// `e2e/k8s/cluster-up.sh`, which also builds the Kubernetes binaries
    /// when they are not current) and connects to it. Each call makes a new
    /// client, so each `#[tokio::test]` runtime has its own.
    pub async fn get() -> anyhow::Result<Harness> {
        let state = tokio::task::spawn_blocking(ensure_cluster)
            .await?
            .map_err(|e| anyhow!(e))?;
        let client = crate::runner::client_from(&state.join("kubeconfig")).await?;
        let net = NetConfig::load(&state)?;
        let h = Harness { client, state, net };
        h.wait_node_ready().await?;
        Ok(h)
    }

    async fn wait_node_ready(&self) -> anyhow::Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        wait_until("the pod runner's Node to be Ready", Duration::from_secs(60), || async {
            let list = nodes.list(&ListParams::default()).await?;
            let ready = list.items.iter().any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(if ready {
                Ok(())
            } else {
                Err(format!("{} nodes, none Ready", list.items.len()))
            })
        })
        .await
    }

    /// A client with admin rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The cluster's state dir (logs, kubeconfig, pod records).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// The pod network's configuration.
    pub fn net(&self) -> &NetConfig {
        &self.net
    }

    /// Makes `image` (e.g. `raftkv/raftkv-node:0.1.0`) run `binary` from now
    /// on (for upgrade tests); other tags keep their mapping.
    pub fn map_image(&self, image: &str, binary: &Path) -> anyhow::Result<()> {
        let path = self.state.join("images");
        let mut t = match std::fs::read_to_string(&path) {
            Ok(text) => ImageTable::parse(&text)?,
            Err(_) => ImageTable::default(),
        };
        t.insert(image, binary.to_path_buf());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, t.render())?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Creates namespace `e2e-<prefix>-<random>` and waits for its default
    /// ServiceAccount (pods are refused without it).
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = format!("e2e-{prefix}-{:04x}", rand::random::<u16>());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"raftkv.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_until(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || async {
                Ok(sas
                    .get_opt("default")
                    .await?
                    .map(|_| ())
                    .ok_or_else(|| "not created yet".to_string()))
            },
        )
        .await?;
        Ok(TestNamespace { h: self.clone(), name })
    }

    /// Runs `body` in a fresh namespace. Passed: the namespace is deleted.
    /// Failed (error or panic): logs are printed and the namespace is kept
    /// for inspection (`cluster-down` removes it with everything else).
    pub async fn run_in_namespace<F, Fut>(&self, prefix: &str, body: F) -> anyhow::Result<()>
    where
        F: FnOnce(TestNamespace) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let ns = self.namespace(prefix).await?;
        let result = std::panic::AssertUnwindSafe(body(ns.clone())).catch_unwind().await;
        match result {
            Ok(Ok(())) => {
                ns.delete().await?;
                Ok(())
            }
            Ok(Err(e)) => {
                eprintln!("\n==== test in namespace {} failed: {e:#}", ns.name);
                ns.dump_logs().await;
                Err(e.context(format!("namespace {} kept for inspection", ns.name)))
            }
            Err(panic) => {
                eprintln!("\n==== test in namespace {} panicked", ns.name);
                ns.dump_logs().await;
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Prints the last `lines` lines of every component's log.
    pub fn dump_component_logs(&self, lines: usize) {
        let Ok(dir) = std::fs::read_dir(self.state.join("logs")) else {
            return;
        };
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "log")) {
            eprintln!("---- {} (last {lines} lines)\n{}", f.display(), tail(&f, lines));
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One test's namespace.
#[derive(Clone)]
pub struct TestNamespace {
    h: Harness,
    name: String,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The harness it belongs to.
    pub fn harness(&self) -> &Harness {
        &self.h
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.h.client.clone()
    }

    /// Typed API for this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.h.client.clone(), &self.name)
    }

    /// Server-side applies every document of `yaml` (namespaced objects
    /// land in this namespace unless they name one). Returns what the
    /// server stored.
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
        use serde::Deserialize;
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let mut obj: DynamicObject = serde_yaml::from_value(value).context("manifest document")?;
            let types = obj.types.clone().context("document without apiVersion/kind")?;
            let gvk = GroupVersionKind::try_from(&types)?;
            let (ar, caps) = kube::discovery::pinned_kind(&self.h.client, &gvk)
                .await
                .with_context(|| format!("discover {}/{}", types.api_version, types.kind))?;
            let name = obj.metadata.name.clone().context("document without metadata.name")?;
            let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
                let ns = obj.metadata.namespace.get_or_insert_with(|| self.name.clone()).clone();
                Api::namespaced_with(self.h.client.clone(), &ns, &ar)
            } else {
                Api::all_with(self.h.client.clone(), &ar)
            };
            let applied = api
                .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
                .await
                .with_context(|| format!("apply {} {name}", types.kind))?;
            out.push(applied);
        }
        Ok(out)
    }

    /// [`wait_until`] with the namespace in the description.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Result<T, String>>>,
    {
        wait_until(&format!("{what} (namespace {})", self.name), timeout, f).await
    }

    /// The pod, now.
    pub async fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        Ok(self.api::<Pod>().get(name).await?)
    }

    /// Waits until the pod is Running and Ready; returns it.
    pub async fn wait_for_pod_ready(&self, name: &str, timeout: Duration) -> anyhow::Result<Pod> {
        let api = self.api::<Pod>();
        self.wait_until(&format!("pod {name} Ready"), timeout, || async {
            let Some(p) = api.get_opt(name).await? else {
                return Ok(Err("pod does not exist".into()));
            };
            Ok(if is_ready(&p) && p.metadata.deletion_timestamp.is_none() {
                Ok(p)
            } else {
                Err(describe_pod(&p))
            })
        })
        .await
    }

    /// Waits until no pod of this name exists.
    pub async fn wait_for_pod_gone(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let api = self.api::<Pod>();
        self.wait_until(&format!("pod {name} gone"), timeout, || async {
            Ok(match api.get_opt(name).await? {
                None => Ok(()),
                Some(p) => Err(describe_pod(&p)),
            })
        })
        .await
    }

    /// The pod's IP (it must have one).
    pub async fn pod_ip(&self, name: &str) -> anyhow::Result<IpAddr> {
        let p = self.pod(name).await?;
        let ip = p
            .status
            .and_then(|s| s.pod_ip)
            .with_context(|| format!("pod {name} has no IP"))?;
        Ok(ip.parse()?)
    }

    /// GETs `path` from port `port` of the pod, from the host (through the
    /// harness route to the pod network).
    pub async fn http_get(&self, pod: &str, port: u16, path: &str) -> anyhow::Result<httpc::Response> {
        let ip = self.pod_ip(pod).await?;
        // Generous: a pod's own lookups of unknown names take a few seconds to fail.
        Ok(httpc::get(
            SocketAddr::new(ip, port),
            &ip.to_string(),
            path,
            Duration::from_secs(15),
        )
        .await?)
    }

    /// The runner's record of the pod (pids, netns, index).
    pub fn pod_record(&self, pod: &str) -> anyhow::Result<PodRecord> {
        podstate::read(&self.h.state, &self.name, pod).with_context(|| format!("runner record of pod {pod}"))
    }

    /// Sends `sig` to every container process group of the pod.
    pub fn signal_pod(&self, pod: &str, sig: Signal) -> anyhow::Result<Vec<i32>> {
        let rec = self.pod_record(pod)?;
        let pids: Vec<i32> = rec.containers.iter().filter_map(|c| c.pid).collect();
        if pids.is_empty() {
            bail!("pod {pod} has no running container process");
        }
        for pid in &pids {
            killpg(Pid::from_raw(*pid), sig).with_context(|| format!("signal {sig} to pod {pod} (pid {pid})"))?;
        }
        Ok(pids)
    }

    /// Kills the pod's processes (SIGKILL); the runner restarts them per restartPolicy.
    pub fn kill_pod_processes(&self, pod: &str) -> anyhow::Result<Vec<i32>> {
        self.signal_pod(pod, Signal::SIGKILL)
    }

    /// Freezes the pod's processes (SIGSTOP).
    pub fn pause_pod(&self, pod: &str) -> anyhow::Result<()> {
        self.signal_pod(pod, Signal::SIGSTOP).map(drop)
    }

    /// Thaws them (SIGCONT).
    pub fn resume_pod(&self, pod: &str) -> anyhow::Result<()> {
        self.signal_pod(pod, Signal::SIGCONT).map(drop)
    }

    /// Cuts the pod off the network (nothing in or out, host included) until healed.
    pub async fn cut_network(&self, pod: &str) -> anyhow::Result<()> {
        let rec = self.pod_record(pod)?;
        Ok(net::cut(&self.h.net, rec.index).await?)
    }

    /// Reconnects a cut pod.
    pub async fn heal_network(&self, pod: &str) -> anyhow::Result<()> {
        let rec = self.pod_record(pod)?;
        Ok(net::heal(&self.h.net, rec.index).await?)
    }

    /// The host directory behind a PersistentVolumeClaim.
    pub async fn claim_dir(&self, claim: &str) -> anyhow::Result<PathBuf> {
        let pvc = self.api::<PersistentVolumeClaim>().get(claim).await?;
        let pv = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("claim {claim} is not bound"))?;
        let pv = Api::<PersistentVolume>::all(self.client()).get(&pv).await?;
        let spec = pv.spec.unwrap_or_default();
        spec.host_path
            .map(|h| PathBuf::from(h.path))
            .or(spec.local.map(|l| PathBuf::from(l.path)))
            .context("PV has no path")
    }

    /// Deletes everything in a claim's volume (the directory itself stays,
    /// so a running pod's bind mount keeps pointing at it).
    pub async fn wipe_claim(&self, claim: &str) -> anyhow::Result<()> {
        let dir = self.claim_dir(claim).await?;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?
            } else {
                std::fs::remove_file(&p)?
            }
        }
        Ok(())
    }

    /// The current log of one container of a pod (all runs appended).
    pub fn logs(&self, pod: &str, container: &str) -> anyhow::Result<String> {
        let dir = self.h.state.join("pod-logs").join(&self.name);
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            if !e.file_name().to_string_lossy().starts_with(&format!("{pod}_")) {
                continue;
            }
            let f = e.path().join(format!("{container}.log"));
            if let Ok(m) = f.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(t, _)| m > *t)
            {
                newest = Some((m, f));
            }
        }
        let (_, f) = newest.with_context(|| format!("no log of {pod}/{container} under {}", dir.display()))?;
        Ok(std::fs::read_to_string(f)?)
    }

    /// Prints pods (status), events and pod logs of this namespace, then the
    /// components' logs: what a failed test needs.
    pub async fn dump_logs(&self) {
        eprintln!("==== namespace {}: pods", self.name);
        match self.api::<Pod>().list(&ListParams::default()).await {
            Ok(l) => l
                .items
                .iter()
                .for_each(|p| eprintln!("  {}: {}", p.metadata.name.as_deref().unwrap_or("?"), describe_pod(p))),
            Err(e) => eprintln!("  (cannot list pods: {e})"),
        }
        eprintln!("==== namespace {}: events", self.name);
        if let Ok(l) = self.api::<Event>().list(&ListParams::default()).await {
            for ev in l.items {
                eprintln!(
                    "  {} {}/{}: {} {}",
                    ev.type_.unwrap_or_default(),
                    ev.involved_object.kind.unwrap_or_default(),
                    ev.involved_object.name.unwrap_or_default(),
                    ev.reason.unwrap_or_default(),
                    ev.message.unwrap_or_default()
                );
            }
        }
        let dir = self.h.state.join("pod-logs").join(&self.name);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for pod_dir in rd.flatten() {
                for f in std::fs::read_dir(pod_dir.path()).into_iter().flatten().flatten() {
                    eprintln!(
                        "---- pod log {} (last 40 lines)\n{}",
                        f.path().display(),
                        tail(&f.path(), 40)
                    );
                }
            }
        }
        self.h.dump_component_logs(30);
    }

    /// Deletes the namespace (does not wait for it to be gone).
    pub async fn delete(&self) -> anyhow::Result<()> {
        match Api::<Namespace>::all(self.client())
            .delete(&self.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether the pod is Running with condition Ready=True.
pub fn is_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One line about a pod for failure messages.
pub fn describe_pod(p: &Pod) -> String {
    let s = p.status.clone().unwrap_or_default();
    let conds: Vec<String> = s
        .conditions
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    let ctrs: Vec<String> = s
        .container_statuses
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let st = c.state.clone().unwrap_or_default();
            let state = if let Some(w) = st.waiting {
                format!(
                    "waiting({}: {})",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            } else if st.running.is_some() {
                "running".into()
            } else if let Some(t) = st.terminated {
                format!("terminated(exit {})", t.exit_code)
            } else {
                "?".into()
            };
            format!("{} {state} ready={} restarts={}", c.name, c.ready, c.restart_count)
        })
        .collect();
    format!(
        "uid={} phase={} ip={} node={} deleting={} conditions=[{}] containers=[{}]",
        p.metadata.uid.as_deref().unwrap_or("?"),
        s.phase.unwrap_or_default(),
        s.pod_ip.unwrap_or_default(),
        p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        p.metadata.deletion_timestamp.is_some(),
        conds.join(","),
        ctrs.join("; ")
    )
}

/// The restart count of the pod's container `container`.
pub fn restart_count(p: &Pod, container: &str) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .map(|c| c.restart_count)
        .unwrap_or(0)
}
