//! Known-legal and known-illegal histories.

mod common;

use common::*;
use raftkv_linearizability::{Budget, Expected, Input, Operation, Outcome, Output, Verdict, check, check_key, text};

fn verdict(h: &[Operation]) -> Verdict {
    check(h, &Budget::default())
}

#[track_caller]
fn assert_legal(h: &[Operation]) {
    let v = verdict(h);
    assert_eq!(v, Verdict::Linearizable, "history:\n{}", text::to_text(h));
}

/// Returns the detail.
#[track_caller]
fn assert_illegal(h: &[Operation]) -> String {
    match verdict(h) {
        Verdict::Illegal { detail, .. } => detail,
        other => panic!("expected illegal, got {other:?}; history:\n{}", text::to_text(h)),
    }
}

/// Returns the detail.
#[track_caller]
fn assert_unknown(h: &[Operation]) -> String {
    match verdict(h) {
        Verdict::Unknown { detail, .. } => detail,
        other => panic!("expected unknown, got {other:?}; history:\n{}", text::to_text(h)),
    }
}

/// A malformed operation: a read answered with a put's output.
fn not_a_response(client: u64, key: &str) -> Operation {
    op(
        client,
        key,
        Input::Get,
        0,
        10,
        Outcome::Ok(Output::Put {
            version: 1,
            prev_version: 0,
        }),
    )
}

// ---------------------------------------------------------------- legal

#[test]
fn empty_and_trivial_histories() {
    assert_legal(&[]);
    assert_legal(&[get_absent(1, "k", 0, 1)]);
    // Only ambiguous and failed operations.
    assert_legal(&[
        put_ambiguous(1, "k", "a", 0),
        delete_ambiguous(2, "k", 0),
        cas_ambiguous(3, "k", Expected::Version(9), None, 0),
        failed(put(4, "k", "b", 0, 10, 5, 0)),
    ]);
}

#[test]
fn sequential_history_with_every_operation() {
    assert_legal(&[
        put(1, "k", "a", 0, 1, 1, 0),
        get(2, "k", "a", 1, 2, 3),
        put(1, "k", "b", 4, 5, 2, 1),
        get(2, "k", "b", 2, 6, 7),
        delete(1, "k", 8, 9, Some(2)),
        get_absent(2, "k", 10, 11),
        delete(1, "k", 12, 13, None),
        put(1, "k", "c", 14, 15, 5, 0),
        cas(2, "k", Expected::Version(5), Some("d"), 16, 17, true, 7),
        cas(2, "k", Expected::Version(5), Some("e"), 18, 19, false, 7),
        cas(2, "k", Expected::Absent, Some("f"), 20, 21, false, 7),
        get(1, "k", "d", 7, 22, 23),
        cas(2, "k", Expected::Version(7), None, 24, 25, true, 0),
        get_absent(1, "k", 26, 27),
        cas(2, "k", Expected::Version(7), Some("g"), 28, 29, false, 0),
        cas(2, "k", Expected::Absent, Some("h"), 30, 31, true, 9),
        get(1, "k", "h", 9, 32, 33),
    ]);
}

#[test]
fn concurrent_put_and_gets() {
    // put b overlaps both reads: the first saw the old value, the second the
    // new one, so put b took effect between them.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        put(2, "k", "b", 15, 100, 3, 1),
        get(3, "k", "a", 1, 20, 30),
        get(4, "k", "b", 3, 40, 50),
        get(3, "k", "b", 3, 60, 70),
    ]);
    // A read overlapping a put may see either.
    for seen in [("a", 1), ("b", 3)] {
        assert_legal(&[
            put(1, "k", "a", 0, 10, 1, 0),
            put(2, "k", "b", 15, 30, 3, 1),
            get(3, "k", seen.0, seen.1, 20, 40),
        ]);
    }
    // Two concurrent puts may take effect in either order (prev_version tells).
    assert_legal(&[
        put(1, "k", "a", 0, 10, 4, 2),
        put(2, "k", "b", 0, 10, 2, 0),
        get(3, "k", "a", 4, 20, 30),
    ]);
}

