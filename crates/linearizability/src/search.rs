//! Wing & Gong's search with Lowe's memoization (as in Porcupine), over sets
//! of model states, for the operations of one key; with the reductions for
//! ambiguous operations described in the crate documentation.
//!
//! A *configuration* is the set of linearized operations plus the state set.
//! Operations with a deadline (acknowledged ones, and ambiguous writes that
//! were observed) are tracked one by one in a bitset; ambiguous operations
//! without one, by how many of each class of interchangeable ones went.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{Cop, Model, State, UNREAD, ValueId, Ver};
use crate::{Budget, Bytes, Expected, Input, Operation, Outcome, Output, Verdict};

/// "No node".
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;
/// How many operations to describe in a report, at most.
const REPORT_OPS: usize = 8;

/// Checks one key's operations as one register.
pub(crate) fn check_register(ops: &[&Operation], budget: &Budget) -> Verdict {
    let key = ops.first().map(|o| o.key.clone()).unwrap_or_default();
    let prepared = match Prepared::new(ops) {
        Ok(p) => p,
        Err(Rejected::Malformed(detail)) => {
            return Verdict::Unknown {
                detail: format!("key {}: {detail}", Bytes(&key)),
                key,
            };
        }
        Err(Rejected::Impossible(detail)) => {
            return Verdict::Illegal {
                detail: format!("key {}: not linearizable: {detail}", Bytes(&key)),
                key,
            };
        }
    };
    prepared.search(key, budget)
}

/// Why a history is not searched.
enum Rejected {
    /// It is not a well-formed history.
    Malformed(String),
    /// An operation can never be linearized.
    Impossible(String),
}

/// Why an operation can never take effect, in any state, if it cannot.
fn never_legal(cop: &Cop, written: &HashSet<&[u8]>, op: &Operation) -> Option<&'static str> {
    match cop {
        Cop::Impossible => Some("a read that found nothing returns an empty value and version 0"),
        Cop::GetFound { version: 0, .. } => Some("a live value has a version of at least 1"),
        Cop::GetFound { .. } if read_value(op).is_some_and(|v| !written.contains(v)) => {
            Some("no operation wrote the value it returned")
        }
        Cop::PutOk {
            version, prev_version, ..
        } if version <= prev_version => Some("a put's version must be above the version it replaced"),
        Cop::DeleteOk {
            existed: true,
            prev_version: 0,
        } => Some("a deleted live value had a version of at least 1"),
        Cop::DeleteOk {
            existed: false,
            prev_version,
        } if *prev_version != 0 => Some("a delete of an absent key returns prev_version 0"),
        Cop::CasOk {
            value: None,
            succeeded: true,
            version,
            ..
        } if *version != 0 => Some("a successful CAS delete returns version 0"),
        Cop::CasOk {
            value: Some(_),
            succeeded: true,
            version: 0,
            ..
        } => Some("a successful CAS write returns a version of at least 1"),
        _ => None,
    }
}

/// Whether an operation can affect, or be constrained by, the register.
fn relevant(op: &Operation) -> bool {
    match op.outcome {
        Outcome::Ok(_) => true,
        Outcome::Failed => false,
        Outcome::Ambiguous => !matches!(op.input, Input::Get),
    }
}

/// The operations of one key, compiled, with their events in a linked list.
struct Prepared<'a> {
    ops: Vec<&'a Operation>,
    cops: Vec<Cop>,
    /// Interned values; index [`UNREAD`] stands for every value no read returned.
    values: Vec<&'a [u8]>,
    /// The class of each ambiguous operation. Those without a deadline and
    /// with equal compiled forms are interchangeable (each can go wherever
    /// another can, with the same effect), so a class is linearized in call
    /// order only. Ambiguous operations with a deadline are classes of one.
    class: Vec<Option<usize>>,
    /// Each class's operations, in call order.
    members: Vec<Vec<usize>>,
    /// Each operation's index in the bitset, if it has a deadline (a time by
    /// which it must have taken effect); `NIL` for an ambiguous operation
    /// that need never take effect.
    fin: Vec<usize>,
    /// The classes of operations without a deadline.
    counted: Vec<usize>,
    /// For a class of CASes expecting version `e`: `Some(e)`.
    dies_below: Vec<Option<u64>>,
    model: Model,
    list: List,
    /// How many operations have a deadline (and so must be linearized).
    finite: usize,
}

