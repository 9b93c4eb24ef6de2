//! The versioned-register model of one key, as a nondeterministic state
//! machine over small `Copy` states (values are interned per key).

use std::collections::HashSet;
use std::fmt;

use crate::{Bytes, Expected, Input, Operation, Outcome, Output};

/// A value, interned: an index into the key's table of distinct values.
pub(crate) type ValueId = u32;

/// The one id shared by the values of all ambiguous writes that no read ever
/// returned: such values are indistinguishable to the model (only their
/// versions matter), and merging them lets equal states and interchangeable
/// operations be recognised.
pub(crate) const UNREAD: ValueId = 0;

/// The version of the live value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Ver {
    /// Exactly this (0 for an absent key).
    Known(u64),
    /// Written by an ambiguous write: some version above the state's floor.
    Unknown,
}

/// One possible state of the register.
///
/// Invariants: absent ⇔ `value == None`, and then `version == Known(0)`; a
/// live `Known(k)` has `floor == k`; an `Unknown` version is `> floor`. Every
/// version written from this state on must exceed `floor` (and the current
/// version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct State {
    pub(crate) value: Option<ValueId>,
    pub(crate) version: Ver,
    pub(crate) floor: u64,
}

impl State {
    /// Keys start absent.
    pub(crate) const INITIAL: State = State::absent(0);

    const fn absent(floor: u64) -> State {
        State {
            value: None,
            version: Ver::Known(0),
            floor,
        }
    }

    const fn known(value: ValueId, version: u64) -> State {
        State {
            value: Some(value),
            version: Ver::Known(version),
            floor: version,
        }
    }

    const fn unknown(value: ValueId, floor: u64) -> State {
        State {
            value: Some(value),
            version: Ver::Unknown,
            floor,
        }
    }

    /// This state with its current version pinned to `v` (0 = absent), if
    /// that is possible.
    fn pinned(self, v: u64, model: &Model) -> Option<State> {
        match (self.value, self.version) {
            (None, _) => (v == 0).then_some(self),
            (Some(_), _) if v == 0 => None,
            (Some(_), Ver::Known(k)) => (k == v).then_some(self),
            (Some(_), Ver::Unknown) => model.may_be_unknown(v, self.floor).then_some(State {
                version: Ver::Known(v),
                floor: v,
                ..self
            }),
        }
    }

    /// This state, if it satisfies `expected` (with an unknown version pinned
    /// to the expected one).
    fn matching(self, expected: Expected, model: &Model) -> Option<State> {
        match expected {
            Expected::Absent => self.value.is_none().then_some(self),
            Expected::Version(e) => {
                if self.value.is_some() {
                    self.pinned(e, model)
                } else {
                    None
                }
            }
        }
    }

    /// Describes the state for humans.
    pub(crate) fn describe<'a>(&'a self, values: &'a [&'a [u8]]) -> impl fmt::Display + 'a {
        DescribeState { state: self, values }
    }
}

struct DescribeState<'a> {
    state: &'a State,
    values: &'a [&'a [u8]],
}

impl fmt::Display for DescribeState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state;
        match s.value {
            None => write!(f, "absent (later versions > {})", s.floor),
            Some(id) => {
                if id == UNREAD {
                    f.write_str("the value of an ambiguous write no read returned")?;
                } else {
                    write!(
                        f,
                        "{}",
                        Bytes(self.values.get(id as usize).copied().unwrap_or_default())
                    )?;
                }
                match s.version {
                    Ver::Known(v) => write!(f, " @ version {v}"),
                    Ver::Unknown => write!(f, " @ unknown version > {}", s.floor),
                }
            }
        }
    }
}

/// An operation compiled for the model: values interned, ambiguity explicit.
///
/// An ambiguous operation stands for "it took effect here": whether it took
/// effect at all is the search's choice (it need not linearize it, having no
/// return time), so the model has no "not applied" branch. For the same
/// reason an ambiguous CAS that would not match, or an ambiguous delete of an
/// absent key, has no successor state: taking effect there changes nothing,
/// which leaving it out already covers (and leaving it out keeps it available
/// for later).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Cop {
    /// An output no state can produce (e.g. not found with a version).
    Impossible,
    GetFound {
        value: ValueId,
        version: u64,
    },
    GetAbsent,
    PutOk {
        value: ValueId,
        version: u64,
        prev_version: u64,
    },
    PutAmbiguous {
        value: ValueId,
    },
    DeleteOk {
        existed: bool,
        prev_version: u64,
    },
    DeleteAmbiguous,
    CasOk {
        expected: Expected,
        value: Option<ValueId>,
        succeeded: bool,
        version: u64,
    },
    CasAmbiguous {
        expected: Expected,
        value: Option<ValueId>,
    },
}

