//! The proglog server: the storage engine's shards, each also serving gRPC.
//!
//! Executors: one per core, shared. The engine starts one glommio executor per shard; the
//! gRPC server is spawned ON each of those executors (through `EngineHandle::on_shard`), each
//! with its own SO_REUSEPORT listener on the same address and its own router. Handlers reach
//! partitions and topics only through the partition seam (`engine::seam`): each shard's router
//! holds that shard's seam objects ([`state::ShardState`]). The connection's shard does the
//! per-record work (decoding, encoding a batch and its checksum, checking and decoding what
//! a read returns, encoding the response); a partition owned by the same shard is reached in
//! place, any other by one typed message to its owner, which orders, writes and syncs.
//!
//! Security: with TLS files the one port speaks only TLS (mutual TLS with a client CA); with
//! ACL files every Log and Admin call is authorized against the client certificate's Common
//! Name (see [`acl`]). Both reload on SIGHUP and when their files change ([`reload`]).
//!
//! Shutdown, on SIGTERM or SIGINT: health turns NOT_SERVING, the net servers send GOAWAY and
//! drain (long-lived streams end with UNAVAILABLE), then the engine flushes and syncs every
//! log and stops its shards.

pub mod acl;
pub mod admin;
pub mod append;
pub mod cluster;
pub mod consume;
pub mod consume_batch;
pub mod consume_batch_stream;
pub mod consume_stream;
pub mod error;
pub mod get_servers;
pub mod health;
pub mod host;
pub mod membership;
pub mod produce;
pub mod produce_batch;
pub mod produce_stream;
pub mod reader;
pub mod records;
pub mod reflection;
pub mod reload;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use net::server::{Request, Router, Server, ServerConfig};
use net::{Shutdown, Status};
use proto::health::v1::health_check_response::ServingStatus;
use proto::log::v1::{paths, DEFAULT_TOPIC};

use crate::config::Settings;
use crate::observe::admin::AdminServer;
use crate::observe::rpc::{RpcMetrics, ShardObserver};
use crate::observe::{Observability, Phase};
use engine::seam::Factory;
use health::Health;
use state::{AppState, ShardState};

/// Adapts `handler(state, request)` to the router's `Fn(request)`.
fn bind<S, T, R, F, Fut>(state: &S, handler: F) -> impl Fn(Request<T>) -> Fut + 'static
where
    S: Clone + 'static,
    F: Fn(S, Request<T>) -> Fut + 'static,
    Fut: Future<Output = Result<R, Status>> + 'static,
    T: 'static,
{
    let state = state.clone();
    move |req| handler(state.clone(), req)
}

/// Every RPC of the node, reflection included. Built once per shard, on the shard: routes
/// hold `!Send` handler futures and the shard's seam objects.
pub fn router(shard: &Rc<ShardState>) -> Router {
    let s = shard;
    let app = &shard.app;
    let (s1, s2, s3, a4) = (s.clone(), s.clone(), s.clone(), app.clone());
    let router = Router::new()
        .unary_prost(paths::PRODUCE, bind(s, produce::handle))
        .unary_prost(paths::CONSUME, bind(s, consume::handle))
        .server_streaming(paths::CONSUME_STREAM, move |r, sink| {
            consume_stream::handle(s1.clone(), r, sink)
        })
        .bidi_streaming(paths::PRODUCE_STREAM, move |r, sink| {
            produce_stream::handle(s2.clone(), r, sink)
        })
        .unary_prost(paths::GET_SERVERS, bind(app, get_servers::handle))
        .unary_prost(paths::PRODUCE_BATCH, bind(s, produce_batch::handle))
        .unary_prost(paths::CONSUME_BATCH, bind(s, consume_batch::handle))
        .server_streaming(paths::CONSUME_BATCH_STREAM, move |r, sink| {
            consume_batch_stream::handle(s3.clone(), r, sink)
        })
        .unary_prost(paths::CREATE_TOPIC, bind(s, admin::create_topic::handle))
        .unary_prost(paths::LIST_TOPICS, bind(s, admin::list_topics::handle))
        .unary_prost(
            paths::DESCRIBE_TOPIC,
            bind(s, admin::describe_topic::handle),
        )
        .unary_prost(paths::DELETE_TOPIC, bind(s, admin::delete_topic::handle))
        .unary_prost(paths::ALTER_TOPIC, bind(s, admin::alter_topic::handle))
        .unary_prost(paths::LIST_MEMBERS, bind(app, admin::list_members::handle))
        .unary_prost(
            paths::DESCRIBE_CLUSTER,
            bind(app, admin::describe_cluster::handle),
        )
        .unary_prost(paths::REMOVE_NODE, bind(app, admin::remove_node::handle))
        .unary_prost(proto::health::v1::paths::CHECK, bind(app, health::check))
        .server_streaming(proto::health::v1::paths::WATCH, move |r, sink| {
            health::watch(a4.clone(), r, sink)
        });
    reflection::register(router, app)
}