#[test]
fn touching_intervals_are_concurrent() {
    // The read's call equals the put's return: either order.
    assert_legal(&[put(1, "k", "a", 0, 10, 1, 0), get_absent(2, "k", 10, 20)]);
    // The read's return equals the put's call: either order.
    assert_legal(&[put(1, "k", "a", 10, 20, 1, 0), get(2, "k", "a", 1, 0, 10)]);
    // Control: a nanosecond later it is a stale read.
    assert_illegal(&[put(1, "k", "a", 0, 10, 1, 0), get_absent(2, "k", 11, 20)]);
}

#[test]
fn ambiguous_writes_that_were_applied() {
    // Seen by a read, which pins its version.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        put_ambiguous(2, "k", "b", 5),
        get(3, "k", "b", 4, 20, 30),
        put(1, "k", "c", 40, 50, 6, 4),
    ]);
    // Seen only through a later put's prev_version.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        put_ambiguous(2, "k", "b", 5),
        put(1, "k", "c", 40, 50, 9, 7),
        get(3, "k", "c", 9, 60, 70),
    ]);
    // Applied long after the client gave up: reads first see the old value.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        put_ambiguous(2, "k", "b", 5),
        get(3, "k", "a", 1, 100, 110),
        get(3, "k", "b", 8, 200, 210),
    ]);
    // An ambiguous delete, seen by a read; then a put after it.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 3, 0),
        delete_ambiguous(2, "k", 20),
        get_absent(3, "k", 30, 40),
        put(1, "k", "b", 50, 60, 8, 0),
    ]);
    // An ambiguous CAS against the acknowledged version.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 3, 0),
        cas_ambiguous(2, "k", Expected::Version(3), Some("b"), 20),
        get(3, "k", "b", 5, 30, 40),
    ]);
    // A CAS that pins an ambiguous put's version, and an ambiguous CAS delete
    // that matched the unknown version.
    assert_legal(&[
        put_ambiguous(1, "k", "a", 0),
        cas(2, "k", Expected::Version(4), Some("b"), 10, 20, true, 6),
        get(3, "k", "b", 6, 30, 40),
    ]);
    assert_legal(&[
        put_ambiguous(1, "k", "a", 0),
        cas_ambiguous(2, "k", Expected::Version(4), None, 10),
        get_absent(3, "k", 30, 40),
        put(1, "k", "b", 50, 60, 5, 0),
    ]);
}

#[test]
fn ambiguous_writes_that_were_not_applied() {
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        put_ambiguous(2, "k", "b", 5),
        delete_ambiguous(2, "k", 6),
        cas_ambiguous(2, "k", Expected::Version(1), Some("c"), 7),
        get(3, "k", "a", 1, 100, 110),
        put(1, "k", "d", 120, 130, 5, 1),
        get(3, "k", "d", 5, 140, 150),
    ]);
    // Failed operations never happened, even if they look impossible.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 1, 0),
        failed(put(2, "k", "b", 5, 6, 0, 77)),
        failed(get(3, "k", "zzz", 99, 20, 30)),
        op(3, "k", Input::Get, 20, 30, Outcome::Ambiguous),
        get(3, "k", "a", 1, 40, 50),
    ]);
}

#[test]
fn cas_success_and_failure() {
    assert_legal(&[
        put(1, "k", "a", 0, 10, 3, 0),
        // Concurrent CASes on version 3: exactly one may win.
        cas(2, "k", Expected::Version(3), Some("b"), 20, 40, true, 5),
        cas(3, "k", Expected::Version(3), Some("c"), 20, 40, false, 5),
        cas(4, "k", Expected::Absent, Some("d"), 20, 40, false, 3),
        get(1, "k", "b", 5, 50, 60),
    ]);
    // CAS expecting absent on a new key.
    assert_legal(&[
        cas(1, "k", Expected::Absent, Some("a"), 0, 10, true, 2),
        cas(2, "k", Expected::Absent, Some("b"), 5, 15, false, 2),
        get(1, "k", "a", 2, 20, 30),
    ]);
}

