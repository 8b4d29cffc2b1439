//! The resolver (what the cluster looks like: servers, each partition's leader and replicas)
//! and the picker (which server a call goes to), kept together in one [`Cluster`] value.
//!
//! The book's picker keeps a leader it never forgets and panics on a missing attribute; its
//! resolver asks once and never again. Here a route is dropped as soon as a node says it is
//! wrong (`NOT_LEADER`, `NO_LEADER`) or cannot be reached, and discovery runs again when a
//! call needs it (inline, bounded by the call's deadline) or when the view is older than
//! [`Options::refresh_interval`] (in the background, so no call waits for it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::client::{CallOptions, Channel, ClientConfig};
use net::{Code, Status};
use proto::log::v1::{self as pb, paths, DEFAULT_TOPIC};

use crate::errors::{self, ClusterError};

/// How often the view is refreshed in the background while the client is used.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Pause before sending again when no node leads the partition, or when leadership seems
/// to be moving (redirected twice in a row): about an election round.
pub const NO_LEADER_PAUSE: Duration = Duration::from_millis(250);
/// How long calls without a deadline of their own keep trying to find a server or a leader:
/// about an election and a configuration change.
const BUDGET_WITHOUT_DEADLINE: Duration = Duration::from_secs(10);

/// How long a node may hold an append while its partition has no leader before it refuses
/// it `NO_LEADER` (the server's `LEADER_WAIT`). A write is not tried again with less than
/// this (and a pause) left before its deadline: the deadline would cut that try, and an
/// append cut in flight has an unknown outcome, where the refusal before it said for sure
/// that nothing was stored.
const SERVER_LEADER_WAIT: Duration = Duration::from_secs(2);
/// The controller's own group, which DescribeCluster lists first: not a data partition.
const CONTROLLER_TOPIC: &str = "__cluster";
/// Discovery asked again for a partition nobody has described, at most this often (a topic
/// that does not exist must not turn every call into two discovery calls).
const UNKNOWN_PARTITION_REFRESH: Duration = Duration::from_secs(1);

/// Where reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The partition's leader (as Kafka consumers do by default): the freshest view.
    #[default]
    Leader,
    /// Round-robin over the partition's followers (the leader when it has none): spreads the
    /// read load; a follower serves committed records only, and may lag the leader briefly.
    Followers,
}

/// How a [`Cluster`] connects and routes.
#[derive(Debug, Clone)]
pub struct Options {
    /// TLS, limits and the longest connect time (a call's own deadline shortens it).
    pub config: ClientConfig,
    pub read_from: ReadFrom,
    /// Age of the view after which it is refreshed in the background.
    pub refresh_interval: Duration,
    /// With TLS, check a server reached by host name against that name (an address given as
    /// an IP is checked against the IP). Off when the caller named the server explicitly
    /// ([`net::tls::ClientTlsOptions::server_name`]).
    pub server_name_from_host: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: ClientConfig::default(),
            read_from: ReadFrom::Leader,
            refresh_interval: REFRESH_INTERVAL,
            server_name_from_host: true,
        }
    }
}

/// One partition as the client knows it. Addresses are `HOST:PORT` as the cluster names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub leader: Option<String>,
    /// Live replicas other than the leader.
    pub followers: Vec<String>,
    /// The Raft term the leader was learned in (0: from a redirect or GetServers).
    pub term: u64,
}

type Key = (String, u32);

fn key(topic: &str, partition: u32) -> Key {
    let t = if topic.is_empty() {
        DEFAULT_TOPIC
    } else {
        topic
    };
    (t.to_owned(), partition)
}

#[derive(Default)]
struct State {
    /// Open connections by address; a closed one is replaced on next use.
    conns: HashMap<String, Channel>,
    /// Live servers from the last GetServers.
    servers: Vec<String>,
    routes: HashMap<Key, Route>,
    refreshed: Option<Instant>,
    /// Something said the view is wrong: refresh before the next pick.
    stale: bool,
    /// DescribeCluster is not allowed to this client (ACL) or not served: leaders are learned
    /// from GetServers (the default partition) and from redirects.
    describe_denied: bool,
    /// Round-robin positions.
    next_server: usize,
    next_read: usize,
}