enum Event {
    /// A shard's listener is bound (or failed to bind).
    Bound(usize, Result<(), String>),
    /// A shard's gRPC server returned: after shutdown, or on failure.
    Stopped(usize, Result<(), String>),
    Signal(i32),
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Every shard binds with SO_REUSEPORT, which would let this server silently share a port
/// with another proglog of the same user: the kernel would split connections between them.
/// A connection attempt tells whether anyone listens there. (A plain bind is no test: it
/// also fails on the TIME_WAIT sockets our own previous run left behind, which the
/// SO_REUSEPORT listeners do not mind.) A listener without SO_REUSEPORT makes the shards'
/// bind fail anyway.
///
/// A listener can outlive its process by a moment: right after a kill -9 and the reap, the
/// address was seen still accepting connections (the kernel tears a process's io_uring
/// rings down in the background, and a request queued on one holds its file, here the
/// listening socket). A restart right after a crash must not take that for another server,
/// so the address gets [`PORT_RELEASE_WAIT`] to go quiet.
fn check_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    let probe = if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, addr.port())
    } else {
        addr
    };
    let until = Instant::now() + PORT_RELEASE_WAIT;
    while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)).is_ok() {
        if Instant::now() >= until {
            bail!(
                "gRPC address {addr} is not available: a process already listens on it \
                 (another proglog?)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// How long [`check_port_free`] lets a listener left by a process that just died go away.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// A `--dead-node-timeout` below this is warned about at start: a pause or a restart that
/// long costs a node its replicas.
const SHORT_DEAD_NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// Test hook: holds the server in its recovering phase this long, so that black-box tests
/// can watch `/readyz` and gRPC health before the node is ready. Never set in production.
const HOLD_RECOVERY_ENV: &str = "PROGLOG_TEST_HOLD_RECOVERY_MS";

/// Runs a server until SIGTERM or SIGINT, then stops it gracefully.
///
/// Start-up, in order: checks of the host and the port; the admin HTTP server (probes get
/// "alive, not ready" through recovery); TLS and ACL files (a bad file stops start-up with
/// its own error); signal handling; the node below the RPC servers ([`Node::start`]: engine,
/// Raft, membership, cluster formation); one gRPC server per shard. Shutdown reverses it:
/// leave the cluster, drain the gRPC servers, stop the engine.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    log::info!("proglog {} starting: {settings}", env!("CARGO_PKG_VERSION"));
    // Before anything binds or starts: a host that cannot run the engine is told why.
    host::check()?;
    check_port_free(settings.listen)?;
    let obs = Arc::new(Observability::new());
    let admin = start_admin(settings.admin_addr, &obs)?;
    let tls = load_tls(&settings)?;
    let authz = load_acl(&settings)?;
    let (signals, shard_events) = Signals::start(&settings, &tls, &authz)?;

    obs.set_phase(Phase::Recovering);
    hold_recovery_for_tests();
    // Before the engine, so that its write-behind buffers are charged from the start.
    let memory = net::memory::MemoryBudget::new(settings.memory_budget);
    obs.set_memory(memory.clone());
    let node = Node::start(&settings, &obs, &memory)?;

    let shutdown = Shutdown::new();
    let state = Arc::new(AppState {
        seam: node.seam.clone(),
        health: Arc::new(Health::new()),
        shutdown: shutdown.clone(),
        node_name: settings.node_name.clone(),
        rpc_addr: settings.advertised_rpc_addr(),
        max_message_bytes: settings.max_message_bytes,
        default_log: settings.log_config(),
        authz,
        members: node.membership.watch.clone(),
        gossip: node.membership.running.is_some(),
        cluster: node.cluster_node.clone(),
    });
    let server_config = server_config(&settings, &memory, tls, &node);
    let shards = node.handle.shards();
    let started = start_servers(
        &settings,
        &node.handle,
        &state,
        &obs,
        server_config,
        shard_events,
    );
    let outcome = serve_until_signal(
        &signals.events,
        &state,
        &obs,
        started,
        shards,
        settings.listen,
    );
    let stopped = match &outcome {
        Err(StopReason::ServerStopped) => 1,
        _ => 0,
    };

    node.leave_cluster(&settings);
    // Drain: NOT_SERVING first so that watchers and probes see it, then GOAWAY.
    obs.set_phase(Phase::Draining);
    state.health.set(ServingStatus::NotServing);
    shutdown.trigger();
    drain(
        &signals.events,
        stopped,
        started,
        settings.drain_timeout + Duration::from_secs(2),
    );
    node.stop_engine(&obs);
    signals.close();
    if let Some(a) = admin {
        a.stop();
    }
    match outcome {
        Ok(()) => {
            log::info!("proglog stopped cleanly");
            Ok(())
        }
        Err(StopReason::Failed(e)) | Err(StopReason::BindFailed(e)) => Err(e),
        Err(StopReason::ServerStopped) => bail!("a gRPC server stopped unexpectedly"),
    }
}

/// The server's TLS settings, loaded from their files, or `None` without TLS.
fn load_tls(settings: &Settings) -> anyhow::Result<Option<Arc<net::tls::ServerTls>>> {
    match &settings.tls {
        None => Ok(None),
        Some(files) => Ok(Some(Arc::new(
            net::tls::ServerTls::from_files(files).context("loading the TLS settings")?,
        ))),
    }
}

/// The ACL, loaded from its files (warning when nothing could authenticate a caller), or an
/// authorizer that allows everything without ACL files.
fn load_acl(settings: &Settings) -> anyhow::Result<Arc<acl::Authorizer>> {
    let Some(files) = &settings.acl else {
        return Ok(Arc::new(acl::Authorizer::disabled()));
    };
    let acl = files.load().context("loading the ACL")?;
    log::info!(
        "authorization on: {} grants from {}",
        acl.len(),
        files.policy_file.display()
    );
    match &settings.tls {
        None => log::warn!(
            "authorization is on but TLS is not: every Log and Admin call will fail with UNAUTHENTICATED"
        ),
        Some(t) if t.client_ca_file.is_none() => log::warn!(
            "authorization is on without mutual TLS (server-tls-ca-file): clients have no identity, so every Log and Admin call will fail with UNAUTHENTICATED"
        ),
        Some(_) => {}
    }
    Ok(Arc::new(acl::Authorizer::new(acl)))
}

/// Signal handling: SIGTERM and SIGINT arrive as [`Event::Signal`] on `events`, where the
/// shards' servers report too; SIGHUP reloads the TLS and ACL files on a thread of its own.
struct Signals {
    events: mpsc::Receiver<Event>,
    handle: signal_hook::iterator::Handle,
}

impl Signals {
    /// Registered before any other thread starts, so that a signal during start-up is seen
    /// here instead of killing the process half-way. Also returns the sender for the shards'
    /// servers' events.
    fn start(
        settings: &Settings,
        tls: &Option<Arc<net::tls::ServerTls>>,
        authz: &Arc<acl::Authorizer>,
    ) -> anyhow::Result<(Signals, mpsc::Sender<Event>)> {
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ])
        .context("installing signal handlers")?;
        let handle = signals.handle();
        let (tx, events) = mpsc::channel::<Event>();
        let (hup_tx, hup_rx) = mpsc::channel::<()>();
        let signal_tx = tx.clone();
        std::thread::Builder::new()
            .name("proglog-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let sent = if sig == signal_hook::consts::SIGHUP {
                        hup_tx.send(()).is_ok()
                    } else {
                        signal_tx.send(Event::Signal(sig)).is_ok()
                    };
                    if !sent {
                        break;
                    }
                }
            })
            .context("starting the signal thread")?;
        let reloader = reload::Reloader::new(
            settings.tls.clone().zip(tls.clone()),
            settings.acl.clone().zip(Some(authz.clone())),
        );
        // Detached: it ends with the signal thread, or with the process.
        std::thread::Builder::new()
            .name("proglog-reload".into())
            .spawn(move || reloader.run(hup_rx))
            .context("starting the reload thread")?;
        Ok((Signals { events, handle }, tx))
    }

    fn close(self) {
        self.handle.close();
    }
}

