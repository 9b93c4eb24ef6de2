//! Helpers shared by the integration tests: terse operation builders and a
//! simulator of a correct sharded store.
#![allow(dead_code)]

use std::collections::HashMap;

use raftkv_linearizability::{Expected, Input, Operation, Outcome, Output};
use rand::Rng;

pub fn op(client: u64, key: &str, input: Input, call: u64, ret: u64, outcome: Outcome) -> Operation {
    Operation {
        client,
        key: key.as_bytes().to_vec(),
        shard: Some(0),
        input,
        call,
        ret,
        outcome,
    }
}

pub fn put(client: u64, key: &str, value: &str, call: u64, ret: u64, version: u64, prev_version: u64) -> Operation {
    op(
        client,
        key,
        put_input(value),
        call,
        ret,
        Outcome::Ok(Output::Put { version, prev_version }),
    )
}

pub fn put_ambiguous(client: u64, key: &str, value: &str, call: u64) -> Operation {
    ambiguous(client, key, put_input(value), call)
}

/// A read that found `value` at `version` (applied index = version).
pub fn get(client: u64, key: &str, value: &str, version: u64, call: u64, ret: u64) -> Operation {
    read(client, key, call, ret, true, value, version)
}

pub fn get_absent(client: u64, key: &str, call: u64, ret: u64) -> Operation {
    read(client, key, call, ret, false, "", 0)
}

pub fn delete(client: u64, key: &str, call: u64, ret: u64, prev_version: Option<u64>) -> Operation {
    op(
        client,
        key,
        Input::Delete,
        call,
        ret,
        Outcome::Ok(Output::Delete {
            existed: prev_version.is_some(),
            prev_version: prev_version.unwrap_or(0),
        }),
    )
}

pub fn delete_ambiguous(client: u64, key: &str, call: u64) -> Operation {
    ambiguous(client, key, Input::Delete, call)
}

#[allow(clippy::too_many_arguments)]
pub fn cas(
    client: u64,
    key: &str,
    expected: Expected,
    value: Option<&str>,
    call: u64,
    ret: u64,
    succeeded: bool,
    version: u64,
) -> Operation {
    op(
        client,
        key,
        cas_input(expected, value),
        call,
        ret,
        Outcome::Ok(Output::Cas { succeeded, version }),
    )
}

pub fn cas_ambiguous(client: u64, key: &str, expected: Expected, value: Option<&str>, call: u64) -> Operation {
    ambiguous(client, key, cas_input(expected, value), call)
}

fn put_input(value: &str) -> Input {
    Input::Put {
        value: value.as_bytes().to_vec(),
    }
}

