//! Randomized: histories of a correct store are linearizable; one impossible
//! read makes them illegal. Plus the performance target and the budget.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftkv_linearizability::{Budget, Outcome, Verdict, check, text, versions};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn simulated_histories_are_linearizable_and_mutations_are_not() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut mutated = [0usize; 3];
    let mut ambiguous = 0;
    for case in 0..300 {
        let sim = Sim {
            keys: rng.random_range(1..=3),
            shards: rng.random_range(1..=2),
            clients: rng.random_range(2..=6),
            ops_per_client: rng.random_range(4..=14),
            ambiguous: 0.15,
            failed: 0.05,
            spread: rng.random_range(1..=30),
        };
        let h = simulate(&mut rng, &sim);
        ambiguous += h.iter().filter(|o| o.outcome == Outcome::Ambiguous).count();
        let v = check(&h, &Budget::default());
        assert_eq!(v, Verdict::Linearizable, "case {case} {sim:?}:\n{}", text::to_text(&h));
        assert_eq!(
            versions::check_versions(&h),
            Vec::<String>::new(),
            "case {case}:\n{}",
            text::to_text(&h)
        );
        // One impossible read.
        let kind = case % 3;
        let Some((i, out, why)) = impossible_read(&h, kind, &mut rng) else {
            continue;
        };
        let mut bad = h.clone();
        bad[i].outcome = Outcome::Ok(out);
        match check(&bad, &Budget::default()) {
            Verdict::Illegal { key, .. } => assert_eq!(key, bad[i].key),
            other => panic!("case {case}: {why} at op {i} gave {other:?}:\n{}", text::to_text(&bad)),
        }
        mutated[kind] += 1;
    }
    // The generator exercises what it claims to.
    assert!(mutated.iter().all(|&n| n >= 50), "mutations per kind: {mutated:?}");
    assert!(ambiguous >= 300, "only {ambiguous} ambiguous operations");
}

fn big_sim() -> Sim {
    Sim {
        keys: 8,
        shards: 3,
        clients: 8,
        ops_per_client: 250,
        ambiguous: 0.05,
        failed: 0.02,
        spread: 1_000,
    }
}

#[test]
fn a_large_history_checks_quickly() {
    let mut rng = StdRng::seed_from_u64(42);
    let h = simulate(&mut rng, &big_sim());
    assert_eq!(h.len(), 2000);
    let start = Instant::now();
    assert_eq!(check(&h, &Budget::default()), Verdict::Linearizable);
    let took = start.elapsed();
    assert!(versions::check_versions(&h).is_empty());
    // The target is well under a second; the bound leaves room for a loaded
    // machine while still catching a blow-up.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("2000 operations checked in {took:?}");

    // And an impossible read in it is found.
    let (i, out, why) = impossible_read(&h, 1, &mut rng).expect("a stale read to inject");
    let mut bad = h.clone();
    bad[i].outcome = Outcome::Ok(out);
    let start = Instant::now();
    let v = check(&bad, &Budget::default());
    eprintln!("... and the illegal one in {:?}", start.elapsed());
    assert!(v.is_illegal(), "{why}: {v:?}");
}

#[test]
fn heavy_contention_on_one_key() {
    // 2000 operations of 16 clients on one key, 10% of the writes ambiguous
    // (half applied, some long after their call).
    for seed in 0..3 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let sim = Sim {
            keys: 1,
            clients: 16,
            ops_per_client: 125,
            ambiguous: 0.1,
            ..big_sim()
        };
        let h = simulate(&mut rng, &sim);
        let start = Instant::now();
        assert_eq!(check(&h, &Budget::default()), Verdict::Linearizable, "seed {seed}");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        eprintln!("one key, 16 clients: checked in {took:?}");
    }
}

#[test]
fn a_tiny_budget_gives_unknown() {
    let mut rng = StdRng::seed_from_u64(43);
    let h = simulate(&mut rng, &big_sim());
    match check(&h, &Budget::new(50)) {
        Verdict::Unknown { detail, .. } => assert!(detail.contains("budget of 50 steps"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(check(&h, &Budget::default()), Verdict::Linearizable);
    // An illegal history is not called illegal before the search is done.
    let (i, out, _) = impossible_read(&h, 1, &mut rng).expect("a stale read to inject");
    let mut bad = h.clone();
    bad[i].outcome = Outcome::Ok(out);
    assert!(matches!(check(&bad, &Budget::new(0)), Verdict::Unknown { .. }));
}

#[test]
fn simulated_histories_round_trip_through_text() {
    let mut rng = StdRng::seed_from_u64(44);
    let h = simulate(
        &mut rng,
        &Sim {
            ops_per_client: 30,
            ..big_sim()
        },
    );
    assert_eq!(text::from_text(&text::to_text(&h)), Ok(h));
}