impl<'a> Prepared<'a> {
    fn new(all: &[&'a Operation]) -> Result<Self, Rejected> {
        let mut ops: Vec<&'a Operation> = all.iter().copied().filter(|o| relevant(o)).collect();
        // In call order, so that the linearized ones are mostly a prefix.
        ops.sort_by_key(|o| o.call);

        // Values some read returned. Ambiguous writes of any other value are
        // interchangeable (values that are never read only matter through
        // their versions, which are unknown anyway).
        let read: HashSet<&'a [u8]> = ops.iter().filter_map(|o| read_value(o)).collect();
        let mut ids: HashMap<&'a [u8], ValueId> = HashMap::new();
        let mut values: Vec<&'a [u8]> = vec![&[]];
        let mut cops = Vec::with_capacity(ops.len());
        for &op in &ops {
            let ambiguous = matches!(op.outcome, Outcome::Ambiguous);
            let mut intern = |v: &'a [u8]| -> ValueId {
                if ambiguous && !read.contains(v) {
                    return UNREAD;
                }
                *ids.entry(v).or_insert_with(|| {
                    values.push(v);
                    ValueId::try_from(values.len() - 1).unwrap_or(ValueId::MAX)
                })
            };
            let cop = Cop::compile(op, &mut intern)
                .map_err(|e| Rejected::Malformed(format!("malformed operation ({e}): {op}")))?;
            if !cop.is_ambiguous() && op.ret < op.call {
                return Err(Rejected::Malformed(format!(
                    "malformed operation (returned before it was called): {op}"
                )));
            }
            cops.push(cop);
        }
        if values.len() >= ValueId::MAX as usize {
            return Err(Rejected::Malformed("too many distinct values".into()));
        }
        let written: HashSet<&[u8]> = ops.iter().filter_map(|o| written_value(o)).collect();
        for (op, cop) in ops.iter().zip(&cops) {
            if let Some(why) = never_legal(cop, &written, op) {
                return Err(Rejected::Impossible(format!(
                    "this operation can never take effect ({why}):\n  {op}"
                )));
            }
        }

        let mut deadline: Vec<Option<u64>> = ops
            .iter()
            .zip(&cops)
            .map(|(o, c)| (!c.is_ambiguous()).then_some(o.ret))
            .collect();
        observed_writes(&ops, &cops, &mut deadline);

        let list = List::new(&ops, &cops, &deadline);
        // Ambiguous operations are grouped in classes; those without a
        // deadline and with equal compiled forms share one.
        let mut classes: HashMap<&Cop, usize> = HashMap::new();
        let mut class = vec![None; ops.len()];
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, cop) in cops.iter().enumerate() {
            if !cop.is_ambiguous() {
                continue;
            }
            let mut new_class = || {
                members.push(Vec::new());
                members.len() - 1
            };
            let c = if deadline[i].is_none() {
                *classes.entry(cop).or_insert_with(new_class)
            } else {
                new_class()
            };
            class[i] = Some(c);
            members[c].push(i);
        }
        for m in &mut members {
            m.sort_by_key(|&i| (ops[i].call, i));
        }
        let finite = deadline.iter().filter(|d| d.is_some()).count();
        // Index among the operations with a deadline, for the bitset.
        let mut next_fin = 0;
        let fin = deadline
            .iter()
            .map(|d| {
                d.map_or(NIL, |_| {
                    next_fin += 1;
                    next_fin - 1
                })
            })
            .collect();
        // Classes of operations without a deadline: their counts of
        // linearized members are part of a configuration. A CAS expecting a
        // version below every state's floor can never match again, so its
        // count no longer matters.
        let mut counted = Vec::new();
        let mut dies_below = vec![None; members.len()];
        for (c, m) in members.iter().enumerate() {
            let Some(&first) = m.first() else { continue };
            if deadline[first].is_none() {
                counted.push(c);
                if let Cop::CasAmbiguous {
                    expected: Expected::Version(e),
                    ..
                } = cops[first]
                {
                    dies_below[c] = Some(e);
                }
            }
        }
        // The versions acknowledged writes got.
        let taken = cops
            .iter()
            .filter_map(|c| match *c {
                Cop::PutOk { version, .. }
                | Cop::CasOk {
                    value: Some(_),
                    succeeded: true,
                    version,
                    ..
                } => Some(version),
                _ => None,
            })
            .collect();
        Ok(Prepared {
            ops,
            cops,
            values,
            fin,
            class,
            members,
            counted,
            dies_below,
            model: Model::new(taken),
            list,
            finite,
        })
    }

    /// Searches in two phases, sharing the budget. The first is fast but
    /// incomplete: where the walk is stuck, ambiguous operations are tried
    /// only right before a candidate they make legal. A linearization it finds
    /// is real; if it finds none, the second phase searches exhaustively,
    /// also trying every other pending ambiguous operation there.
    fn search(self, key: Vec<u8>, budget: &Budget) -> Verdict {
        let n = self.ops.len();
        let mut run = Run::new(self);
        let total = budget.max_steps_per_key;
        let fast = run.phase(false, total / 2);
        let used = match fast {
            Phase::Linearizable => return Verdict::Linearizable,
            Phase::Exhausted { steps, .. } | Phase::OutOfSteps { steps, .. } => steps,
        };
        run.reset();
        match run.phase(true, total.saturating_sub(used)) {
            Phase::Linearizable => Verdict::Linearizable,
            Phase::Exhausted { best, .. } => {
                let detail = run.p.explain_illegal(&key, best.as_ref());
                Verdict::Illegal { key, detail }
            }
            Phase::OutOfSteps { depth, .. } => Verdict::Unknown {
                detail: format!(
                    "key {}: search budget of {total} steps exhausted; at most {depth} of {n} operations were \
                     linearized",
                    Bytes(&key),
                ),
                key,
            },
        }
    }

    /// Records where a dead end was reached, for the report.
    fn snapshot(&self, calls: &[Frame], state: &[State], entry: usize) -> Best {
        let depth = calls.len();
        let tail = calls.len().saturating_sub(3);
        let last = calls.get(tail..).unwrap_or_default().iter().map(|f| f.op).collect();
        // Every node before `entry` is the call of a pending operation: the
        // candidates that were tried here.
        let mut candidates = Vec::new();
        let mut more = 0;
        let mut node = self.list.next[HEAD];
        while node != entry && node != NIL {
            if candidates.len() < REPORT_OPS {
                candidates.push(self.list.op[node]);
            } else {
                more += 1;
            }
            node = self.list.next[node];
        }
        let blocker = (entry != NIL).then(|| self.list.op[entry]);
        Best {
            depth,
            last,
            states: state.to_vec(),
            candidates,
            more,
            blocker,
        }
    }

    fn explain_illegal(&self, key: &[u8], best: Option<&Best>) -> String {
        let n = self.ops.len();
        let mut s = String::new();
        let Some(b) = best else {
            let _ = write!(s, "key {}: no linearization of its {n} operations", Bytes(key));
            return s;
        };
        let _ = writeln!(
            s,
            "key {}: not linearizable; at most {} of {n} operations could be linearized.",
            Bytes(key),
            b.depth
        );
        if b.last.is_empty() {
            let _ = writeln!(s, "Nothing could be linearized first.");
        } else {
            let _ = writeln!(s, "The longest partial linearization ended with:");
            for &op in &b.last {
                let _ = writeln!(s, "  {}", self.ops[op]);
            }
        }
        let states: Vec<String> = b
            .states
            .iter()
            .map(|st| st.describe(&self.values).to_string())
            .collect();
        let _ = writeln!(s, "after which the register could be: {}.", states.join(" | "));
        let _ = writeln!(s, "None of these operations could be linearized next:");
        for &op in &b.candidates {
            let mark = if Some(op) == b.blocker {
                "  <- returned before it could take effect"
            } else {
                ""
            };
            let _ = writeln!(s, "  {}{mark}", self.ops[op]);
        }
        if b.more > 0 {
            let _ = writeln!(s, "  ... and {} more", b.more);
        }
        if s.ends_with('\n') {
            s.pop();
        }
        s
    }
}