struct Inner {
    seeds: Vec<String>,
    options: Options,
    state: RefCell<State>,
    /// One discovery at a time; others wait for it.
    refreshing: Cell<bool>,
    refreshed: event_listener::Event,
    /// A warning that no server answers was logged (once per client: a command line
    /// waiting out its deadline says why, and a long-lived client's log is not flooded).
    warned_unreachable: Cell<bool>,
}

/// A cluster-aware client: the resolver and picker together. Cheap to clone; `!Send`.
#[derive(Clone)]
pub struct Cluster {
    inner: Rc<Inner>,
}

/// Clears the "refreshing" flag and wakes waiters however discovery ends (also when its
/// future is dropped by a deadline).
struct RefreshGuard<'a>(&'a Inner);

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        self.0.refreshing.set(false);
        self.0.refreshed.notify(usize::MAX);
    }
}

/// Why a connection could not be made, and whether trying again would only repeat it (a
/// refused TLS handshake: the certificates and settings stay what they are), where a
/// refused or dropped connection may be a server starting or restarting.
struct Failure {
    status: Status,
    permanent: bool,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure {
            status,
            permanent: false,
        }
    }
}

fn no_connection(what: &str, last: Option<Status>) -> Status {
    match last {
        Some(e) => Status::unavailable(format!("no connection available {what}: {}", e.message)),
        None => Status::unavailable(format!("no connection available {what}")),
    }
}

/// How long discovery waits for one node's answer (GetServers, then DescribeCluster) before
/// it asks the next, when there is a next.
const DISCOVERY_TRY: Duration = Duration::from_secs(1);

fn call_options(deadline: Instant) -> CallOptions {
    CallOptions::timeout(deadline.saturating_duration_since(Instant::now()))
}

/// `HOST:PORT` with a port number and a host (an IPv6 address in brackets).
fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
        }
        None => false,
    }
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