impl Cop {
    /// Compiles `op` (which must not be `Failed`, nor an unfinished `Get`).
    /// Errors if the output does not answer the input.
    pub(crate) fn compile<'a>(
        op: &'a Operation,
        intern: &mut impl FnMut(&'a [u8]) -> ValueId,
    ) -> Result<Cop, &'static str> {
        Ok(match (&op.input, &op.outcome) {
            (_, Outcome::Failed) => return Err("a failed operation has no effect and cannot be checked"),
            (Input::Get, Outcome::Ambiguous) => return Err("an unfinished read has no effect and cannot be checked"),
            (
                Input::Get,
                Outcome::Ok(Output::Get {
                    found: true,
                    value,
                    version,
                    ..
                }),
            ) => Cop::GetFound {
                value: intern(value),
                version: *version,
            },
            (
                Input::Get,
                Outcome::Ok(Output::Get {
                    found: false,
                    value,
                    version,
                    ..
                }),
            ) => {
                if value.is_empty() && *version == 0 {
                    Cop::GetAbsent
                } else {
                    Cop::Impossible
                }
            }
            (Input::Put { value }, Outcome::Ok(Output::Put { version, prev_version })) => Cop::PutOk {
                value: intern(value),
                version: *version,
                prev_version: *prev_version,
            },
            (Input::Put { value }, Outcome::Ambiguous) => Cop::PutAmbiguous { value: intern(value) },
            (Input::Delete, Outcome::Ok(Output::Delete { existed, prev_version })) => Cop::DeleteOk {
                existed: *existed,
                prev_version: *prev_version,
            },
            (Input::Delete, Outcome::Ambiguous) => Cop::DeleteAmbiguous,
            (Input::Cas { expected, value }, Outcome::Ok(Output::Cas { succeeded, version })) => Cop::CasOk {
                expected: *expected,
                value: value.as_deref().map(&mut *intern),
                succeeded: *succeeded,
                version: *version,
            },
            (Input::Cas { expected, value }, Outcome::Ambiguous) => Cop::CasAmbiguous {
                expected: *expected,
                value: value.as_deref().map(&mut *intern),
            },
            (_, Outcome::Ok(_)) => return Err("the output is not a response to the input"),
        })
    }

    /// A quick necessary condition for an ambiguous operation to take effect
    /// from some state of `states`.
    pub(crate) fn may_take_effect(&self, states: &[State], model: &Model) -> bool {
        match *self {
            Cop::PutAmbiguous { .. } => true,
            Cop::DeleteAmbiguous => states.iter().any(|s| s.value.is_some()),
            Cop::CasAmbiguous {
                expected: Expected::Absent,
                ..
            } => states.iter().any(|s| s.value.is_none()),
            Cop::CasAmbiguous {
                expected: Expected::Version(e),
                ..
            } => states.iter().any(|s| {
                s.value.is_some()
                    && match s.version {
                        Ver::Known(k) => k == e,
                        Ver::Unknown => model.may_be_unknown(e, s.floor),
                    }
            }),
            _ => true,
        }
    }

    /// A quick necessary condition for the ambiguous `self`, taking effect
    /// first, to make `next` legal when it was not: `next` needs a live value
    /// (of a given content, for a read) or an absent key.
    pub(crate) fn may_enable(&self, next: &Cop) -> bool {
        let writes = match self {
            Cop::PutAmbiguous { value } | Cop::CasAmbiguous { value: Some(value), .. } => Some(*value),
            Cop::DeleteAmbiguous | Cop::CasAmbiguous { value: None, .. } => None,
            _ => return false,
        };
        match *next {
            Cop::Impossible => false,
            Cop::GetFound { value, .. } => writes == Some(value),
            Cop::GetAbsent
            | Cop::DeleteOk { existed: false, .. }
            | Cop::PutOk { prev_version: 0, .. }
            | Cop::CasOk {
                expected: Expected::Absent,
                succeeded: true,
                ..
            }
            | Cop::CasOk {
                succeeded: false,
                version: 0,
                ..
            } => writes.is_none(),
            Cop::PutOk { .. } | Cop::DeleteOk { existed: true, .. } | Cop::CasOk { .. } => writes.is_some(),
            Cop::PutAmbiguous { .. } | Cop::DeleteAmbiguous | Cop::CasAmbiguous { .. } => true,
        }
    }

    /// Whether the client does not know if this operation took effect.
    pub(crate) fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            Cop::PutAmbiguous { .. } | Cop::DeleteAmbiguous | Cop::CasAmbiguous { .. }
        )
    }
}