/// The value a successful read returned.
fn read_value(op: &Operation) -> Option<&[u8]> {
    match (&op.input, &op.outcome) {
        (Input::Get, Outcome::Ok(Output::Get { found: true, value, .. })) => Some(value),
        _ => None,
    }
}

/// The value an operation writes, if any.
fn written_value(op: &Operation) -> Option<&[u8]> {
    match &op.input {
        Input::Put { value } | Input::Cas { value: Some(value), .. } => Some(value),
        _ => None,
    }
}

/// Gives deadlines to ambiguous writes that were observed.
///
/// If a read returned value X, and exactly one operation wrote X, that write
/// took effect before the read did, hence before the read returned; and so
/// before any operation that reported the version the read saw as the current
/// or previous one (versions of a key are never reused). So it gets the
/// earliest such return as its return time.
fn observed_writes(ops: &[&Operation], cops: &[Cop], deadline: &mut [Option<u64>]) {
    let mut writers: HashMap<&[u8], usize> = HashMap::new();
    for op in ops {
        if let Some(v) = written_value(op) {
            *writers.entry(v).or_default() += 1;
        }
    }
    // value -> (earliest return of a read of it, versions it was read at)
    let mut seen: HashMap<&[u8], (u64, Vec<u64>)> = HashMap::new();
    // version -> earliest return of an operation that saw it as current
    let mut current: HashMap<u64, u64> = HashMap::new();
    for op in ops {
        let Outcome::Ok(out) = &op.outcome else { continue };
        if let Output::Get {
            found: true,
            value,
            version,
            ..
        } = out
        {
            let e = seen.entry(value).or_insert((op.ret, Vec::new()));
            e.0 = e.0.min(op.ret);
            e.1.push(*version);
        }
        let saw = match (&op.input, out) {
            (
                _,
                Output::Get {
                    found: true, version, ..
                },
            ) => Some(*version),
            (_, Output::Put { prev_version, .. })
            | (
                _,
                Output::Delete {
                    existed: true,
                    prev_version,
                },
            ) => Some(*prev_version),
            (
                _,
                Output::Cas {
                    succeeded: false,
                    version,
                },
            ) => Some(*version),
            (
                Input::Cas {
                    expected: Expected::Version(e),
                    ..
                },
                Output::Cas { succeeded: true, .. },
            ) => Some(*e),
            _ => None,
        };
        if let Some(v) = saw.filter(|v| *v != 0) {
            let e = current.entry(v).or_insert(op.ret);
            *e = (*e).min(op.ret);
        }
    }
    for (i, op) in ops.iter().enumerate() {
        if !cops[i].is_ambiguous() {
            continue;
        }
        let Some(v) = written_value(op) else { continue };
        let (Some(1), Some((first_read, versions))) = (writers.get(v), seen.get(v)) else {
            continue;
        };
        let by = versions
            .iter()
            .filter_map(|v| current.get(v))
            .fold(*first_read, |a, b| a.min(*b));
        deadline[i] = Some(by.max(op.call));
    }
}