/// Holds the server in its recovering phase for [`HOLD_RECOVERY_ENV`] milliseconds, when set.
fn hold_recovery_for_tests() {
    if let Some(ms) = std::env::var(HOLD_RECOVERY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        log::warn!("{HOLD_RECOVERY_ENV}={ms}: holding recovery for tests");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// What a running node holds below its RPC servers: the engine with every partition a Raft
/// group, the controller's state as this node applies it, Raft's peer connections, and the
/// gossip membership.
struct Node {
    engine: engine::Engine,
    handle: engine::EngineHandle,
    cluster_node: Arc<consensus::cluster::ClusterNode>,
    raft_peers: consensus::raft::transport::Peers,
    /// The partition seam the handlers reach partitions through.
    seam: Arc<dyn Factory>,
    membership: membership::Cluster,
}

impl Node {
    /// Starts the engine (recovering every log), membership, and forms or joins the
    /// cluster. A node started without cluster flags is a cluster of one through the same
    /// code. On failure whatever started is stopped again.
    fn start(
        settings: &Settings,
        obs: &Observability,
        memory: &Arc<net::memory::MemoryBudget>,
    ) -> anyhow::Result<Node> {
        let mut engine_config = settings.engine_config();
        engine_config.memory = Some(engine::MemoryHook(Arc::new(EngineMemory(memory.clone()))));
        let raft_peers = consensus::raft::transport::Peers {
            tls: match settings.gossip.as_ref().and_then(|g| g.peer_tls.as_ref()) {
                Some(files) => Some(files.load().context("loading the peer TLS settings")?),
                None => None,
            },
            ..Default::default()
        };
        raft_peers
            .snapshots
            .set_rate_limit(settings.snapshot_rate_limit);
        if settings.dead_node_timeout < SHORT_DEAD_NODE_TIMEOUT {
            log::warn!(
                "dead-node-timeout {:?}: while this node leads the controller, a member paused, \
                 cut off or restarting for longer is removed and its replicas are copied to \
                 other nodes (gossip lists a member down after about 6 s); values under {:?} \
                 suit tests, not production",
                settings.dead_node_timeout,
                SHORT_DEAD_NODE_TIMEOUT
            );
        }
        let cluster_node = consensus::cluster::ClusterNode::new(
            raft_peers.clone(),
            settings.dead_node_timeout,
            settings.stopped_replica_grace,
        );
        cluster_node.set_moved_replica_timeout(settings.moved_replica_timeout);
        cluster_node.set_max_partitions_per_shard(settings.max_partitions_per_shard);
        let mode = cluster::prepare(settings, &cluster_node)?;
        obs.set_cluster(cluster_node.clone());
        obs.set_forward(raft_peers.forward.clone());
        obs.set_snapshots(Arc::clone(&raft_peers.snapshots));
        let replication = consensus::raft::RaftReplication {
            node_id: cluster_node.id(),
            peers: raft_peers.clone(),
            hooks: cluster_node.hooks(),
            ..consensus::raft::RaftReplication::single_node()
        };
        let engine_config = consensus::raft::seam::engine_config(engine_config, replication);
        let engine = engine::Engine::start(engine_config).map_err(|e| {
            // What the engine needs of the host, unless the cause is plainly something else.
            let hint = if e.is_out_of_descriptors() {
                let limit = crate::observe::process::ProcessStats::read()
                    .max_fds
                    .map_or_else(|| "?".to_owned(), |n| n.to_string());
                format!(
                    " (this process may have {limit} files open at once, RLIMIT_NOFILE: each \
                     partition held here keeps about 2 open and each connection 1; raise the \
                     limit: `ulimit -n`, or LimitNOFILE= in a systemd unit)"
                )
            } else if e.is_executor_failure() {
                " (it needs io_uring, RLIMIT_MEMLOCK >= 512 KiB, and in containers a seccomp \
                 profile allowing io_uring_setup/enter/register)"
                    .to_owned()
            } else {
                // The error names its file and cause (a damaged or foreign file, a full
                // disk, another process's lock): no guess about the host would help.
                String::new()
            };
            anyhow::Error::new(e).context(format!(
                "starting the storage engine in {}{hint}",
                settings.data_dir.display()
            ))
        })?;
        let handle = engine.handle();
        obs.set_engine(Some(handle.clone()));
        let seam: Arc<dyn Factory> = Arc::new(
            consensus::raft::seam::RaftFactory::new(
                handle.clone(),
                engine::seam::NodeRef {
                    id: settings.node_name.clone(),
                    addr: settings.advertised_rpc_addr().to_string(),
                },
            )
            .with_cluster(cluster_node.clone())
            .with_peers(cluster_node.id(), raft_peers.clone()),
        );
        let may_bootstrap = matches!(mode, cluster::Mode::NewUnlessFound(_));
        let membership = match membership::start(settings, &handle, obs, may_bootstrap) {
            Ok(c) => c,
            Err(e) => {
                obs.set_engine(None);
                engine.shutdown();
                return Err(e);
            }
        };
        // Formation needs no listener of this node's: a joining node asks others, the first
        // node's controller is its only voter.
        if let Err(e) = cluster::form(settings, &cluster_node, &handle, &membership.watch, &mode) {
            cluster_node.stop();
            membership.leave();
            obs.set_engine(None);
            engine.shutdown();
            return Err(e);
        }
        Ok(Node {
            engine,
            handle,
            cluster_node,
            raft_peers,
            seam,
            membership,
        })
    }

    /// What the peer channel (first byte 0x01) serves: Raft's messages, the gossip key
    /// exchange when the node gossips, and joins.
    fn peer_service(&self) -> net::peer::PeerService {
        let handler = Arc::new(consensus::raft::transport::PeerRouter {
            raft: consensus::raft::transport::RaftPeerHandler {
                // This node's id as the controller knows it (`peers.self_id`).
                node_id: 0,
                engine: self.handle.clone(),
                peers: self.raft_peers.clone(),
            },
            keys: self.membership.keys.clone(),
            join: Some(Arc::new(consensus::cluster::join::JoinService(
                self.cluster_node.clone(),
            ))),
        });
        net::peer::PeerService {
            handler,
            tls: self
                .membership
                .peer_service
                .as_ref()
                .and_then(|p| p.tls.clone())
                .or_else(|| self.raft_peers.tls.as_ref().map(|t| t.server.clone())),
        }
    }

    /// Leaves the cluster first (the book's order), so that others list this node as left
    /// at once, not as down after a suspicion timeout. The reconcile loops stop first (they
    /// would move leaderships back), then every leadership this node holds goes to a
    /// caught-up voter.
    fn leave_cluster(&self, settings: &Settings) {
        self.cluster_node.stop();
        self.cluster_node
            .hand_off_leadership(Duration::from_secs(3));
        if settings.leave_on_shutdown {
            self.membership.leave();
        } else if self.membership.running.is_some() {
            // Gossip answers until the process ends; then the others see this run down, and
            // the controller keeps the node (and its replicas) for dead-node-timeout.
            log::info!(
                "stopping without leaving the cluster (leave-on-shutdown=false): this node \
                 stays a member, removed only if it is not back within the dead-node timeout \
                 ({:?})",
                settings.dead_node_timeout
            );
        }
    }

    /// Flushes and syncs every log and stops the shards.
    fn stop_engine(self, obs: &Observability) {
        obs.set_engine(None);
        self.engine.shutdown();
    }
}

/// The gRPC servers' settings, one copy per shard.
fn server_config(
    settings: &Settings,
    memory: &Arc<net::memory::MemoryBudget>,
    tls: Option<Arc<net::tls::ServerTls>>,
    node: &Node,
) -> ServerConfig {
    ServerConfig {
        max_recv_message_bytes: settings.max_message_bytes,
        max_send_message_bytes: settings.max_message_bytes,
        drain_timeout: settings.drain_timeout,
        max_connections_per_shard: settings.max_connections_per_shard,
        max_concurrent_streams: settings.max_concurrent_streams,
        idle_timeout: settings.connection_idle_timeout,
        handshake_timeout: settings.handshake_timeout,
        tls_handshake_timeout: settings.handshake_timeout,
        max_resets_per_second: settings.max_resets_per_second,
        memory: memory.clone(),
        connection_memory_bytes: settings.connection_memory,
        tls,
        // Every node takes Raft connections on the peer channel; the key exchange goes to
        // membership when the node gossips.
        peer: Some(node.peer_service()),
        ..ServerConfig::default()
    }
}

/// Spawns a gRPC server on every shard, stopping at the first that fails to start (logged);
/// returns how many started.
fn start_servers(
    settings: &Settings,
    handle: &engine::EngineHandle,
    state: &Arc<AppState>,
    obs: &Observability,
    config: ServerConfig,
    events: mpsc::Sender<Event>,
) -> usize {
    let shards = handle.shards();
    // Every shard's router has the same paths: they are the method labels.
    let rpc = Arc::new(RpcMetrics::new(
        router(&ShardState::new(state)).paths(),
        shards,
    ));
    // A lone connection (a book client's one channel, which names no topic) is served on
    // the shard that owns the default topic's partition 0, so its calls need no hop.
    rpc.balancer
        .prefer(Some(engine::shard::owner(DEFAULT_TOPIC, 0, shards)));
    obs.set_rpc(rpc.clone());
    let mut started = 0;
    for shard in 0..shards {
        let observe = ShardObserve {
            rpc: rpc.clone(),
            slow: settings.slow_call_threshold,
        };
        if let Err(e) = spawn_server(
            shard,
            handle,
            state,
            config.clone(),
            settings.listen,
            observe,
            events.clone(),
        ) {
            log::error!("{e:#}");
            break;
        }
        started += 1;
    }
    started
}

/// Waits until `started` servers have stopped (`stopped` already have), at most `timeout`.
/// A second SIGTERM or SIGINT meanwhile exits at once.
fn drain(events: &mpsc::Receiver<Event>, mut stopped: usize, started: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stopped < started {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Stopped(i, r)) => {
                stopped += 1;
                if let Err(e) = r {
                    log::warn!("shard {i}: gRPC server: {e}");
                }
            }
            Ok(Event::Signal(sig)) => {
                log::warn!(
                    "{} during shutdown: exiting without waiting for the drain",
                    signal_name(sig)
                );
                std::process::exit(130);
            }
            Ok(Event::Bound(..)) => {}
            Err(_) => {
                log::error!("gRPC servers did not drain in time; stopping the engine anyway");
                break;
            }
        }
    }
}