/// What the model knows besides the state: the versions of acknowledged
/// writes, which no ambiguous write can have had (a key's versions are never
/// reused), so an unknown version is never pinned to one of them.
#[derive(Debug, Default)]
pub(crate) struct Model {
    taken: HashSet<u64>,
}

impl Model {
    pub(crate) fn new(taken: HashSet<u64>) -> Self {
        Model { taken }
    }

    /// Whether an ambiguous write's unknown version, known to be above
    /// `floor`, may be `v`.
    fn may_be_unknown(&self, v: u64, floor: u64) -> bool {
        v > floor && !self.taken.contains(&v)
    }

    /// Appends every state `op` can lead to from `s` (none if it is illegal).
    fn step(&self, s: State, op: &Cop, out: &mut Vec<State>) {
        match *op {
            Cop::Impossible => {}
            Cop::GetFound { value, version } => {
                if s.value == Some(value) {
                    out.extend(s.pinned(version, self));
                }
            }
            Cop::GetAbsent => {
                if s.value.is_none() {
                    out.push(s);
                }
            }
            Cop::PutOk {
                value,
                version,
                prev_version,
            } => {
                if let Some(before) = s.pinned(prev_version, self)
                    && version > before.floor
                {
                    out.push(State::known(value, version));
                }
            }
            Cop::PutAmbiguous { value } => {
                // With a version we do not know.
                out.push(State::unknown(value, s.floor));
            }
            Cop::DeleteOk {
                existed: true,
                prev_version,
            } => {
                if s.value.is_some()
                    && let Some(before) = s.pinned(prev_version, self)
                {
                    out.push(State::absent(before.floor));
                }
            }
            Cop::DeleteOk {
                existed: false,
                prev_version,
            } => {
                if s.value.is_none() && prev_version == 0 {
                    out.push(s);
                }
            }
            Cop::DeleteAmbiguous => {
                if s.value.is_some() {
                    // An unknown version is > floor, so the floor stays a valid bound.
                    out.push(State::absent(s.floor));
                }
            }
            Cop::CasOk {
                expected,
                value,
                succeeded: true,
                version,
            } => {
                if let Some(before) = s.matching(expected, self) {
                    match value {
                        Some(v) if version > before.floor => out.push(State::known(v, version)),
                        Some(_) => {}
                        None if version == 0 => out.push(State::absent(before.floor)),
                        None => {}
                    }
                }
            }
            Cop::CasOk {
                expected,
                succeeded: false,
                version,
                ..
            } => {
                // The reply carries the current version; it must not match.
                if let Some(now) = s.pinned(version, self) {
                    let matched = match expected {
                        Expected::Absent => now.value.is_none(),
                        Expected::Version(e) => now.value.is_some() && e == version,
                    };
                    if !matched {
                        out.push(now);
                    }
                }
            }
            Cop::CasAmbiguous { expected, value } => {
                // It matched (pinning an unknown version to the expected one).
                if let Some(before) = s.matching(expected, self) {
                    match value {
                        Some(v) => out.push(State::unknown(v, before.floor)),
                        None => out.push(State::absent(before.floor)),
                    }
                }
            }
        }
    }

    /// The canonical set of states `op` leads to from any state of `states`,
    /// written into `out` (empty = illegal).
    pub(crate) fn step_set(&self, states: &[State], op: &Cop, out: &mut Vec<State>) {
        out.clear();
        for &s in states {
            self.step(s, op, out);
        }
        self.canonicalize(out);
    }

