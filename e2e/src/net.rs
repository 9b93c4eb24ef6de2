//! The pod network: names and addresses (pure) and the `ip`/`nft` commands
//! that build it (thin adapters).
//!
//! `cluster-up.sh` picks a slot S (0..31) per state dir and records it in
//! `$STATE/net.env`; everything is keyed by it so two clusters never clash:
//!
//! ```text
//!  host netns                 router netns rkvS-net                 pod netns rkvS-pN
//!  rkvS-h 10.(200+S).255.1 ── h0 10.(200+S).255.2
//!  routes: pod CIDR, Service   kube-proxy (nftables), ip_forward
//!  CIDR via 10.(200+S).255.2   pN 169.254.1.1/32 ─────────────────── eth0 10.(200+S).a.b/32
//!                              route 10.(200+S).a.b/32 dev pN         default via 169.254.1.1
//! ```
//!
//! Every pod packet is routed (no bridge), so kube-proxy's conntrack sees
//! both directions of Service traffic. The router has no default route:
//! nothing from the pod network leaves the machine.

use std::path::Path;

use crate::error::{Error, Result};

/// Gateway address every pod routes through (on each router-side veth).
pub const POD_GATEWAY: &str = "169.254.1.1";
/// nftables table (router netns) holding the fault-injection drop rules.
pub const FAULT_TABLE: &str = "raftkv_faults";

/// The network of one cluster (from `$STATE/net.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub slot: u8,
}

impl NetConfig {
    /// Parses `net.env` (`SLOT=3` among other `KEY=VALUE` lines).
    pub fn parse(text: &str) -> Option<NetConfig> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("SLOT="))
            .find_map(|v| v.trim().parse::<u8>().ok())
            .filter(|s| *s < 32)
            .map(|slot| NetConfig { slot })
    }

    /// Reads `$STATE/net.env`.
    pub fn load(state: &Path) -> Result<NetConfig> {
        let path = state.join("net.env");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        NetConfig::parse(&text).ok_or_else(|| Error::Command {
            command: format!("parse {}", path.display()),
            stderr: "no SLOT=<0..31> line".into(),
        })
    }

    fn octet(&self) -> u8 {
        200 + self.slot
    }

    /// The router netns (kube-proxy runs there).
    pub fn router_netns(&self) -> String {
        format!("rkv{}-net", self.slot)
    }

    /// The netns of pod index `idx`.
    pub fn pod_netns(&self, idx: u16) -> String {
        format!("rkv{}-p{idx}", self.slot)
    }

    /// Prefix of every pod netns of this cluster (for sweeps).
    pub fn pod_netns_prefix(&self) -> String {
        format!("rkv{}-p", self.slot)
    }

    /// Router-side interface of pod index `idx` (lives only in the router netns).
    pub fn router_iface(idx: u16) -> String {
        format!("p{idx}")
    }

    /// Pod IP of index `idx` (2..=32767).
    pub fn pod_ip(&self, idx: u16) -> String {
        format!("10.{}.{}.{}", self.octet(), idx >> 8, idx & 0xff)
    }

    /// Inverse of [`NetConfig::pod_ip`].
    pub fn pod_index(&self, ip: &str) -> Option<u16> {
        let parts: Vec<u16> = ip.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        match parts[..] {
            [10, o, hi, lo] if o == u16::from(self.octet()) && hi < 128 && lo < 256 => Some(hi << 8 | lo),
            _ => None,
        }
    }

    /// The host's address on the harness link (the apiserver binds it).
    pub fn host_ip(&self) -> String {
        format!("10.{}.255.1", self.octet())
    }

    /// The pod CIDR (kube-proxy's `--cluster-cidr`).
    pub fn pod_cidr(&self) -> String {
        format!("10.{}.0.0/16", self.octet())
    }
}

/// First index handed out (`.0.0` is the network, `.0.1` stays unused).
pub const FIRST_INDEX: u16 = 2;
/// Last index (pod IPs stay below `.128.0`; `.255.x` is the host link).
pub const LAST_INDEX: u16 = 32767;

/// Lowest free pod index.
pub fn allocate_index(used: &std::collections::BTreeSet<u16>) -> Option<u16> {
    (FIRST_INDEX..=LAST_INDEX).find(|i| !used.contains(i))
}

