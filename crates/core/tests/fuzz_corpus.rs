//! Replays the committed fuzz inputs through the same checks the libFuzzer
//! targets run (`make fuzz`), so `make test` checks on a stable toolchain
//! every seed (`fuzz/seeds/<target>/`: valid encodings, written by
//! [`write_seeds`]), every input a fuzzer kept (`fuzz/corpus/<target>/`,
//! minimised) and every crash it found (saved there as a regression input).

#[path = "../../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect()
}

#[test]
fn every_fuzz_input_decodes_totally_and_round_trips() {
    for (target, check) in checks::TARGETS {
        let seeds = files(&dir("seeds", target));
        assert!(!seeds.is_empty(), "{target}: no seed inputs");
        for input in seeds.into_iter().chain(files(&dir("corpus", target))) {
            check(&std::fs::read(&input).expect("an input"));
        }
    }
}

/// Every seed is a valid encoding its decoder accepts: the fuzzer starts
/// from inputs that reach past the first check, and a format change that
/// breaks them is noticed here.
#[test]
fn every_seed_is_accepted_by_its_decoder() {
    use raftkv_core::GroupId;
    for (target, _) in checks::TARGETS {
        for path in files(&dir("seeds", target)) {
            let data = std::fs::read(&path).expect("seed");
            let accepted = match *target {
                "command" => raftkv_core::command::Request::decode(&data).is_ok(),
                "map" => raftkv_core::map::ClusterMap::decode(&data).is_ok(),
                "record" => raftkv_core::record::ValueRecord::decode(&data).is_ok(),
                "token" => raftkv_core::scan::decode_token(&data).is_ok(),
                "snapshot" => [GroupId::Shard(0), GroupId::Meta]
                    .into_iter()
                    .any(|g| raftkv_core::snapshot::validate(&data[..], g).is_ok()),
                other => panic!("no decoder named for target {other}"),
            };
            assert!(accepted, "{} is not accepted by its decoder", path.display());
        }
    }
}

/// Writes the seed inputs (run by hand after a format change:
/// `cargo test --workspace --all-targets -- --ignored write_seeds`).
#[test]
#[ignore = "writes the committed seeds"]
fn write_seeds() {
    use raftkv_core::GroupId;
    use raftkv_core::command::{Command, Expected, Request};
    use raftkv_core::record::ValueRecord;
    use raftkv_core::snapshot::{MAP_KEY, SnapshotWriter};
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = dir("seeds", target);
        std::fs::create_dir_all(&dir).expect("seeds dir");
        std::fs::write(dir.join(name), data).expect("write seed");
    };
    let map = checks::small_map();
    let request = |command| Request {
        proposed_at_ms: 1_700_000_000_000,
        command,
    };
    let commands = [
        (
            "put",
            Command::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_ms: Some(5_000),
            },
        ),
        ("delete", Command::Delete { key: b"k".to_vec() }),
        (
            "cas",
            Command::Cas {
                key: b"k".to_vec(),
                expected: Expected::Version(3),
                value: Some(b"w".to_vec()),
                ttl_ms: None,
            },
        ),
        ("init-map", Command::InitMap(map.clone())),
        (
            "update-map",
            Command::UpdateMap {
                expected_version: 1,
                map: map.clone(),
            },
        ),
        (
            "expire",
            Command::Expire {
                keys: vec![b"a".to_vec(), b"b".to_vec()],
            },
        ),
    ];
    for (name, c) in commands {
        write("command", name, &request(c).encode());
    }
    write("map", "bootstrap", &map.encode());
    let record = ValueRecord {
        version: 7,
        expires_at_ms: Some(1_700_000_005_000),
        value: b"value".to_vec(),
    };
    write("record", "ttl", &record.encode());
    write(
        "record",
        "plain",
        &ValueRecord {
            expires_at_ms: None,
            ..record.clone()
        }
        .encode(),
    );
    write("token", "after", &raftkv_core::scan::encode_token(b"user:42"));
    let mut w = SnapshotWriter::new(Vec::new(), GroupId::Shard(0)).expect("writer");
    for k in [b"a".as_slice(), b"b", b"c"] {
        w.put(k, &record.encode()).expect("put");
    }
    write("snapshot", "shard", &w.finish().expect("finish").0);
    let mut w = SnapshotWriter::new(Vec::new(), GroupId::Meta).expect("writer");
    w.put(MAP_KEY, &map.encode()).expect("put");
    write("snapshot", "meta", &w.finish().expect("finish").0);
}
