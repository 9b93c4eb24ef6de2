//! A linearizability checker for raftkv histories.
//!
//! raftkv's robustness tests record every client operation as an
//! [`Operation`]: what was asked ([`Input`]), when the call started and when it
//! returned (nanoseconds on one monotonic clock), and what came back
//! ([`Outcome`]). [`check`] decides whether some total order of the operations
//! exists that (a) respects real time — an operation that returned before
//! another was called comes first — and (b) is a legal sequential execution
//! of the KV store. That is linearizability (Herlihy & Wing).
//!
//! # The model: a versioned register per key
//!
//! Every key is an independent register holding either nothing ("absent") or
//! a value with a *version*. A version is the Raft log index of the write that
//! produced the value, in the log of the key's shard. So versions of one key
//! strictly increase, and they are unique in a shard — but the next version of
//! a key is *not* predictable, because writes to other keys of the shard take
//! log indices too. The model therefore never guesses a version; it only
//! checks what it is told:
//!
//! * `Put` returns the new version, which must be above every version the key
//!   had, and `prev_version`, which must be the version of the live value it
//!   replaced (0 if the key was absent).
//! * `Get` returns the live value and its version, or `found = false` with an
//!   empty value and version 0.
//! * `Delete` returns whether the key existed and the version it had.
//! * `Cas` succeeds iff the key is absent and `Expected::Absent` was asked, or
//!   it is live at exactly the expected version. A successful CAS with a value
//!   returns the new version; a successful CAS delete returns 0; a failed CAS
//!   returns the current version (0 = absent) and changes nothing.
//!
//! Keys start absent. Because each operation touches one key, and
//! linearizability is *local* (P-compositional: a history is linearizable iff
//! each per-key sub-history is), [`check`] splits the history by key and
//! checks each with [`check_key`].
//!
//! # Uncertain outcomes and the nondeterministic state
//!
//! A client that timed out (or lost its connection) does not know whether its
//! write was applied: its outcome is [`Outcome::Ambiguous`]. Such a write may
//! take effect at any moment after it was called — possibly long after the
//! client gave up, e.g. when a Raft entry proposed before a leader change
//! finally commits — or never. The checker models this by giving it an
//! **infinite return time**: nothing is ever forced to come after it, so it
//! may be linearized anywhere after its call, including after everything else,
//! which is the same as "never applied". Any finite return time would be a
//! guess, and a wrong guess could make a correct system look broken.
//! Operations that [`Outcome::Failed`] (definitely not applied) and reads that
//! did not complete have no effect and are dropped.
//!
//! An ambiguous write's version is unknown, so a register state is
//! `{ value, version: Known(v) | Unknown, floor }`, where `floor` is a lower
//! bound every later version must exceed (and an unknown version is itself
//! above it). Later operations *resolve* an unknown version: a `Get` that sees
//! the value at version `v > floor` makes it `Known(v)`; so do a `Put` or
//! `Delete` reporting it as `prev_version`, a `Cas` that succeeded expecting
//! it, or one that failed reporting it. The version of an acknowledged write
//! is never an ambiguous write's (versions are not reused). The model is
//! therefore nondeterministic, and, as with Porcupine's
//! `NondeterministicModel`, the search runs over **sets of states** (the
//! powerset construction): an operation can go next iff the set of states it
//! leads to is non-empty. Sets are canonicalised — sorted, deduplicated, and
//! states dominated by a more permissive one dropped (same value and version
//! with a lower floor; an unknown version that admits a known one) — so that
//! the memo cache recognises equal configurations.
//!
//! Most branching is kept out of the sets: one `Unknown` state stands for
//! every version above the floor, and an ambiguous operation, when linearized,
//! means "it took effect here" — whether it took effect at all is the
//! search's choice (an ambiguous CAS that did not match, or never ran, is one
//! the search leaves out). With this model each operation maps a state to at
//! most one state, so the sets rarely grow; the machinery is general.
//!
//! # The search
//!
//! The algorithm is Wing & Gong's, with Lowe's memoization, as in Porcupine
//! (<https://github.com/anishathalye/porcupine>):
//!
//! 1. The operations of the key become call and return events, sorted by
//!    time. At equal times calls sort before returns, so two operations that
//!    merely touch in time count as concurrent (either order is allowed) —
//!    never a false "illegal" because of clock granularity.
//! 2. The events form a doubly-linked list. Walking from its head, each call
//!    event before the first return event is a candidate to go next: if the
//!    model accepts it, the operation is "lifted" out of the list (its events
//!    unlinked), pushed on a stack with the previous state set, and the walk
//!    restarts. Reaching a return event means that operation was not
//!    linearized in time: backtrack — pop the last choice, relink it, and try
//!    the next candidate after it. The stack is explicit: no recursion.
//! 3. A cache of `(linearized operations, canonical state set)` skips
//!    configurations already explored, since the future depends only on
//!    those.
//! 4. The search succeeds when every operation with a return time is
//!    linearized (the remaining ambiguous ones never took effect); it fails
//!    ([`Verdict::Illegal`]) when every configuration is explored; it gives up
//!    ([`Verdict::Unknown`]) after [`Budget::max_steps_per_key`] steps. It
//!    never claims linearizability it did not establish.
//!
//! Ambiguous operations are what makes the search expensive (each may go
//! anywhere after its call, or nowhere), so the search narrows their choices
//! in ways that provably lose no linearization:
//!
//! * **Deadlines from observations.** If a read returned value X and exactly
//!   one operation wrote X, that write took effect before the read returned:
//!   an ambiguous write that was observed gets that return time (or the
//!   earlier return of an operation that reported the version the read saw as
//!   current). Values are unique in raftkv's tests, so most applied ambiguous
//!   writes get one.
//! * **Interchangeable operations.** Ambiguous writes of values no read
//!   returned differ only in their (unknown) versions, so their values are
//!   merged; ambiguous operations with no deadline and equal effect are then
//!   interchangeable, and only the earliest-called pending one of each class
//!   is tried.
//! * **Commit to state-preserving operations.** An acknowledged operation that
//!   leaves the state set unchanged (a read of the current value, a CAS that
//!   failed against it, ...) can be moved to the front of any linearization
//!   from here — moving it earlier only loosens what follows — so the search
//!   takes it first and does not try alternatives to it.
//! * **Ambiguous operations last.** Acknowledged candidates are tried first;
//!   ambiguous operations only where the walk is stuck: first those that make
//!   a stuck candidate legal. A first, fast phase tries no others: what it
//!   finds is a real linearization, but if it finds none a second, exhaustive
//!   phase also tries every pending ambiguous operation at every dead end,
//!   and only that phase can report [`Verdict::Illegal`].
//!
//! Reads of a value nobody wrote, and outputs the store can never produce,
//! are reported at once. Otherwise a failure reports the longest partial
//! linearization found, the possible states after it, and the operations that
//! could not come next, with their times.
//!
//! # Version checks
//!
//! [`versions::check_versions`] is a second, cheaper oracle over the same
//! history that uses the shard and the Raft indices directly (uniqueness,
//! real-time order of versions, no read below an acknowledged write). It
//! catches some cross-key anomalies that a per-key register cannot see.
//!
//! [`text`] reads and writes histories as a line-oriented text format for
//! fixtures and for post-mortems of failed runs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod model;
mod search;
pub mod text;
pub mod versions;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// What a compare-and-set expects the key to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expected {
    /// The key must be absent.
    Absent,
    /// The key must be live at exactly this version.
    Version(u64),
}

