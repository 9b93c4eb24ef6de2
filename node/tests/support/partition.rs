//! Network partitions between test nodes that listen on (and send from)
//! their own loopback addresses: an nftables table of this process's own
//! drops packets between the pairs that are cut. Only those 127.x addresses
//! are touched; the table is deleted on drop.

use std::collections::BTreeSet;
use std::process::Command;

pub struct Partitions {
    table: String,
    cut: BTreeSet<(String, String)>,
}

fn nft(args: &str) -> Result<(), String> {
    let out = Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("running nft (install nftables: scripts/install-deps.sh): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft {args}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Partitions {
    pub fn new() -> Partitions {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("raftkv_test_{}_{n}", std::process::id());
        nft(&format!("add table ip {table}")).expect("nftables table");
        nft(&format!(
            "add chain ip {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ))
        .expect("nftables chain");
        Partitions {
            table,
            cut: BTreeSet::new(),
        }
    }

    fn apply(&self) {
        nft(&format!("flush chain ip {} out", self.table)).expect("flush chain");
        for (a, b) in &self.cut {
            nft(&format!(
                "add rule ip {} out ip saddr {a} ip daddr {b} drop",
                self.table
            ))
            .expect("add rule");
        }
    }

    /// Drops all traffic between `a` and every address in `others`, both ways.
    pub fn isolate(&mut self, a: &str, others: &[String]) {
        for b in others.iter().filter(|b| *b != a) {
            self.cut.insert((a.to_string(), b.clone()));
            self.cut.insert((b.clone(), a.to_string()));
        }
        self.apply();
    }

    /// Whether a TCP connection from `from` to `to:port` gets through now
    /// (a cut pair times out instead): proves a partition took effect.
    pub fn can_connect(from: &str, to: &str, port: u16) -> bool {
        let socket = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) {
            Ok(s) => s,
            Err(_) => return false,
        };
        let bind: std::net::SocketAddr = format!("{from}:0").parse().expect("an IPv4 address");
        let target: std::net::SocketAddr = format!("{to}:{port}").parse().expect("an IPv4 address");
        socket.bind(&bind.into()).is_ok()
            && socket
                .connect_timeout(&target.into(), std::time::Duration::from_millis(500))
                .is_ok()
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.apply();
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table ip {}", self.table));
    }
}
