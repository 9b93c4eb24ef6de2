//! `kvctl bench`: N concurrent clients for a fixed time, a read/write mix
//! over a key space; prints throughput and latency percentiles. The same
//! loop drives raftkv or etcd (`--backend etcd`, through etcd's v3 KV API),
//! so `make bench` compares the two alike. Client `i` starts at endpoint
//! `i mod n`, spreading the load over the members for both.

use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use raftkv_client::Client;
use raftkv_client::kv_proto::Consistency;
use raftkv_proto::etcd::kv_client::KvClient as EtcdKv;
use raftkv_proto::etcd::{PutRequest, RangeRequest};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use crate::{ConsistencyArg, Output, print_json};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Fraction of operations that are reads (0.0 = all writes, 1.0 = all reads).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: ConsistencyArg,
    /// Write every key once before measuring (so reads find values).
    #[arg(long)]
    prefill: bool,
    #[arg(long, default_value = "bench/")]
    key_prefix: String,
    /// The system measured: raftkv, or etcd at the same endpoints (host:port
    /// of its client URLs). For etcd, `linearizable` reads are etcd's
    /// default ranges and `lease`/`stale` its serializable ones.
    #[arg(long, value_enum, default_value = "raftkv")]
    backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Raftkv,
    Etcd,
}

/// One benchmark client of either system.
#[derive(Clone)]
enum Target {
    Raftkv(Client),
    Etcd(EtcdKv<Channel>),
}

impl Target {
    /// A client whose first choice is endpoint `i mod n`.
    fn new(backend: Backend, endpoints: &[String], i: usize) -> anyhow::Result<Target> {
        let mut eps = endpoints.to_vec();
        let n = eps.len().max(1);
        eps.rotate_left(i % n);
        Ok(match backend {
            Backend::Raftkv => Target::Raftkv(Client::new(&eps)?),
            Backend::Etcd => {
                let url = format!("http://{}", eps.first().map_or("127.0.0.1:2379", String::as_str));
                let channel = Endpoint::from_shared(url)?.tcp_nodelay(true).connect_lazy();
                Target::Etcd(EtcdKv::new(channel))
            }
        })
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Target::Raftkv(c) => c.put(key, value, 0).await.map(|_| ())?,
            Target::Etcd(c) => {
                let req = PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                };
                c.clone().put(req).await.map(|_| ())?
            }
        }
        Ok(())
    }

    async fn get(&self, key: &[u8], consistency: Consistency) -> anyhow::Result<()> {
        match self {
            Target::Raftkv(c) => c.get(key, consistency, 0).await.map(|_| ())?,
            Target::Etcd(c) => {
                let req = RangeRequest {
                    key: key.to_vec(),
                    serializable: consistency != Consistency::Linearizable,
                    ..Default::default()
                };
                c.clone().range(req).await.map(|_| ())?
            }
        }
        Ok(())
    }
}

struct Outcome {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(args: &BenchArgs, endpoints: &[String], out: Output) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be within 0.0..=1.0");
    }
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be positive");
    }
    let value = vec![b'v'; args.value_size];
    let key = |i: u64| format!("{}{i:010}", args.key_prefix).into_bytes();
    if args.prefill {
        let client = Target::new(args.backend, endpoints, 0)?;
        let mut tasks = futures::stream::FuturesUnordered::new();
        for i in 0..args.keys {
            let (c, k, v) = (client.clone(), key(i), value.clone());
            tasks.push(async move { c.put(&k, &v).await });
            if tasks.len() >= 64 {
                futures::StreamExt::next(&mut tasks).await.transpose()?;
            }
        }
        while futures::StreamExt::next(&mut tasks).await.transpose()?.is_some() {}
    }
    let consistency: Consistency = args.consistency.into();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..args.clients {
        let client = Target::new(args.backend, endpoints, i)?;
        let value = value.clone();
        let (keys, ratio, prefix) = (args.keys, args.read_ratio, args.key_prefix.clone());
        workers.push(tokio::spawn(async move {
            let mut o = Outcome {
                hist: Histogram::new(3).expect("valid histogram"),
                errors: 0,
                first_error: None,
            };
            let mut rng = rand::rngs::StdRng::from_os_rng();
            while Instant::now() < deadline {
                let k = format!("{prefix}{:010}", rng.random_range(0..keys)).into_bytes();
                let read = rng.random_bool(ratio);
                let t = Instant::now();
                let r = if read {
                    client.get(&k, consistency).await
                } else {
                    client.put(&k, &value).await
                };
                match r {
                    Ok(()) => o
                        .hist
                        .record(t.elapsed().as_micros().max(1) as u64)
                        .expect("latency within histogram range"),
                    Err(e) => {
                        o.errors += 1;
                        o.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            o
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    let (mut errors, mut first_error) = (0, None);
    for w in workers {
        let o = w.await?;
        hist.add(&o.hist)?;
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    match out {
        Output::Json => print_json(json!({
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "clients": args.clients, "read_ratio": args.read_ratio, "value_size": args.value_size,
            "consistency": format!("{consistency:?}").to_lowercase(), "seconds": secs, "ops": ops, "errors": errors,
            "ops_per_sec": ops as f64 / secs, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "first_error": first_error,
        })),
        Output::Text => {
            println!(
                "{:?} clients={} read_ratio={} value={}B consistency={:?}: {:.0} ops/s ({} ops, {} errors in {:.1} s)  p50={:.2}ms p99={:.2}ms p999={:.2}ms",
                args.backend,
                args.clients,
                args.read_ratio,
                args.value_size,
                consistency,
                ops as f64 / secs,
                ops,
                errors,
                secs,
                ms(0.5),
                ms(0.99),
                ms(0.999)
            );
            if let Some(e) = first_error {
                println!("first error: {e}");
            }
        }
    }
    Ok(())
}