fn cas_input(expected: Expected, value: Option<&str>) -> Input {
    Input::Cas {
        expected,
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

/// An operation whose client gave up right after the call.
fn ambiguous(client: u64, key: &str, input: Input, call: u64) -> Operation {
    op(client, key, input, call, call + 1, Outcome::Ambiguous)
}

/// A read answered with `value` at `version` (applied index = version).
fn read(client: u64, key: &str, call: u64, ret: u64, found: bool, value: &str, version: u64) -> Operation {
    op(
        client,
        key,
        Input::Get,
        call,
        ret,
        Outcome::Ok(Output::Get {
            found,
            value: value.as_bytes().to_vec(),
            version,
            applied_index: version,
        }),
    )
}

pub fn failed(mut o: Operation) -> Operation {
    o.outcome = Outcome::Failed;
    o
}

/// The simulator's knobs.
#[derive(Clone, Copy, Debug)]
pub struct Sim {
    pub keys: usize,
    pub shards: u32,
    pub clients: u64,
    pub ops_per_client: usize,
    /// Probability that a write is ambiguous (then applied or not, 50/50).
    pub ambiguous: f64,
    /// Probability that an operation failed (never applied).
    pub failed: f64,
    /// Largest gap between a call and its linearization point (and between
    /// that and the return).
    pub spread: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Get,
    Put,
    Cas { delete: bool },
    Delete,
}

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Ok,
    AmbiguousApplied,
    AmbiguousLost,
    Failed,
}

/// Simulates clients against a correct, sequential store with shard-like
/// version counters: every applied command takes the next index of its
/// shard's log (plus random gaps for traffic on other keys). Each operation
/// takes effect at a point between its call and return (ambiguous ones at any
/// point after the call, possibly long after, or never), in that order. The
/// result is linearizable by construction, and every written value is
/// unique.
pub fn simulate(rng: &mut impl Rng, sim: &Sim) -> Vec<Operation> {
    struct Planned {
        client: u64,
        key: usize,
        kind: Kind,
        value: Vec<u8>,
        call: u64,
        lin: u64,
        ret: u64,
        fate: Fate,
    }
    let mut plan = Vec::new();
    for client in 0..sim.clients {
        let mut t = rng.random_range(0..sim.spread.max(1));
        for seq in 0..sim.ops_per_client {
            let kind = match rng.random_range(0..100) {
                0..40 => Kind::Get,
                40..70 => Kind::Put,
                70..85 => Kind::Cas { delete: false },
                85..90 => Kind::Cas { delete: true },
                _ => Kind::Delete,
            };
            let call = t + rng.random_range(0..=sim.spread / 4);
            let fate = if rng.random_bool(sim.failed) {
                Fate::Failed
            } else if kind != Kind::Get && rng.random_bool(sim.ambiguous) {
                if rng.random_bool(0.5) {
                    Fate::AmbiguousApplied
                } else {
                    Fate::AmbiguousLost
                }
            } else {
                Fate::Ok
            };
            let (lin, ret) = match fate {
                Fate::AmbiguousApplied | Fate::AmbiguousLost => {
                    // Applied at any time after the call, maybe long after the
                    // client gave up.
                    let lin = call + rng.random_range(0..=sim.spread * 20);
                    (lin, call + sim.spread + rng.random_range(0..=sim.spread))
                }
                _ => {
                    let lin = call + rng.random_range(0..=sim.spread);
                    (lin, lin + rng.random_range(0..=sim.spread))
                }
            };
            plan.push(Planned {
                client,
                key: rng.random_range(0..sim.keys),
                kind,
                value: format!("c{client}-{seq}").into_bytes(),
                call,
                lin,
                ret,
                fate,
            });
            t = ret + rng.random_range(0..=sim.spread / 4);
        }
    }
    let shard_of = |key: usize| (key as u32) % sim.shards.max(1);
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].lin, i));
    let mut applied_index: HashMap<u32, u64> = HashMap::new();
    // key -> (value, version); absent if missing.
    let mut store: HashMap<usize, (Vec<u8>, u64)> = HashMap::new();
    let mut inputs: Vec<Option<Input>> = (0..plan.len()).map(|_| None).collect();
    let mut outcomes: Vec<Outcome> = plan
        .iter()
        .map(|p| match p.fate {
            Fate::Failed => Outcome::Failed,
            Fate::AmbiguousApplied | Fate::AmbiguousLost => Outcome::Ambiguous,
            Fate::Ok => Outcome::Failed, // replaced below
        })
        .collect();
    for &i in &order {
        let p = &plan[i];
        if !matches!(p.fate, Fate::Ok | Fate::AmbiguousApplied) {
            continue;
        }
        let index = applied_index.entry(shard_of(p.key)).or_insert(0);
        let mut next_index = |rng: &mut dyn rand::RngCore| {
            *index += 1 + rng.random_range(0..3);
            *index
        };
        let current = store.get(&p.key).cloned();
        let current_version = current.as_ref().map_or(0, |c| c.1);
        let (input, output) = match p.kind {
            Kind::Get => {
                let applied = *index;
                let (found, value, version) = match current {
                    Some((v, ver)) => (true, v, ver),
                    None => (false, vec![], 0),
                };
                (
                    Input::Get,
                    Output::Get {
                        found,
                        value,
                        version,
                        applied_index: applied,
                    },
                )
            }
            Kind::Put => {
                let version = next_index(rng);
                store.insert(p.key, (p.value.clone(), version));
                (
                    Input::Put { value: p.value.clone() },
                    Output::Put {
                        version,
                        prev_version: current_version,
                    },
                )
            }
            Kind::Delete => {
                next_index(rng);
                store.remove(&p.key);
                (
                    Input::Delete,
                    Output::Delete {
                        existed: current.is_some(),
                        prev_version: current_version,
                    },
                )
            }
            Kind::Cas { delete } => {
                let index_now = next_index(rng);
                // Usually the current version (a client that just read it),
                // sometimes a stale or made-up one.
                let expected = match rng.random_range(0..10) {
                    0..6 if current_version > 0 => Expected::Version(current_version),
                    0..6 => Expected::Absent,
                    6..8 => Expected::Absent,
                    _ => Expected::Version(rng.random_range(1..=current_version.max(1) + 2)),
                };
                let matches = match expected {
                    Expected::Absent => current.is_none(),
                    Expected::Version(e) => current.is_some() && e == current_version,
                };
                let value = (!delete).then(|| p.value.clone());
                let output = if matches {
                    match &value {
                        Some(v) => {
                            store.insert(p.key, (v.clone(), index_now));
                            Output::Cas {
                                succeeded: true,
                                version: index_now,
                            }
                        }
                        None => {
                            store.remove(&p.key);
                            Output::Cas {
                                succeeded: true,
                                version: 0,
                            }
                        }
                    }
                } else {
                    Output::Cas {
                        succeeded: false,
                        version: current_version,
                    }
                };
                (Input::Cas { expected, value }, output)
            }
        };
        inputs[i] = Some(input);
        if p.fate == Fate::Ok {
            outcomes[i] = Outcome::Ok(output);
        }
    }
    plan.iter()
        .zip(inputs)
        .zip(outcomes)
        .map(|((p, input), outcome)| {
            let input = input.unwrap_or_else(|| match p.kind {
                Kind::Get => Input::Get,
                Kind::Put => Input::Put { value: p.value.clone() },
                Kind::Delete => Input::Delete,
                Kind::Cas { delete } => Input::Cas {
                    expected: Expected::Version(rng.random_range(1..50)),
                    value: (!delete).then(|| p.value.clone()),
                },
            });
            Operation {
                client: p.client,
                key: format!("key{}", p.key).into_bytes(),
                shard: Some(shard_of(p.key)),
                input,
                call: p.call,
                ret: p.ret,
                outcome,
            }
        })
        .collect()
}

