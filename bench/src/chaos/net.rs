//! The test network: one namespace per host on a bridge inside a namespace of its own, host
//! names in `/etc/netns/NAME/hosts`, and the faults made of nftables rules and routes.
//!
//! Hosts: nodes `pgc-n1`.. at 10.79.0.1.. (names `node-1`..), the client `pgc-client` at
//! 10.79.0.200, the delay relay `pgc-relay` at 10.79.0.250, all on `br0` in `pgc-br`. The root
//! namespace has no interface in 10.79.0.0/16, so it never routes test traffic.
//!
//! Every host gets an nftables table `inet pgc` with an input and an output chain (policy
//! accept); a partition or a loss is rules in them, and healing flushes them. A delay is
//! routes: the victim reaches every other host through the relay, and they reach it the same
//! way; healing deletes the routes.

use anyhow::{Context, Result};

use super::sys::{in_ns, in_ns_stdin, sh, PREFIX};

pub const BRIDGE_NS: &str = "pgc-br";
pub const CLIENT_NS: &str = "pgc-client";
pub const CLIENT_IP: &str = "10.79.0.200";
pub const RELAY_NS: &str = "pgc-relay";
pub const RELAY_IP: &str = "10.79.0.250";
pub const RPC_PORT: u16 = 8400;
pub const GOSSIP_PORT: u16 = 8401;
pub const ADMIN_PORT: u16 = 9400;

/// A host on the test network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its host name (`node-1`, `client`).
    pub name: String,
    pub ns: String,
    pub ip: String,
}

pub fn node_host(i: u32) -> Host {
    Host {
        name: format!("node-{i}"),
        ns: format!("{PREFIX}n{i}"),
        ip: format!("10.79.0.{i}"),
    }
}

pub fn client_host() -> Host {
    Host {
        name: "client".into(),
        ns: CLIENT_NS.into(),
        ip: CLIENT_IP.into(),
    }
}

fn relay_host() -> Host {
    Host {
        name: "relay".into(),
        ns: RELAY_NS.into(),
        ip: RELAY_IP.into(),
    }
}

