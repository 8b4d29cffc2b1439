//! The StatefulSet of deploy/k8s, played on one machine with the real binary and the real
//! image filesystem.
//!
//! The manifests are rendered with `kubectl kustomize`, and every pod is run from what the
//! rendered YAML says (not from a copy): the init container's script first, then the
//! server with the container's command, arguments and environment (downward API fields and
//! the CPU limit resolved as the kubelet does), its volume mounts, its securityContext (user,
//! group, fsGroup, read-only root, no capabilities) and its seccomp profile, which the
//! installer DaemonSet's own script puts in the emulated kubelet directory first. The server
//! runs chrooted in the tarball of `scripts/image-rootfs`; the busybox containers run on the
//! host's userland, read-only. Each pod has a network namespace (`pgd-*`, 10.78.0.0/16) whose
//! hosts file holds the headless Service's names of the running pods and the client
//! Service's name (cluster DNS), and the pod's host name. The client Service is an nftables
//! DNAT rule in the client's own namespace, spreading connections over the ready pods as
//! kube-proxy does; readiness and liveness are probed as defined (path, port, timeout) from
//! a node namespace, more often than the manifest's period to keep the test short.
//!
//! Checked: the manifests declare what docs/deploy require (static checks); every pod's
//! probes pass (readiness means joined and caught up with the controller's log); all three
//! list each other in `proglog cluster members` (also through a `kubectl exec` into pod 0)
//! and form one replicated cluster (GetServers through the Service lists the three and one
//! leader); clients work through the Service address (a produce that lands on a follower is
//! redirected to the leader, and what pods answer while the `default` topic's replication
//! factor rises is retried by the CLI); every acknowledged record is on every pod;
//! restarting pod 1 under a new IP keeps every acknowledged record on every pod, and so does
//! a full restart of all pods under new IPs (pod 0's `bootstrap: true` is then a no-op), and
//! so does pod 0 started on an empty volume (it joins the others' cluster). The
//! overlay test runs the acl overlay (mutual TLS for clients and peers, the ACL) with
//! certificates made by `proglog cert` as deploy/README.md says.
//!
//! Should pod 0 ever refuse `bootstrap: true` (a build without replication), the test says
//! so loudly, runs pod 0 with `PROGLOG_BOOTSTRAP=false` added and skips the replicated
//! checks; `PROGLOG_DEPLOY_REPLICATION=1`, which `bash scripts/test` sets, makes that refusal
//! a failure instead.
//!
//! Needs root, kubectl and nft (bash scripts/test installs Debian's nftables). The two tests
//! take turns: they use the same namespaces.

mod k8s;
#[path = "common/seccomp.rs"]
mod seccomp;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use k8s::manifest::{containers, str_of, strings, PodIdentity, Rendered, Seccomp};
use k8s::runtime::{self, Bind, Launch, Network};
use seccomp::Filter;

const BIN: &str = env!("CARGO_BIN_EXE_proglog");
/// The Kubernetes namespace the pods believe they run in.
const NAMESPACE: &str = "proglog-test";
const NODE_NS: &str = "pgd-node";
const NODE_IP: &str = "10.78.0.1";
const CLIENT_NS: &str = "pgd-client";
const CLIENT_IP: &str = "10.78.0.2";
/// The client Service's ClusterIP.
const CLUSTER_IP: &str = "10.78.255.10";
/// Where the kubelet keeps Localhost seccomp profiles (the installer's hostPath).
const KUBELET_SECCOMP: &str = "/var/lib/kubelet/seccomp";
const REQUIRE_REPLICATION: &str = "PROGLOG_DEPLOY_REPLICATION";
/// What the server says when it refuses `bootstrap` (src/config: NotImplemented).
const BOOTSTRAP_REFUSED: &str = "bootstrap is set, but it needs Raft replication";
const DEADLINE: Duration = Duration::from_secs(60);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Root, kubectl and nft, or why not. Without root the test cannot run at all (it says so);
/// a missing tool on a root machine is a failure: CI has both.
fn preconditions() -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("SKIPPED: needs root for namespaces, mounts and chroot (CI runs as root)");
        return None;
    }
    assert!(
        has("kubectl"),
        "kubectl is needed to render deploy/k8s (kubectl kustomize)"
    );
    assert!(
        has("nft"),
        "nft is needed for the client Service's DNAT rule: bash scripts/test installs Debian's \
         nftables (apt-get install nftables)"
    );
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    machine_lock();
    Some(turn)
}

/// The namespaces are the machine's: another run of this test (another checkout on the same
/// host) would delete them under this one. An exclusive lock on a file in /run/lock, held
/// until the process exits (the file stays open), makes runs take turns; the in-process
/// mutex above orders this binary's own tests.
fn machine_lock() {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let dir = if Path::new("/run/lock").is_dir() {
            "/run/lock"
        } else {
            "/tmp"
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{dir}/proglog-statefulset-netns.lock"))
            .expect("the namespaces' lock file");
        // SAFETY: flock(2) on a descriptor we own and keep open.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
        f
    });
}

fn pod_ip(round: u8, ordinal: usize) -> String {
    format!("10.78.{round}.{}", 10 + ordinal)
}

/// Whether this build replicates, as pod 0 showed by accepting or refusing `bootstrap`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Replication {
    Unknown,
    On,
    Gated,
}

struct Pod {
    ordinal: usize,
    name: String,
    ns: String,
    ip: String,
    /// The PersistentVolume of each claim template, by volume name.
    claims: HashMap<String, PathBuf>,
    main: Option<(Child, Launch)>,
}