/// A Get (index) whose result can be replaced, and a replacement that no
/// linearization can explain, with why. Kinds: 0 = a value never written;
/// 1 = a value overwritten by a write that returned before the read began
/// (and which itself was acknowledged after the overwritten write returned);
/// 2 = an acknowledged value at a version it never had. Returns `None` if the
/// history has no opportunity for that kind.
pub fn impossible_read(history: &[Operation], kind: usize, rng: &mut impl Rng) -> Option<(usize, Output, String)> {
    let reads: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!((&o.input, &o.outcome), (Input::Get, Outcome::Ok(_))))
        .map(|(i, _)| i)
        .collect();
    // Acknowledged writes of a value, with its version.
    let written = |o: &Operation| match (&o.input, &o.outcome) {
        (Input::Put { value }, Outcome::Ok(Output::Put { version, .. })) => Some((value.clone(), *version)),
        (
            Input::Cas { value: Some(value), .. },
            Outcome::Ok(Output::Cas {
                succeeded: true,
                version,
            }),
        ) => Some((value.clone(), *version)),
        _ => None,
    };
    let changes_state = |o: &Operation| {
        matches!(
            o.outcome,
            Outcome::Ok(
                Output::Put { .. } | Output::Cas { succeeded: true, .. } | Output::Delete { existed: true, .. }
            )
        )
    };
    match kind {
        0 => {
            let &r = reads.get(rng.random_range(0..reads.len().max(1)))?;
            let out = Output::Get {
                found: true,
                value: b"never-written".to_vec(),
                version: rng.random_range(1..100),
                applied_index: 100,
            };
            Some((r, out, "a value never written".into()))
        }
        1 => {
            // Reads with an overwrite that returned before they were called,
            // and the last call time among those overwrites.
            let mut stale = Vec::new();
            for &r in &reads {
                let rd = &history[r];
                let overwrite_call = history
                    .iter()
                    .filter(|w| w.key == rd.key && changes_state(w) && w.ret < rd.call)
                    .map(|w| w.call)
                    .max();
                if let Some(t) = overwrite_call {
                    stale.push((r, t));
                }
            }
            // Pick a read, then a value acknowledged before that overwrite.
            while !stale.is_empty() {
                let (r, t) = stale.swap_remove(rng.random_range(0..stale.len()));
                let key = &history[r].key;
                let older: Vec<(Vec<u8>, u64)> = history
                    .iter()
                    .filter(|w0| &w0.key == key && w0.ret < t)
                    .filter_map(written)
                    .collect();
                if older.is_empty() {
                    continue;
                }
                let (value, version) = older[rng.random_range(0..older.len())].clone();
                let out = Output::Get {
                    found: true,
                    value,
                    version,
                    applied_index: version,
                };
                return Some((r, out, "an overwritten value".into()));
            }
            None
        }
        _ => {
            let mut options = Vec::new();
            for &r in &reads {
                if let Outcome::Ok(Output::Get {
                    found: true,
                    value,
                    version,
                    ..
                }) = &history[r].outcome
                    && history.iter().any(|w| written(w).is_some_and(|(v, _)| v == *value))
                {
                    options.push((r, value.clone(), *version));
                }
            }
            if options.is_empty() {
                return None;
            }
            let (r, value, version) = options.swap_remove(rng.random_range(0..options.len()));
            let out = Output::Get {
                found: true,
                value,
                version: version + 1,
                applied_index: version + 1,
            };
            Some((r, out, "a wrong version".into()))
        }
    }
}
