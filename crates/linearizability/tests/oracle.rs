//! Differential test: on tiny random histories, the checker agrees with a
//! brute-force search over every order of the operations, every subset of the
//! ambiguous ones, and every relevant version for them, run against a plain
//! concrete register. None of the checker's machinery (state sets, pruning,
//! deadlines, memoization) is shared.

use raftkv_linearizability::{Budget, Expected, Input, Operation, Outcome, Output, Verdict, check, text};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Clone, Debug)]
struct Reg {
    value: Option<Vec<u8>>,
    version: u64,
    /// The highest version the key ever had.
    max: u64,
}

/// The concrete effect of `op` on `r`; `chosen` is the version an ambiguous
/// write gets. `None` if the output cannot be produced.
fn apply(r: &Reg, op: &Operation, chosen: u64) -> Option<Reg> {
    let live = r.value.is_some();
    let write = |value: &[u8], v: u64| {
        (v > r.max).then(|| Reg {
            value: Some(value.to_vec()),
            version: v,
            max: v,
        })
    };
    let absent = Reg {
        value: None,
        version: 0,
        max: r.max,
    };
    match (&op.input, &op.outcome) {
        (
            Input::Get,
            Outcome::Ok(Output::Get {
                found, value, version, ..
            }),
        ) => {
            let ok = if *found {
                r.value.as_deref() == Some(value.as_slice()) && *version == r.version
            } else {
                !live && value.is_empty() && *version == 0
            };
            ok.then(|| r.clone())
        }
        (Input::Put { value }, Outcome::Ok(Output::Put { version, prev_version })) => {
            if *prev_version == r.version {
                write(value, *version)
            } else {
                None
            }
        }
        (Input::Put { value }, Outcome::Ambiguous) => write(value, chosen),
        (Input::Delete, Outcome::Ok(Output::Delete { existed, prev_version })) => {
            (*existed == live && *prev_version == r.version).then_some(absent)
        }
        (Input::Delete, Outcome::Ambiguous) => Some(absent),
        (Input::Cas { expected, value }, outcome) => {
            let matches = match expected {
                Expected::Absent => !live,
                Expected::Version(e) => live && r.version == *e,
            };
            match outcome {
                Outcome::Ok(Output::Cas { succeeded, version }) => {
                    if *succeeded != matches {
                        None
                    } else if !matches {
                        (*version == r.version).then(|| r.clone())
                    } else {
                        match value {
                            Some(v) => write(v, *version),
                            None => (*version == 0).then_some(absent),
                        }
                    }
                }
                Outcome::Ambiguous if !matches => Some(r.clone()),
                Outcome::Ambiguous => match value {
                    Some(v) => write(v, chosen),
                    None => Some(absent),
                },
                _ => None,
            }
        }
        _ => None,
    }
}

fn brute_force(h: &[Operation]) -> bool {
    let ops: Vec<&Operation> = h
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Failed => false,
            Outcome::Ambiguous => !matches!(o.input, Input::Get),
            Outcome::Ok(_) => true,
        })
        .collect();
    let mut mentioned: Vec<u64> = Vec::new();
    for o in &ops {
        if let Input::Cas {
            expected: Expected::Version(e),
            ..
        } = o.input
        {
            mentioned.push(e);
        }
        match &o.outcome {
            Outcome::Ok(Output::Get { version, .. } | Output::Cas { version, .. }) => mentioned.push(*version),
            Outcome::Ok(Output::Put { version, prev_version }) => mentioned.extend([*version, *prev_version]),
            Outcome::Ok(Output::Delete { prev_version, .. }) => mentioned.push(*prev_version),
            _ => {}
        }
    }
    fn go(ops: &[&Operation], done: &mut Vec<bool>, r: &Reg, mentioned: &[u64]) -> bool {
        // Done once every acknowledged operation is in; the rest never happened.
        if ops
            .iter()
            .zip(done.iter())
            .all(|(o, d)| *d || matches!(o.outcome, Outcome::Ambiguous))
        {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // Real time: nothing pending returned before this was called.
            let blocked = ops
                .iter()
                .enumerate()
                .any(|(j, x)| !done[j] && j != i && !matches!(x.outcome, Outcome::Ambiguous) && x.ret < ops[i].call);
            if blocked {
                continue;
            }
            let mut choices: Vec<u64> = mentioned.iter().copied().filter(|v| *v > r.max).collect();
            let mut fresh = r.max + 1;
            while mentioned.contains(&fresh) {
                fresh += 1;
            }
            choices.push(fresh);
            if !matches!(ops[i].outcome, Outcome::Ambiguous) {
                choices = vec![0];
            }
            for &v in &choices {
                if let Some(next) = apply(r, ops[i], v) {
                    done[i] = true;
                    let found = go(ops, done, &next, mentioned);
                    done[i] = false;
                    if found {
                        return true;
                    }
                }
            }
        }
        false
    }
    let mut done = vec![false; ops.len()];
    go(
        &ops,
        &mut done,
        &Reg {
            value: None,
            version: 0,
            max: 0,
        },
        &mentioned,
    )
}