    /// Sorts, deduplicates and drops dominated states, so that equal sets of
    /// behaviours get equal representations.
    ///
    /// `a` dominates `b` when every sequence of operations legal from `b` is legal
    /// from `a` and leads to states dominating `b`'s. Two such rules are used (a
    /// dominated state can be dropped without changing which futures the set
    /// admits):
    /// * same value and same version, lower floor — the floor only restricts;
    /// * same live value, `a` unknown with floor `f`, `b` known `k > f` (with
    ///   floor ≥ f), `k` not an acknowledged write's version — an unknown version
    ///   above `f` can be pinned to `k`.
    pub(crate) fn canonicalize(&self, states: &mut Vec<State>) {
        // Order is (value, version, floor), with Known(_) < Unknown: within one
        // value the unknown state (if any) comes last, and equal (value, version)
        // pairs are adjacent with the lowest floor first.
        states.sort_unstable();
        states.dedup_by(|later, earlier| later.value == earlier.value && later.version == earlier.version);
        let mut kept = 0;
        for i in 0..states.len() {
            let s = states[i];
            let dominated = match (s.value, s.version) {
                (Some(_), Ver::Known(k)) => states[i + 1..]
                    .iter()
                    .take_while(|u| u.value == s.value)
                    .any(|u| u.version == Ver::Unknown && self.may_be_unknown(k, u.floor) && u.floor <= s.floor),
                _ => false,
            };
            if !dominated {
                states[kept] = s;
                kept += 1;
            }
        }
        states.truncate(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ValueId = 1;
    const B: ValueId = 2;

    fn run(states: &[State], op: Cop) -> Vec<State> {
        let mut out = Vec::new();
        Model::default().step_set(states, &op, &mut out);
        out
    }

    fn put_ok(value: ValueId, version: u64, prev_version: u64) -> Cop {
        Cop::PutOk {
            value,
            version,
            prev_version,
        }
    }

    fn delete_ok(existed: bool, prev_version: u64) -> Cop {
        Cop::DeleteOk { existed, prev_version }
    }

    fn cas_ok(expected: Expected, value: Option<ValueId>, succeeded: bool, version: u64) -> Cop {
        Cop::CasOk {
            expected,
            value,
            succeeded,
            version,
        }
    }

    #[test]
    fn put_requires_prev_version_and_a_higher_version() {
        let s = [State::INITIAL];
        assert_eq!(run(&s, put_ok(A, 5, 0)), vec![State::known(A, 5)]);
        assert!(run(&s, put_ok(A, 5, 3)).is_empty());
        let s = [State::known(A, 5)];
        assert!(run(&s, put_ok(B, 4, 5)).is_empty());
        assert!(run(&s, put_ok(B, 5, 5)).is_empty());
        assert!(run(&s, put_ok(B, 9, 0)).is_empty());
        assert_eq!(run(&s, put_ok(B, 9, 5)), vec![State::known(B, 9)]);
        // After a delete the floor remains.
        let s = [State::absent(5)];
        assert!(run(&s, put_ok(B, 5, 0)).is_empty());
        assert_eq!(run(&s, put_ok(B, 6, 0)), vec![State::known(B, 6)]);
    }

    #[test]
    fn get_pins_an_unknown_version_above_the_floor() {
        let s = [State::unknown(A, 5)];
        assert!(run(&s, Cop::GetFound { value: A, version: 5 }).is_empty());
        assert!(run(&s, Cop::GetFound { value: B, version: 7 }).is_empty());
        assert!(run(&s, Cop::GetAbsent).is_empty());
        assert_eq!(
            run(&s, Cop::GetFound { value: A, version: 7 }),
            vec![State::known(A, 7)]
        );
        let s = [State::known(A, 7)];
        assert!(run(&s, Cop::GetFound { value: A, version: 8 }).is_empty());
        assert!(run(&[State::INITIAL], Cop::GetFound { value: A, version: 0 }).is_empty());
        assert_eq!(run(&[State::absent(3)], Cop::GetAbsent), vec![State::absent(3)]);
        assert!(run(&[State::INITIAL], Cop::Impossible).is_empty());
    }

    #[test]
    fn ambiguous_writes_take_effect() {
        let s = [State::known(A, 5)];
        assert_eq!(run(&s, Cop::PutAmbiguous { value: B }), vec![State::unknown(B, 5)]);
        assert_eq!(run(&s, Cop::DeleteAmbiguous), vec![State::absent(5)]);
        assert!(run(&[State::absent(5)], Cop::DeleteAmbiguous).is_empty());
        let cas = |expected, value| Cop::CasAmbiguous { expected, value };
        assert_eq!(run(&s, cas(Expected::Version(5), Some(B))), vec![State::unknown(B, 5)]);
        assert!(run(&s, cas(Expected::Version(4), Some(B))).is_empty());
        assert!(run(&s, cas(Expected::Absent, Some(B))).is_empty());
        assert_eq!(
            run(&[State::absent(5)], cas(Expected::Absent, Some(B))),
            vec![State::unknown(B, 5)]
        );
        // Against an unknown version: it matched, so the version was 9; one
        // at or below the floor cannot match.
        let s = [State::unknown(A, 5)];
        assert_eq!(run(&s, cas(Expected::Version(9), None)), vec![State::absent(9)]);
        assert_eq!(run(&s, cas(Expected::Version(9), Some(B))), vec![State::unknown(B, 9)]);
        assert!(run(&s, cas(Expected::Version(5), None)).is_empty());
        // The set semantics: every state that allows it contributes.
        let s = [State::known(A, 5), State::unknown(B, 2)];
        assert_eq!(run(&s, cas(Expected::Version(5), None)), vec![State::absent(5)]);
        assert_eq!(run(&s, cas(Expected::Version(4), None)), vec![State::absent(4)]);
    }

    #[test]
    fn cas_against_an_unknown_version() {
        let s = [State::unknown(A, 5)];
        // Acknowledged success pins it.
        assert_eq!(
            run(&s, cas_ok(Expected::Version(9), Some(B), true, 12)),
            vec![State::known(B, 12)]
        );
        assert!(run(&s, cas_ok(Expected::Version(9), Some(B), true, 9)).is_empty());
        // Acknowledged failure reports the current version, which must differ.
        assert_eq!(
            run(&s, cas_ok(Expected::Version(9), Some(B), false, 8)),
            vec![State::known(A, 8)]
        );
        assert!(run(&s, cas_ok(Expected::Version(9), Some(B), false, 9)).is_empty());
        assert!(run(&s, cas_ok(Expected::Absent, Some(B), false, 0)).is_empty());
    }

    #[test]
    fn cas_on_absent() {
        let s = [State::absent(4)];
        assert_eq!(
            run(&s, cas_ok(Expected::Absent, Some(B), true, 5)),
            vec![State::known(B, 5)]
        );
        assert!(run(&s, cas_ok(Expected::Absent, Some(B), true, 4)).is_empty());
        assert!(run(&s, cas_ok(Expected::Absent, Some(B), false, 0)).is_empty());
        assert_eq!(run(&s, cas_ok(Expected::Version(3), Some(B), false, 0)), vec![s[0]]);
        assert!(run(&s, cas_ok(Expected::Version(3), None, true, 0)).is_empty());
    }

    #[test]
    fn delete_keeps_the_deleted_version_as_floor() {
        let s = [State::unknown(A, 2)];
        assert_eq!(run(&s, delete_ok(true, 7)), vec![State::absent(7)]);
        assert!(run(&s, delete_ok(true, 2)).is_empty());
        assert!(run(&s, delete_ok(false, 0)).is_empty());
        let s = [State::absent(7)];
        assert_eq!(run(&s, delete_ok(false, 0)), vec![s[0]]);
        assert!(run(&s, delete_ok(true, 7)).is_empty());
    }

    #[test]
    fn an_unknown_version_is_never_an_acknowledged_writes() {
        let model = Model::new([7].into_iter().collect());
        let mut out = Vec::new();
        let s = [State::unknown(A, 5)];
        model.step_set(&s, &Cop::GetFound { value: A, version: 7 }, &mut out);
        assert!(out.is_empty());
        model.step_set(&s, &Cop::GetFound { value: A, version: 8 }, &mut out);
        assert_eq!(out, vec![State::known(A, 8)]);
        let cas = Cop::CasAmbiguous {
            expected: Expected::Version(7),
            value: None,
        };
        assert!(!cas.may_take_effect(&s, &model));
        model.step_set(&s, &cas, &mut out);
        assert!(out.is_empty());
        // So an unknown version does not stand in for that known one.
        let mut v = vec![State::known(A, 7), State::unknown(A, 5)];
        model.canonicalize(&mut v);
        assert_eq!(v, vec![State::known(A, 7), State::unknown(A, 5)]);
        let mut v = vec![State::known(A, 8), State::unknown(A, 5)];
        model.canonicalize(&mut v);
        assert_eq!(v, vec![State::unknown(A, 5)]);
    }

    #[test]
    fn canonical_sets_drop_dominated_states() {
        let mut v = vec![
            State::absent(9),
            State::known(A, 7),
            State::unknown(A, 3),
            State::absent(4),
            State::absent(4),
        ];
        Model::default().canonicalize(&mut v);
        assert_eq!(v, vec![State::absent(4), State::unknown(A, 3)]);
        // Not dominated: a known version at or below the unknown's floor.
        let mut v = vec![State::unknown(A, 7), State::known(A, 7), State::known(B, 9)];
        Model::default().canonicalize(&mut v);
        assert_eq!(v, vec![State::known(A, 7), State::unknown(A, 7), State::known(B, 9)]);
    }
}