/// A request to the store (the key is in [`Operation::key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read the key.
    Get,
    /// Write a value.
    Put {
        /// The value written.
        value: Vec<u8>,
    },
    /// Remove the key.
    Delete,
    /// Compare-and-set: write `value` (or delete, for `None`) iff the key is as
    /// `expected`.
    Cas {
        /// The condition.
        expected: Expected,
        /// The new value, or `None` to delete.
        value: Option<Vec<u8>>,
    },
}

/// A response from the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// Response to [`Input::Get`].
    Get {
        /// Whether the key was live.
        found: bool,
        /// The value (empty when not found).
        value: Vec<u8>,
        /// The value's version (0 when not found).
        version: u64,
        /// The serving replica's applied Raft index at the read (0 = not
        /// reported). Ignored by the register model; used by
        /// [`versions::check_versions`].
        applied_index: u64,
    },
    /// Response to [`Input::Put`].
    Put {
        /// The new version.
        version: u64,
        /// The version of the value replaced, 0 if the key was absent.
        prev_version: u64,
    },
    /// Response to [`Input::Delete`].
    Delete {
        /// Whether the key was live.
        existed: bool,
        /// The version it had, 0 if it did not exist.
        prev_version: u64,
    },
    /// Response to [`Input::Cas`].
    Cas {
        /// Whether the condition matched (and the write was done).
        succeeded: bool,
        /// On success with a value: the new version. On a successful delete:
        /// 0. On failure: the current version (0 = absent).
        version: u64,
    },
}

/// How an operation ended, as far as the client knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It was applied and this is the response.
    Ok(Output),
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied; the client never learned.
    Ambiguous,
}

/// One client operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued it (for diagnostics only).
    pub client: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The key's shard, if known (used by [`versions::check_versions`]).
    pub shard: Option<u32>,
    /// The request.
    pub input: Input,
    /// When the call started: nanoseconds since the history's start, on a
    /// monotonic clock.
    pub call: u64,
    /// When the call returned, same clock. Meaningless for
    /// [`Outcome::Ambiguous`], which is treated as never returning.
    pub ret: u64,
    /// What came back.
    pub outcome: Outcome,
}