/// A small history: executed on a concrete register in a random order with
/// intervals around each point (so often linearizable), then sometimes
/// perturbed.
fn history(rng: &mut StdRng) -> Vec<Operation> {
    let n = rng.random_range(1..=9);
    let values: [&[u8]; 3] = [b"a", b"b", b"c"];
    let mut r = Reg {
        value: None,
        version: 0,
        max: 0,
    };
    let mut index = 0u64;
    let mut out = Vec::new();
    for i in 0..n {
        let lin = 2 * i as u64;
        let call = lin.saturating_sub(rng.random_range(0..5));
        let ret = lin + rng.random_range(0..5);
        // Sometimes unique values, sometimes repeated ones.
        let value = if rng.random_bool(0.5) {
            format!("v{i}").into_bytes()
        } else {
            values[rng.random_range(0..3)].to_vec()
        };
        let input = match rng.random_range(0..4) {
            0 => Input::Get,
            1 => Input::Put { value },
            2 => Input::Delete,
            _ => Input::Cas {
                expected: if rng.random_bool(0.3) {
                    Expected::Absent
                } else {
                    Expected::Version(rng.random_range(0..=r.version + 1))
                },
                value: rng.random_bool(0.7).then_some(value),
            },
        };
        let fate = rng.random_range(0..10);
        let mut op = Operation {
            client: i as u64,
            key: b"k".to_vec(),
            shard: Some(0),
            input,
            call,
            ret,
            outcome: Outcome::Failed,
        };
        if fate == 0 {
            out.push(op); // failed, not applied
            continue;
        }
        let applied = fate != 1;
        if applied {
            index += rng.random_range(1..3);
            let live = r.value.is_some();
            let (next, output) = match &op.input {
                Input::Get => (
                    r.clone(),
                    Output::Get {
                        found: live,
                        value: r.value.clone().unwrap_or_default(),
                        version: r.version,
                        applied_index: index,
                    },
                ),
                Input::Put { value } => (
                    Reg {
                        value: Some(value.clone()),
                        version: index,
                        max: index,
                    },
                    Output::Put {
                        version: index,
                        prev_version: r.version,
                    },
                ),
                Input::Delete => (
                    Reg {
                        value: None,
                        version: 0,
                        max: r.max,
                    },
                    Output::Delete {
                        existed: live,
                        prev_version: r.version,
                    },
                ),
                Input::Cas { expected, value } => {
                    let matches = match expected {
                        Expected::Absent => !live,
                        Expected::Version(e) => live && r.version == *e,
                    };
                    match (matches, value) {
                        (true, Some(v)) => (
                            Reg {
                                value: Some(v.clone()),
                                version: index,
                                max: index,
                            },
                            Output::Cas {
                                succeeded: true,
                                version: index,
                            },
                        ),
                        (true, None) => (
                            Reg {
                                value: None,
                                version: 0,
                                max: r.max,
                            },
                            Output::Cas {
                                succeeded: true,
                                version: 0,
                            },
                        ),
                        (false, _) => (
                            r.clone(),
                            Output::Cas {
                                succeeded: false,
                                version: r.version,
                            },
                        ),
                    }
                }
            };
            r = next;
            op.outcome = Outcome::Ok(output);
        }
        if fate <= 2 && !matches!(op.input, Input::Get) {
            op.outcome = Outcome::Ambiguous; // applied (fate 2) or not (fate 1)
        } else if !applied {
            op.outcome = Outcome::Failed;
        }
        out.push(op);
    }
    for _ in 0..rng.random_range(0..=2) {
        perturb(&mut out, rng);
    }
    out
}

