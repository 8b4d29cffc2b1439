//! Runs a [`Core`] on the current glommio executor: one UDP socket, one task receiving from
//! it, one task per pending timer (every timer foca asks for is delivered, or dropped only
//! when membership stops), host names resolved on a helper thread at every join attempt (a
//! pod's address changes when it restarts; `getaddrinfo` blocks, the executor must not).
//!
//! With peer TLS and no gossip key in the data directory, a node with start-join addresses
//! first fetches the key: for each resolved join address it asks the member there for its
//! RPC address (an unauthenticated query, see [`super::envelope`]), opens the peer channel
//! to it (mutual TLS, certificate checked against the join host name) and asks for the key;
//! it retries with backoff until one member gives it, or, for a node that may bootstrap the
//! cluster (`create_key_after`), until that long has passed: then it creates the key, as a
//! node without join addresses does.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use event_listener::Event;
use futures_channel::{mpsc, oneshot};
use futures_lite::future::or;
use futures_lite::StreamExt;
use glommio::net::UdpSocket;
use net::peer::PeerTls;

use super::core::{Core, Effects, MembershipConfig};
use super::envelope::{self, Opened};
use super::identity::{NodeId, NodeIdentity};
use super::key::GossipKey;
use super::peer::{self, KeyService};
use super::view::{GossipStats, Member, MemberList, MemberState, MembershipWatch, Shared};
use super::MembershipError;

/// Everything a node's membership needs, resolved by the server's configuration.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// Holds `gossip-key.meta`.
    pub data_dir: PathBuf,
    /// From [`super::store::start_generation`], called once per start of the node.
    pub node_id: NodeId,
    pub generation: u64,
    pub node_name: String,
    /// Where the UDP socket binds (may be a wildcard).
    pub bind: SocketAddr,
    /// The gossip address others use: never a wildcard; port 0 means the bound port.
    pub advertise: SocketAddr,
    /// The RPC address others use.
    pub rpc_addr: SocketAddr,
    /// `host:port` of members to join, resolved afresh at every attempt.
    pub join: Vec<String>,
    /// Peer TLS: gossip is authenticated with the cluster key when set.
    pub peer_tls: Option<PeerTls>,
    /// With peer TLS, join addresses and no key yet: create the key if no member gave it
    /// within this long (a node given `--bootstrap` too, which bootstraps the cluster when
    /// no member answers); `None`: keep asking (a joining node).
    pub create_key_after: Option<Duration>,
    pub config: MembershipConfig,
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// A running membership: `Send`, so the thread that started it can keep it.
#[derive(Debug)]
pub struct Membership {
    watch: MembershipWatch,
    commands: mpsc::UnboundedSender<Command>,
    node_id: NodeId,
    generation: u64,
    gossip_addr: SocketAddr,
}