#[test]
fn delete_then_put() {
    assert_legal(&[
        put(1, "k", "a", 0, 10, 3, 0),
        delete(2, "k", 20, 30, Some(3)),
        get_absent(1, "k", 40, 50),
        put(1, "k", "b", 60, 70, 5, 0),
        get(2, "k", "b", 5, 80, 90),
    ]);
}

#[test]
fn keys_are_independent() {
    assert_legal(&[
        put(1, "a", "a1", 0, 10, 5, 0),
        put(1, "b", "b1", 0, 10, 3, 0),
        get(2, "a", "a1", 5, 20, 30),
        get(2, "b", "b1", 3, 20, 30),
        get_absent(2, "c", 20, 30),
    ]);
}

// ---------------------------------------------------------------- illegal

#[test]
fn stale_read_after_an_acknowledged_write() {
    let detail = assert_illegal(&[
        put(1, "k", "v1", 0, 5, 1, 0),
        put(1, "k", "v2", 10, 20, 2, 1),
        get(2, "k", "v1", 1, 30, 40),
    ]);
    assert!(detail.contains("\"k\""), "{detail}");
}

#[test]
fn the_regression_stale_read() {
    let h = [
        put(7, "k", "c7-480", 0, 10, 2228, 0),
        put(3, "k", "c3-507", 20, 30, 2230, 2228),
        get(5, "k", "c7-480", 2228, 40, 50),
    ];
    let detail = assert_illegal(&h);
    // Readable: the key, how far it got, and what could not be linearized.
    for needle in [
        "key \"k\"",
        "at most 2 of 3",
        "client 3 on \"k\" (shard 0): put \"c3-507\" -> ok: version 2230, prev_version 2228 [call 20 ns, return 30 ns]",
        "\"c3-507\" @ version 2230",
        "client 5 on \"k\" (shard 0): get -> ok: found \"c7-480\" @ version 2228",
        "[call 40 ns, return 50 ns]  <- returned before it could take effect",
    ] {
        assert!(detail.contains(needle), "missing {needle:?} in:\n{detail}");
    }
    // The same through check_key.
    let refs: Vec<&Operation> = h.iter().collect();
    assert!(matches!(check_key(&refs, &Budget::default()), Verdict::Illegal { key, .. } if key == b"k"));
}

#[test]
fn read_of_a_value_never_written() {
    assert_illegal(&[put(1, "k", "a", 0, 10, 1, 0), get(2, "k", "ghost", 1, 20, 30)]);
    assert_illegal(&[get(2, "k", "ghost", 1, 20, 30)]);
    // Not even by a failed write.
    assert_illegal(&[failed(put(1, "k", "a", 0, 10, 1, 0)), get(2, "k", "a", 1, 20, 30)]);
}

#[test]
fn reads_in_real_time_order_see_new_then_old() {
    assert_illegal(&[
        put(1, "k", "a", 0, 5, 1, 0),
        put(2, "k", "b", 10, 100, 2, 1),
        get(3, "k", "b", 2, 20, 30),
        get(4, "k", "a", 1, 40, 50),
    ]);
    // Same with an ambiguous write: once seen, it cannot be unseen.
    assert_illegal(&[
        put(1, "k", "a", 0, 5, 1, 0),
        put_ambiguous(2, "k", "b", 10),
        get(3, "k", "b", 2, 20, 30),
        get(4, "k", "a", 1, 40, 50),
    ]);
}

