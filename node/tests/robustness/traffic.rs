//! The traffic generator: clients doing get/put/CAS/delete on a few keys in
//! several shards, every operation recorded with its invoke and return time
//! and what the client learned (ok, certainly not applied, or ambiguous).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_client::kv_proto::{self as kv, compare_and_set_request};
use raftkv_client::{Client, ClientError};
use raftkv_linearizability::{Expected, Input, Operation, Outcome, Output};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What every client shares: the keys, the clock and the history.
#[derive(Clone)]
pub struct Workload {
    pub keys: Arc<Vec<Vec<u8>>>,
    pub shards: u32,
    pub start: Instant,
    pub history: Arc<Mutex<Vec<Operation>>>,
    pub stop: Arc<AtomicBool>,
    /// Time between one client's operations: a closed loop at a rate the
    /// checker can search exhaustively.
    pub pace: Duration,
    /// A call still unanswered after this is recorded as ambiguous.
    pub op_timeout: Duration,
}

/// `per_shard` keys in each of the first `shards_used` shards (shard 0 included:
/// the nemeses aim at its leader).
pub fn keys_in_shards(shards: u32, shards_used: u32, per_shard: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for shard in 0..shards_used.min(shards) {
        let mut n = 0;
        for i in 0.. {
            let k = format!("rb-{i}").into_bytes();
            if raftkv_core::hash::shard_for_key(&k, shards) == shard {
                out.push(k);
                n += 1;
                if n == per_shard {
                    break;
                }
            }
        }
    }
    out
}

impl Workload {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn shard(&self, key: &[u8]) -> u32 {
        raftkv_core::hash::shard_for_key(key, self.shards)
    }

    /// Runs one operation and records it.
    pub async fn run(&self, client_id: u64, client: &Client, key: &[u8], input: Input) -> Outcome {
        let call = self.now_ns();
        let outcome = match tokio::time::timeout(self.op_timeout, call_once(client, key, &input)).await {
            Ok(Ok(out)) => Outcome::Ok(out),
            Ok(Err(e)) => classify(&input, &e),
            Err(_) => match input {
                Input::Get => Outcome::Failed,
                _ => Outcome::Ambiguous,
            },
        };
        let ret = self.now_ns();
        self.history.lock().expect("history lock").push(Operation {
            client: client_id,
            key: key.to_vec(),
            shard: Some(self.shard(key)),
            input,
            call,
            ret,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// One client: random operations until told to stop.
    pub async fn client_loop(self, client_id: u64, client: Client, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        // The last version this client saw of each key: what its CASes expect.
        let mut seen: HashMap<usize, u64> = HashMap::new();
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let k = rng.random_range(0..self.keys.len());
            let key = self.keys[k].clone();
            seq += 1;
            let value = format!("c{client_id}-{seq}").into_bytes();
            let roll = rng.random_range(0..100);
            let input = match roll {
                0..40 => Input::Get,
                40..70 => Input::Put { value },
                70..92 => Input::Cas {
                    expected: match seen.get(&k) {
                        Some(&v) if v > 0 && rng.random_bool(0.9) => Expected::Version(v),
                        _ => Expected::Absent,
                    },
                    value: Some(value),
                },
                _ => Input::Delete,
            };
            match self.run(client_id, &client, &key, input).await {
                Outcome::Ok(Output::Get { version, .. }) => {
                    seen.insert(k, version);
                }
                Outcome::Ok(Output::Put { version, .. }) => {
                    seen.insert(k, version);
                }
                Outcome::Ok(Output::Cas { version, .. }) => {
                    seen.insert(k, version);
                }
                Outcome::Ok(Output::Delete { .. }) => {
                    seen.insert(k, 0);
                }
                Outcome::Failed | Outcome::Ambiguous => {}
            }
            tokio::time::sleep(self.pace).await;
        }
    }
}

/// A write refused with the node's retry-safe mark was never proposed; any
/// other failure of a write may have been applied.
fn classify(input: &Input, e: &ClientError) -> Outcome {
    match (input, e) {
        (Input::Get, _) => Outcome::Failed,
        (_, ClientError::Status(s))
            if s.metadata().get("x-raftkv-retry-safe").is_some() || s.code() == tonic::Code::InvalidArgument =>
        {
            Outcome::Failed
        }
        _ => Outcome::Ambiguous,
    }
}

async fn call_once(client: &Client, key: &[u8], input: &Input) -> Result<Output, ClientError> {
    Ok(match input {
        Input::Get => {
            let r = client.get(key, kv::Consistency::Linearizable, 0).await?;
            Output::Get {
                found: r.found,
                value: r.value,
                version: r.version,
                applied_index: r.read.map_or(0, |i| i.applied_index),
            }
        }
        Input::Put { value } => {
            let r = client.put(key, value, 0).await?;
            Output::Put {
                version: r.version,
                prev_version: r.prev_version,
            }
        }
        Input::Delete => {
            let r = client.delete(key).await?;
            Output::Delete {
                existed: r.existed,
                prev_version: r.prev_version,
            }
        }
        Input::Cas { expected, value } => {
            let r = client
                .compare_and_set(kv::CompareAndSetRequest {
                    key: key.to_vec(),
                    expected: Some(match expected {
                        Expected::Absent => compare_and_set_request::Expected::ExpectedAbsent(true),
                        Expected::Version(v) => compare_and_set_request::Expected::ExpectedVersion(*v),
                    }),
                    value: value.clone().unwrap_or_default(),
                    delete: value.is_none(),
                    ttl_seconds: 0,
                })
                .await?;
            Output::Cas {
                succeeded: r.succeeded,
                version: r.version,
            }
        }
    })
}