impl Membership {
    /// Starts membership on the current glommio executor and returns at once; its tasks run
    /// on this executor until [`leave`](Self::leave).
    pub fn start(
        settings: MembershipSettings,
        keys: KeyService,
    ) -> Result<Membership, MembershipError> {
        if settings.advertise.ip().is_unspecified() {
            return Err(MembershipError::Config(format!(
                "the gossip address to advertise, {}, is a wildcard: set --advertise-addr to an address other nodes can reach",
                settings.advertise
            )));
        }
        let socket = bind_udp(settings.bind)?;
        let bound = socket.local_addr().map_err(|e| MembershipError::Bind {
            addr: settings.bind,
            source: e.into(),
        })?;
        let mut advertise = settings.advertise;
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        let (node_id, generation) = (settings.node_id, settings.generation);
        let started_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let identity = NodeIdentity {
            node_id,
            generation,
            renewal: 0,
            started_ms,
            name: NodeIdentity::bounded_name(&settings.node_name),
            gossip_addr: advertise,
            rpc_addr: settings.rpc_addr,
        };
        let key = match &settings.peer_tls {
            None => None,
            Some(_) => match GossipKey::load(&settings.data_dir)? {
                Some(k) => Some(k),
                None if settings.join.is_empty() => {
                    let k = GossipKey::generate()?;
                    k.store(&settings.data_dir)?;
                    log::info!(
                        "created the cluster's gossip key (id {:08x}) in {}",
                        k.id(),
                        settings.data_dir.display()
                    );
                    Some(k)
                }
                None => None,
            },
        };
        if let Some(k) = &key {
            keys.set(k.clone());
        }
        let shared = Arc::new(Shared::default());
        // The first list: this node alone, until the core publishes.
        shared.publish(MemberList {
            version: 0,
            as_of: Duration::ZERO,
            members: vec![Member::from_identity(
                &identity,
                MemberState::Up,
                Duration::ZERO,
                true,
            )],
        });
        log::info!(
            "gossip on {bound} (advertised {advertise}) as {:?}, authentication {}, join {:?}",
            identity,
            if settings.peer_tls.is_some() {
                "HMAC-SHA256 with the cluster key"
            } else {
                "off (no peer TLS)"
            },
            settings.join
        );
        let (tx, rx) = mpsc::unbounded();
        let started = Instant::now();
        let _ = shared.clock.set(started);
        let driver = Rc::new(Driver {
            socket,
            started,
            core: RefCell::new(None),
            stopped: Cell::new(false),
            stop: Event::new(),
            resolving: Cell::new(false),
            shared: shared.clone(),
            join: settings.join.clone(),
            config: settings.config.clone(),
        });
        let pending = PendingCore {
            identity: identity.clone(),
            key,
            peer_tls: settings.peer_tls.clone(),
            data_dir: settings.data_dir.clone(),
            keys,
            create_key_after: settings.create_key_after,
        };
        glommio::spawn_local(driver.clone().run(pending)).detach();
        glommio::spawn_local(driver.commands(rx)).detach();
        Ok(Membership {
            watch: MembershipWatch::new(shared),
            commands: tx,
            node_id,
            generation,
            gossip_addr: advertise,
        })
    }

    pub fn watch(&self) -> MembershipWatch {
        self.watch.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The advertised gossip address (with the bound port when 0 was asked for).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Leaves the cluster cleanly (others list this node as left, not down) and stops.
    /// Callable from any thread; returns once the departure went out, or after `timeout`.
    pub async fn leave(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.unbounded_send(Command::Leave(tx)).is_err() {
            return;
        }
        let timer = async {
            // A plain thread-free timer would need an executor; this runs on any thread.
            let (t, r) = oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(timeout);
                let _ = t.send(());
            });
            let _ = r.await;
        };
        or(
            async {
                let _ = rx.await;
            },
            timer,
        )
        .await;
    }
}

/// What the core is made of once the gossip key is known.
/// What [`Driver::fetch_key`] came back with.
enum Fetched {
    Key(GossipKey),
    /// No member gave it within this long.
    NoneWithin(Duration),
    Stopped,
}

struct PendingCore {
    identity: NodeIdentity,
    key: Option<GossipKey>,
    peer_tls: Option<PeerTls>,
    data_dir: PathBuf,
    keys: KeyService,
    create_key_after: Option<Duration>,
}

struct Driver {
    socket: UdpSocket,
    started: Instant,
    core: RefCell<Option<Core>>,
    stopped: Cell<bool>,
    stop: Event,
    resolving: Cell<bool>,
    shared: Arc<Shared>,
    join: Vec<String>,
    config: MembershipConfig,
}

/// Binds without SO_REUSEPORT (glommio's own bind sets it): a second node on the same
/// gossip port must fail to start, not silently split the datagrams with the first.
fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, MembershipError> {
    let fail = |source| MembershipError::Bind { addr, source };
    let std_socket = std::net::UdpSocket::bind(addr).map_err(fail)?;
    std_socket.set_nonblocking(true).map_err(fail)?;
    // SAFETY: the descriptor comes from `into_raw_fd` of a socket we own, so it is open,
    // a UDP socket, and owned by nothing else from here on.
    let mut socket = unsafe { UdpSocket::from_raw_fd(std_socket.into_raw_fd()) };
    socket.set_buffer_size(64 * 1024);
    Ok(socket)
}

/// Resolves `host:port` strings on a helper thread: `(host, address)` pairs.
async fn resolve(names: Vec<String>) -> Vec<(String, SocketAddr)> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("proglog-resolve".into())
        .spawn(move || {
            let mut out = Vec::new();
            for name in names {
                let host = host_of(&name);
                match name.to_socket_addrs() {
                    Ok(addrs) => out.extend(addrs.map(|a| (host.clone(), a))),
                    Err(e) => log::warn!("gossip: resolving {name:?}: {e}"),
                }
            }
            let _ = tx.send(out);
        });
    match spawned {
        Ok(_) => rx.await.unwrap_or_default(),
        Err(e) => {
            log::warn!("gossip: could not start a resolver thread: {e}");
            Vec::new()
        }
    }
}