/// Where the search is, within one configuration.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    /// Looking for a candidate that leaves the state set as it is (see
    /// [`Run::try_push`]): if there is one, it goes next.
    Scan(usize),
    /// Walking the event list: trying the acknowledged operations that may go
    /// next, in call order, until a return event.
    Walk(usize),
    /// The walk reached the return event `stop`; for each candidate from
    /// `node` on that cannot go next, trying the pending ambiguous operations
    /// (by class, from `class` on) that would let it.
    Assist { node: usize, class: usize, stop: usize },
    /// A return event was reached: trying every pending ambiguous operation
    /// called by `bound` (by class, from this class on) before giving up.
    Pool { bound: Option<u64>, class: usize },
}

/// Where to resume after a choice is undone.
#[derive(Clone, Copy, Debug)]
enum Resume {
    /// After the operation's call node.
    Walk,
    At(Cursor),
}

/// One choice on the search stack.
struct Frame {
    op: usize,
    /// The state set before it.
    before: Vec<State>,
    /// Whether it was the only choice worth trying (see [`Run::try_push`]).
    forced: bool,
    resume: Resume,
}

/// How a search phase ended.
enum Phase {
    Linearizable,
    /// Every configuration was explored.
    Exhausted {
        steps: u64,
        best: Option<Best>,
    },
    OutOfSteps {
        steps: u64,
        depth: usize,
    },
}

