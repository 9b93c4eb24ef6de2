//! Histories that real runs of the robustness suite produced when raftkv had
//! a bug. Each must stay rejected: a checker that accepts one would hide the
//! bug if it came back.

use raftkv_linearizability::{Budget, Verdict, check, text, versions};

/// Fixtures are compiled in: build caches are shared between checkouts, so
/// a path baked in at compile time may name a checkout that is gone.
const LEADER_POWER_LOSS: &str = include_str!("fixtures/leader-power-loss-stale-read.txt");

fn fixture(text: &str) -> Vec<raftkv_linearizability::Operation> {
    text::from_text(text).unwrap_or_else(|e| panic!("parsing a fixture: {e:?}"))
}

/// A restored leader (openraft's `enable_leader_restore`) lost its unsynced
/// WAL tail in a power loss and served a linearizable read from before an
/// acknowledged write.
#[test]
fn the_leader_power_loss_stale_read_is_rejected_by_both_oracles() {
    let h = fixture(LEADER_POWER_LOSS);
    assert_eq!(h.len(), 811);
    match check(&h, &Budget::default()) {
        Verdict::Illegal { key, .. } => assert_eq!(key, b"rb-2"),
        other => panic!("expected Illegal, got {other:?}"),
    }
    let v = versions::check_versions(&h);
    assert!(
        v.iter()
            .any(|l| l.contains("applied index 580") && l.contains("version 581")),
        "{v:?}"
    );
}

/// The same history without the stale read is linearizable: the rejection
/// is about that read, not about the rest of the history.
#[test]
fn the_leader_power_loss_history_without_its_stale_read_is_linearizable() {
    let h: Vec<_> = fixture(LEADER_POWER_LOSS)
        .into_iter()
        .filter(|o| !(o.client == 7 && o.call == 14_586_948_008))
        .collect();
    assert_eq!(h.len(), 810);
    assert_eq!(check(&h, &Budget::default()), Verdict::Linearizable);
    assert!(versions::check_versions(&h).is_empty());
}