/// The engine's write-behind buffers, charged to the server's memory budget.
struct EngineMemory(Arc<net::memory::MemoryBudget>);

impl engine::MemoryAccount for EngineMemory {
    fn charge(&self, bytes: usize) {
        self.0.charge(bytes);
    }
    fn release(&self, bytes: usize) {
        self.0.release(bytes);
    }
}

/// Starts the admin HTTP server. When the default address is taken (another proglog on this
/// host, a test running servers side by side) the server runs without it and says so; an
/// address the operator chose must work.
fn start_admin(
    addr: Option<SocketAddr>,
    obs: &Arc<Observability>,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = addr else {
        log::info!("admin HTTP off: no /metrics, /healthz or /readyz");
        return Ok(None);
    };
    match AdminServer::start(addr, obs.clone()) {
        Ok(a) => Ok(Some(a)),
        Err(e) if Some(addr) == crate::config::DEFAULT_ADMIN_ADDR.parse().ok() => {
            log::warn!("{e}: running without /metrics, /healthz and /readyz; set --admin-addr to serve them elsewhere");
            Ok(None)
        }
        Err(e) => Err(e).context("starting the admin HTTP server"),
    }
}

/// How often a node listening but not ready yet checks whether it is, to say so in its log.
const READY_RECHECK: Duration = Duration::from_millis(250);