/// The result of trying to linearize an operation next.
enum Tried {
    Pushed,
    Illegal,
    /// Legal, but the configuration it leads to was explored already.
    Seen {
        forced: bool,
    },
}

/// The mutable state of a search.
struct Run<'a> {
    p: Prepared<'a>,
    /// Which operations with a deadline are linearized.
    bits: Vec<u64>,
    /// Configurations (linearized set, state set) reached so far.
    cache: HashSet<Box<[u64]>, BuildHasherDefault<FxHasher>>,
    state: Vec<State>,
    scratch: Vec<State>,
    scratch2: Vec<State>,
    calls: Vec<Frame>,
    /// How many of each class are linearized (always the earliest called).
    in_class: Vec<usize>,
    /// Operations with a deadline not yet linearized.
    remaining: usize,
}

impl<'a> Run<'a> {
    fn new(p: Prepared<'a>) -> Self {
        Run {
            bits: vec![0u64; p.finite.div_ceil(64)],
            cache: HashSet::default(),
            state: vec![State::INITIAL],
            scratch: Vec::new(),
            scratch2: Vec::new(),
            calls: Vec::new(),
            in_class: vec![0; p.members.len()],
            remaining: p.finite,
            p,
        }
    }

    /// Undoes everything and forgets the cache.
    fn reset(&mut self) {
        while self.pop().is_some() {}
        self.cache.clear();
    }

