//! raftkv-e2e-echo: the e2e suite's own small "image" (`raftkv/e2e-echo`).
//!
//! An HTTP server that proves what the pod runner gives a pod:
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 `ok` (503 after `/fail`) |
//! | `/whoami` | hostname, `POD_NAME`, `POD_NAMESPACE`, `POD_IP`, the id stored in the data dir |
//! | `/file?name=x` | contents of `<data-dir>/x` (404 if absent) |
//! | `/write?name=x&value=y` | writes `<data-dir>/x` |
//! | `/dial?target=host:port` | resolves `host` (through /etc/hosts) and GETs `/whoami` there |
//! | `/read?path=/abs` | contents of a file as the pod sees it (token, hosts, ...) |
//! | `/env?name=X` | the value of environment variable X (404 if unset) |
//! | `/k8s` | in-cluster API call with the service-account token: who am I (SelfSubjectReview) |
//! | `/fail`, `/exit?code=n` | make /healthz fail; exit now with code n |
//!
//! On start it writes a random `id` to the data dir unless one exists, so a
//! test can tell a kept volume from a fresh one. `--exit-after-ms` makes it
//! crash on purpose (restart tests).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value = "/data")]
    data_dir: PathBuf,
    /// Exit with `--exit-code` this many ms after start.
    #[arg(long)]
    exit_after_ms: Option<u64>,
    #[arg(long, default_value_t = 3)]
    exit_code: i32,
}

struct State {
    args: Args,
    failing: AtomicBool,
}

fn query(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%3A", ":")))
        .collect();
    (path.to_string(), params)
}

async fn whoami(state: &State) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id = std::fs::read_to_string(state.args.data_dir.join("id")).unwrap_or_default();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    format!(
        "hostname={}\npod={}\nnamespace={}\nip={}\nid={}\n",
        host.trim(),
        env("POD_NAME"),
        env("POD_NAMESPACE"),
        env("POD_IP"),
        id.trim()
    )
}

async fn dial(target: &str) -> (u16, String) {
    let addrs = match tokio::net::lookup_host(target).await {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return (502, format!("resolve {target}: {e}\n")),
    };
    let Some(addr) = addrs.first() else {
        return (502, format!("resolve {target}: no address\n"));
    };
    match raftkv_e2e::httpc::get(*addr, target, "/whoami", Duration::from_secs(2)).await {
        Ok(r) if r.status == 200 => (200, format!("addr={addr}\n{}", r.body)),
        Ok(r) => (502, format!("dial {target} ({addr}): status {}\n", r.status)),
        Err(e) => (502, format!("dial {target} ({addr}): {e}\n")),
    }
}

async fn k8s() -> (u16, String) {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => return (500, format!("in-cluster config: {e}\n")),
    };
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client);
    match api.create(&Default::default(), &SelfSubjectReview::default()).await {
        Ok(r) => {
            let user = r
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .unwrap_or_default();
            (200, format!("user={user}\n"))
        }
        Err(e) => (502, format!("SelfSubjectReview: {e}\n")),
    }
}

async fn handle(mut s: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        let m = s.read(&mut buf[n..]).await?;
        if m == 0 {
            return Ok(());
        }
        n += m;
    }
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, q) = query(&target);
    let (status, body) = match path.as_str() {
        "/healthz" if state.failing.load(Ordering::Relaxed) => (503, "failing\n".to_string()),
        "/healthz" => (200, "ok\n".to_string()),
        "/whoami" => (200, whoami(&state).await),
        "/file" => {
            match std::fs::read_to_string(state.args.data_dir.join(q.get("name").cloned().unwrap_or_default())) {
                Ok(t) => (200, t),
                Err(e) => (404, format!("{e}\n")),
            }
        }
        "/write" => {
            let name = q.get("name").cloned().unwrap_or_default();
            match std::fs::write(
                state.args.data_dir.join(name),
                q.get("value").cloned().unwrap_or_default(),
            ) {
                Ok(()) => (200, "written\n".into()),
                Err(e) => (500, format!("{e}\n")),
            }
        }
        "/read" => match std::fs::read_to_string(q.get("path").cloned().unwrap_or_default()) {
            Ok(t) => (200, t),
            Err(e) => (404, format!("{e}\n")),
        },
        "/env" => match std::env::var(q.get("name").cloned().unwrap_or_default()) {
            Ok(v) => (200, v),
            Err(e) => (404, format!("{e}\n")),
        },
        "/dial" => dial(q.get("target").map(String::as_str).unwrap_or_default()).await,
        "/k8s" => k8s().await,
        "/fail" => {
            state.failing.store(true, Ordering::Relaxed);
            (200, "failing from now on\n".into())
        }
        "/exit" => {
            let code = q.get("code").and_then(|c| c.parse().ok()).unwrap_or(0);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nexiting\n")
                .await?;
            s.flush().await?;
            std::process::exit(code);
        }
        _ => (404, "not found\n".into()),
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)?;
    let id_path = args.data_dir.join("id");
    if !id_path.exists() {
        std::fs::write(&id_path, format!("{:016x}", rand::random::<u64>()))?;
    }
    println!(
        "raftkv-e2e-echo: listening on 0.0.0.0:{}, data in {}",
        args.port,
        args.data_dir.display()
    );
    if let Some(ms) = args.exit_after_ms {
        let code = args.exit_code;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            println!("raftkv-e2e-echo: exiting with {code} as asked");
            std::process::exit(code);
        });
    }
    let listener = TcpListener::bind(("0.0.0.0", args.port)).await?;
    let state = Arc::new(State {
        args,
        failing: AtomicBool::new(false),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                println!("raftkv-e2e-echo: SIGTERM, exiting");
                return Ok(());
            }
            accepted = listener.accept() => {
                let (s, _) = accepted?;
                let st = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(s, st).await {
                        eprintln!("raftkv-e2e-echo: connection: {e}");
                    }
                });
            }
        }
    }
}