enum StopReason {
    BindFailed(anyhow::Error),
    Failed(anyhow::Error),
    ServerStopped,
}

/// Marks the node SERVING once every shard listens, and waits for a signal or a failure.
fn serve_until_signal(
    events: &mpsc::Receiver<Event>,
    state: &AppState,
    obs: &Observability,
    started: usize,
    shards: usize,
    listen: SocketAddr,
) -> Result<(), StopReason> {
    if started < shards {
        return Err(StopReason::Failed(anyhow!(
            "could only start the gRPC server on {started} of {shards} shards"
        )));
    }
    let mut bound = 0;
    // Every shard listens, but the node is not ready yet (joining, catching up): the ready
    // line is logged once it is, as health answers SERVING and /readyz 200 from then on.
    let mut not_ready_yet = false;
    loop {
        let event = if not_ready_yet {
            match events.recv_timeout(READY_RECHECK) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if consensus::raft::seam::ready(&state.cluster).is_ok() {
                        not_ready_yet = false;
                        log::info!("ready: serving gRPC on {listen} from {shards} shards");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
                Ok(e) => Ok(e),
            }
        } else {
            events.recv()
        };
        match event {
            Ok(Event::Bound(_, Ok(()))) => {
                bound += 1;
                if bound == shards {
                    obs.set_phase(Phase::Serving);
                    state.health.set(ServingStatus::Serving);
                    match consensus::raft::seam::ready(&state.cluster) {
                        Ok(()) => {
                            log::info!("ready: serving gRPC on {listen} from {shards} shards")
                        }
                        Err(why) => {
                            not_ready_yet = true;
                            log::info!(
                                "gRPC listening on {listen} from {shards} shards, not ready yet \
                                 ({why}): health answers NOT_SERVING and /readyz 503 until it is"
                            );
                        }
                    }
                }
            }
            Ok(Event::Bound(i, Err(e))) => {
                return Err(StopReason::BindFailed(anyhow!(
                    "shard {i}: binding {listen}: {e}"
                )))
            }
            Ok(Event::Signal(sig)) => {
                log::info!("{} received: shutting down", signal_name(sig));
                return Ok(());
            }
            Ok(Event::Stopped(i, r)) => {
                log::error!("shard {i}: gRPC server stopped: {r:?}");
                return Err(StopReason::ServerStopped);
            }
            Err(_) => return Err(StopReason::Failed(anyhow!("every event source is gone"))),
        }
    }
}