fn perturb(h: &mut [Operation], rng: &mut StdRng) {
    let i = rng.random_range(0..h.len());
    let small = |rng: &mut StdRng| rng.random_range(0..8);
    match rng.random_range(0..3) {
        0 => {
            h[i].call = rng.random_range(0..12);
            h[i].ret = h[i].call + rng.random_range(0..4);
        }
        1 => {
            h[i].outcome = match &h[i].outcome {
                Outcome::Ok(Output::Get {
                    found,
                    value,
                    version,
                    applied_index,
                }) => Outcome::Ok(match rng.random_range(0..3) {
                    0 => Output::Get {
                        found: !found,
                        value: value.clone(),
                        version: *version,
                        applied_index: *applied_index,
                    },
                    1 => Output::Get {
                        found: *found,
                        value: b"a".to_vec(),
                        version: *version,
                        applied_index: *applied_index,
                    },
                    _ => Output::Get {
                        found: *found,
                        value: value.clone(),
                        version: small(rng),
                        applied_index: *applied_index,
                    },
                }),
                Outcome::Ok(Output::Put { version, prev_version }) => Outcome::Ok(if rng.random_bool(0.5) {
                    Output::Put {
                        version: small(rng),
                        prev_version: *prev_version,
                    }
                } else {
                    Output::Put {
                        version: *version,
                        prev_version: small(rng),
                    }
                }),
                Outcome::Ok(Output::Delete { existed, prev_version }) => Outcome::Ok(if rng.random_bool(0.5) {
                    Output::Delete {
                        existed: !existed,
                        prev_version: *prev_version,
                    }
                } else {
                    Output::Delete {
                        existed: *existed,
                        prev_version: small(rng),
                    }
                }),
                Outcome::Ok(Output::Cas { succeeded, version }) => Outcome::Ok(if rng.random_bool(0.5) {
                    Output::Cas {
                        succeeded: !succeeded,
                        version: *version,
                    }
                } else {
                    Output::Cas {
                        succeeded: *succeeded,
                        version: small(rng),
                    }
                }),
                Outcome::Failed | Outcome::Ambiguous => Outcome::Ambiguous,
            }
        }
        _ => {
            h[i].outcome = if matches!(h[i].outcome, Outcome::Ambiguous) {
                Outcome::Failed
            } else {
                Outcome::Ambiguous
            };
        }
    }
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let mut rng = StdRng::seed_from_u64(0xb0b);
    let (mut legal, mut illegal) = (0, 0);
    for case in 0..6000 {
        let h = history(&mut rng);
        let expected = brute_force(&h);
        match check(&h, &Budget::default()) {
            Verdict::Linearizable => assert!(
                expected,
                "case {case}: checker says linearizable:\n{}",
                text::to_text(&h)
            ),
            Verdict::Illegal { detail, .. } => {
                assert!(
                    !expected,
                    "case {case}: false illegal ({detail}):\n{}",
                    text::to_text(&h)
                )
            }
            Verdict::Unknown { detail, .. } => {
                // Only a malformed history (return before call) may be undecided.
                assert!(detail.contains("malformed"), "case {case}: {detail}");
                continue;
            }
        }
        if expected { legal += 1 } else { illegal += 1 }
    }
    eprintln!("legal {legal}, illegal {illegal}");
    assert!(legal > 1000 && illegal > 1000, "legal {legal}, illegal {illegal}");
}