    /// One search, from the initial configuration, of at most `max_steps`.
    fn phase(&mut self, complete: bool, max_steps: u64) -> Phase {
        let mut steps = 0u64;
        let mut best: Option<Best> = None;
        let mut cursor = Cursor::Scan(self.p.list.next[HEAD]);
        loop {
            if self.remaining == 0 {
                return Phase::Linearizable;
            }
            if steps >= max_steps {
                let depth = best
                    .as_ref()
                    .map_or(self.calls.len(), |b| b.depth.max(self.calls.len()));
                return Phase::OutOfSteps { steps, depth };
            }
            steps += 1;
            match cursor {
                Cursor::Scan(node) if node != NIL && self.p.list.is_call[node] => {
                    let op = self.p.list.op[node];
                    cursor = Cursor::Scan(self.p.list.next[node]);
                    if !self.identity(op) {
                        continue;
                    }
                    if matches!(self.try_push(op, Resume::Walk), Tried::Pushed) {
                        cursor = Cursor::Scan(self.p.list.next[HEAD]);
                        continue;
                    }
                    // Committing to it was explored before and failed: so
                    // does everything from here.
                }
                Cursor::Scan(_) => {
                    cursor = Cursor::Walk(self.p.list.next[HEAD]);
                    continue;
                }
                Cursor::Walk(node) if node != NIL && self.p.list.is_call[node] => {
                    let op = self.p.list.op[node];
                    match self.try_push(op, Resume::Walk) {
                        Tried::Pushed => {
                            cursor = Cursor::Scan(self.p.list.next[HEAD]);
                            continue;
                        }
                        Tried::Seen { forced: false } => {
                            cursor = Cursor::Walk(self.p.list.next[node]);
                            continue;
                        }
                        Tried::Illegal => {
                            cursor = Cursor::Walk(self.p.list.next[node]);
                            continue;
                        }
                        // (Not after a scan found nothing to commit to.)
                        Tried::Seen { forced: true } => {}
                    }
                }
                Cursor::Walk(stop) => {
                    // An operation must have taken effect by now, and no
                    // acknowledged operation can go next. Ambiguous ones may
                    // help: first those that make a candidate legal.
                    if best.as_ref().is_none_or(|b| self.calls.len() > b.depth) {
                        best = Some(self.p.snapshot(&self.calls, &self.state, stop));
                    }
                    cursor = Cursor::Assist {
                        node: self.p.list.next[HEAD],
                        class: 0,
                        stop,
                    };
                    continue;
                }
                Cursor::Assist { node, class, stop } if node != stop => {
                    // Would a pending ambiguous operation, first, make the
                    // candidate at `node` legal?
                    let op = self.p.list.op[node];
                    let helper = if class == 0 && self.legal(op) {
                        None
                    } else {
                        let bound = (stop != NIL).then(|| self.p.list.time[stop]);
                        self.next_pending(class, bound, |run, a| {
                            let cop = &run.p.cops[a];
                            if !cop.may_enable(&run.p.cops[op]) || !cop.may_take_effect(&run.state, &run.p.model) {
                                return false;
                            }
                            steps += 1;
                            run.enables(a, op)
                        })
                    };
                    cursor = match helper {
                        Some((c, a)) => {
                            let resume = Cursor::Assist {
                                node,
                                class: c + 1,
                                stop,
                            };
                            match self.try_push(a, Resume::At(resume)) {
                                Tried::Pushed => Cursor::Scan(self.p.list.next[HEAD]),
                                _ => resume,
                            }
                        }
                        None => Cursor::Assist {
                            node: self.p.list.next[node],
                            class: 0,
                            stop,
                        },
                    };
                    continue;
                }
                Cursor::Assist { stop, .. } => {
                    // The exhaustive phase also tries every other pending
                    // ambiguous operation (it might enable another one).
                    if complete {
                        let bound = (stop != NIL).then(|| self.p.list.time[stop]);
                        cursor = Cursor::Pool { bound, class: 0 };
                        continue;
                    }
                }
                Cursor::Pool { bound, class } => {
                    if let Some((c, a)) = self.next_pending(class, bound, |run, a| {
                        run.p.cops[a].may_take_effect(&run.state, &run.p.model)
                    }) {
                        let resume = Cursor::Pool { bound, class: c + 1 };
                        cursor = match self.try_push(a, Resume::At(resume)) {
                            Tried::Pushed => Cursor::Scan(self.p.list.next[HEAD]),
                            _ => resume,
                        };
                        continue;
                    }
                }
            }
            // Dead end. Backtrack: undo the latest choice and resume where it
            // was made; a forced choice had no alternatives, so undo further.
            loop {
                let Some(frame) = self.pop() else {
                    return Phase::Exhausted { steps, best };
                };
                if !frame.forced {
                    cursor = match frame.resume {
                        Resume::Walk => Cursor::Walk(self.p.list.next[self.p.list.call_node[frame.op]]),
                        Resume::At(c) => c,
                    };
                    break;
                }
            }
        }
    }

