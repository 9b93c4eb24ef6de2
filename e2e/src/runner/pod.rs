//! One pod's life on the runner's node: sandbox (netns, volumes, hosts
//! file), containers started through the `enter` helper, exits and
//! restarts with back-off, probes, status patches, and graceful
//! termination (SIGTERM, grace period, SIGKILL, then the pod object is
//! deleted with grace 0, as the kubelet does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodStatus, Probe, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::dns::{self, Record};
use crate::env::{self, EnvSources};
use crate::image::{self, ImageTable};
use crate::net;
use crate::podstate::{self, ContainerRecord, PodRecord};
use crate::sandbox::{MountSpec, SandboxSpec};
use crate::status::{self, ContainerView, Exit, PodFacts, ProbeState, RunState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Startup = 0,
    Readiness = 1,
    Liveness = 2,
}

enum Event {
    Exited {
        ctr: usize,
        generation: u64,
        exit_code: i32,
        signal: Option<i32>,
    },
    Probe {
        ctr: usize,
        generation: u64,
        kind: ProbeKind,
        ok: bool,
    },
}

struct Ctr {
    spec: Container,
    pid: Option<i32>,
    /// Bumped at every start, so late events of an old process are ignored.
    generation: u64,
    started_at: Timestamp,
    restart_count: i32,
    state: RunState,
    last_exit: Option<Exit>,
    image_id: String,
    next_start: Instant,
    probes: [ProbeState; 3],
    probe_due: [Instant; 3],
    probe_busy: [bool; 3],
    kill_deadline: Option<Instant>,
    log: PathBuf,
}

impl Ctr {
    fn probe(&self, kind: ProbeKind) -> Option<&Probe> {
        match kind {
            ProbeKind::Startup => self.spec.startup_probe.as_ref(),
            ProbeKind::Readiness => self.spec.readiness_probe.as_ref(),
            ProbeKind::Liveness => self.spec.liveness_probe.as_ref(),
        }
    }

    fn started(&self) -> bool {
        matches!(self.state, RunState::Running { .. }) && (self.spec.startup_probe.is_none() || self.probes[0].ok)
    }

    fn ready(&self) -> bool {
        self.started() && (self.spec.readiness_probe.is_none() || self.probes[1].ok) && self.kill_deadline.is_none()
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: self.image_id.clone(),
            restart_count: self.restart_count,
            ready: self.ready(),
            started: self.started(),
            state: self.state.clone(),
            last_exit: self.last_exit.clone(),
        }
    }
}

struct PodRun {
    ctx: Arc<Ctx>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    index: u16,
    ip: String,
    dir: PathBuf,
    log_dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    ctrs: Vec<Ctr>,
    events_tx: mpsc::UnboundedSender<Event>,
    start_time: Timestamp,
    last_status: Option<PodStatus>,
    last_hosts: String,
    volume_error: Option<String>,
}