const TABLE: &str = "\
table inet pgc {
  chain input { type filter hook input priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
";

/// The network of one run.
pub struct Network {
    pub nodes: Vec<Host>,
    pub client: Host,
    nft: bool,
}

impl Network {
    /// Builds the bridge and every host. `nft`: whether to install the filter tables
    /// (partition and loss need them).
    pub fn create(nodes: u32, nft: bool) -> Result<Network> {
        sh(&["ip", "netns", "add", BRIDGE_NS])?;
        in_ns(BRIDGE_NS, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(BRIDGE_NS, &["ip", "link", "set", "br0", "up"])?;
        let net = Network {
            nodes: (1..=nodes).map(node_host).collect(),
            client: client_host(),
            nft,
        };
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for h in net.all().iter().chain([&relay_host()]) {
            hosts.push_str(&format!("{} {}\n", h.ip, h.name));
        }
        for (i, h) in net.all().into_iter().chain([relay_host()]).enumerate() {
            add_host(&h, i, &hosts).with_context(|| format!("setting up {}", h.ns))?;
            if nft {
                in_ns_stdin(&h.ns, &["nft", "-f", "-"], TABLE)?;
            }
        }
        // The relay forwards what it reads from its TUN device; it must not tell senders to
        // go direct (redirects), nor drop packets that come back in on the TUN device.
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            in_ns(RELAY_NS, &["sysctl", "-q", "-w", s])?;
        }
        Ok(net)
    }

    /// Nodes and the client.
    pub fn all(&self) -> Vec<Host> {
        self.nodes
            .iter()
            .cloned()
            .chain([self.client.clone()])
            .collect()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.nodes
            .iter()
            .chain([&self.client])
            .find(|h| h.name == name)
    }

    /// `a` and `b` stop hearing each other (both directions), for every a in `side_a`, b
    /// in `side_b`.
    pub fn cut(&self, side_a: &[Host], side_b: &[Host]) -> Result<()> {
        for (me, others) in [(side_a, side_b), (side_b, side_a)] {
            let ips = set(others);
            for h in me {
                self.rules(
                    h,
                    &[
                        format!("add rule inet pgc input ip saddr {ips} drop"),
                        format!("add rule inet pgc output ip daddr {ips} drop"),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// `victim` drops `percent`% of what it sends to and receives from `others`.
    pub fn lose(&self, victim: &Host, others: &[Host], percent: u32) -> Result<()> {
        let ips = set(others);
        self.rules(
            victim,
            &[
                format!(
                    "add rule inet pgc input ip saddr {ips} numgen random mod 100 < {percent} drop"
                ),
                format!(
                    "add rule inet pgc output ip daddr {ips} numgen random mod 100 < {percent} drop"
                ),
            ],
        )
    }

    fn rules(&self, h: &Host, rules: &[String]) -> Result<()> {
        anyhow::ensure!(self.nft, "nftables rules asked for, but nft was not set up");
        in_ns_stdin(&h.ns, &["nft", "-f", "-"], &(rules.join("\n") + "\n"))
    }

    /// Removes every rule on every host.
    pub fn heal_rules(&self) -> Result<()> {
        if !self.nft {
            return Ok(());
        }
        for h in self.all() {
            in_ns_stdin(
                &h.ns,
                &["nft", "-f", "-"],
                "flush chain inet pgc input\nflush chain inet pgc output\n",
            )?;
        }
        Ok(())
    }

    /// Traffic between `victim` and each of `others` goes through the relay, both ways.
    pub fn route_through_relay(&self, victim: &Host, others: &[Host]) -> Result<()> {
        for o in others {
            in_ns(
                &victim.ns,
                &[
                    "ip",
                    "route",
                    "replace",
                    &format!("{}/32", o.ip),
                    "via",
                    RELAY_IP,
                ],
            )?;
            in_ns(
                &o.ns,
                &[
                    "ip",
                    "route",
                    "replace",
                    &format!("{}/32", victim.ip),
                    "via",
                    RELAY_IP,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every host route through the relay.
    pub fn heal_routes(&self) -> Result<()> {
        for h in self.all() {
            let routes = in_ns(&h.ns, &["ip", "-o", "route", "show", "via", RELAY_IP])?;
            for r in routes.lines() {
                if let Some(dst) = r.split_whitespace().next() {
                    in_ns(&h.ns, &["ip", "route", "del", dst, "via", RELAY_IP])?;
                }
            }
        }
        Ok(())
    }
}

/// An nftables set of the hosts' addresses: `{ 10.79.0.1, 10.79.0.2 }`.
fn set(hosts: &[Host]) -> String {
    let ips: Vec<&str> = hosts.iter().map(|h| h.ip.as_str()).collect();
    format!("{{ {} }}", ips.join(", "))
}

/// A namespace with `ip`/16 on eth0, plugged into the bridge, and its hosts file.
fn add_host(h: &Host, index: usize, hosts: &str) -> Result<()> {
    let port = format!("v{index}");
    sh(&["ip", "netns", "add", &h.ns])?;
    in_ns(
        BRIDGE_NS,
        &[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &h.ns,
        ],
    )?;
    in_ns(
        BRIDGE_NS,
        &["ip", "link", "set", &port, "master", "br0", "up"],
    )?;
    in_ns(
        &h.ns,
        &["ip", "addr", "add", &format!("{}/16", h.ip), "dev", "eth0"],
    )?;
    in_ns(&h.ns, &["ip", "link", "set", "eth0", "up"])?;
    in_ns(&h.ns, &["ip", "link", "set", "lo", "up"])?;
    // A host must follow its routes through the relay, not a redirect around it.
    in_ns(
        &h.ns,
        &["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0"],
    )?;
    let dir = format!("/etc/netns/{}", h.ns);
    std::fs::create_dir_all(&dir).with_context(|| dir.clone())?;
    std::fs::write(format!("{dir}/hosts"), hosts).with_context(|| dir.clone())?;
    Ok(())
}