    /// Tries to linearize `op` next.
    ///
    /// An acknowledged operation that leaves the state set as it is (a read,
    /// a failed CAS, ...) can go first in any linearization that exists from
    /// here — moving it forward only loosens what follows — so the search
    /// commits to it ("forced"): if it leads nowhere, neither does this
    /// configuration.
    fn try_push(&mut self, op: usize, resume: Resume) -> Tried {
        self.p.model.step_set(&self.state, &self.p.cops[op], &mut self.scratch);
        if self.scratch.is_empty() {
            return Tried::Illegal;
        }
        let forced = !self.p.cops[op].is_ambiguous() && self.scratch == self.state;
        let fin = self.p.fin[op];
        let class = self.p.class[op];
        if fin != NIL {
            set_bit(&mut self.bits, fin);
        }
        if let Some(c) = class {
            self.in_class[c] += 1;
        }
        let key = self.cache_key();
        if !self.cache.insert(key) {
            if fin != NIL {
                clear_bit(&mut self.bits, fin);
            }
            if let Some(c) = class {
                self.in_class[c] -= 1;
            }
            return Tried::Seen { forced };
        }
        let before = std::mem::replace(&mut self.state, std::mem::take(&mut self.scratch));
        self.calls.push(Frame {
            op,
            before,
            forced,
            resume,
        });
        self.p.list.lift(op);
        if fin != NIL {
            self.remaining -= 1;
        }
        Tried::Pushed
    }

    /// The memo key of the configuration with the state set in `scratch`, in
    /// one allocation: the linearized operations with a deadline (as the
    /// words of the bitset between the all-ones prefix and the all-zeros
    /// suffix), the states, then how many of each class that may still take
    /// effect are linearized. Each part's length is known from the parts
    /// before it, so the encoding is injective.
    fn cache_key(&self) -> Box<[u64]> {
        let states = &self.scratch;
        let bits = &self.bits;
        let start = bits.iter().position(|w| *w != u64::MAX).unwrap_or(bits.len());
        let end = bits.iter().rposition(|w| *w != 0).map_or(start, |i| (i + 1).max(start));
        let mut key = Vec::with_capacity(3 + (end - start) + 3 * states.len() + self.p.counted.len());
        key.push(start as u64);
        key.push((end - start) as u64);
        key.extend_from_slice(&bits[start..end]);
        key.push(states.len() as u64);
        for s in states {
            let (unknown, version) = match s.version {
                Ver::Known(v) => (0, v),
                Ver::Unknown => (1, 0),
            };
            key.push(s.value.map_or(u64::from(u32::MAX), u64::from) | (unknown << 32));
            key.push(version);
            key.push(s.floor);
        }
        let min_floor = states.iter().map(|s| s.floor).min().unwrap_or(0);
        for &c in &self.p.counted {
            if self.p.dies_below[c].is_none_or(|e| e >= min_floor) {
                key.push(self.in_class[c] as u64);
            }
        }
        key.into_boxed_slice()
    }

    /// Undoes the latest [`Run::try_push`].
    fn pop(&mut self) -> Option<Frame> {
        let mut frame = self.calls.pop()?;
        let op = frame.op;
        let fin = self.p.fin[op];
        if fin != NIL {
            clear_bit(&mut self.bits, fin);
            self.remaining += 1;
        }
        if let Some(c) = self.p.class[op] {
            self.in_class[c] -= 1;
        }
        std::mem::swap(&mut self.state, &mut frame.before);
        self.p.list.unlift(op);
        Some(frame)
    }

    /// The first class from `class` on whose earliest pending operation was
    /// called by `bound` and passes `accept`: (class, operation).
    fn next_pending(
        &mut self,
        class: usize,
        bound: Option<u64>,
        mut accept: impl FnMut(&mut Self, usize) -> bool,
    ) -> Option<(usize, usize)> {
        for c in class..self.p.members.len() {
            let Some(&a) = self.p.members[c].get(self.in_class[c]) else {
                continue;
            };
            if bound.is_some_and(|b| self.p.ops[a].call > b) {
                continue;
            }
            if accept(self, a) {
                return Some((c, a));
            }
        }
        None
    }