/// One member row of `proglog cluster members --json`.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    gossip_addr: String,
    state: String,
    generation: u64,
}

struct Cluster {
    overlay: &'static str,
    dir: tempfile::TempDir,
    rendered: Rendered,
    net: Network,
    rootfs: PathBuf,
    sts: Value,
    headless: String,
    client_service: String,
    /// Service port -> container port.
    client_port: (u16, u16),
    filter: Option<Arc<Filter>>,
    secrets: HashMap<String, PathBuf>,
    /// Extra client flags (TLS) for every CLI call.
    client_flags: Vec<String>,
    pods: Vec<Pod>,
    replication: Replication,
    started: Instant,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failure is explained by what the servers said: their logs go with the
        // temporary directory, so print their ends first.
        if std::thread::panicking() {
            for p in &self.pods {
                let log = self.server_log(p.ordinal);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("--- {} ({}), last lines ---", p.name, p.ip);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        for p in &mut self.pods {
            if let Some((mut child, _)) = p.main.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Cluster {
    /// Renders `deploy/k8s/<overlay>`, builds and unpacks the image filesystem, and sets up
    /// the node and client namespaces.
    fn new(overlay: &'static str) -> Cluster {
        let started = Instant::now();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rendered = Rendered::render(&repo.join("deploy/k8s").join(overlay));
        let sts = rendered.of_kind("StatefulSet")[0].clone();
        let headless = str_of(&sts["spec"]["serviceName"], "serviceName").to_owned();
        let client = rendered
            .of_kind("Service")
            .into_iter()
            .find(|s| s["spec"]["clusterIP"] != "None")
            .expect("a client Service");
        let client_service = str_of(&client["metadata"]["name"], "Service name").to_owned();
        let port = &client["spec"]["ports"][0];
        let main = &containers(&sts["spec"]["template"]["spec"], "containers")[0];
        let client_port = (
            port["port"].as_u64().expect("Service port") as u16,
            main.port(&port["targetPort"]),
        );
        let dir = tempfile::tempdir().unwrap();
        let rootfs = image_rootfs(dir.path());
        let mut net = Network::new().expect("setting up the network namespaces");
        net.add(NODE_NS, NODE_IP).unwrap();
        net.add(CLIENT_NS, CLIENT_IP).unwrap();
        eprintln!(
            "[{overlay}] rendered {} objects, image filesystem unpacked ({:.1?})",
            rendered.objects.len(),
            started.elapsed()
        );
        Cluster {
            overlay,
            dir,
            rendered,
            net,
            rootfs,
            sts,
            headless,
            client_service,
            client_port,
            filter: None,
            secrets: HashMap::new(),
            client_flags: Vec::new(),
            pods: Vec::new(),
            replication: Replication::Unknown,
            started,
        }
    }

    fn log(&self, what: &str) {
        eprintln!(
            "[{} {:5.1}s] {what}",
            self.overlay,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn template(&self) -> &Value {
        &self.sts["spec"]["template"]["spec"]
    }

    fn replicas(&self) -> usize {
        self.sts["spec"]["replicas"].as_u64().expect("replicas") as usize
    }

    fn pod_name(&self, ordinal: usize) -> String {
        format!(
            "{}-{ordinal}",
            str_of(&self.sts["metadata"]["name"], "name")
        )
    }

    fn fqdn(&self, ordinal: usize) -> String {
        format!(
            "{}.{}.{NAMESPACE}.svc.cluster.local",
            self.pod_name(ordinal),
            self.headless
        )
    }

    fn service_name(&self) -> String {
        format!("{}.{NAMESPACE}.svc", self.client_service)
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.template()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        )
    }

    /// What the issue and deploy/README.md promise of the manifests, read from the render.
    fn check_manifest(&self) {
        let spec = &self.sts["spec"];
        assert_eq!(self.replicas(), 3);
        assert_eq!(spec["podManagementPolicy"], "Parallel");
        let labels = &spec["template"]["metadata"]["labels"];
        let selects_pods = |sel: &Value| {
            let sel = sel.as_object().expect("a selector");
            !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
        };
        let headless = self.rendered.get("Service", &self.headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
        assert!(selects_pods(&headless["spec"]["selector"]));
        let client = self.rendered.get("Service", &self.client_service);
        assert!(selects_pods(&client["spec"]["selector"]));
        let pdb = &self.rendered.of_kind("PodDisruptionBudget")[0];
        assert!(selects_pods(&pdb["spec"]["selector"]["matchLabels"]));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        let anti = &self.template()["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
        assert!(selects_pods(&anti["labelSelector"]["matchLabels"]));
        // Longer than the default drain timeout (20 s) plus the flush.
        assert!(
            self.grace() >= Duration::from_secs(30),
            "{:?}",
            self.grace()
        );

        let t = self.template();
        let main = &containers(t, "containers")[0];
        let res = &main.spec["resources"];
        assert_eq!(
            res["requests"], res["limits"],
            "Guaranteed QoS: requests = limits"
        );
        let cpu = str_of(&res["limits"]["cpu"], "CPU limit");
        assert_eq!(k8s::manifest::cpus(cpu).fract(), 0.0, "whole CPUs: {cpu}");
        let who = PodIdentity {
            name: self.pod_name(0),
            namespace: NAMESPACE.into(),
            ip: String::new(),
        };
        let shards = main
            .env(&who)
            .into_iter()
            .find(|(k, _)| k == "PROGLOG_SHARDS");
        assert_eq!(
            shards.map(|(_, v)| v),
            Some(cpu.to_owned()),
            "one shard per CPU of the limit"
        );
        let ready = main.probe("readinessProbe").expect("a readiness probe");
        let live = main.probe("livenessProbe").expect("a liveness probe");
        assert_eq!(
            (ready.path.as_str(), live.path.as_str()),
            ("/readyz", "/healthz")
        );
        let claims: Vec<_> = spec["volumeClaimTemplates"]
            .as_array()
            .expect("volumeClaimTemplates")
            .iter()
            .map(|c| c["metadata"]["name"].clone())
            .collect();
        assert!(main
            .mounts()
            .iter()
            .any(|m| claims.contains(&Value::from(m.volume.clone()))));
        let Seccomp::Localhost(profile) = main.security().seccomp else {
            panic!("the server needs a Localhost seccomp profile that allows io_uring")
        };
        // The installer's ConfigMap holds a profile that allows io_uring's three calls.
        let cm = self.rendered.generated("ConfigMap", "proglog-seccomp");
        let json: Value =
            serde_json::from_str(str_of(&cm["data"]["proglog.json"], "profile")).unwrap();
        let allowed: Vec<String> = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| strings(&r["names"]))
            .collect();
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(
                allowed.iter().any(|n| n == call),
                "{call} not allowed by {profile}"
            );
        }
        self.log("manifest checks passed");
    }

    /// The DaemonSet's container, run to the point where its profile is installed in the
    /// emulated kubelet directory; then the server's profile is loaded from there by the
    /// name the pod spec gives, and compiled.
    fn install_seccomp_profile(&mut self) {
        let ds = self.rendered.of_kind("DaemonSet")[0].clone();
        let pod = &ds["spec"]["template"]["spec"];
        let c = &containers(pod, "containers")[0];
        let who = PodIdentity {
            name: "proglog-seccomp-installer-node1".into(),
            namespace: NAMESPACE.into(),
            ip: NODE_IP.into(),
        };
        let mut binds = Vec::new();
        for m in c.mounts() {
            let vol = volume(pod, &m.volume);
            let source = if let Some(cm) = vol.get("configMap") {
                self.config_map_dir(str_of(&cm["name"], "configMap name"))
            } else if let Some(h) = vol.get("hostPath") {
                let p = self.node_path(str_of(&h["path"], "hostPath"));
                std::fs::create_dir_all(&p).unwrap();
                p
            } else {
                panic!("installer volume {} of an unemulated kind", m.volume)
            };
            binds.push(Bind {
                source,
                target: m.path,
                read_only: m.read_only,
            });
        }
        let launch = Launch {
            netns: NODE_NS.into(),
            hostname: who.name.clone(),
            root: self.userland_root("installer"),
            host_userland: true,
            binds,
            argv: c.argv(&c.env(&who)),
            env: c.env(&who),
            security: c.security(),
            filter: None,
            log: self.dir.path().join("installer.log"),
        };
        let mut child = runtime::start(&launch);
        let main = &containers(self.template(), "containers")[0];
        let Seccomp::Localhost(name) = main.security().seccomp else {
            panic!("the server's pod has no Localhost profile")
        };
        let installed = self.node_path(KUBELET_SECCOMP).join(&name);
        let deadline = Instant::now() + DEADLINE;
        while !installed.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the installer exited ({status}) before {} existed:\n{}",
                    installed.display(),
                    std::fs::read_to_string(&launch.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the installer did not install {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let profile = std::fs::read_to_string(&installed).unwrap();
        let table = seccomp::syscall_table().expect("the syscall table");
        let filter = Filter::from_profile(&profile, &table)
            .unwrap_or_else(|e| panic!("compiling {name}: {e}"));
        self.filter = Some(Arc::new(filter));
        self.log(&format!(
            "installer put {name} in the kubelet's seccomp directory"
        ));
    }

    fn node_path(&self, host_path: &str) -> PathBuf {
        self.dir
            .path()
            .join("node")
            .join(host_path.trim_start_matches('/'))
    }

    /// A fresh root for a busybox container (the host's userland goes in at start).
    fn userland_root(&self, what: &str) -> PathBuf {
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let root = self.dir.path().join(format!("userland-{what}-{n}"));
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// The rendered ConfigMap's keys as files, as a configMap volume shows them; written
    /// once, since running servers read them.
    fn config_map_dir(&self, name: &str) -> PathBuf {
        let cm = self.rendered.get("ConfigMap", name);
        let dir = self.dir.path().join("configmaps").join(name);
        if dir.exists() {
            return dir;
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in cm["data"].as_object().expect("ConfigMap data") {
            std::fs::write(dir.join(k), str_of(v, "ConfigMap value")).unwrap();
        }
        dir
    }

    /// Cluster DNS: the running pods' stable names, the client Service's name.
    fn write_dns(&self) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        // Every pod that has an IP, ready or not (publishNotReadyAddresses); the kubelet
        // also writes a pod's own name into its hosts file.
        for p in &self.pods {
            if !p.ip.is_empty() {
                hosts.push_str(&format!("{} {} {}\n", p.ip, self.fqdn(p.ordinal), p.name));
            }
        }
        let svc = self.service_name();
        hosts.push_str(&format!("{CLUSTER_IP} {svc} {svc}.cluster.local\n"));
        let mut namespaces = vec![NODE_NS.to_owned(), CLIENT_NS.to_owned()];
        namespaces.extend(self.pods.iter().map(|p| p.ns.clone()));
        for ns in namespaces {
            let path = runtime::hosts_path(&ns);
            if path.exists() {
                runtime::write_in_place(&path, &hosts);
            }
        }
    }

    /// kube-proxy: the client Service's address spreads new connections over the ready
    /// pods, round robin.
    fn set_endpoints(&self, ready: &[usize]) {
        let (port, target) = self.client_port;
        let map: Vec<String> = ready
            .iter()
            .enumerate()
            .map(|(k, &i)| format!("{k} : {} . {target}", self.pods[i].ip))
            .collect();
        let rules = format!(
            "add table ip pgd_svc\ndelete table ip pgd_svc\ntable ip pgd_svc {{\n  chain output {{\n    \
             type nat hook output priority -100; policy accept;\n    \
             ip daddr {CLUSTER_IP} tcp dport {port} dnat ip to numgen inc mod {} map {{ {} }}\n  }}\n}}\n",
            ready.len(),
            map.join(", ")
        );
        let file = self.dir.path().join("service.nft");
        std::fs::write(&file, rules).unwrap();
        self.net
            .run(CLIENT_NS, &["nft", "-f", file.to_str().unwrap()])
            .expect("the client Service's DNAT rule");
    }

    fn ensure_pods(&mut self) {
        while self.pods.len() < self.replicas() {
            let ordinal = self.pods.len();
            let name = self.pod_name(ordinal);
            let mut claims = HashMap::new();
            for claim in self.sts["spec"]["volumeClaimTemplates"].as_array().unwrap() {
                let vol = str_of(&claim["metadata"]["name"], "claim name");
                // A fresh volume: its root belongs to root, group fsGroup, setgid, as the
                // kubelet leaves it after applying fsGroup.
                let dir = self.dir.path().join("pv").join(format!("{vol}-{name}"));
                std::fs::create_dir_all(&dir).unwrap();
                let group = self.template()["securityContext"]["fsGroup"]
                    .as_u64()
                    .unwrap_or(0);
                std::os::unix::fs::chown(&dir, Some(0), Some(group as u32)).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
                claims.insert(vol.to_owned(), dir);
            }
            self.pods.push(Pod {
                ordinal,
                ns: format!("pgd-p{ordinal}"),
                name,
                ip: String::new(),
                claims,
                main: None,
            });
        }
    }

    /// The bind mounts of a container of pod `i`.
    fn binds(&self, i: usize, c: &k8s::manifest::Container) -> Vec<Bind> {
        let pod = self.template();
        c.mounts()
            .into_iter()
            .map(|m| {
                let source = if let Some(pv) = self.pods[i].claims.get(&m.volume) {
                    pv.clone()
                } else {
                    let vol = volume(pod, &m.volume);
                    if let Some(cm) = vol.get("configMap") {
                        self.config_map_dir(str_of(&cm["name"], "configMap name"))
                    } else if let Some(s) = vol.get("secret") {
                        let name = str_of(&s["secretName"], "secretName");
                        self.secrets
                            .get(name)
                            .unwrap_or_else(|| panic!("the test has no Secret {name}"))
                            .clone()
                    } else {
                        panic!("volume {} of an unemulated kind: {vol}", m.volume)
                    }
                };
                Bind {
                    source,
                    target: m.path,
                    read_only: m.read_only,
                }
            })
            .collect()
    }

    fn launch(&self, i: usize, c: &k8s::manifest::Container, init: bool) -> Launch {
        let p = &self.pods[i];
        let who = PodIdentity {
            name: p.name.clone(),
            namespace: NAMESPACE.into(),
            ip: p.ip.clone(),
        };
        let mut env = c.env(&who);
        if !init && p.ordinal == 0 && self.replication == Replication::Gated {
            // The test's one deviation from the manifests, in a build that refuses bootstrap.
            env.push(("PROGLOG_BOOTSTRAP".into(), "false".into()));
        }
        let security = c.security();
        let busybox = c.image().contains("busybox");
        assert!(
            busybox || c.image().starts_with("proglog"),
            "image {}",
            c.image()
        );
        let filter = match &security.seccomp {
            Seccomp::Localhost(_) => Some(self.filter.clone().expect("the installed profile")),
            // Neither the runtime's default profile nor unconfined restricts more than the
            // host: the busybox containers run without a filter.
            _ => None,
        };
        Launch {
            netns: p.ns.clone(),
            hostname: p.name.clone(),
            root: if busybox {
                self.userland_root(&p.name)
            } else {
                self.rootfs.clone()
            },
            host_userland: busybox,
            binds: self.binds(i, c),
            argv: c.argv(&env),
            env,
            security,
            filter,
            log: self.dir.path().join(format!("{}.{}.log", p.name, c.name())),
        }
    }

    /// The kubelet starting pods, each with a new IP: their networks and DNS names first
    /// (so that no server is resolving names while DNS changes), then per pod the init
    /// containers to completion and the server.
    fn start_pods(&mut self, which: &[usize], round: u8) {
        self.ensure_pods();
        for &i in which {
            let ip = pod_ip(round, i);
            self.pods[i].ip = ip.clone();
            self.net.add(&self.pods[i].ns.clone(), &ip).unwrap();
        }
        self.write_dns();
        for &i in which {
            self.run_init_containers(i);
            self.start_server(i);
        }
    }

    fn run_init_containers(&mut self, i: usize) {
        let t = self.template().clone();
        for c in containers(&t, "initContainers") {
            let l = self.launch(i, &c, true);
            let mut child = runtime::start(&l);
            let deadline = Instant::now() + DEADLINE;
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    Instant::now() < deadline,
                    "init container {} hangs",
                    c.name()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let log = std::fs::read_to_string(&l.log).unwrap_or_default();
            assert!(
                status.success(),
                "init container {} of pod {i}: {status}\n{log}",
                c.name()
            );
        }
    }

    fn start_server(&mut self, i: usize) {
        let t = self.template().clone();
        let main = &containers(&t, "containers")[0];
        let l = self.launch(i, main, false);
        let child = runtime::start(&l);
        self.pods[i].main = Some((child, l));
    }

    fn server_log(&self, i: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.proglog.log", self.pods[i].name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Probes pod `i` as the kubelet does; panics if the server exits meanwhile. Pod 0
    /// exiting with the bootstrap refusal is how the test learns that replication is not in
    /// this build: it then restarts pod 0 with bootstrap off (or fails, if replication is
    /// required).
    fn wait_ready(&mut self, i: usize) {
        let t = self.template().clone();
        let main = &containers(&t, "containers")[0];
        let ready = main.probe("readinessProbe").unwrap();
        let live = main.probe("livenessProbe").unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ip = self.pods[i].ip.clone();
            let code = runtime::http_get(
                NODE_NS,
                &ip,
                ready.port,
                &ready.path,
                Duration::from_secs(ready.timeout_s),
            );
            if code.is_some_and(|c| (200..400).contains(&c)) {
                break;
            }
            let exited = self.pods[i]
                .main
                .as_mut()
                .and_then(|(c, _)| c.try_wait().unwrap());
            if let Some(status) = exited {
                let log = self.server_log(i);
                if i == 0
                    && self.replication == Replication::Unknown
                    && log.contains(BOOTSTRAP_REFUSED)
                {
                    assert!(
                        std::env::var(REQUIRE_REPLICATION).as_deref() != Ok("1"),
                        "{REQUIRE_REPLICATION}=1, but pod 0 refuses the manifest's bootstrap:\n{log}"
                    );
                    self.replication = Replication::Gated;
                    eprintln!(
                        "\n=== REPLICATION CHECKS GATED: pod 0 refused `bootstrap: true` ({status}): \
                         \"{BOOTSTRAP_REFUSED} ...\". Running pod 0 with PROGLOG_BOOTSTRAP=false; \
                         the checks of one replicated cluster are skipped until pod 0 accepts the \
                         manifest as it is ({REQUIRE_REPLICATION}=1 makes this a failure). ===\n"
                    );
                    self.pods[i].main = None;
                    self.start_server(i);
                    continue;
                }
                panic!("pod {i}'s server exited ({status}) before it was ready:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "pod {i} not ready within {DEADLINE:?} (last /readyz: {code:?}):\n{}",
                self.server_log(i)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if i == 0 && self.replication == Replication::Unknown {
            self.replication = Replication::On;
        }
        self.check_confinement(i);
        let ip = self.pods[i].ip.clone();
        let code = runtime::http_get(
            NODE_NS,
            &ip,
            live.port,
            &live.path,
            Duration::from_secs(live.timeout_s),
        );
        assert_eq!(code, Some(200), "pod {i}'s liveness probe");
    }

    /// The server runs as the securityContext says: its user, no capabilities,
    /// no_new_privs, the seccomp filter, and its root is the image's.
    fn check_confinement(&self, i: usize) {
        let (child, l) = self.pods[i].main.as_ref().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let uid = l.security.run_as_user.to_string();
        assert_eq!(field("Uid:"), [uid.as_str(); 4].join(" "), "pod {i}");
        assert_eq!(field("CapEff:"), "0000000000000000", "pod {i}");
        assert_eq!(field("NoNewPrivs:"), "1", "pod {i}");
        assert_eq!(field("Seccomp:"), "2", "pod {i}: the profile's filter");
        let root = std::fs::read_link(format!("/proc/{}/root", child.id())).unwrap();
        assert_eq!(root, self.rootfs, "pod {i}'s root");
    }

    fn wait_all_ready(&mut self) {
        // Pod 0 first: it settles whether the manifest's bootstrap is accepted.
        for i in 0..self.pods.len() {
            self.wait_ready(i);
        }
        let ready: Vec<usize> = (0..self.pods.len()).collect();
        self.set_endpoints(&ready);
        self.log(&format!(
            "all {} pods pass their readiness and liveness probes; the Service spreads over {:?}",
            self.pods.len(),
            self.pods.iter().map(|p| p.ip.as_str()).collect::<Vec<_>>()
        ));
    }

    /// The kubelet's stop (SIGTERM, SIGKILL after the grace period); the pod's network and
    /// DNS name go with it. The server must stop cleanly within the grace period.
    fn stop_pods(&mut self, which: &[usize]) {
        let grace = self.grace();
        let ready: Vec<usize> = (0..self.pods.len())
            .filter(|i| !which.contains(i))
            .collect();
        if !ready.is_empty() {
            self.set_endpoints(&ready);
        }
        for &i in which {
            let pid = self.pods[i].main.as_ref().unwrap().0.id() as i32;
            // SAFETY: kill(2) on our child, not reaped yet: all pods get SIGTERM at once.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for &i in which {
            let (mut child, _) = self.pods[i].main.take().unwrap();
            let (status, killed) = runtime::wait_or_kill(&mut child, grace);
            assert!(
                !killed && status.success(),
                "pod {i} did not stop cleanly within {grace:?} ({status}):\n{}",
                self.server_log(i)
            );
            let ns = self.pods[i].ns.clone();
            self.net.remove(&ns).unwrap();
            self.pods[i].ip.clear();
        }
        self.write_dns();
    }

    /// A CLI call from the client namespace.
    fn cli(&self, addr: &str, server_name: Option<&str>, args: &[&str]) -> Result<String, String> {
        let mut v: Vec<String> = vec![BIN.into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend(["--addr".into(), addr.into()]);
        if !self.client_flags.is_empty() {
            v.extend(self.client_flags.iter().cloned());
            if let Some(n) = server_name {
                v.extend(["--tls-server-name".into(), n.into()]);
            }
        }
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        self.net.run(CLIENT_NS, &v)
    }

    fn service_addr(&self) -> String {
        format!("{CLUSTER_IP}:{}", self.client_port.0)
    }

    /// `cluster members` asked of pod `i` directly.
    fn members(&self, i: usize) -> Option<Vec<Member>> {
        let addr = format!("{}:{}", self.pods[i].ip, self.client_port.1);
        let out = self
            .cli(
                &addr,
                Some(&self.fqdn(i)),
                &["cluster", "members", "--json", "--timeout", "2"],
            )
            .ok()?;
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                Some(Member {
                    name: v["name"].as_str()?.into(),
                    gossip_addr: v["gossip_addr"].as_str()?.into(),
                    state: v["state"].as_str()?.into(),
                    generation: v["generation"].as_u64()?,
                })
            })
            .collect()
    }

    /// Every pod lists exactly the running pods as up, each at its current address.
    fn wait_members(&self) -> Vec<Vec<Member>> {
        let want: BTreeMap<String, String> = self
            .pods
            .iter()
            .map(|p| (p.name.clone(), format!("{}:8401", p.ip)))
            .collect();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let views: Vec<Option<Vec<Member>>> =
                (0..self.pods.len()).map(|i| self.members(i)).collect();
            let ok = views.iter().all(|v| {
                v.as_ref().is_some_and(|rows| {
                    let up: BTreeMap<String, String> = rows
                        .iter()
                        .filter(|m| m.state == "up")
                        .map(|m| (m.name.clone(), m.gossip_addr.clone()))
                        .collect();
                    up == want && rows.iter().filter(|m| m.state == "up").count() == want.len()
                })
            });
            if ok {
                return views.into_iter().map(Option::unwrap).collect();
            }
            assert!(
                Instant::now() < deadline,
                "members not converged to {want:?} within {DEADLINE:?}: {views:#?}\npod 0's log:\n{}",
                self.server_log(0)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Appends `values` through the client Service, one connection per value: the Service
    /// spreads them over the pods. Returns value -> acknowledged offset.
    fn produce_via_service(&self, values: &[String]) -> Vec<(String, u64)> {
        let svc = self.service_name();
        values
            .iter()
            .map(|v| {
                let out = self
                    .cli(&self.service_addr(), Some(&svc), &["produce", "--json", v])
                    .unwrap_or_else(|e| panic!("produce {v} through the Service: {e}"));
                let j: Value = serde_json::from_str(out.trim()).expect("produce --json");
                (v.clone(), j["offset"].as_u64().expect("an offset"))
            })
            .collect()
    }

    /// Every record of pod `i`'s default partition, read from the pod directly.
    fn records(&self, i: usize) -> Vec<(u64, String)> {
        let addr = format!("{}:{}", self.pods[i].ip, self.client_port.1);
        let out = self
            .cli(
                &addr,
                Some(&self.fqdn(i)),
                &["consume", "--json", "--from", "0"],
            )
            .unwrap_or_else(|e| panic!("consume from pod {i}: {e}"));
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("consume --json");
                (
                    v["offset"].as_u64().unwrap(),
                    v["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Every acknowledged record is where it was acknowledged: on every pod with replication
    /// (a follower may apply a committed record a little after the leader acknowledged it:
    /// waited for), without it on the one pod that took it (each value is unique), at its
    /// offset. Returns each pod's records.
    fn check_acknowledged(&self, acked: &[(String, u64)]) -> Vec<Vec<(u64, String)>> {
        let start = Instant::now();
        let mut logs: Vec<_> = (0..self.pods.len()).map(|i| self.records(i)).collect();
        while self.replication == Replication::On && start.elapsed() < DEADLINE {
            let everywhere = acked
                .iter()
                .all(|(value, offset)| logs.iter().all(|l| l.contains(&(*offset, value.clone()))));
            if everywhere {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            logs = (0..self.pods.len()).map(|i| self.records(i)).collect();
        }
        for (value, offset) in acked {
            let holders: Vec<usize> = (0..logs.len())
                .filter(|&i| logs[i].contains(&(*offset, value.clone())))
                .collect();
            match self.replication {
                Replication::On => assert_eq!(
                    holders.len(),
                    logs.len(),
                    "{value}@{offset} is not on every pod: {logs:?}"
                ),
                _ => assert_eq!(
                    holders.len(),
                    1,
                    "{value}@{offset} lost or duplicated: {logs:?}"
                ),
            }
        }
        logs
    }

    /// With replication: one cluster in GetServers through the Service, one leader.
    fn check_one_replicated_cluster(&self) {
        if self.replication != Replication::On {
            eprintln!("GATED (pod 0 refused bootstrap): one cluster in GetServers");
            return;
        }
        // Joining pods become servers once the controller has registered them: wait.
        let start = Instant::now();
        loop {
            let out = self
                .cli(
                    &self.service_addr(),
                    Some(&self.service_name()),
                    &["servers", "--json"],
                )
                .expect("servers through the Service");
            let servers: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let leaders = servers.iter().filter(|s| s["is_leader"] == true).count();
            if servers.len() == self.pods.len() && leaders == 1 {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "GetServers through the Service: want {} servers and one leader within \
                 {DEADLINE:?}, have:\n{out}",
                self.pods.len()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        self.log("GetServers lists the three pods, one leader");
    }
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in the pod"))
}

/// `scripts/image-rootfs` on the binary under test, unpacked; and the check that
/// the binary starts from inside it.
fn image_rootfs(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tar = dir.join("rootfs.tar");
    runtime::sh(&[
        "bash",
        repo.join("scripts/image-rootfs").to_str().unwrap(),
        "--binary",
        BIN,
        "--out",
        tar.to_str().unwrap(),
    ])
    .expect("scripts/image-rootfs");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    runtime::sh(&[
        "tar",
        "-xpf",
        tar.to_str().unwrap(),
        "-C",
        root.to_str().unwrap(),
        "--numeric-owner",
    ])
    .expect("unpacking the image filesystem");
    std::fs::remove_file(&tar).unwrap();
    let version = runtime::sh(&[
        "chroot",
        root.to_str().unwrap(),
        "/usr/local/bin/proglog",
        "--version",
    ])
    .expect("proglog --version chrooted in the image filesystem");
    assert_eq!(
        version.trim(),
        format!("proglog {}", env!("CARGO_PKG_VERSION"))
    );
    root
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

#[test]
fn statefulset_pods_join_pass_probes_serve_through_the_service_and_keep_records_across_restarts() {
    let Some(_turn) = preconditions() else { return };
    let mut c = Cluster::new("base");
    c.check_manifest();
    c.install_seccomp_profile();

    // All pods at once (podManagementPolicy: Parallel).
    c.start_pods(&[0, 1, 2], 1);
    c.wait_all_ready();
    let views = c.wait_members();
    c.log(&format!(
        "every pod lists the three up: {:?}",
        views[0]
            .iter()
            .map(|m| format!("{} {} {}", m.name, m.gossip_addr, m.state))
            .collect::<Vec<_>>()
    ));
    // kubectl exec proglog-0 -- proglog cluster members: the image's client, in the pod.
    let (_, l) = c.pods[0].main.as_ref().unwrap();
    let pid = c.pods[0].main.as_ref().unwrap().0.id();
    let out = runtime::exec(pid, l, &["/usr/local/bin/proglog", "cluster", "members"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        assert!(text.contains(&c.pod_name(i)), "{text}");
    }
    c.log("kubectl exec proglog-0 -- proglog cluster members lists the three");
    c.check_one_replicated_cluster();

    // Clients through the Service address.
    let health = c
        .cli(&c.service_addr(), None, &["health"])
        .expect("health through the Service");
    assert_eq!(health.trim(), "SERVING");
    let mut acked = c.produce_via_service(&values("first", 12));
    let logs = c.check_acknowledged(&acked);
    let spread = logs.iter().filter(|l| !l.is_empty()).count();
    if c.replication != Replication::On {
        assert_eq!(
            spread, 3,
            "the Service spread 12 connections over {spread} pods: {logs:?}"
        );
    }
    let first = c
        .cli(
            &c.service_addr(),
            None,
            &["consume", "--json", "--from", "0", "--count", "1"],
        )
        .expect("consume through the Service");
    let v: Value = serde_json::from_str(first.trim()).unwrap();
    assert!(
        acked
            .iter()
            .any(|(val, off)| *off == 0 && v["value"] == val.as_str()),
        "consume through the Service returned {first}"
    );
    c.log(&format!(
        "12 records acknowledged through the Service ({} per pod), read back through it",
        logs.iter()
            .map(|l| l.len().to_string())
            .collect::<Vec<_>>()
            .join("/")
    ));

    // Pod 1 restarts under a new IP, same volume, same arguments.
    let gen_before = views[0]
        .iter()
        .find(|m| m.name == c.pod_name(1))
        .unwrap()
        .generation;
    c.stop_pods(&[1]);
    c.start_pods(&[1], 2);
    c.wait_ready(1);
    c.set_endpoints(&[0, 1, 2]);
    let views = c.wait_members();
    for v in &views {
        let m = v
            .iter()
            .find(|m| m.name == c.pod_name(1) && m.state == "up")
            .unwrap();
        assert_eq!(m.generation, gen_before + 1, "{views:?}");
    }
    let after = c.check_acknowledged(&acked);
    for (i, (before, now)) in logs.iter().zip(&after).enumerate() {
        assert!(
            now.starts_with(before),
            "pod {i} lost records: {before:?} -> {now:?}"
        );
    }
    acked.extend(c.produce_via_service(&values("second", 6)));
    let logs = c.check_acknowledged(&acked);
    c.log(&format!(
        "pod 1 restarted as {} (generation {}): every record kept, 6 more acknowledged",
        c.pods[1].ip,
        gen_before + 1
    ));

    // Every pod stops, and all start again under new IPs.
    c.stop_pods(&[0, 1, 2]);
    c.start_pods(&[0, 1, 2], 3);
    c.wait_all_ready();
    c.wait_members();
    let after = c.check_acknowledged(&acked);
    for (i, (before, now)) in logs.iter().zip(&after).enumerate() {
        assert!(
            now.starts_with(before),
            "pod {i} lost records: {before:?} -> {now:?}"
        );
    }
    acked.extend(c.produce_via_service(&values("third", 3)));
    c.check_acknowledged(&acked);
    c.check_one_replicated_cluster();
    c.log(&format!(
        "full restart under new IPs: all {} acknowledged records kept, the three joined again",
        acked.len()
    ));

    // Pod 0's volume is lost (replaced by an empty one): with `bootstrap: true` it finds the
    // others' cluster and joins it as a new member, and gets every record; a second cluster
    // would list only itself in GetServers and hold none of them.
    if c.replication == Replication::On {
        c.stop_pods(&[0]);
        for dir in c.pods[0].claims.values() {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        c.start_pods(&[0], 4);
        c.wait_all_ready();
        let log = c.server_log(0);
        assert!(
            log.contains("rather than bootstrapping a second one"),
            "{log}"
        );
        c.check_one_replicated_cluster();
        c.check_acknowledged(&acked);
        c.log(&format!(
            "pod 0 on an empty volume joined the cluster as a new member: all {} acknowledged \
             records on every pod",
            acked.len()
        ));
    }
    if c.replication == Replication::Gated {
        eprintln!("REPLICATION CHECKS GATED: see the notice above; everything else passed");
    }
}

/// `proglog cert` as deploy/README.md says: one CA for clients (it signs the server
/// certificate clients check, and client certificates), another for peers; the Secret's
/// files as its volume shows them (mode from the manifest, group fsGroup). Returns the
/// client flags of the subject `who`.
fn make_certificates(c: &mut Cluster, who: &str) -> Vec<String> {
    let dir = c.dir.path().join("certs");
    let (clients, peers) = (dir.join("clients"), dir.join("peers"));
    let svc = c.service_name();
    let pods = format!("*.{}.{NAMESPACE}.svc.cluster.local", c.headless);
    let cert = |args: &[&str]| {
        runtime::sh(&[&[BIN, "cert"], args].concat())
            .unwrap_or_else(|e| panic!("proglog cert: {e}"));
    };
    let d = |p: &Path| p.to_str().unwrap().to_owned();
    cert(&["ca", "--dir", &d(&clients)]);
    let cluster_local = format!("{svc}.cluster.local");
    cert(&[
        "server",
        "--dir",
        &d(&clients),
        &svc,
        &cluster_local,
        &pods,
        "localhost",
        "127.0.0.1",
    ]);
    cert(&["client", "--dir", &d(&clients), "root"]);
    cert(&["client", "--dir", &d(&clients), "nobody"]);
    cert(&["ca", "--dir", &d(&peers)]);
    cert(&["peer", "--dir", &d(&peers), "--name", "peer", &pods]);

    let secret = dir.join("secret-proglog-tls");
    std::fs::create_dir_all(&secret).unwrap();
    let vol = volume(c.template(), "tls");
    let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let group = c.template()["securityContext"]["fsGroup"]
        .as_u64()
        .map(|g| g as u32);
    for (key, from) in [
        ("ca.pem", clients.join("ca.pem")),
        ("server.pem", clients.join("server.pem")),
        ("server-key.pem", clients.join("server-key.pem")),
        ("peer-ca.pem", peers.join("ca.pem")),
        ("peer.pem", peers.join("peer.pem")),
        ("peer-key.pem", peers.join("peer-key.pem")),
    ] {
        let to = secret.join(key);
        std::fs::copy(&from, &to).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&to, Some(0), group).unwrap();
    }
    c.secrets.insert("proglog-tls".into(), secret);
    let f = |name: &str| d(&clients.join(name));
    vec![
        "--tls-ca-file".into(),
        f("ca.pem"),
        "--tls-cert-file".into(),
        f(&format!("{who}-client.pem")),
        "--tls-key-file".into(),
        f(&format!("{who}-client-key.pem")),
    ]
}

#[test]
fn acl_overlay_pods_gossip_over_peer_tls_and_authorize_clients_by_certificate() {
    let Some(_turn) = preconditions() else { return };
    let mut c = Cluster::new("overlays/acl");
    c.client_flags = make_certificates(&mut c, "root");
    c.install_seccomp_profile();
    c.start_pods(&[0, 1, 2], 1);
    c.wait_all_ready();
    c.wait_members();
    c.log(
        "the three joined over peer TLS (the peer certificate's wildcard name matches each pod's)",
    );
    // One gossip key, created by pod 0 and fetched by the others over the peer channel.
    let keys: Vec<Vec<u8>> = c
        .pods
        .iter()
        .map(|p| {
            std::fs::read(p.claims["data"].join("data/gossip-key.meta")).expect("a gossip key")
        })
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "the pods hold different gossip keys"
    );

    // root may produce and consume, through the Service, by its certificate.
    let mut acked = c.produce_via_service(&values("tls", 6));
    c.check_acknowledged(&acked);
    // nobody holds a valid certificate but no grant; no certificate at all is refused.
    let root_flags = c.client_flags.clone();
    c.client_flags = root_flags
        .iter()
        .map(|f| f.replace("root-client", "nobody-client"))
        .collect();
    let denied = c
        .cli(
            &c.service_addr(),
            Some(&c.service_name()),
            &["produce", "x"],
        )
        .expect_err("nobody may not produce");
    assert!(denied.contains("PERMISSION_DENIED"), "{denied}");
    c.client_flags = root_flags[..2].to_vec();
    let refused = c.cli(
        &c.service_addr(),
        Some(&c.service_name()),
        &["produce", "x"],
    );
    assert!(
        refused.is_err(),
        "a client without a certificate was served: {refused:?}"
    );
    c.client_flags = root_flags;
    c.log("root served through the Service; nobody denied (PERMISSION_DENIED); no certificate refused");

    // Pod 1 restarts under a new IP: it rejoins with the key it kept.
    c.stop_pods(&[1]);
    c.start_pods(&[1], 2);
    c.wait_ready(1);
    c.set_endpoints(&[0, 1, 2]);
    c.wait_members();
    acked.extend(c.produce_via_service(&values("tls-after", 3)));
    c.check_acknowledged(&acked);
    c.check_one_replicated_cluster();
    c.log("pod 1 restarted under a new IP, rejoined with its key; every record kept");
}