/// Runs the pod until it is deleted (graceful stop, then API delete) or
/// `stop` fires (runner shutdown or pod vanished: immediate SIGKILL).
pub async fn run(ctx: Arc<Ctx>, index: u16, mut rx: watch::Receiver<Pod>, stop: CancellationToken) {
    let pod = rx.borrow_and_update().clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let ctrs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|spec| Ctr {
            log: podstate::log_dir(&ctx.cfg.state, &ns, &name, &uid).join(format!("{}.log", spec.name)),
            spec,
            pid: None,
            generation: 0,
            started_at: Timestamp::now(),
            restart_count: 0,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_exit: None,
            image_id: String::new(),
            next_start: Instant::now(),
            probes: [ProbeState::new(false), ProbeState::new(false), ProbeState::new(true)],
            probe_due: [Instant::now(); 3],
            probe_busy: [false; 3],
            kill_deadline: None,
        })
        .collect();
    let mut p = PodRun {
        dir: ctx.cfg.state.join("runner").join("sandboxes").join(&uid),
        log_dir: podstate::log_dir(&ctx.cfg.state, &ns, &name, &uid),
        ip: ctx.cfg.net.pod_ip(index),
        ctx,
        pod,
        ns,
        name,
        uid,
        index,
        volumes: BTreeMap::new(),
        ctrs,
        events_tx,
        start_time: Timestamp::now(),
        last_status: None,
        last_hosts: String::new(),
        volume_error: None,
    };
    tracing::info!(pod = %p.name, namespace = %p.ns, ip = %p.ip, "pod assigned");
    if let Err(e) = p.setup().await {
        tracing::error!(pod = %p.name, error = format!("{e:#}"), "sandbox setup failed");
    }
    let mut dns_rx = p.ctx.dns.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut volumes_ready = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                p.kill_all(Signal::SIGKILL);
                p.wait_all_exited(&mut events, Duration::from_secs(5)).await;
                p.teardown().await;
                return;
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    // The pod vanished from the API without our delete (force delete).
                    p.kill_all(Signal::SIGKILL);
                    p.wait_all_exited(&mut events, Duration::from_secs(5)).await;
                    p.teardown().await;
                    return;
                }
                p.pod = rx.borrow_and_update().clone();
                if p.pod.metadata.deletion_timestamp.is_some() {
                    p.terminate(&mut events).await;
                    p.teardown().await;
                    p.delete_from_api().await;
                    return;
                }
            }
            Some(ev) = events.recv() => p.handle(ev),
            Ok(()) = dns_rx.changed() => {}
            _ = tick.tick() => {
                if !volumes_ready {
                    match super::volumes::prepare(&p.ctx.client, &p.pod, &p.dir).await {
                        Ok(v) => { p.volumes = v; volumes_ready = true; p.volume_error = None; }
                        Err(e) => {
                            let msg = format!("{e:#}");
                            if p.volume_error.as_deref() != Some(msg.as_str()) {
                                tracing::info!(pod = %p.name, error = %msg, "volumes not ready");
                            }
                            p.volume_error = Some(msg);
                        }
                    }
                }
                if volumes_ready {
                    p.start_due().await;
                    p.probe_due();
                    p.enforce_kill_deadlines();
                }
                p.write_hosts();
                p.sync_status().await;
            }
        }
    }
}

impl PodRun {
    async fn setup(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::create_dir_all(&self.log_dir)?;
        net::create_pod_network(&self.ctx.cfg.net, self.index).await?;
        std::fs::write(self.dir.join("resolv.conf"), dns::resolv_conf(&self.ns))?;
        std::fs::write(self.dir.join("hosts"), "")?;
        self.write_hosts();
        self.write_record();
        Ok(())
    }

    fn hostname(&self) -> String {
        let spec = self.pod.spec.as_ref();
        spec.and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    /// Rewrites the hosts file in place (the bind mount pins its inode).
    fn write_hosts(&mut self) {
        let records: Arc<Vec<Record>> = self.ctx.dns.borrow().clone();
        let spec = self.pod.spec.as_ref();
        let own = dns::own_names(
            &self.name,
            &self.ns,
            spec.and_then(|s| s.hostname.as_deref()),
            spec.and_then(|s| s.subdomain.as_deref()),
        );
        let text = dns::hosts_file(&records, &self.ns, &self.ip, &own);
        if text == self.last_hosts {
            return;
        }
        let path = self.dir.join("hosts");
        let res = (|| -> std::io::Result<()> {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.seek(std::io::SeekFrom::Start(0))?;
            f.write_all(text.as_bytes())?;
            f.set_len(text.len() as u64)?;
            Ok(())
        })();
        match res {
            Ok(()) => self.last_hosts = text,
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "hosts file not written"),
        }
    }

