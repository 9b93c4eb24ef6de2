//! A second, cheaper oracle: checks on the versions (Raft log indices) that
//! acknowledged operations report, per shard.
//!
//! A key's version is the log index, in its shard's Raft log, of the write
//! that produced it. For a correct, linearizable shard:
//!
//! 1. **Unique**: two acknowledged writes (`Put`, or a `Cas` that succeeded
//!    with a value) of one shard never report the same version.
//! 2. **Real-time order**: if acknowledged write A returned before acknowledged
//!    write B (same shard) was called, A was committed first, so
//!    `version(A) < version(B)`.
//! 3. **No stale read**: if acknowledged write W returned before acknowledged
//!    read R (same shard) was called, the replica serving R had applied W:
//!    `R.applied_index >= version(W)`. The node reports the applied index it
//!    confirmed the read at, a lower bound of the state it then read (a later
//!    apply may land in between), so a read's version may exceed it. An
//!    `applied_index` of 0 means "not reported" and skips this check.
//! 4. **No stale value** (same key): if W (a `Put` or a `Cas` with a value)
//!    returned before R was called, and no delete of the key could have come
//!    between them, then R found the key at a version `>= version(W)` (the
//!    key stayed live after W, and its versions only grow). "Could have come
//!    between" is judged conservatively: a delete (`Delete` that existed or a
//!    successful `Cas` delete, or an ambiguous one of either) counts unless it
//!    returned before W was called or was called after R returned.
//!
//! Only operations with a shard (rules 1–3) and acknowledged outcomes are used
//! (ambiguous deletes only to excuse rule 4). Operations that returned before
//! they were called are malformed and skipped. Equal times count as
//! concurrent, so they never produce a violation.
//!
//! These checks overlap with the linearizability check but cost
//! `O(n log n)` (rule 4: quadratic per key), and rules 1–3 relate different
//! keys of a shard, which the per-key register model cannot.

use std::collections::{BTreeMap, HashMap};

use crate::{Input, Operation, Outcome, Output};

/// Returns one human-readable line per violation (empty = fine).
pub fn check_versions(history: &[Operation]) -> Vec<String> {
    let mut out = Vec::new();
    let mut shards: BTreeMap<u32, (Vec<Write<'_>>, Vec<Read<'_>>)> = BTreeMap::new();
    for op in history {
        let Some(shard) = op.shard else { continue };
        if let Some(w) = Write::of(op) {
            shards.entry(shard).or_default().0.push(w);
        } else if let Some(r) = Read::of(op) {
            shards.entry(shard).or_default().1.push(r);
        }
    }
    for (shard, (writes, reads)) in &shards {
        unique(*shard, writes, &mut out);
        ordered(*shard, writes, &mut out);
        fresh_reads(*shard, writes, reads, &mut out);
    }
    fresh_values(history, &mut out);
    out
}

/// An acknowledged write with a version.
#[derive(Clone, Copy)]
struct Write<'a> {
    op: &'a Operation,
    version: u64,
}

impl<'a> Write<'a> {
    fn of(op: &'a Operation) -> Option<Self> {
        if op.ret < op.call {
            return None;
        }
        match (&op.input, &op.outcome) {
            (Input::Put { .. }, Outcome::Ok(Output::Put { version, .. }))
            | (
                Input::Cas { value: Some(_), .. },
                Outcome::Ok(Output::Cas {
                    succeeded: true,
                    version,
                }),
            ) => Some(Write { op, version: *version }),
            _ => None,
        }
    }
}

/// An acknowledged read.
#[derive(Clone, Copy)]
struct Read<'a> {
    op: &'a Operation,
    found: bool,
    version: u64,
    applied_index: u64,
}

impl<'a> Read<'a> {
    fn of(op: &'a Operation) -> Option<Self> {
        if op.ret < op.call {
            return None;
        }
        match (&op.input, &op.outcome) {
            (
                Input::Get,
                Outcome::Ok(Output::Get {
                    found,
                    version,
                    applied_index,
                    ..
                }),
            ) => Some(Read {
                op,
                found: *found,
                version: *version,
                applied_index: *applied_index,
            }),
            _ => None,
        }
    }
}