/// The host part of `host:port` or `[v6]:port`, used as the TLS server name.
pub fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

impl Driver {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn stopped(&self) {
        loop {
            if self.stopped.get() {
                return;
            }
            let l = self.stop.listen();
            if self.stopped.get() {
                return;
            }
            l.await;
        }
    }

    fn halt(&self) {
        self.stopped.set(true);
        self.stop.notify(usize::MAX);
    }

    /// Runs `f` on the core (if it exists yet) and carries out what it asked.
    async fn with_core(self: &Rc<Self>, f: impl FnOnce(&mut Core, Duration, &mut Effects)) {
        let mut fx = Effects::default();
        {
            let mut core = self.core.borrow_mut();
            let Some(core) = core.as_mut() else { return };
            f(core, self.now(), &mut fx);
        }
        self.act(fx).await;
    }

    async fn act(self: &Rc<Self>, fx: Effects) {
        for (after, timer) in fx.timers {
            let d = self.clone();
            glommio::spawn_local(async move {
                let fired = or(
                    async {
                        glommio::timer::sleep(after).await;
                        true
                    },
                    async {
                        d.stopped().await;
                        false
                    },
                )
                .await;
                if fired && !d.stopped.get() {
                    d.with_core(|c, now, fx| c.handle_timer(timer, now, fx))
                        .await;
                }
            })
            .detach();
        }
        if fx.join && !self.resolving.get() {
            self.resolving.set(true);
            let d = self.clone();
            glommio::spawn_local(async move {
                let addrs: Vec<SocketAddr> = resolve(d.join.clone())
                    .await
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect();
                d.resolving.set(false);
                log::debug!("gossip: joining through {addrs:?}");
                if !d.stopped.get() {
                    d.with_core(|c, now, fx| c.join(&addrs, now, fx)).await;
                }
            })
            .detach();
        }
        for (to, packet) in fx.sends {
            self.send(to, &packet).await;
        }
    }

    async fn send(&self, to: SocketAddr, packet: &[u8]) {
        if let Err(e) = self.socket.send_to(packet, to).await {
            GossipStats::add(&self.shared.stats.send_errors, 1);
            log::debug!("gossip: sending to {to}: {e}");
        }
    }