    fn write_record(&self) {
        let rec = PodRecord {
            uid: self.uid.clone(),
            namespace: self.ns.clone(),
            name: self.name.clone(),
            index: self.index,
            ip: self.ip.clone(),
            netns: self.ctx.cfg.net.pod_netns(self.index),
            containers: self
                .ctrs
                .iter()
                .map(|c| ContainerRecord {
                    name: c.spec.name.clone(),
                    pid: c.pid,
                    log: c.log.clone(),
                })
                .collect(),
            log_dir: self.log_dir.clone(),
        };
        if let Err(e) = podstate::write(&self.ctx.cfg.state, &rec) {
            tracing::warn!(pod = %self.name, error = %e, "pod record not written");
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    async fn env_sources(&self) -> anyhow::Result<EnvSources> {
        let client = &self.ctx.client;
        let lp = ListParams::default();
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &self.ns)
            .list(&lp)
            .await?
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let secrets = Api::<Secret>::namespaced(client.clone(), &self.ns)
            .list(&lp)
            .await?
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let mut services: Vec<Service> = Vec::new();
        if let Some(k) = Api::<Service>::namespaced(client.clone(), "default")
            .get_opt("kubernetes")
            .await?
        {
            services.push(k);
        }
        if links {
            services.extend(
                Api::<Service>::namespaced(client.clone(), &self.ns)
                    .list(&lp)
                    .await?
                    .into_iter()
                    .filter(|s| !(self.ns == "default" && s.metadata.name.as_deref() == Some("kubernetes"))),
            );
        }
        Ok(EnvSources {
            config_maps,
            secrets,
            pod_ip: self.ip.clone(),
            host_ip: self.ctx.cfg.net.host_ip(),
            service_env: env::service_links(&services),
            node_cpu: super::node::NODE_CPU,
            node_memory_bytes: super::node::NODE_MEMORY_BYTES,
        })
    }

    async fn start_due(&mut self) {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let waiting = matches!(c.state, RunState::Waiting { .. });
            if c.pid.is_none()
                && waiting
                && c.next_start <= now
                && let Err(e) = self.start(i).await
            {
                let msg = format!("{e:#}");
                tracing::warn!(pod = %self.name, container = %self.ctrs[i].spec.name, error = %msg, "container start failed");
                let image = matches!(
                    e.downcast_ref::<crate::Error>(),
                    Some(crate::Error::UnknownImage { .. } | crate::Error::MissingBinary { .. })
                );
                let reason = if image { "ErrImagePull" } else { "CreateContainerError" };
                let c = &mut self.ctrs[i];
                c.state = RunState::Waiting {
                    reason: reason.into(),
                    message: Some(msg),
                };
                c.next_start = now + self.ctx.cfg.backoff_base;
            }
        }
    }

    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let cfg = &self.ctx.cfg;
        let table_path = cfg.state.join("images");
        let table = match std::fs::read_to_string(&table_path) {
            Ok(t) => ImageTable::parse(&t)?,
            Err(_) => ImageTable::default(),
        };
        let spec = self.ctrs[i].spec.clone();
        let image_ref = spec.image.clone().unwrap_or_default();
        let binary = image::resolve(&image_ref, &table, &table_path, &cfg.bin_dir)?;
        let src = self.env_sources().await?;
        let mut env = env::container_env(&self.pod, &spec, &src)?;
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".into(), env::DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.insert(0, ("HOSTNAME".into(), self.hostname()));
        }
        let (program, argv) = env::container_argv(&spec, &binary, &env)?;
        let mut mounts = vec![
            MountSpec {
                source: self.dir.join("hosts"),
                target: "/etc/hosts".into(),
                read_only: false,
            },
            MountSpec {
                source: self.dir.join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
                read_only: false,
            },
        ];
        for vm in spec.volume_mounts.clone().unwrap_or_default() {
            let base = self
                .volumes
                .get(&vm.name)
                .with_context(|| format!("volumeMount {:?}: no such volume", vm.name))?;
            let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let s = base.join(sub);
                    if !s.exists() {
                        std::fs::create_dir_all(&s)?;
                    }
                    s
                }
                None => base.clone(),
            };
            mounts.push(MountSpec {
                source,
                target: PathBuf::from(&vm.mount_path),
                read_only: vm.read_only.unwrap_or(false),
            });
        }
        let sandbox = SandboxSpec {
            netns: Path::new("/run/netns").join(cfg.net.pod_netns(self.index)),
            hostname: self.hostname(),
            mounts,
            program: program.clone(),
            argv: argv.clone(),
            env,
            workdir: spec.working_dir.clone().unwrap_or_else(|| "/".into()),
        };
        let spec_path = self.dir.join(format!("{}.spec.json", spec.name));
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&sandbox)?)?;
        let c = &mut self.ctrs[i];
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&c.log)?;
        {
            use std::io::Write;
            writeln!(
                log,
                "==== {} starting {} (restart {}): {}",
                Timestamp::now(),
                spec.name,
                c.restart_count,
                argv.join(" ")
            )?;
        }
        let child = tokio::process::Command::new(&cfg.self_exe)
            .arg("enter")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} enter", cfg.self_exe.display()))?;
        let pid = child.id().context("child has no pid")? as i32;
        if c.last_exit.is_some() {
            c.restart_count += 1;
        }
        c.generation += 1;
        c.pid = Some(pid);
        c.started_at = Timestamp::now();
        c.state = RunState::Running {
            started_at: c.started_at,
        };
        c.image_id = format!("file://{}", binary.display());
        c.probes = [ProbeState::new(false), ProbeState::new(false), ProbeState::new(true)];
        let now = Instant::now();
        for (k, kind) in [ProbeKind::Startup, ProbeKind::Readiness, ProbeKind::Liveness]
            .into_iter()
            .enumerate()
        {
            let delay = c.probe(kind).and_then(|p| p.initial_delay_seconds).unwrap_or(0).max(0) as u64;
            c.probe_due[k] = now + Duration::from_secs(delay);
            c.probe_busy[k] = false;
        }
        c.kill_deadline = None;
        let (generation, tx) = (c.generation, self.events_tx.clone());
        tokio::spawn(async move {
            let mut child = child;
            let (exit_code, signal) = match child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (st.code(), st.signal()) {
                        (Some(code), _) => (code, None),
                        (None, Some(sig)) => (128 + sig, Some(sig)),
                        _ => (255, None),
                    }
                }
                Err(_) => (255, None),
            };
            let _ = tx.send(Event::Exited {
                ctr: i,
                generation,
                exit_code,
                signal,
            });
        });
        tracing::info!(pod = %self.name, container = %spec.name, pid, program = %program.display(), "container started");
        self.write_record();
        Ok(())
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited {
                ctr,
                generation,
                exit_code,
                signal,
            } => {
                let policy = self.restart_policy();
                let deleting = self.pod.metadata.deletion_timestamp.is_some();
                let Some(c) = self.ctrs.get_mut(ctr) else { return };
                if c.generation != generation {
                    return;
                }
                let exit = Exit {
                    exit_code,
                    signal,
                    started_at: c.started_at,
                    finished_at: Timestamp::now(),
                };
                tracing::info!(pod = %self.name, container = %c.spec.name, exit_code, "container exited");
                c.pid = None;
                c.kill_deadline = None;
                let restart = !deleting && (policy == "Always" || (policy == "OnFailure" && exit_code != 0));
                if restart {
                    let delay = status::backoff(c.restart_count, self.ctx.cfg.backoff_base, self.ctx.cfg.backoff_max);
                    c.state = RunState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {}s restarting failed container {}",
                            delay.as_secs(),
                            c.spec.name
                        )),
                    };
                    c.next_start = Instant::now() + delay;
                    c.last_exit = Some(exit);
                } else {
                    c.state = RunState::Terminated(exit);
                }
                self.write_record();
            }
            Event::Probe {
                ctr,
                generation,
                kind,
                ok,
            } => {
                let grace = self.grace_for_liveness();
                let Some(c) = self.ctrs.get_mut(ctr) else { return };
                let k = kind as usize;
                c.probe_busy[k] = false;
                if c.generation != generation || c.pid.is_none() {
                    return;
                }
                let p = c.probe(kind).cloned().unwrap_or_default();
                let success = if kind == ProbeKind::Readiness {
                    p.success_threshold.unwrap_or(1)
                } else {
                    1
                };
                let changed = c.probes[k].record(ok, success, p.failure_threshold.unwrap_or(3));
                if changed {
                    tracing::info!(pod = %self.name, container = %c.spec.name, probe = ?kind, ok, "probe verdict changed");
                }
                let failed_fatal = !c.probes[k].ok && matches!(kind, ProbeKind::Liveness | ProbeKind::Startup);
                if changed && failed_fatal && c.kill_deadline.is_none() {
                    // Liveness/startup failure: stop the container; its exit restarts it.
                    if let Some(pid) = c.pid {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    c.kill_deadline = Some(Instant::now() + grace);
                }
            }
        }
    }

    fn grace_for_liveness(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    fn probe_due(&mut self) {
        let now = Instant::now();
        let client_ip = self.ip.clone();
        for (i, c) in self.ctrs.iter_mut().enumerate() {
            let Some(pid) = c.pid else { continue };
            for kind in [ProbeKind::Startup, ProbeKind::Readiness, ProbeKind::Liveness] {
                let k = kind as usize;
                let Some(probe) = c.probe(kind).cloned() else { continue };
                let startup_done = c.spec.startup_probe.is_none() || c.probes[0].ok;
                if (kind == ProbeKind::Startup) == startup_done || c.probe_busy[k] || c.probe_due[k] > now {
                    continue;
                }
                let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
                c.probe_due[k] = now + Duration::from_secs(period);
                c.probe_busy[k] = true;
                let (tx, generation, ip) = (self.events_tx.clone(), c.generation, client_ip.clone());
                let (self_exe, container) = (self.ctx.cfg.self_exe.clone(), c.spec.clone());
                tokio::spawn(async move {
                    let ok = run_probe(&probe, &container, &ip, pid, &self_exe).await;
                    let _ = tx.send(Event::Probe {
                        ctr: i,
                        generation,
                        kind,
                        ok,
                    });
                });
            }
        }
    }

    fn enforce_kill_deadlines(&mut self) {
        let now = Instant::now();
        for c in &mut self.ctrs {
            if let (Some(pid), Some(d)) = (c.pid, c.kill_deadline)
                && d <= now
            {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    async fn sync_status(&mut self) {
        let facts = PodFacts {
            pod_ip: self.ip.clone(),
            host_ip: self.ctx.cfg.net.host_ip(),
            start_time: self.start_time,
            restart_policy: self.restart_policy(),
        };
        let views: Vec<ContainerView> = self.ctrs.iter().map(Ctr::view).collect();
        // Our last patch is the freshest "previous" for transition times; the
        // scheduler's PodScheduled condition comes from the API's copy.
        let mut prev = self
            .last_status
            .clone()
            .or_else(|| self.pod.status.clone())
            .unwrap_or_default();
        let mut conds = prev.conditions.take().unwrap_or_default();
        conds.retain(|c| c.type_ != "PodScheduled");
        if let Some(s) = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        {
            conds.push(s.clone());
        }
        prev.conditions = Some(conds);
        prev.qos_class = self.pod.status.as_ref().and_then(|s| s.qos_class.clone());
        let new = status::pod_status(&facts, &views, Some(&prev), Timestamp::now());
        if self.last_status.as_ref() == Some(&new) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({"metadata": {"uid": self.uid}, "status": new});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(p) => {
                self.pod.status = p.status;
                self.last_status = Some(new);
            }
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "status patch failed"),
        }
    }

    fn kill_all(&self, sig: Signal) {
        for c in &self.ctrs {
            if let Some(pid) = c.pid {
                let _ = killpg(Pid::from_raw(pid), sig);
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }

    async fn wait_all_exited(&mut self, events: &mut mpsc::UnboundedReceiver<Event>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.ctrs.iter().any(|c| c.pid.is_some()) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => self.handle(ev),
                _ => return false,
            }
        }
        true
    }

    /// SIGTERM, the grace period, then SIGKILL of each container's process group.
    async fn terminate(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let grace = self.grace();
        tracing::info!(pod = %self.name, grace_s = grace.as_secs(), "terminating");
        for c in &self.ctrs {
            if let Some(pid) = c.pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        if !self.wait_all_exited(events, grace).await {
            self.kill_all(Signal::SIGKILL);
            self.wait_all_exited(events, Duration::from_secs(10)).await;
        }
        // Remaining processes of each group (children the container left behind).
        for c in &self.ctrs {
            if let Some(pid) = c.pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.sync_status().await;
    }

    async fn teardown(&mut self) {
        // Processes left in the netns (exec probes, strays) go with it.
        if let Ok(out) = net::run("ip", &["netns", "pids", &self.ctx.cfg.net.pod_netns(self.index)]).await {
            for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        net::delete_pod_network(&self.ctx.cfg.net, self.index).await;
        podstate::remove(&self.ctx.cfg.state, &self.ns, &self.name, &self.uid);
        let _ = std::fs::remove_dir_all(&self.dir);
        tracing::info!(pod = %self.name, namespace = %self.ns, "pod torn down");
    }

    async fn delete_from_api(&self) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => tracing::info!(pod = %self.name, namespace = %self.ns, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "final delete failed"),
        }
    }
}

fn port_of(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs one probe against the container; true when it passes.
async fn run_probe(probe: &Probe, container: &Container, pod_ip: &str, pid: i32, self_exe: &Path) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port, container) else {
            return false;
        };
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if h.scheme.as_deref() == Some("HTTPS") {
            // No TLS client here: an HTTPS probe checks that the port accepts.
            return tcp_ok(SocketAddr::new(ip, port), timeout).await;
        }
        return matches!(crate::httpc::get(SocketAddr::new(ip, port), &host, &path, timeout).await,
            Ok(r) if (200..400).contains(&r.status));
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port, container) else {
            return false;
        };
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return false;
        };
        return tcp_ok(SocketAddr::new(ip, port), timeout).await;
    }
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let child = tokio::process::Command::new(self_exe)
            .arg("join")
            .arg(pid.to_string())
            .arg("--")
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut child) = child else { return false };
        return matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(st)) if st.success());
    }
    if let Some(g) = &probe.grpc {
        // No gRPC health client here: the port accepting counts.
        let Ok(ip) = pod_ip.parse::<std::net::IpAddr>() else {
            return false;
        };
        return tcp_ok(SocketAddr::new(ip, g.port as u16), timeout).await;
    }
    false
}

async fn tcp_ok(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