/// Rule 1.
fn unique(shard: u32, writes: &[Write<'_>], out: &mut Vec<String>) {
    let mut seen: HashMap<u64, &Operation> = HashMap::new();
    for w in writes {
        if let Some(first) = seen.get(&w.version) {
            out.push(format!(
                "shard {shard}: version {} reported by two writes: {first} and {}",
                w.version, w.op
            ));
        } else {
            seen.insert(w.version, w.op);
        }
    }
}

/// Walks `later` in call order while adding the writes that returned strictly
/// before each call, and hands each element the highest-versioned such write.
fn sweep<'a, T>(writes: &[Write<'a>], later: &[T], call: impl Fn(&T) -> u64, mut f: impl FnMut(&T, Write<'a>)) {
    let mut by_ret: Vec<Write<'a>> = writes.to_vec();
    by_ret.sort_by_key(|w| w.op.ret);
    let mut order: Vec<&T> = later.iter().collect();
    order.sort_by_key(|t| call(t));
    let mut done = by_ret.iter().peekable();
    let mut best: Option<Write<'a>> = None;
    for t in order {
        let c = call(t);
        while let Some(w) = done.next_if(|w| w.op.ret < c) {
            if best.is_none_or(|b| w.version > b.version) {
                best = Some(*w);
            }
        }
        if let Some(b) = best {
            f(t, b);
        }
    }
}

/// Rule 2.
fn ordered(shard: u32, writes: &[Write<'_>], out: &mut Vec<String>) {
    sweep(
        writes,
        writes,
        |w| w.op.call,
        |b, a| {
            if a.version >= b.version {
                out.push(format!(
                    "shard {shard}: write {} returned before write {} was called, but its version {} is not \
                     below {}",
                    a.op, b.op, a.version, b.version
                ));
            }
        },
    );
}

/// Rule 3.
fn fresh_reads(shard: u32, writes: &[Write<'_>], reads: &[Read<'_>], out: &mut Vec<String>) {
    sweep(
        writes,
        reads,
        |r| r.op.call,
        |r, w| {
            if r.applied_index != 0 && r.applied_index < w.version {
                out.push(format!(
                    "shard {shard}: read {} was served at applied index {}, but write {} with version {} returned \
                     before the read was called",
                    r.op, r.applied_index, w.op, w.version
                ));
            }
        },
    );
}

/// Rule 4.
fn fresh_values(history: &[Operation], out: &mut Vec<String>) {
    #[derive(Default)]
    struct OnKey<'a> {
        writes: Vec<Write<'a>>,
        reads: Vec<Read<'a>>,
        /// Possible deletes: (call, effective return; `u64::MAX` if ambiguous).
        deletes: Vec<(u64, u64)>,
    }
    let mut keys: BTreeMap<&[u8], OnKey<'_>> = BTreeMap::new();
    for op in history {
        let k = keys.entry(op.key.as_slice()).or_default();
        if let Some(w) = Write::of(op) {
            k.writes.push(w);
        } else if let Some(r) = Read::of(op) {
            k.reads.push(r);
        } else if let Some(d) = possible_delete(op) {
            k.deletes.push(d);
        }
    }
    for k in keys.values() {
        for r in &k.reads {
            // The latest a delete that may precede R's effect can end.
            let last_delete_end = k
                .deletes
                .iter()
                .filter(|(call, _)| *call <= r.op.ret)
                .map(|(_, end)| *end)
                .max();
            let w = k
                .writes
                .iter()
                .filter(|w| w.op.ret < r.op.call && last_delete_end.is_none_or(|end| w.op.call > end))
                .max_by_key(|w| w.version);
            let Some(w) = w else { continue };
            if !r.found {
                out.push(format!(
                    "read {} found nothing, but write {} returned before it was called and no delete could have \
                     come between them",
                    r.op, w.op
                ));
            } else if r.version < w.version {
                out.push(format!(
                    "read {} returned version {}, older than version {} of write {}, which returned before the read \
                     was called (and no delete could have come between them)",
                    r.op, r.version, w.version, w.op
                ));
            }
        }
    }
}

