//! Five real `proglog` processes, each in its own network namespace, find each other by host
//! name through `--start-join-addrs` only: `/etc/netns/pgm-nX/hosts` gives every namespace
//! the names `node-1` .. `node-5`, and `ip netns exec` mounts it over `/etc/hosts`.
//!
//! Then: kill -9 one (listed down everywhere), restart it (up again, next generation),
//! SIGTERM another (listed left, not down), and send garbage datagrams to a gossip port
//! (nothing changes, the drops are counted in /metrics).
//!
//! Needs root (namespaces, veth, a bridge); CI runs as root. The namespaces' names start with
//! `pgm-` and their addresses are 10.77.0.0/24, on a bridge inside a namespace of its own, so
//! the root namespace never routes them. Everything is removed at the start and at the end.
//!
//! `PROGLOG_MEMBERSHIP_FIGURES=1` also measures, at default settings, the time to detect a
//! dead node (10 trials), gossip bandwidth per node at 3 and 5 nodes, and the time a
//! partition takes to heal into one view; the figures are printed, never asserted.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_proglog");
const NODES: usize = 5;
const BRIDGE_NS: &str = "pgm-br";

fn ns(i: usize) -> String {
    format!("pgm-n{i}")
}

fn ip_of(i: usize) -> String {
    format!("10.77.0.{i}")
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn in_ns(name: &str, args: &[&str]) -> Result<(), String> {
    let mut v = vec!["ip", "netns", "exec", name];
    v.extend_from_slice(args);
    sh(&v)
}

fn cleanup() {
    for i in 1..=NODES {
        let _ = sh(&["ip", "netns", "del", &ns(i)]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", ns(i)));
    }
    let _ = sh(&["ip", "netns", "del", BRIDGE_NS]);
}

/// Namespaces, a bridge in its own namespace, one veth per node, and the hosts files.
fn network() -> Result<(), String> {
    cleanup();
    sh(&["ip", "netns", "add", BRIDGE_NS])?;
    in_ns(BRIDGE_NS, &["ip", "link", "add", "br0", "type", "bridge"])?;
    in_ns(BRIDGE_NS, &["ip", "link", "set", "br0", "up"])?;
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for i in 1..=NODES {
        hosts.push_str(&format!("{} node-{i}\n", ip_of(i)));
    }
    for i in 1..=NODES {
        let n = ns(i);
        sh(&["ip", "netns", "add", &n])?;
        let port = format!("v{i}");
        in_ns(
            BRIDGE_NS,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &n,
            ],
        )?;
        in_ns(
            BRIDGE_NS,
            &["ip", "link", "set", &port, "master", "br0", "up"],
        )?;
        in_ns(
            &n,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", ip_of(i)),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(&n, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(&n, &["ip", "link", "set", "lo", "up"])?;
        let dir = format!("/etc/netns/{n}");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(format!("{dir}/hosts"), &hosts).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Cuts node `i` off the bridge (or reconnects it).
fn link(i: usize, up: bool) {
    in_ns(
        BRIDGE_NS,
        &[
            "ip",
            "link",
            "set",
            &format!("v{i}"),
            if up { "up" } else { "down" },
        ],
    )
    .unwrap();
}

struct Cluster {
    dir: tempfile::TempDir,
    procs: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        cleanup();
    }
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            procs: (0..=NODES).map(|_| None).collect(),
        }
    }

    fn start(&mut self, i: usize) {
        let data = self.dir.path().join(format!("node-{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{i}.log")))
            .unwrap();
        let bind = format!("node-{i}:8401");
        let admin = format!("{}:9400", ip_of(i));
        let name = format!("node-{i}");
        let mut args = vec!["netns", "exec", &ns(i), BIN]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        args.extend(
            [
                "--data-dir",
                data.to_str().unwrap(),
                "--node-name",
                &name,
                "--bind-addr",
                &bind,
                "--rpc-port",
                "8400",
                "--admin-addr",
                &admin,
                "--shards",
                "1",
            ]
            .map(str::to_owned),
        );
        if i != 1 {
            args.push("--start-join-addrs".into());
            args.push("node-1:8401".into());
        }
        let child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    fn signal(&mut self, i: usize, sig: i32) {
        if let Some(p) = self.procs[i].as_mut() {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(p.id() as i32, sig) };
        }
    }

    fn wait_exit(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    name: String,
    state: String,
    generation: u64,
    gossip_addr: String,
    rpc_addr: String,
}

/// `proglog cluster members --json` asked of node `i`, from inside its namespace.
fn members(i: usize) -> Option<Vec<Row>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns(i), BIN, "cluster", "members", "--json"])
        .args(["--addr", &format!("{}:8400", ip_of(i)), "--timeout", "2"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        rows.push(Row {
            name: v["name"].as_str()?.to_owned(),
            state: v["state"].as_str()?.to_owned(),
            generation: v["generation"].as_u64()?,
            gossip_addr: v["gossip_addr"].as_str()?.to_owned(),
            rpc_addr: v["rpc_addr"].as_str()?.to_owned(),
        });
    }
    Some(rows)
}