/// What a shard's server needs to report its calls (and, in the metrics, the connection
/// balancer every shard's server shares).
struct ShardObserve {
    rpc: Arc<RpcMetrics>,
    slow: Option<Duration>,
}

/// Starts shard `shard`'s gRPC server on that shard's own executor. A helper thread waits on
/// the engine's completion handle so that the main thread only ever waits on `events`.
fn spawn_server(
    shard: usize,
    engine: &engine::EngineHandle,
    state: &Arc<AppState>,
    config: ServerConfig,
    addr: SocketAddr,
    observe: ShardObserve,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let engine = engine.clone();
    let state = state.clone();
    let shutdown = state.shutdown.clone();
    std::thread::Builder::new()
        .name(format!("proglog-serve-{shard}"))
        .spawn(move || {
            let bound = events.clone();
            let served = futures_lite::future::block_on(engine.on_shard(shard, move |_ctx| {
                async move {
                    // Bound here, on the shard's thread, so the listener registers with this
                    // executor's reactor.
                    let listener = match glommio::net::TcpListener::bind(addr) {
                        Ok(l) => l,
                        Err(e) => {
                            let e = std::io::Error::from(e).to_string();
                            let _ = bound.send(Event::Bound(shard, Err(e.clone())));
                            return Ok(Err(e));
                        }
                    };
                    let _ = bound.send(Event::Bound(shard, Ok(())));
                    let balancer = observe.rpc.balancer.clone();
                    let observer = ShardObserver::new(observe.rpc, shard, observe.slow);
                    // Built here, on the shard: the router's seam objects are this shard's.
                    let router = router(&ShardState::new(&state));
                    let server = Server::new(config, router)
                        .with_observer(Rc::new(observer))
                        .with_balancer(balancer, shard);
                    Ok(server
                        .serve_listener(listener, shutdown)
                        .await
                        .map_err(|e| e.to_string()))
                }
            }));
            let result = served.unwrap_or_else(|e| Err(e.to_string()));
            let _ = events.send(Event::Stopped(shard, result));
        })
        .context("starting a server thread")?;
    Ok(())
}