/// An operation that may have deleted the key: (call, effective return).
fn possible_delete(op: &Operation) -> Option<(u64, u64)> {
    let deletes = match (&op.input, &op.outcome) {
        (Input::Delete, Outcome::Ok(Output::Delete { existed, .. })) => *existed,
        (Input::Cas { value: None, .. }, Outcome::Ok(Output::Cas { succeeded, .. })) => *succeeded,
        (Input::Delete | Input::Cas { value: None, .. }, Outcome::Ambiguous) => true,
        // A mismatched output: be conservative.
        (Input::Delete | Input::Cas { value: None, .. }, Outcome::Ok(_)) => true,
        _ => false,
    };
    let end = if matches!(op.outcome, Outcome::Ambiguous) {
        u64::MAX
    } else {
        op.ret.max(op.call)
    };
    deletes.then_some((op.call, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Expected;

    fn op(client: u64, key: &str, shard: u32, input: Input, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: key.as_bytes().to_vec(),
            shard: Some(shard),
            input,
            call,
            ret,
            outcome,
        }
    }

    fn put(key: &str, shard: u32, value: &str, call: u64, ret: u64, version: u64, prev_version: u64) -> Operation {
        op(
            1,
            key,
            shard,
            Input::Put {
                value: value.as_bytes().to_vec(),
            },
            call,
            ret,
            Outcome::Ok(Output::Put { version, prev_version }),
        )
    }

    fn get(key: &str, shard: u32, found: Option<(&str, u64)>, applied_index: u64, call: u64, ret: u64) -> Operation {
        let (found, value, version) = match found {
            Some((v, ver)) => (true, v.as_bytes().to_vec(), ver),
            None => (false, Vec::new(), 0),
        };
        op(
            2,
            key,
            shard,
            Input::Get,
            call,
            ret,
            Outcome::Ok(Output::Get {
                found,
                value,
                version,
                applied_index,
            }),
        )
    }

    fn delete(key: &str, shard: u32, call: u64, ret: u64, outcome: Outcome) -> Operation {
        op(3, key, shard, Input::Delete, call, ret, outcome)
    }

    #[test]
    fn a_correct_history_passes() {
        let h = vec![
            put("a", 0, "a1", 0, 10, 3, 0),
            put("b", 0, "b1", 5, 15, 4, 0),
            put("c", 1, "c1", 20, 30, 2, 0),
            get("a", 0, Some(("a1", 3)), 4, 20, 30),
            get("c", 1, Some(("c1", 2)), 2, 40, 50),
            op(
                4,
                "a",
                0,
                Input::Cas {
                    expected: Expected::Version(3),
                    value: Some(b"a2".to_vec()),
                },
                40,
                50,
                Outcome::Ok(Output::Cas {
                    succeeded: true,
                    version: 7,
                }),
            ),
            get("a", 0, Some(("a2", 7)), 7, 60, 70),
        ];
        assert_eq!(check_versions(&h), Vec::<String>::new());
    }

    #[test]
    fn duplicate_versions_in_a_shard() {
        // Concurrent, so only rule 1 can object.
        let h = vec![put("a", 0, "a1", 0, 10, 3, 0), put("b", 0, "b1", 5, 15, 3, 0)];
        let v = check_versions(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("version 3 reported by two writes"), "{v:?}");
        // Different shards may share indices.
        let h = vec![put("a", 0, "a1", 0, 10, 3, 0), put("b", 1, "b1", 5, 15, 3, 0)];
        assert!(check_versions(&h).is_empty());
        // A failed CAS does not write.
        let h = vec![
            put("a", 0, "a1", 0, 10, 3, 0),
            op(
                1,
                "b",
                0,
                Input::Cas {
                    expected: Expected::Absent,
                    value: Some(b"x".to_vec()),
                },
                0,
                10,
                Outcome::Ok(Output::Cas {
                    succeeded: false,
                    version: 3,
                }),
            ),
        ];
        assert!(check_versions(&h).is_empty());
    }

    #[test]
    fn versions_follow_real_time() {
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), put("b", 0, "b1", 11, 20, 5, 0)];
        let v = check_versions(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("returned before write"), "{v:?}");
        // Overlapping (or touching) writes may commit in either order.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), put("b", 0, "b1", 10, 20, 5, 0)];
        assert!(check_versions(&h).is_empty());
        // Other shards are independent.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), put("b", 1, "b1", 11, 20, 5, 0)];
        assert!(check_versions(&h).is_empty());
    }

    #[test]
    fn reads_see_acknowledged_writes_of_the_shard() {
        // A read of another key in the shard, served below the write's index.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), get("b", 0, None, 8, 11, 20)];
        let v = check_versions(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("applied index 8"), "{v:?}");
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), get("b", 0, None, 9, 11, 20)];
        assert!(check_versions(&h).is_empty());
        // Concurrent: fine.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), get("b", 0, None, 8, 10, 20)];
        assert!(check_versions(&h).is_empty());
        // 0 = not reported.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), get("b", 0, None, 0, 11, 20)];
        assert!(check_versions(&h).is_empty());
        // A read's version above the applied index it was confirmed at: a
        // later apply landed before the read, which is fine.
        let h = vec![put("a", 0, "a1", 0, 10, 9, 0), get("a", 0, Some(("a1", 9)), 7, 5, 20)];
        assert!(check_versions(&h).is_empty());
    }

    #[test]
    fn reads_see_the_latest_acknowledged_value_of_the_key() {
        // No applied index reported, so only rule 4 can object.
        let h = vec![
            put("a", 0, "a1", 0, 10, 3, 0),
            put("a", 0, "a2", 20, 30, 7, 3),
            get("a", 0, Some(("a1", 3)), 0, 40, 50),
        ];
        let v = check_versions(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("older than version 7"), "{v:?}");
        let h = vec![put("a", 0, "a1", 0, 10, 3, 0), get("a", 0, None, 0, 40, 50)];
        let v = check_versions(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("found nothing"), "{v:?}");
        // A delete that may come between excuses both.
        for d in [
            delete(
                "a",
                0,
                35,
                45,
                Outcome::Ok(Output::Delete {
                    existed: true,
                    prev_version: 3,
                }),
            ),
            delete("a", 0, 5, 6, Outcome::Ambiguous),
            delete(
                "a",
                0,
                5,
                12,
                Outcome::Ok(Output::Delete {
                    existed: true,
                    prev_version: 3,
                }),
            ),
        ] {
            let h = vec![put("a", 0, "a1", 0, 10, 3, 0), d.clone(), get("a", 0, None, 0, 40, 50)];
            assert!(check_versions(&h).is_empty(), "{d}");
        }
        // ... but not one that ended before the write began, one called after
        // the read, a failed one, or one that deleted nothing.
        for d in [
            delete(
                "a",
                0,
                0,
                0,
                Outcome::Ok(Output::Delete {
                    existed: true,
                    prev_version: 1,
                }),
            ),
            delete(
                "a",
                0,
                51,
                60,
                Outcome::Ok(Output::Delete {
                    existed: true,
                    prev_version: 3,
                }),
            ),
            delete("a", 0, 35, 45, Outcome::Failed),
            delete(
                "a",
                0,
                35,
                45,
                Outcome::Ok(Output::Delete {
                    existed: false,
                    prev_version: 0,
                }),
            ),
        ] {
            let h = vec![put("a", 0, "a1", 1, 10, 3, 0), d.clone(), get("a", 0, None, 0, 40, 50)];
            assert_eq!(check_versions(&h).len(), 1, "{d}");
        }
        // Newer is fine.
        let h = vec![put("a", 0, "a1", 0, 10, 3, 0), get("a", 0, Some(("a9", 8)), 0, 40, 50)];
        assert!(check_versions(&h).is_empty());
    }

    #[test]
    fn operations_without_a_shard_or_malformed_are_skipped() {
        let mut a = put("a", 0, "a1", 0, 10, 9, 0);
        a.shard = None;
        let h = vec![a, put("b", 0, "b1", 11, 20, 5, 0)];
        assert!(check_versions(&h).is_empty());
        let h = vec![put("a", 0, "a1", 10, 0, 9, 0), put("b", 0, "b1", 11, 20, 5, 0)];
        assert!(check_versions(&h).is_empty());
    }
}