    async fn run(self: Rc<Self>, mut pending: PendingCore) {
        if pending.key.is_none() {
            if let Some(tls) = pending.peer_tls.clone() {
                match self.fetch_key(&tls, pending.create_key_after).await {
                    Fetched::Key(k) => {
                        if let Err(e) = k.store(&pending.data_dir) {
                            log::error!("gossip: keeping the gossip key: {e}; it will be fetched again at the next start");
                        }
                        pending.keys.set(k.clone());
                        pending.key = Some(k);
                    }
                    Fetched::NoneWithin(after) => {
                        let created = GossipKey::generate().and_then(|k| {
                            k.store(&pending.data_dir)?;
                            Ok(k)
                        });
                        match created {
                            Ok(k) => {
                                log::info!(
                                    "gossip: no member at {:?} gave the cluster's gossip key in \
                                     {after:?}: created it (id {:08x}) in {}",
                                    self.join,
                                    k.id(),
                                    pending.data_dir.display()
                                );
                                pending.keys.set(k.clone());
                                pending.key = Some(k);
                                self.shared
                                    .key_created_here
                                    .store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => {
                                log::error!("gossip: creating the gossip key: {e}; gossip is off");
                                return;
                            }
                        }
                    }
                    Fetched::Stopped => return,
                }
            }
        }
        let seed: u64 = rand010::random();
        let mut core = Core::new(
            pending.identity,
            self.config.clone(),
            pending.key,
            !self.join.is_empty(),
            seed,
            self.shared.clone(),
        );
        let mut fx = Effects::default();
        core.start(self.now(), &mut fx);
        *self.core.borrow_mut() = Some(core);
        // Release: whoever sees it running sees the key's origin too.
        self.shared
            .gossiping
            .store(true, std::sync::atomic::Ordering::Release);
        self.act(fx).await;
        self.receive().await;
    }

    async fn receive(self: &Rc<Self>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let got = or(
                async { Some(self.socket.recv_from(&mut buf).await) },
                async {
                    self.stopped().await;
                    None
                },
            )
            .await;
            match got {
                None => return,
                Some(Ok((n, from))) => {
                    let data = &buf[..n];
                    self.with_core(|c, now, fx| c.handle_packet(from, data, now, fx))
                        .await;
                }
                Some(Err(e)) => {
                    log::debug!("gossip: receiving: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn commands(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<Command>) {
        match rx.next().await {
            Some(Command::Leave(done)) => {
                self.leave().await;
                let _ = done.send(());
            }
            // Every handle is gone: nobody can ask for a clean leave any more.
            None => self.halt(),
        }
    }

    /// Announce the departure, push it out for two gossip rounds, leave, stop.
    async fn leave(self: &Rc<Self>) {
        if self.core.borrow().is_some() {
            log::info!("gossip: leaving the cluster");
            self.with_core(|c, now, fx| c.start_leave(now, fx)).await;
            for _ in 0..2 {
                glommio::timer::sleep(self.config.gossip_interval).await;
                self.with_core(|c, now, fx| c.gossip(now, fx)).await;
            }
            self.with_core(|c, now, fx| c.finish_leave(now, fx)).await;
        }
        self.halt();
    }

    /// Asks members behind the join addresses for the key until one gives it, until
    /// membership stops, or until `give_up_after` has passed, if given.
    async fn fetch_key(self: &Rc<Self>, tls: &PeerTls, give_up_after: Option<Duration>) -> Fetched {
        let mut backoff = self.config.join_backoff_min;
        let mut attempt = 0u64;
        let started = Instant::now();
        loop {
            attempt += 1;
            GossipStats::add(&self.shared.stats.join_attempts, 1);
            for (host, addr) in resolve(self.join.clone()).await {
                if self.stopped.get() {
                    return Fetched::Stopped;
                }
                let Some(rpc) = self.query_rpc_addr(addr).await else {
                    log::debug!("gossip: no RPC address answer from {addr}");
                    continue;
                };
                match peer::fetch_key(rpc, tls, &host).await {
                    Ok(k) => {
                        log::info!(
                            "obtained the cluster's gossip key (id {:08x}) from {host} ({rpc})",
                            k.id()
                        );
                        return Fetched::Key(k);
                    }
                    Err(e) => log::warn!("gossip: {e}"),
                }
            }
            if let Some(after) = give_up_after.filter(|&a| started.elapsed() >= a) {
                return Fetched::NoneWithin(after);
            }
            if attempt == 1 || attempt.is_multiple_of(10) {
                log::warn!(
                    "gossip: no member at {:?} gave the gossip key yet (attempt {attempt}); retrying",
                    self.join
                );
            }
            // Not past the deadline, if any.
            let nap = give_up_after.map_or(backoff, |a| {
                backoff.min(
                    a.saturating_sub(started.elapsed())
                        .max(Duration::from_millis(50)),
                )
            });
            let slept = or(
                async {
                    glommio::timer::sleep(nap).await;
                    true
                },
                async {
                    self.stopped().await;
                    false
                },
            )
            .await;
            if !slept {
                return Fetched::Stopped;
            }
            backoff = (backoff * 2).min(self.config.join_backoff_max);
        }
    }

    /// Asks the member at `addr` for its advertised RPC address (one query, 1 s to answer).
    async fn query_rpc_addr(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let nonce: u64 = rand010::random();
        let mut q = Vec::new();
        envelope::query(nonce, &mut q);
        self.send(addr, &q).await;
        let mut buf = vec![0u8; 2048];
        let wait = async {
            loop {
                let Ok((n, from)) = self.socket.recv_from(&mut buf).await else {
                    return None;
                };
                if let Ok(Opened::Answer {
                    nonce: got,
                    rpc_addr,
                }) = envelope::open(None, &buf[..n])
                {
                    if got == nonce && from == addr {
                        return Some(rpc_addr);
                    }
                }
            }
        };
        or(wait, async {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            None
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_names_for_tls() {
        assert_eq!(host_of("node-0.proglog.svc:8401"), "node-0.proglog.svc");
        assert_eq!(host_of("10.0.0.1:8401"), "10.0.0.1");
        assert_eq!(host_of("[::1]:8401"), "::1");
    }
}