    /// Whether the acknowledged `op` may go next and leaves the state set as
    /// it is.
    fn identity(&mut self, op: usize) -> bool {
        self.p.model.step_set(&self.state, &self.p.cops[op], &mut self.scratch);
        !self.scratch.is_empty() && self.scratch == self.state
    }

    /// Whether `op` may go next.
    fn legal(&mut self, op: usize) -> bool {
        self.p.model.step_set(&self.state, &self.p.cops[op], &mut self.scratch);
        !self.scratch.is_empty()
    }

    /// Whether linearizing `a` now would make `op` legal next.
    fn enables(&mut self, a: usize, op: usize) -> bool {
        self.p.model.step_set(&self.state, &self.p.cops[a], &mut self.scratch);
        if self.scratch.is_empty() {
            return false;
        }
        self.p
            .model
            .step_set(&self.scratch, &self.p.cops[op], &mut self.scratch2);
        !self.scratch2.is_empty()
    }
}

/// The deepest dead end of the search.
struct Best {
    depth: usize,
    last: Vec<usize>,
    states: Vec<State>,
    candidates: Vec<usize>,
    more: usize,
    blocker: Option<usize>,
}

/// Call and return events in time order, as a doubly-linked list that
/// operations can be lifted out of and put back into (in LIFO order).
///
/// Node 0 is the head; nodes are indices into the vectors.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// Each operation's call node (`NIL` for an ambiguous one).
    call_node: Vec<usize>,
    /// Each operation's return node (`NIL` for one without a deadline).
    ret_node: Vec<usize>,
    /// Each node's event time.
    time: Vec<u64>,
}

impl List {
    /// Call events for the acknowledged operations (the ambiguous ones are
    /// tried from the classes instead), return events for every operation
    /// with a deadline.
    fn new(ops: &[&Operation], cops: &[Cop], deadline: &[Option<u64>]) -> List {
        // (time, 0 = call / 1 = return, op). Calls sort before returns at the
        // same time, so touching intervals are concurrent.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, ((op, cop), d)) in ops.iter().zip(cops).zip(deadline).enumerate() {
            if !cop.is_ambiguous() {
                events.push((op.call, 0, i));
            }
            if let Some(ret) = d {
                events.push((*ret, 1, i));
            }
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut list = List {
            next: (1..=len).map(|i| if i == len { NIL } else { i }).collect(),
            prev: (0..len).map(|i| i.wrapping_sub(1)).collect(),
            op: vec![NIL; len],
            is_call: vec![false; len],
            call_node: vec![NIL; ops.len()],
            ret_node: vec![NIL; ops.len()],
            time: vec![0; len],
        };
        for (k, &(time, kind, i)) in events.iter().enumerate() {
            let node = k + 1;
            list.op[node] = i;
            list.time[node] = time;
            if kind == 0 {
                list.is_call[node] = true;
                list.call_node[i] = node;
            } else {
                list.ret_node[i] = node;
            }
        }
        list
    }

    fn unlink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = x;
        if x != NIL {
            self.prev[x] = p;
        }
    }

    fn relink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if x != NIL {
            self.prev[x] = n;
        }
    }

    /// Removes an operation's events.
    fn lift(&mut self, op: usize) {
        for n in [self.call_node[op], self.ret_node[op]] {
            if n != NIL {
                self.unlink(n);
            }
        }
    }

    /// Undoes the matching [`List::lift`] (which must be the latest not undone).
    fn unlift(&mut self, op: usize) {
        for n in [self.ret_node[op], self.call_node[op]] {
            if n != NIL {
                self.relink(n);
            }
        }
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

/// A fast, non-cryptographic hasher (the one rustc uses) for the memo cache.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // Spread the entropy of the last multiplication into the low bits too.
        self.hash ^ (self.hash >> 29)
    }
}