/// How much work the search may do before giving up with
/// [`Verdict::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Search steps (candidate tries plus backtracks) per key.
    pub max_steps_per_key: u64,
}

impl Budget {
    /// The default: at most a few seconds of search per key (an optimised
    /// build is several times faster), and about 100 MB of memo cache.
    pub const DEFAULT_STEPS_PER_KEY: u64 = 10_000_000;

    /// A budget of `max_steps_per_key` steps per key.
    pub fn new(max_steps_per_key: u64) -> Self {
        Self { max_steps_per_key }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(Self::DEFAULT_STEPS_PER_KEY)
    }
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists for this key.
    Illegal {
        /// The key.
        key: Vec<u8>,
        /// A human-readable explanation: the longest partial linearization and
        /// the operations that could not follow it.
        detail: String,
    },
    /// The checker could not decide (search budget exhausted, or a malformed
    /// history).
    Unknown {
        /// The key.
        key: Vec<u8>,
        /// Why.
        detail: String,
    },
}

impl Verdict {
    /// Whether this is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// Whether this is [`Verdict::Illegal`].
    pub fn is_illegal(&self) -> bool {
        matches!(self, Verdict::Illegal { .. })
    }

    /// Whether this is [`Verdict::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }
}

/// Checks a whole history: splits it by key and checks each key's
/// sub-history (in key order). The first illegal key wins; otherwise the first
/// undecided key makes the verdict [`Verdict::Unknown`].
pub fn check(history: &[Operation], budget: &Budget) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_slice()).or_default().push(op);
    }
    let mut first_unknown = None;
    for ops in by_key.values() {
        match check_key(ops, budget) {
            Verdict::Linearizable => {}
            illegal @ Verdict::Illegal { .. } => return illegal,
            unknown @ Verdict::Unknown { .. } => {
                if first_unknown.is_none() {
                    first_unknown = Some(unknown);
                }
            }
        }
    }
    first_unknown.unwrap_or(Verdict::Linearizable)
}

/// Checks the operations of one key as one register. The operations should
/// all have the same key (the verdict names the first one's); they need not be
/// sorted.
pub fn check_key(ops: &[&Operation], budget: &Budget) -> Verdict {
    search::check_register(ops, budget)
}

/// Formats bytes for humans: a quoted string if printable ASCII, else hex.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = self
            .0
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if printable {
            f.write_char('"')?;
            for &b in self.0 {
                f.write_char(char::from(b))?;
            }
            f.write_char('"')
        } else {
            f.write_str("0x")?;
            for b in self.0 {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Absent => f.write_str("absent"),
            Expected::Version(v) => write!(f, "version {v}"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Get => f.write_str("get"),
            Input::Put { value } => write!(f, "put {}", Bytes(value)),
            Input::Delete => f.write_str("delete"),
            Input::Cas {
                expected,
                value: Some(value),
            } => {
                write!(f, "cas(expected {expected}, value {})", Bytes(value))
            }
            Input::Cas { expected, value: None } => write!(f, "cas(expected {expected}, delete)"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Get {
                found: true,
                value,
                version,
                applied_index,
            } => {
                write!(
                    f,
                    "found {} @ version {version} (applied index {applied_index})",
                    Bytes(value)
                )
            }
            Output::Get {
                found: false,
                value,
                version: 0,
                applied_index,
            } if value.is_empty() => {
                write!(f, "not found (applied index {applied_index})")
            }
            Output::Get {
                found: false,
                value,
                version,
                applied_index,
            } => write!(
                f,
                "not found, yet value {} @ version {version} (applied index {applied_index})",
                Bytes(value)
            ),
            Output::Put { version, prev_version } => write!(f, "version {version}, prev_version {prev_version}"),
            Output::Delete { existed, prev_version } => write!(f, "existed {existed}, prev_version {prev_version}"),
            Output::Cas { succeeded, version } => write!(f, "succeeded {succeeded}, version {version}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(out) => write!(f, "ok: {out}"),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Ambiguous => f.write_str("ambiguous"),
        }
    }
}

impl fmt::Display for Operation {
    /// `client 3 on "k": put "v" -> ok: version 7, prev_version 5 [call 10 ns, return 20 ns]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} on {}", self.client, Bytes(&self.key))?;
        if let Some(shard) = self.shard {
            write!(f, " (shard {shard})")?;
        }
        write!(f, ": {} -> {} [call {} ns, ", self.input, self.outcome, self.call)?;
        if matches!(self.outcome, Outcome::Ambiguous) {
            f.write_str("return never (ambiguous)]")
        } else {
            write!(f, "return {} ns]", self.ret)
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::Illegal { detail, .. } => write!(f, "not linearizable: {detail}"),
            Verdict::Unknown { detail, .. } => write!(f, "unknown: {detail}"),
        }
    }
}