impl Cluster {
    /// A client for the cluster these servers belong to (`HOST:PORT` each; one is enough).
    /// Nothing is connected yet: the first call discovers the cluster.
    pub fn new(seeds: Vec<String>, options: Options) -> Result<Cluster, Status> {
        let seeds: Vec<String> = seeds
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(Status::invalid_argument("no server address given"));
        }
        if let Some(bad) = seeds.iter().find(|s| !is_host_port(s)) {
            return Err(Status::invalid_argument(format!(
                "server address {bad:?} is not HOST:PORT (e.g. 127.0.0.1:8400, [::1]:8400, \
                 node-0.example:8400)"
            )));
        }
        Ok(Cluster {
            inner: Rc::new(Inner {
                seeds,
                options,
                state: RefCell::new(State::default()),
                refreshing: Cell::new(false),
                refreshed: event_listener::Event::new(),
                warned_unreachable: Cell::new(false),
            }),
        })
    }

    /// The live servers as last learned (the seeds until the first discovery).
    pub fn servers(&self) -> Vec<String> {
        let st = self.inner.state.borrow();
        if st.servers.is_empty() {
            self.inner.seeds.clone()
        } else {
            st.servers.clone()
        }
    }

    /// The partition as last learned, if it was.
    pub fn route(&self, topic: &str, partition: u32) -> Option<Route> {
        self.inner
            .state
            .borrow()
            .routes
            .get(&key(topic, partition))
            .cloned()
    }

    /// A connection to `addr`, made within the deadline if there is none open.
    pub async fn channel(&self, addr: &str, deadline: Instant) -> Result<Channel, Status> {
        self.connect_to(addr, deadline).await.map_err(|f| f.status)
    }

    /// [`channel`](Self::channel), saying whether a failure would recur at once.
    async fn connect_to(&self, addr: &str, deadline: Instant) -> Result<Channel, Failure> {
        {
            let mut st = self.inner.state.borrow_mut();
            match st.conns.get(addr) {
                Some(ch) if !ch.is_closed() => return Ok(ch.clone()),
                Some(_) => {
                    st.conns.remove(addr);
                }
                None => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "deadline passed before connecting to {addr}"
            ))
            .into());
        }
        // A host name may resolve to several addresses (localhost: ::1 and 127.0.0.1): the
        // first that accepts wins.
        let socks: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| Failure::from(Status::unavailable(format!("resolving {addr}: {e}"))))?
            .collect();
        let host = host_of(addr);
        let mut config = self.inner.options.config.clone();
        if self.inner.options.server_name_from_host && host.parse::<IpAddr>().is_err() {
            if let Some(tls) = config.tls.take() {
                config.tls = Some(tls.with_server_name(host).map_err(|e| Failure {
                    status: Status::invalid_argument(format!("server name {host:?}: {e}")),
                    permanent: true,
                })?);
            }
        }
        let mut last = Failure::from(Status::unavailable(format!(
            "{addr} resolves to no address"
        )));
        let mut connected = None;
        for sock in socks {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut config = config.clone();
            config.connect_timeout = config.connect_timeout.min(left);
            match Channel::connect(sock, config).await {
                Ok(ch) => {
                    connected = Some(ch);
                    break;
                }
                // The transport's error names the socket; the address as given is added
                // when it is not the same text (a host name, a resolved address).
                Err(e @ net::Error::Connect { addr: a, .. }) if a.to_string() == addr => {
                    last = Status::unavailable(e.to_string()).into()
                }
                Err(e) => {
                    last = Failure {
                        status: Status::unavailable(format!("connecting to {addr}: {e}")),
                        permanent: e.is_tls_refusal(),
                    }
                }
            }
        }
        let ch = connected.ok_or(last)?;
        self.inner
            .state
            .borrow_mut()
            .conns
            .insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// A node could not be reached: forget its connection, and any route through it.
    fn unreachable(&self, addr: &str) {
        let mut st = self.inner.state.borrow_mut();
        st.conns.remove(addr);
        for r in st.routes.values_mut() {
            if r.leader.as_deref() == Some(addr) {
                r.leader = None;
            }
        }
        st.stale = true;
    }

    /// Servers to try, in order: learned ones (rotating, so load and failures spread), then
    /// seeds not among them.
    fn candidates(&self) -> Vec<String> {
        let mut st = self.inner.state.borrow_mut();
        let n = st.servers.len();
        let mut out: Vec<String> = Vec::with_capacity(n + self.inner.seeds.len());
        if n > 0 {
            let start = st.next_server % n;
            st.next_server = st.next_server.wrapping_add(1);
            out.extend(st.servers[start..].iter().cloned());
            out.extend(st.servers[..start].iter().cloned());
        }
        for s in &self.inner.seeds {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Asks the cluster again for its servers and leaders, within `deadline`. One discovery
    /// runs at a time; a caller that finds one running waits for it instead.
    pub async fn refresh(&self, deadline: Instant) -> Result<(), Status> {
        self.refresh_for(None, deadline).await
    }

    async fn refresh_for(&self, want: Option<&Key>, deadline: Instant) -> Result<(), Status> {
        let inner = &self.inner;
        if inner.refreshing.get() {
            let listener = inner.refreshed.listen();
            if inner.refreshing.get() {
                let left = deadline.saturating_duration_since(Instant::now());
                futures_lite::future::or(listener, async {
                    glommio::timer::sleep(left).await;
                })
                .await;
            }
            return Ok(());
        }
        inner.refreshing.set(true);
        let _guard = RefreshGuard(inner);
        self.discover(want, deadline).await
    }

    async fn discover(&self, want: Option<&Key>, deadline: Instant) -> Result<(), Status> {
        let mut last = None;
        let candidates = self.candidates();
        let n = candidates.len();
        for (i, addr) in candidates.into_iter().enumerate() {
            if Instant::now() >= deadline {
                break;
            }
            // A node that takes the connection and never answers (paused, wedged) must not
            // hold the whole deadline while others could answer: each but the last gets
            // DISCOVERY_TRY.
            let try_until = if i + 1 < n {
                deadline.min(Instant::now() + DISCOVERY_TRY)
            } else {
                deadline
            };
            let ch = match self.channel(&addr, try_until).await {
                Ok(ch) => ch,
                Err(e) => {
                    self.unreachable(&addr);
                    last = Some(e);
                    continue;
                }
            };
            let servers: pb::GetServersResponse = match ch
                .unary_prost(
                    paths::GET_SERVERS,
                    &pb::GetServersRequest {},
                    call_options(try_until),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("GetServers on {addr}: {e}");
                    if ch.is_closed() {
                        self.unreachable(&addr);
                    }
                    last = Some(e);
                    continue;
                }
            };
            let describe = self.describe(&addr, &ch, try_until).await;
            self.apply(&servers, describe.as_ref());
            // A partition the answering node holds no replica of: it knows the replicas,
            // not the leader. Ask a replica.
            if let (Some(k), Some(d)) = (want, describe.as_ref()) {
                self.describe_from_replicas(k, &addr, d, deadline).await;
            }
            let mut st = self.inner.state.borrow_mut();
            st.refreshed = Some(Instant::now());
            st.stale = false;
            return Ok(());
        }
        Err(no_connection("to discover the cluster", last))
    }

    /// DescribeCluster on `ch`, unless this client may not ask (ACL) or the server does not
    /// serve it; then `None` from now on.
    async fn describe(
        &self,
        addr: &str,
        ch: &Channel,
        deadline: Instant,
    ) -> Option<pb::DescribeClusterResponse> {
        if self.inner.state.borrow().describe_denied {
            return None;
        }
        match ch
            .unary_prost(
                paths::DESCRIBE_CLUSTER,
                &pb::DescribeClusterRequest {},
                call_options(deadline),
            )
            .await
        {
            Ok(d) => Some(d),
            Err(e) => {
                if matches!(
                    e.code,
                    Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
                ) {
                    log::info!("DescribeCluster on {addr}: {e}; leaders come from GetServers and redirects");
                    self.inner.state.borrow_mut().describe_denied = true;
                } else {
                    log::debug!("DescribeCluster on {addr}: {e}");
                }
                None
            }
        }
    }

    async fn describe_from_replicas(
        &self,
        k: &Key,
        asked: &str,
        d: &pb::DescribeClusterResponse,
        deadline: Instant,
    ) {
        if self.route(&k.0, k.1).is_some_and(|r| r.leader.is_some()) {
            return;
        }
        let addrs = node_addrs(d);
        let replicas: Vec<String> = d
            .partitions
            .iter()
            .filter(|p| p.topic == k.0 && p.partition == k.1)
            .flat_map(|p| p.replicas.iter())
            .filter_map(|r| addrs.get(&r.node).cloned())
            .filter(|a| a != asked)
            .collect();
        for addr in replicas {
            let Ok(ch) = self.channel(&addr, deadline).await else {
                self.unreachable(&addr);
                continue;
            };
            if let Some(d) = self.describe(&addr, &ch, deadline).await {
                self.apply_describe(&d);
            }
            if self.route(&k.0, k.1).is_some_and(|r| r.leader.is_some()) {
                return;
            }
        }
    }

    fn apply(
        &self,
        servers: &pb::GetServersResponse,
        describe: Option<&pb::DescribeClusterResponse>,
    ) {
        {
            let mut st = self.inner.state.borrow_mut();
            let live: Vec<String> = servers
                .servers
                .iter()
                .map(|s| s.rpc_addr.clone())
                .filter(|a| !a.is_empty())
                .collect();
            if !live.is_empty() {
                st.servers = live;
            }
            // Connections to nodes that are gone are closed.
            let keep: Vec<String> = st.servers.clone();
            let seeds = &self.inner.seeds;
            st.conns
                .retain(|a, ch| !ch.is_closed() && (keep.contains(a) || seeds.contains(a)));
        }
        match describe {
            Some(d) => self.apply_describe(d),
            None => {
                // The book's view: the default partition's leader only.
                let mut st = self.inner.state.borrow_mut();
                let leader = servers
                    .servers
                    .iter()
                    .find(|s| s.is_leader)
                    .map(|s| s.rpc_addr.clone());
                let followers = servers
                    .servers
                    .iter()
                    .filter(|s| !s.is_leader)
                    .map(|s| s.rpc_addr.clone())
                    .collect();
                st.routes.insert(
                    key(DEFAULT_TOPIC, 0),
                    Route {
                        leader,
                        followers,
                        term: 0,
                    },
                );
            }
        }
    }

    /// Merges one node's view: a leader it reports from its own replica replaces ours unless
    /// ours is from a later term; replicas come from the controller's placement.
    fn apply_describe(&self, d: &pb::DescribeClusterResponse) {
        let addrs = node_addrs(d);
        let live: Vec<u64> = d
            .nodes
            .iter()
            .filter(|n| n.live && !n.removed)
            .map(|n| n.id)
            .collect();
        let mut st = self.inner.state.borrow_mut();
        let mut seen = Vec::new();
        for p in &d.partitions {
            if p.topic == CONTROLLER_TOPIC {
                continue;
            }
            let k = key(&p.topic, p.partition);
            seen.push(k.clone());
            let route = st.routes.entry(k).or_default();
            if p.local && p.term >= route.term {
                route.leader = match p.leader {
                    0 => None,
                    id => addrs.get(&id).cloned(),
                };
                route.term = p.term;
            }
            // Learners may be far behind: reads go to voters (or, where the answering node
            // has no view of the group, to the placed replicas).
            let leader = route.leader.clone();
            route.followers = p
                .replicas
                .iter()
                .filter(|r| r.voter || !p.local)
                .filter(|r| live.contains(&r.node))
                .filter_map(|r| addrs.get(&r.node).cloned())
                .filter(|a| Some(a) != leader.as_ref())
                .collect();
        }
        // Topics deleted since: forget them.
        st.routes.retain(|k, _| seen.contains(k));
    }

    /// Refreshes before a pick when the view is known to be wrong or missing (inline, within
    /// the deadline), or in the background when it is merely old.
    /// Refreshes the routes when they are stale or unknown (waiting for it), or in the
    /// background when they are old. The refresh's failure when one was waited for.
    async fn freshen(&self, k: &Key, deadline: Instant) -> Option<Status> {
        let (now_needed, aged) = {
            let st = self.inner.state.borrow();
            let age = st.refreshed.map(|t| t.elapsed());
            let unknown = !st.describe_denied
                && !st.routes.contains_key(k)
                && age.is_none_or(|a| a >= UNKNOWN_PARTITION_REFRESH);
            (
                st.stale || age.is_none() || unknown,
                age.is_some_and(|a| a >= self.inner.options.refresh_interval),
            )
        };
        if now_needed {
            if let Err(e) = self.refresh_for(Some(k), deadline).await {
                log::debug!("refresh: {e}");
                return Some(e);
            }
        } else if aged && !self.inner.refreshing.get() {
            let me = self.clone();
            let until = Instant::now() + BUDGET_WITHOUT_DEADLINE;
            glommio::spawn_local(async move {
                if let Err(e) = me.refresh(until).await {
                    log::debug!("background refresh: {e}");
                }
            })
            .detach();
        }
        None
    }

    /// The server a produce for the partition goes to, connected: its leader; with none
    /// known or reachable, any server (it forwards, or names the leader). Keeps trying until
    /// the deadline; fails with UNAVAILABLE "no connection available" when nothing answers.
    pub async fn leader(
        &self,
        topic: &str,
        partition: u32,
        deadline: Instant,
    ) -> Result<(String, Channel), Status> {
        self.pick(&key(topic, partition), false, deadline).await
    }

    /// The server a read of the partition goes to, connected: per [`Options::read_from`],
    /// the leader or the next follower in turn; else any server.
    pub async fn reader(
        &self,
        topic: &str,
        partition: u32,
        deadline: Instant,
    ) -> Result<(String, Channel), Status> {
        let read = self.inner.options.read_from == ReadFrom::Followers;
        self.pick(&key(topic, partition), read, deadline).await
    }

    /// Any server, connected (for calls that any node answers: admin, health).
    pub async fn any(&self, deadline: Instant) -> Result<(String, Channel), Status> {
        let mut last = None;
        loop {
            if let Some(found) = self
                .first_connected(self.candidates(), deadline, &mut last)
                .await
                .map_err(|st| no_connection("to any server", Some(st)))?
            {
                return Ok(found);
            }
            if Instant::now() + NO_LEADER_PAUSE >= deadline {
                return Err(no_connection("to any server", last));
            }
            self.warn_unreachable(last.as_ref(), deadline);
            glommio::timer::sleep(NO_LEADER_PAUSE).await;
        }
    }

    /// Says once that no server could be reached and that the client keeps trying (a server
    /// may be starting or restarting), so that waiting out the deadline is not silent.
    fn warn_unreachable(&self, last: Option<&Status>, deadline: Instant) {
        let Some(e) = last else { return };
        if self.inner.warned_unreachable.replace(true) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        log::warn!(
            "no server reachable ({}); trying again for up to {:.0} s",
            e.message,
            left.as_secs_f64().ceil()
        );
    }

    /// The first of `order` that connects within `deadline`; the others are marked
    /// unreachable on the way, and `last` keeps the latest failure. `Err` with that failure
    /// when every address refused in a way that trying again would repeat (a refused TLS
    /// handshake).
    async fn first_connected(
        &self,
        order: Vec<String>,
        deadline: Instant,
        last: &mut Option<Status>,
    ) -> Result<Option<(String, Channel)>, Status> {
        let mut hopeless = None;
        for addr in order {
            match self.connect_to(&addr, deadline).await {
                Ok(ch) => return Ok(Some((addr, ch))),
                Err(f) => {
                    self.unreachable(&addr);
                    hopeless = match hopeless {
                        None | Some(true) => Some(f.permanent),
                        Some(false) => Some(false),
                    };
                    *last = Some(f.status);
                }
            }
        }
        match (hopeless, last.take()) {
            (Some(true), Some(st)) => Err(st),
            (_, l) => {
                *last = l;
                Ok(None)
            }
        }
    }

    async fn pick(
        &self,
        k: &Key,
        follower_read: bool,
        deadline: Instant,
    ) -> Result<(String, Channel), Status> {
        let mut last = None;
        loop {
            // No node answered discovery before the deadline (paused, wedged): a connection
            // to one of them now would only start a call with no time left to answer it.
            if let Some(e) = self.freshen(k, deadline).await {
                if Instant::now() >= deadline {
                    return Err(Status::new(
                        Code::DeadlineExceeded,
                        format!(
                            "no server answered for {}/{} before the deadline ({})",
                            k.0, k.1, e.message
                        ),
                    ));
                }
            }
            let mut order = Vec::new();
            {
                let mut st = self.inner.state.borrow_mut();
                let next = st.next_read;
                if let Some(r) = st.routes.get(k) {
                    if follower_read && !r.followers.is_empty() {
                        let n = r.followers.len();
                        order.extend((0..n).map(|i| r.followers[(next + i) % n].clone()));
                    }
                    order.extend(r.leader.iter().cloned());
                }
                if follower_read {
                    st.next_read = next.wrapping_add(1);
                }
            }
            for a in self.candidates() {
                if !order.contains(&a) {
                    order.push(a);
                }
            }
            if let Some(found) = self
                .first_connected(order, deadline, &mut last)
                .await
                .map_err(|st| no_connection(&format!("for {}/{}", k.0, k.1), Some(st)))?
            {
                return Ok(found);
            }
            if Instant::now() + NO_LEADER_PAUSE >= deadline {
                return Err(no_connection(&format!("for {}/{}", k.0, k.1), last));
            }
            self.warn_unreachable(last.as_ref(), deadline);
            glommio::timer::sleep(NO_LEADER_PAUSE).await;
        }
    }

    /// Tells the client how a call on `addr` for the partition ended, so the next pick is
    /// right: `NOT_LEADER` naming a leader is used at once; `NOT_LEADER` without one,
    /// `NO_LEADER`, a lost connection or a timeout make the next pick refresh first.
    pub fn report(&self, topic: &str, partition: u32, addr: &str, status: &Status) {
        let k = key(topic, partition);
        let mut st = self.inner.state.borrow_mut();
        match errors::cluster_error(status) {
            Some(ClusterError::NotLeader {
                leader_addr: Some(leader),
                ..
            }) if !leader.is_empty() => {
                let r = st.routes.entry(k).or_default();
                r.followers.retain(|f| f != &leader);
                if let Some(old) = r.leader.replace(leader) {
                    if !r.followers.contains(&old) && old != addr {
                        r.followers.push(old);
                    }
                }
            }
            Some(ClusterError::NotLeader { .. } | ClusterError::NoLeader) => {
                if let Some(r) = st.routes.get_mut(&k) {
                    r.leader = None;
                }
                st.stale = true;
            }
            Some(ClusterError::OutcomeUnknown) => {}
            None => match status.code {
                Code::Unavailable | Code::Cancelled | Code::Internal => {
                    if st.conns.get(addr).is_none_or(Channel::is_closed) {
                        st.conns.remove(addr);
                        if let Some(r) = st.routes.get_mut(&k) {
                            if r.leader.as_deref() == Some(addr) {
                                r.leader = None;
                            }
                        }
                    }
                    st.stale = true;
                }
                Code::DeadlineExceeded => st.stale = true,
                _ => {}
            },
        }
    }

    /// One Produce to the partition's leader, sent again only where that cannot duplicate it
    /// (see [`Self::unary_write`]).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        value: Bytes,
        timeout: Option<Duration>,
    ) -> Result<u64, Status> {
        let req = pb::ProduceRequest {
            record: Some(pb::Record {
                value,
                ..Default::default()
            }),
            topic: topic.to_owned(),
            partition,
        };
        let resp: pb::ProduceResponse = self
            .unary_write(paths::PRODUCE, topic, partition, &req, timeout)
            .await?;
        Ok(resp.offset)
    }

    /// One ProduceBatch (atomic) to the partition's leader.
    pub async fn produce_batch(
        &self,
        req: &pb::ProduceBatchRequest,
        timeout: Option<Duration>,
    ) -> Result<pb::ProduceBatchResponse, Status> {
        self.unary_write(
            paths::PRODUCE_BATCH,
            &req.topic,
            req.partition,
            req,
            timeout,
        )
        .await
    }

    /// A write sent to the leader, and again only after `NOT_LEADER` (at the leader named,
    /// at once; after a pause when redirected again) or `NO_LEADER` (after a pause), until
    /// the deadline (or, without one, for about an election). A failure to connect is
    /// retried inside the pick: nothing was sent (when the pick gives up, its failure is
    /// marked [`errors::NOT_SENT`]). Anything else, a timeout or a connection lost mid-call
    /// included, is returned as it is: the write may have been appended.
    async fn unary_write<Req, Resp>(
        &self,
        path: &str,
        topic: &str,
        partition: u32,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let deadline = Instant::now() + timeout.unwrap_or(BUDGET_WITHOUT_DEADLINE);
        let mut redirected = false;
        loop {
            // Not sent this try, and every earlier try was refused: nothing was stored.
            let (addr, ch) = self
                .leader(topic, partition, deadline)
                .await
                .map_err(errors::not_sent)?;
            let opts = match timeout {
                Some(_) => call_options(deadline),
                None => CallOptions::default(),
            };
            let st = match ch.unary_prost(path, req, opts).await {
                Ok(r) => return Ok(r),
                Err(st) => st,
            };
            self.report(topic, partition, &addr, &st);
            let named = matches!(
                errors::cluster_error(&st),
                Some(ClusterError::NotLeader { leader_addr: Some(ref a), .. }) if a != &addr
            );
            // A redirect to the leader named goes at once; a try that may meet a node with
            // no leader needs time for its wait.
            let wait = if named && !redirected {
                Duration::ZERO
            } else {
                NO_LEADER_PAUSE + SERVER_LEADER_WAIT
            };
            if !errors::produce_retryable(&st) || Instant::now() + wait >= deadline {
                return Err(st);
            }
            if !named || redirected {
                glommio::timer::sleep(NO_LEADER_PAUSE).await;
            }
            redirected = named;
        }
    }

    /// One ConsumeBatch from the leader or a follower (per [`Options::read_from`]). Reads
    /// change nothing, so any UNAVAILABLE (a lost connection, a node without a leader) is
    /// tried again on the next server until the deadline.
    pub async fn consume_batch(
        &self,
        req: &pb::ConsumeBatchRequest,
        timeout: Option<Duration>,
    ) -> Result<pb::ConsumeBatchResponse, Status> {
        let deadline = Instant::now() + timeout.unwrap_or(BUDGET_WITHOUT_DEADLINE);
        // Why the cluster could not serve the read the last time it said so: a deadline that
        // then passes on the next try tells less than that does ("no leader ...").
        let mut unavailable: Option<Status> = None;
        loop {
            let (addr, ch) = self.reader(&req.topic, req.partition, deadline).await?;
            let opts = match timeout {
                Some(_) => call_options(deadline),
                None => CallOptions::default(),
            };
            let st = match ch.unary_prost(paths::CONSUME_BATCH, req, opts).await {
                Ok(r) => return Ok(r),
                Err(st) => st,
            };
            self.report(&req.topic, req.partition, &addr, &st);
            if st.code == Code::DeadlineExceeded {
                if let Some(u) = unavailable {
                    return Err(Status::unavailable(format!(
                        "{} (still so when the deadline passed)",
                        u.message
                    )));
                }
            }
            if st.code != Code::Unavailable || Instant::now() + NO_LEADER_PAUSE >= deadline {
                return Err(st);
            }
            unavailable = Some(st);
            glommio::timer::sleep(NO_LEADER_PAUSE).await;
        }
    }
}

/// Raft node id to RPC address, for nodes not removed.
fn node_addrs(d: &pb::DescribeClusterResponse) -> HashMap<u64, String> {
    d.nodes
        .iter()
        .filter(|n| !n.removed && !n.rpc_addr.is_empty())
        .map(|n| (n.id, n.rpc_addr.clone()))
        .collect()
}