fn state_of(rows: &[Row], node: usize) -> Option<(String, u64)> {
    rows.iter()
        .find(|r| r.name == format!("node-{node}"))
        .map(|r| (r.state.clone(), r.generation))
}

/// Polls until every observer lists every subject as `want` says, or panics at the deadline.
fn wait_all(
    c: &Cluster,
    what: &str,
    observers: &[usize],
    limit: Duration,
    want: impl Fn(usize, &[Row]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let ok = observers
            .iter()
            .all(|&o| members(o).is_some_and(|rows| want(o, &rows)));
        if ok {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let views: Vec<_> = observers.iter().map(|&o| (o, members(o))).collect();
            panic!(
                "{what}: not reached within {limit:?}; views: {views:#?}\nnode-1 log:\n{}",
                c.log(1)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_up(nodes: &[usize]) -> impl Fn(usize, &[Row]) -> bool + '_ {
    move |_, rows| {
        nodes
            .iter()
            .all(|&n| state_of(rows, n).is_some_and(|(s, _)| s == "up"))
    }
}

/// Runs `f` on a thread that entered namespace `name`: datagrams and HTTP from inside it.
fn from_ns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on an open namespace file; it changes only this thread's network
        // namespace, and the thread ends after `f`.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

fn metrics(i: usize) -> String {
    let addr: SocketAddr = format!("{}:9400", ip_of(i)).parse().unwrap();
    from_ns(&ns(i), move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_prefix} in metrics"))
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn five_nodes_find_each_other_by_name_and_report_down_restart_left() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    network().expect("setting up the network namespaces");
    let mut c = Cluster::new();
    for i in 1..=NODES {
        c.start(i);
    }
    let everyone: Vec<usize> = (1..=NODES).collect();
    let took = wait_all(
        &c,
        "five up",
        &everyone,
        Duration::from_secs(60),
        |o, rows| rows.len() == NODES && all_up(&everyone)(o, rows),
    );
    eprintln!("five nodes converged {took:?} after the last start");
    // Addresses are what the names resolve to, advertised by each node itself.
    let rows = members(2).unwrap();
    let n4 = rows.iter().find(|r| r.name == "node-4").unwrap();
    assert_eq!(n4.gossip_addr, "10.77.0.4:8401");
    assert_eq!(n4.rpc_addr, "10.77.0.4:8400");

    // kill -9: down everywhere.
    c.signal(3, libc::SIGKILL);
    c.wait_exit(3);
    let others = [1, 2, 4, 5];
    let took = wait_all(
        &c,
        "node-3 down",
        &others,
        Duration::from_secs(60),
        |_, rows| state_of(rows, 3).is_some_and(|(s, g)| s == "down" && g == 1),
    );
    eprintln!("node-3 listed down everywhere after {took:?}");

    // Restart: up again under the next generation.
    c.start(3);
    wait_all(
        &c,
        "node-3 back",
        &everyone,
        Duration::from_secs(60),
        |_, rows| state_of(rows, 3) == Some(("up".into(), 2)),
    );

    // SIGTERM: left, not down, and it stays left.
    c.signal(5, libc::SIGTERM);
    c.wait_exit(5);
    let living = [1, 2, 3, 4];
    wait_all(
        &c,
        "node-5 left",
        &living,
        Duration::from_secs(30),
        |_, rows| state_of(rows, 5).is_some_and(|(s, _)| s == "left"),
    );
    assert!(c.log(5).contains("leaving the cluster"), "{}", c.log(5));

    // Garbage datagrams to node-2's gossip port change nothing, and are counted.
    let before = members(2).unwrap();
    let dropped_before = metric(
        &metrics(2),
        "proglog_gossip_dropped_packets_total{reason=\"malformed\"}",
    );
    from_ns(&ns(4), || {
        let s = UdpSocket::bind("10.77.0.4:0").unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for k in 0..500usize {
            let mut p = vec![0u8; 1 + k % 1400];
            for b in p.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if k % 2 == 0 && p.len() >= 8 {
                // Past the magic and version, so the body is what gets rejected.
                p[0..4].copy_from_slice(&[b'P', b'M', 1, 1]);
                p[4..8].copy_from_slice(&[0, 0, 0, 0]);
            }
            let _ = s.send_to(&p, "10.77.0.2:8401");
            // Paced: a burst would overflow the socket's receive buffer and be dropped by
            // the kernel before the node could count it.
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    wait_all(
        &c,
        "views unchanged",
        &living,
        Duration::from_secs(20),
        |_, rows| all_up(&living)(0, rows) && state_of(rows, 5).is_some_and(|(s, _)| s == "left"),
    );
    let after = members(2).unwrap();
    assert_eq!(
        before
            .iter()
            .map(|r| (&r.name, &r.state, r.generation))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|r| (&r.name, &r.state, r.generation))
            .collect::<Vec<_>>()
    );
    let text = metrics(2);
    let dropped = metric(
        &text,
        "proglog_gossip_dropped_packets_total{reason=\"malformed\"}",
    );
    assert!(
        dropped >= dropped_before + 400.0,
        "{dropped} after {dropped_before}"
    );
    assert_eq!(metric(&text, "proglog_members{state=\"up\"}"), 4.0);
    assert_eq!(metric(&text, "proglog_members{state=\"left\"}"), 1.0);

    if std::env::var("PROGLOG_MEMBERSHIP_FIGURES").is_ok_and(|v| v == "1") {
        figures(&mut c);
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Measurements for docs/replication.md: printed, never asserted.
fn figures(c: &mut Cluster) {
    // Back to five.
    c.start(5);
    let everyone: Vec<usize> = (1..=NODES).collect();
    wait_all(
        c,
        "five up",
        &everyone,
        Duration::from_secs(60),
        |_, rows| all_up(&everyone)(0, rows),
    );

    // Bandwidth: bytes sent per node per second, at 5 and then 3 nodes.
    let sent = |c: &Cluster, nodes: &[usize]| -> Vec<f64> {
        let _ = c;
        nodes
            .iter()
            .map(|&i| {
                metric(
                    &metrics(i),
                    "proglog_gossip_bytes_total{direction=\"sent\"}",
                )
            })
            .collect()
    };
    let window = Duration::from_secs(30);
    let b0 = sent(c, &everyone);
    std::thread::sleep(window);
    let b1 = sent(c, &everyone);
    let per: Vec<f64> = b0
        .iter()
        .zip(&b1)
        .map(|(a, b)| (b - a) / window.as_secs_f64())
        .collect();
    eprintln!("FIGURE gossip bytes sent per node per second, 5 nodes: {per:.0?}");

    // Detection: kill -9 a node, time until node-1 lists it down; 10 trials.
    let mut detect = Vec::new();
    for trial in 0..10 {
        let victim = 2 + trial % 4;
        c.signal(victim, libc::SIGKILL);
        let t0 = Instant::now();
        c.wait_exit(victim);
        loop {
            if members(1).is_some_and(|r| state_of(&r, victim).is_some_and(|(s, _)| s == "down")) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(50));
        }
        detect.push(t0.elapsed());
        c.start(victim);
        wait_all(
            c,
            "back up",
            &everyone,
            Duration::from_secs(60),
            |_, rows| all_up(&everyone)(0, rows),
        );
    }
    eprintln!(
        "FIGURE detection of a kill -9 by node-1 over 10 trials: p50 {:?}, max {:?} (all: {detect:?})",
        percentile(&mut detect.clone(), 0.5),
        detect.iter().max().unwrap()
    );

    // Partition: cut node-4 and node-5 off until the others list them down, heal, time one view.
    let mut heal = Vec::new();
    for _ in 0..3 {
        link(4, false);
        link(5, false);
        wait_all(c, "cut off", &[1], Duration::from_secs(60), |_, rows| {
            [4, 5]
                .iter()
                .all(|&n| state_of(rows, n).is_some_and(|(s, _)| s == "down"))
        });
        link(4, true);
        link(5, true);
        heal.push(wait_all(
            c,
            "healed",
            &everyone,
            Duration::from_secs(120),
            |_, rows| all_up(&everyone)(0, rows),
        ));
    }
    eprintln!("FIGURE partition heal to one view (5 nodes, 3 trials): {heal:?}");

    // Bandwidth at 3 nodes.
    for i in [4, 5] {
        c.signal(i, libc::SIGTERM);
        c.wait_exit(i);
    }
    let three = [1, 2, 3];
    std::thread::sleep(Duration::from_secs(5));
    let b0 = sent(c, &three);
    std::thread::sleep(window);
    let b1 = sent(c, &three);
    let per: Vec<f64> = b0
        .iter()
        .zip(&b1)
        .map(|(a, b)| (b - a) / window.as_secs_f64())
        .collect();
    eprintln!("FIGURE gossip bytes sent per node per second, 3 nodes: {per:.0?}");
}