#[test]
fn versions_going_backwards() {
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), put(1, "k", "b", 20, 30, 4, 5)]);
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), put(1, "k", "b", 20, 30, 5, 5)]);
    // After a delete, a put must still get a higher version.
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        delete(1, "k", 20, 30, Some(5)),
        put(1, "k", "b", 40, 50, 5, 0),
    ]);
    // One value, two versions.
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), get(2, "k", "a", 4, 20, 30)]);
    assert_illegal(&[
        put_ambiguous(1, "k", "a", 0),
        get(2, "k", "a", 5, 20, 30),
        get(2, "k", "a", 6, 40, 50),
    ]);
    // An ambiguous put's version is still above what came before.
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        put_ambiguous(1, "k", "b", 20),
        get(2, "k", "b", 5, 30, 40),
    ]);
}

#[test]
fn cas_against_a_version_that_was_not_current() {
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        put(1, "k", "b", 20, 30, 7, 5),
        cas(2, "k", Expected::Version(5), Some("c"), 40, 50, true, 9),
    ]);
    // Two CASes on the same version both succeeding.
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        cas(2, "k", Expected::Version(5), Some("b"), 20, 40, true, 7),
        cas(3, "k", Expected::Version(5), Some("c"), 20, 40, true, 9),
    ]);
    // A CAS that failed although the version matched.
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        cas(2, "k", Expected::Version(5), Some("b"), 20, 30, false, 5),
    ]);
    // ... or expected absent and the key was absent.
    assert_illegal(&[cas(2, "k", Expected::Absent, Some("b"), 20, 30, false, 0)]);
    // A successful CAS delete reports version 0.
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        cas(2, "k", Expected::Version(5), None, 20, 30, true, 5),
    ]);
}

#[test]
fn not_found_after_an_acknowledged_put() {
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), get_absent(2, "k", 20, 30)]);
    // With a delete, fine; after an old value is deleted, its read is stale.
    assert_legal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        delete(1, "k", 15, 18, Some(5)),
        get_absent(2, "k", 20, 30),
    ]);
    assert_illegal(&[
        put(1, "k", "a", 0, 10, 5, 0),
        delete(1, "k", 15, 18, Some(5)),
        get(2, "k", "a", 5, 20, 30),
    ]);
}

#[test]
fn prev_version_mismatch() {
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), put(1, "k", "b", 20, 30, 8, 4)]);
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), put(1, "k", "b", 20, 30, 8, 0)]);
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 3)]);
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), delete(1, "k", 20, 30, Some(4))]);
    assert_illegal(&[put(1, "k", "a", 0, 10, 5, 0), delete(1, "k", 20, 30, None)]);
}

#[test]
fn impossible_outputs_are_illegal() {
    // Not found, yet with a version.
    let h = [op(
        1,
        "k",
        Input::Get,
        0,
        10,
        Outcome::Ok(Output::Get {
            found: false,
            value: vec![],
            version: 7,
            applied_index: 7,
        }),
    )];
    assert_illegal(&h);
    // Found at version 0.
    assert_illegal(&[put_ambiguous(1, "k", "a", 0), get(2, "k", "a", 0, 20, 30)]);
}

#[test]
fn malformed_histories_are_unknown() {
    let detail = assert_unknown(&[not_a_response(1, "k")]);
    assert!(detail.contains("not a response"), "{detail}");
    let backwards = put(1, "k", "a", 10, 0, 1, 0);
    let detail = assert_unknown(&[backwards]);
    assert!(detail.contains("returned before"), "{detail}");
}

#[test]
fn first_illegal_key_wins_over_unknown() {
    let h = [
        not_a_response(1, "a"),
        put(1, "b", "x", 0, 10, 5, 0),
        put(1, "c", "y", 0, 10, 5, 0),
        get_absent(2, "c", 20, 30),
    ];
    assert!(matches!(verdict(&h), Verdict::Illegal { key, .. } if key == b"c"));
    assert!(matches!(verdict(&h[..2]), Verdict::Unknown { key, .. } if key == b"a"));
    assert_eq!(verdict(&h[1..3]), Verdict::Linearizable);
}
