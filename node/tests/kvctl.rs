//! The `kvctl` contract against a real cluster: raw value on stdout, exit 1
//! and "not found" on stderr for a missing key, `--output json` everywhere,
//! non-zero exit on any error, and --force where the admin API asks for it.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::Cluster;

fn kvctl_binary() -> PathBuf {
    // Built with the node by `cargo build --workspace` (what `make test` runs first).
    support::node_binary().with_file_name("kvctl")
}

fn kvctl(c: &Cluster, args: &[&str]) -> Output {
    let bin = kvctl_binary();
    assert!(
        bin.exists(),
        "{} is missing: run `make build` (cargo build --workspace)",
        bin.display()
    );
    let admins: Vec<String> = c.nodes.iter().map(|n| n.admin_ep()).collect();
    Command::new(bin)
        .arg("--endpoints")
        .arg(c.client_eps().join(","))
        .arg("--admin-endpoints")
        .arg(admins.join(","))
        .args(args)
        .output()
        .expect("run kvctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_follows_its_output_contract() {
    let c = {
        let mut c = Cluster::start(3, &[]).await;
        c.bootstrap(4, 3).await;
        c
    };
    let run = |args: &[&str]| tokio::task::block_in_place(|| kvctl(&c, args));

    let put = run(&["put", "user:1", "{\"name\":\"ada\"}"]);
    assert!(put.status.success(), "{put:?}");
    let get = run(&["get", "user:1"]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(stdout(&get), "{\"name\":\"ada\"}", "get prints the raw value");

    let missing = run(&["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&missing.stderr).trim(), "not found");

    let json = run(&["--output", "json", "get", "user:1"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(v["found"], true);
    assert!(v["version"].as_u64().unwrap() > 0);

    let scan = run(&["-o", "json", "scan", "--prefix", "user:"]);
    let v: serde_json::Value = serde_json::from_slice(&scan.stdout).expect("JSON output");
    assert_eq!(v.as_array().unwrap().len(), 1);

    let cas_fail = run(&["cas", "user:1", "x", "--expect-absent"]);
    assert_eq!(
        cas_fail.status.code(),
        Some(2),
        "a failed compare-and-set exits non-zero"
    );

    let status = run(&["-o", "json", "cluster", "status"]);
    let admins: Vec<String> = c.nodes.iter().map(|n| n.admin_ep()).collect();
    assert!(status.status.success(), "admin endpoints {admins:?}: {status:?}");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON output");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);

    let bad = run(&["put", "", "v"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("key must not be empty"),
        "{bad:?}"
    );

    // Removing a replica below the replication factor takes --force. The
    // victim is shard 0's leader: it removes itself and still answers with
    // the shard as it left it.
    let mut leader = None;
    for n in &c.nodes {
        let s = n.status().await.expect("status");
        if s.shards.iter().any(|x| !x.meta && x.shard == 0 && x.role == "leader") {
            leader = Some(s.node_id);
        }
    }
    let victim = leader.expect("shard 0 has a leader").to_string();
    let refused = run(&["admin", "remove-replica", "0", &victim]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("below the replication factor"),
        "{refused:?}"
    );
    let forced = run(&["-o", "json", "admin", "remove-replica", "0", &victim, "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    let v: serde_json::Value = serde_json::from_slice(&forced.stdout).expect("JSON output");
    let voters: Vec<String> = v["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(voters.len(), 2, "{v}");
    assert!(!voters.contains(&victim), "{v}");

    let unreachable = tokio::task::block_in_place(|| {
        Command::new(kvctl_binary())
            .args(["--endpoints", "127.0.0.1:1", "get", "k"])
            .output()
            .unwrap()
    });
    assert!(!unreachable.status.success());
    assert_ne!(unreachable.status.code(), Some(1), "an error is not 'not found'");
}