/// Runs a command, failing with its stderr.
pub async fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| Error::io(format!("spawn {program}"), e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates pod `idx`'s netns and its veth to the router, addressed and routed.
pub async fn create_pod_network(cfg: &NetConfig, idx: u16) -> Result<()> {
    let ns = cfg.pod_netns(idx);
    let router = cfg.router_netns();
    let iface = NetConfig::router_iface(idx);
    let ip = cfg.pod_ip(idx);
    // A leftover of a crashed runner would make `ip netns add` fail.
    delete_pod_network(cfg, idx).await;
    run("ip", &["netns", "add", &ns]).await?;
    run(
        "ip",
        &[
            "link", "add", &iface, "netns", &router, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )
    .await?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
    run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"]).await?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"]).await?;
    run(
        "ip",
        &["-n", &ns, "route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"],
    )
    .await?;
    run(
        "ip",
        &["-n", &ns, "route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"],
    )
    .await?;
    run(
        "ip",
        &[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{POD_GATEWAY}/32"),
            "dev",
            &iface,
        ],
    )
    .await?;
    run("ip", &["-n", &router, "link", "set", &iface, "up"]).await?;
    run(
        "ip",
        &["-n", &router, "route", "replace", &format!("{ip}/32"), "dev", &iface],
    )
    .await?;
    Ok(())
}

/// Removes pod `idx`'s netns (its veth pair goes with it); idempotent.
pub async fn delete_pod_network(cfg: &NetConfig, idx: u16) {
    let ns = cfg.pod_netns(idx);
    let _ = heal(cfg, idx).await;
    let _ = run(
        "ip",
        &["-n", &cfg.router_netns(), "link", "del", &NetConfig::router_iface(idx)],
    )
    .await;
    if Path::new("/run/netns").join(&ns).exists()
        && let Err(e) = run("ip", &["netns", "del", &ns]).await
    {
        tracing::warn!(netns = %ns, error = %e, "could not delete pod netns");
    }
}

/// Cuts pod `idx` off the network: the router drops everything to and from it.
pub async fn cut(cfg: &NetConfig, idx: u16) -> Result<()> {
    cut_set(cfg, "add", idx).await
}

/// Undoes [`cut`]; succeeds when the pod was not cut.
pub async fn heal(cfg: &NetConfig, idx: u16) -> Result<()> {
    match cut_set(cfg, "delete", idx).await {
        Err(Error::Command { stderr, .. }) if stderr.contains("No such file") || stderr.contains("not exist") => Ok(()),
        other => other,
    }
}

/// Adds pod `idx`'s router-side interface to (or deletes it from) the fault
/// table's `cut` set, whose members the router drops.
async fn cut_set(cfg: &NetConfig, verb: &str, idx: u16) -> Result<()> {
    let elem = format!("{{ \"{}\" }}", NetConfig::router_iface(idx));
    let router = cfg.router_netns();
    let args = [
        "netns",
        "exec",
        &router,
        "nft",
        verb,
        "element",
        "inet",
        FAULT_TABLE,
        "cut",
        &elem,
    ];
    run("ip", &args).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_and_addresses_are_keyed_by_slot() {
        let c = NetConfig::parse("# x\nSLOT=3\n").unwrap();
        assert_eq!(c.router_netns(), "rkv3-net");
        assert_eq!(c.pod_netns(300), "rkv3-p300");
        assert_eq!(c.pod_ip(2), "10.203.0.2");
        assert_eq!(c.pod_ip(300), "10.203.1.44");
        assert_eq!(c.pod_index("10.203.1.44"), Some(300));
        assert_eq!(c.pod_index("10.204.1.44"), None);
        assert_eq!(c.host_ip(), "10.203.255.1");
        assert_eq!(c.pod_cidr(), "10.203.0.0/16");
        // Interface names stay within Linux's 15 characters.
        assert!(c.pod_netns(LAST_INDEX).len() <= 15 && NetConfig::router_iface(LAST_INDEX).len() <= 15);
        assert_eq!(NetConfig::parse("SLOT=40"), None);
        assert_eq!(NetConfig::parse(""), None);
    }

    #[test]
    fn allocation_takes_the_lowest_free_index() {
        let used: BTreeSet<u16> = [2, 3, 5].into();
        assert_eq!(allocate_index(&used), Some(4));
        let full: BTreeSet<u16> = (FIRST_INDEX..=LAST_INDEX).collect();
        assert_eq!(allocate_index(&full), None);
    }
}
