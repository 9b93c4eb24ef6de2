//! Records written by the release before replica ids (format 1) still read
//! as they were, and a map that allocated no replica id is still written in
//! format 1 — so nodes of both releases share a cluster during a rolling
//! upgrade. The hex below was written by that release (commit 123c1d7).

use std::collections::BTreeMap;

use raftkv_core::command::{Command, Request};
use raftkv_core::map::{ClusterMap, FIRST_REPLICA_ID, MAP_FORMAT, MAP_FORMAT_V1, NodeAddr, ShardReplicas};

const V1_MAP: &str = "0106676f6c64656e030403040b0b6e31312e6578616d706c65e336c737ab38160b6e32322e6578616d706c65ee36d237b638210b6e33332e6578616d706c65f936dd37c1382c0b6e34342e6578616d706c658437e837cc3804030b162100030b1621012c03210b1600030b162100030b1621";
const V1_UPDATE_MAP: &str = "0180d095ffbc31040206676f6c64656e030403040b0b6e31312e6578616d706c65e336c737ab38160b6e32322e6578616d706c65ee36d237b638210b6e33332e6578616d706c65f936dd37c1382c0b6e34342e6578616d706c658437e837cc3804030b162100030b1621012c03210b1600030b162100030b1621";
const V1_PUT: &str = "0181d095ffbc3100016b0176018827";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The map the old release encoded: 4 nodes, 4 shards of 3, node 44 a learner of shard 1.
fn golden_map() -> ClusterMap {
    let nodes: BTreeMap<u64, NodeAddr> = [11u64, 22, 33, 44]
        .iter()
        .map(|&i| {
            (
                i,
                NodeAddr {
                    host: format!("n{i}.example"),
                    client_port: 7000 + i as u16,
                    peer_port: 7100 + i as u16,
                    admin_port: 7200 + i as u16,
                },
            )
        })
        .collect();
    let mut three = nodes.clone();
    three.remove(&44);
    ClusterMap::bootstrap("golden".into(), three, 4, 3)
        .unwrap()
        .with_node(44, nodes[&44].clone())
        .unwrap()
        .with_shard_replicas(1, ShardReplicas::of_nodes(vec![11, 22, 33], vec![44]))
        .unwrap()
}

#[test]
fn a_format_1_map_reads_with_replica_id_equal_to_node_id_and_writes_back_byte_for_byte() {
    let map = ClusterMap::decode(&unhex(V1_MAP)).unwrap();
    assert_eq!(map, golden_map());
    assert_eq!(map.next_replica_id, FIRST_REPLICA_ID);
    assert_eq!(map.replica_on(1, 44), Some(44));
    assert_eq!(map.node_of(1, 22), Some(22));
    assert_eq!(map.encode(), unhex(V1_MAP));
}

#[test]
fn format_1_log_commands_read_and_write_back_byte_for_byte() {
    let update = Request::decode(&unhex(V1_UPDATE_MAP)).unwrap();
    assert_eq!(
        update.command,
        Command::UpdateMap {
            expected_version: 2,
            map: golden_map()
        }
    );
    assert_eq!(update.encode(), unhex(V1_UPDATE_MAP));
    let put = Request::decode(&unhex(V1_PUT)).unwrap();
    assert_eq!(
        put.command,
        Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_ms: Some(5000)
        }
    );
    assert_eq!(put.encode(), unhex(V1_PUT));
}

#[test]
fn a_map_that_allocated_a_replica_id_is_written_in_format_2_and_reads_back() {
    let (map, id) = golden_map().with_new_replica(0, 44).unwrap();
    assert_eq!(id, FIRST_REPLICA_ID);
    let bytes = map.encode();
    assert_eq!(bytes[0], MAP_FORMAT);
    assert_eq!(ClusterMap::decode(&bytes).unwrap(), map);
    let request = Request {
        proposed_at_ms: 7,
        command: Command::UpdateMap {
            expected_version: 3,
            map: map.clone(),
        },
    };
    let encoded = request.encode();
    assert_eq!(Request::decode(&encoded).unwrap(), request);
    assert_eq!(golden_map().encode()[0], MAP_FORMAT_V1);
}
