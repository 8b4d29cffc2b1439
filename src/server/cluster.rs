//! This node's place in its cluster: formation with the book's flags, before and after the
//! engine starts.
//!
//! Before the engine ([`prepare`]): `cluster.meta` in the data directory decides. With it the
//! node restarts as the member it was (its Raft id, its cluster; `--bootstrap` is then a
//! no-op). Without it, a node given `--start-join-addrs` (and not `--bootstrap`) joins: its
//! Raft groups wait until the controller gives it a Raft id. A node given both, on a data
//! directory that holds no topic, first asks the members at those addresses whether a
//! cluster exists ([`BOOTSTRAP_PROBE`]): it joins one it finds (its data directory was
//! wiped or lost: bootstrapping would start a second cluster beside its own), and
//! bootstraps only if none answers so. Any other node starts a new cluster as its node 1, a
//! cluster of one through the same code as any other.
//!
//! After the engine and gossip ([`form`]): a joining node asks the members gossip shows
//! (then the controller leader they name) for its Raft id over the peer channel, in the
//! background while it serves, writes `cluster.meta`, and opens the controller's partition
//! empty, to learn it from the leader's log; the first node opens it with itself as the only voter, proposes the bootstrap command
//! (cluster id, itself as node 1), registers the topics an older single-node data directory
//! holds, and creates the `default` topic. Then the reconcile loops start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use consensus::cluster::identity::{self, ClusterIdentity};
use consensus::cluster::join::{self, JoinAnswer, JoinRequest};
use consensus::cluster::state::{Command, NodeEntry, PartitionEntry, Replica, FIRST_NODE_ID};
use consensus::cluster::ClusterNode;
use engine::{EngineHandle, LogConfig, CONTROLLER_TOPIC};
use proto::log::v1::DEFAULT_TOPIC;

use crate::config::Settings;

/// How long a joining node keeps asking before it gives up (the bootstrap node may start
/// after it).
const JOIN_DEADLINE: Duration = Duration::from_secs(600);

/// How long a node given `--bootstrap` and `--start-join-addrs` on an empty data directory
/// looks for a cluster at those addresses before it bootstraps one: members that are up
/// answer within a gossip round or two (a member asks gossip for the asker first, for up to
/// [`join::GOSSIP_SEEN_WAIT`]), and a first start of the whole cluster waits this long once.
pub const BOOTSTRAP_PROBE: Duration = Duration::from_secs(10);

/// How the node enters its cluster.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A restart: the member the data directory says.
    Member(ClusterIdentity),
    /// A new cluster, this node its first member.
    New(ClusterIdentity),
    /// Joining: no Raft id yet.
    Join,
    /// `--bootstrap` with `--start-join-addrs`, no cluster state, no topic: joins the
    /// cluster the members at those addresses belong to, if one answers within
    /// [`BOOTSTRAP_PROBE`]; else starts this new one.
    NewUnlessFound(ClusterIdentity),
}

/// Reads `cluster.meta` and decides the mode; sets the node's Raft id when known.
pub fn prepare(settings: &Settings, node: &ClusterNode) -> anyhow::Result<Mode> {
    let found = identity::read(&settings.data_dir).context("reading cluster.meta")?;
    if found.is_none() {
        refuse_a_controller_without_its_cluster(&settings.data_dir)?;
    }
    let joins = settings.gossip.as_ref().is_some_and(|g| !g.join.is_empty());
    let mode = match found {
        Some(id) => {
            if settings.bootstrap {
                log::info!(
                    "--bootstrap: this node already belongs to cluster {} (node {}): nothing to bootstrap",
                    id.cluster_id,
                    id.node_id
                );
            }
            Mode::Member(id)
        }
        None if joins && !settings.bootstrap => Mode::Join,
        None => {
            // Written once the engine holds the data directory's lock (in `form`), and
            // logged then.
            let id = ClusterIdentity::new(identity::new_cluster_id(), FIRST_NODE_ID);
            // A directory holding topics is an older single node's, upgraded by its
            // bootstrap: it never joins another cluster with them.
            let holds_topics = engine::catalog::load(&settings.data_dir)
                .map(|c| !c.list().is_empty())
                .context("reading the topic catalog")?;
            if joins && !holds_topics {
                Mode::NewUnlessFound(id)
            } else {
                Mode::New(id)
            }
        }
    };
    match &mode {
        Mode::Member(id) | Mode::New(id) => {
            set_identity(node, id);
            if let Some(why) = &id.fenced {
                node.fence(&id.cluster_id, why);
            }
        }
        Mode::Join => log::info!("joining a cluster: Raft groups wait for this node's Raft id"),
        Mode::NewUnlessFound(_) => log::info!(
            "--bootstrap with --start-join-addrs and no cluster state here: looking for a \
             cluster at those addresses for up to {BOOTSTRAP_PROBE:?} before bootstrapping one"
        ),
    }
    Ok(mode)
}

fn set_identity(node: &ClusterNode, id: &ClusterIdentity) {
    // The cluster first: a peer's frames are checked against it once the Raft id is known.
    node.set_cluster_id(&id.cluster_id);
    node.set_id(id.node_id);
    node.bootstrapper
        .store(id.node_id == FIRST_NODE_ID, Ordering::Relaxed);
}

/// Refuses a data directory without `cluster.meta` whose controller partition was opened:
/// `cluster.meta` is written before the controller's log is first opened, so it was lost. A
/// start would bootstrap a cluster of its own over that log, or, given join addresses, wait
/// for ever for a Raft id that the controller's log already holds.
fn refuse_a_controller_without_its_cluster(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let controller = engine::catalog::partition_dir(data_dir, CONTROLLER_TOPIC, 0);
    if engine::catalog::was_opened(&controller)? {
        anyhow::bail!(
            "{} is missing, while {} holds this node's copy of a cluster's controller log: the \
             file says which cluster this node belongs to and as which node. {}",
            data_dir.join(identity::CLUSTER_FILE).display(),
            controller.display(),
            engine::catalog::RESTORE_OR_START_AFRESH
        );
    }
    Ok(())
}

/// The controller partition's settings: every command durable before it is acknowledged,
/// never deleted by retention (the controller compacts it below its checkpoints), small
/// segments (`LogConfig::for_controller`, which the engine applies at open anyway).
pub fn controller_config(settings: &Settings) -> LogConfig {
    LogConfig {
        durability: engine::Durability::Always,
        ..settings.log_config()
    }
    .for_controller()
}

/// Joins or bootstraps (see the module doc), then starts the reconcile loops.
pub fn form(
    settings: &Settings,
    node: &Arc<ClusterNode>,
    engine: &EngineHandle,
    members: &consensus::membership::MembershipWatch,
    mode: &Mode,
) -> anyhow::Result<()> {
    node.set_engine(engine.clone());
    node.set_members(members.clone());
    let list = members.members();
    let me = list
        .members
        .iter()
        .find(|m| m.is_self)
        .ok_or_else(|| anyhow!("membership does not list this node"))?;
    let entry = NodeEntry {
        member: me.node_id.to_string(),
        name: settings.node_name.clone(),
        rpc_addr: settings.advertised_rpc_addr().to_string(),
        gossip_addr: me.gossip_addr.to_string(),
        shards: engine.shards() as u32,
        removed: false,
    };
    node.set_me(entry.clone());
    let join: Vec<String> = settings
        .gossip
        .as_ref()
        .map_or_else(Vec::new, |g| g.join.clone());
    // Before anything waits for placement to be enacted here.
    consensus::cluster::reconcile::spawn(node.clone()).context("starting the reconcile thread")?;
    let mode = match mode {
        Mode::NewUnlessFound(id) => {
            let join = settings.gossip.as_ref().map_or(&[][..], |g| &g.join[..]);
            if let Some(found) = find_a_cluster(&peer_tls(settings)?, engine, members, &entry, join)
            {
                log::info!(
                    "{found}: joining that cluster rather than bootstrapping a second one \
                     (--bootstrap acts only where no cluster answers)"
                );
                Mode::Join
            } else {
                log::info!(
                    "no member at --start-join-addrs belongs to a cluster: bootstrapping one \
                     (--bootstrap)"
                );
                set_identity(node, id);
                Mode::New(ClusterIdentity {
                    probed: true,
                    ..id.clone()
                })
            }
        }
        m => m.clone(),
    };
    match &mode {
        // (NewUnlessFound is decided above; joining is its side that never starts a
        // second cluster.)
        Mode::Join | Mode::NewUnlessFound(_) => {
            // In the background: the node serves (health, its own RPCs) while it asks, so a
            // node started before the bootstrap node, or one that cannot be admitted, is no
            // failed start; its Raft groups wait for their id.
            let (tls, node, engine) = (peer_tls(settings)?, node.clone(), engine.clone());
            let (members, entry) = (members.clone(), entry.clone());
            let (data_dir, controller) = (settings.data_dir.clone(), controller_config(settings));
            let join = join.clone();
            std::thread::Builder::new()
                .name("proglog-join".into())
                .spawn(move || {
                    let joined =
                        join_cluster(&tls, &node, &engine, &members, &entry, None, false, &join)
                            .and_then(|j| {
                                identity::write(&data_dir, &j).context("writing cluster.meta")?;
                                node.set_cluster_id(&j.cluster_id);
                                node.set_id(j.node_id);
                                log::info!("joined cluster {} as node {}", j.cluster_id, j.node_id);
                                open_controller(controller, &node, &engine)
                            });
                    if let Err(e) = joined {
                        log::error!("this node did not join a cluster: {e:#}");
                    }
                })
                .context("starting the join thread")?;
        }
        Mode::New(id) | Mode::Member(id) => {
            if matches!(mode, Mode::New(_)) {
                identity::write(&settings.data_dir, id).context("writing cluster.meta")?;
                log::info!(
                    "bootstrapping a new cluster {} with this node as node 1",
                    id.cluster_id
                );
            }
            // Kept in cluster.meta: a restart does not forget it.
            node.probed.store(id.probed, Ordering::Relaxed);
            open_controller(controller_config(settings), node, engine)?;
            if id.node_id == FIRST_NODE_ID && !controller_awaits_the_cluster(node) {
                bootstrap(settings, node, engine, &id.cluster_id, &entry)?;
            }
            check_cluster_id(node, &id.cluster_id);
            if settings.gossip.is_some() {
                // Registered again in the background: new addresses (a pod restarted under a
                // new IP), a member removed while it was away comes back, and a node that
                // finds another cluster says so.
                let (tls, node, engine) = (peer_tls(settings)?, node.clone(), engine.clone());
                let (members, entry, id) = (members.clone(), entry.clone(), id.clone());
                let data_dir = settings.data_dir.clone();
                let (join, joins) = (join.clone(), !join.is_empty());
                std::thread::Builder::new()
                    .name("proglog-rejoin".into())
                    .spawn(move || {
                        // Nothing to do when the registry (replayed from this node's log, or
                        // learnt from the leader) already has this node as it is. A
                        // controller log found lost, or started afresh, holds no state to
                        // wait for: this node registers at once. A lost one is reported
                        // stopped only after that (the reconcile loop waits for
                        // `registered`), so that no registration of this run withdraws the
                        // mark that gets it started afresh.
                        let _ = wait_for("the controller's state", Duration::from_secs(30), || {
                            let (v, cluster_id) = (node.controller(), node.state().cluster_id);
                            !cluster_id.is_empty()
                                || consensus::cluster::lost_without_state(v.as_ref(), &cluster_id)
                                || consensus::cluster::started_afresh(v.as_ref(), &cluster_id)
                        });
                        let s = node.state();
                        let current = s.nodes.get(&id.node_id).is_some_and(|n| {
                            n.member == entry.member
                                && n.rpc_addr == entry.rpc_addr
                                && n.gossip_addr == entry.gossip_addr
                                && !n.removed
                        });
                        // `quiet`: a registration only confirmed, whose wait for other
                        // members (a first node alone for now) is no trouble to report.
                        let register = |quiet: bool| {
                            let cluster_id = Some(id.cluster_id.clone());
                            join_cluster(
                                &tls, &node, &engine, &members, &entry, cluster_id, quiet, &join,
                            )
                        };
                        let known_otherwise = |j: &ClusterIdentity| {
                            log::error!(
                                "the controller knows this node as node {}, cluster.meta says {}",
                                j.node_id,
                                id.node_id
                            )
                        };
                        // Refusals by members of another cluster seen so far.
                        let mut refusals = 0u32;
                        let is_final = |e: &anyhow::Error, seen: &mut u32| {
                            refusal_is_final(&node, e, seen, joins, (&data_dir, &id))
                        };
                        // With join addresses the members found there are asked anyway:
                        // they must be of this node's cluster.
                        if current && s.cluster_id == id.cluster_id && !joins {
                            node.registered.store(true, Ordering::Relaxed);
                            // Its own log cannot show a removal made while it was down
                            // (`cluster remove` of a stopped node): the members it finds
                            // are asked all the same, which registers it again if so (it
                            // was asked to leave no other way), and changes nothing if not.
                            // Asked until a member answers: the answer is also what makes
                            // this node's state fresh (`raft::seam::fresh`), without which it
                            // serves no client (unless it leads the controller).
                            while !node.stopping() {
                                match register(true) {
                                    Ok(j) if j.node_id == id.node_id => {
                                        log::debug!("registration as node {} confirmed", j.node_id)
                                    }
                                    Ok(j) => known_otherwise(&j),
                                    Err(e) if e.downcast_ref::<Refused>().is_some() => {
                                        if !is_final(&e, &mut refusals) {
                                            continue;
                                        }
                                    }
                                    Err(e) => {
                                        log::debug!("confirming the registration: {e:#}");
                                        continue;
                                    }
                                }
                                break;
                            }
                        } else {
                            // A node recovers a controller replica that holds no state (lost, or
                            // started afresh), and serves clients at all (`raft::seam::fresh`),
                            // only once registered: it keeps asking while no member answers
                            // (each attempt lasts up to JOIN_DEADLINE). A refusal is final: the
                            // members belong to another cluster.
                            while !node.stopping() {
                                match register(false) {
                                    Ok(j) if j.node_id == id.node_id => {
                                        node.registered.store(true, Ordering::Relaxed);
                                        log::info!(
                                            "registered with the controller again as node {}",
                                            j.node_id
                                        )
                                    }
                                    Ok(j) => known_otherwise(&j),
                                    Err(e) if e.downcast_ref::<Refused>().is_some() => {
                                        if !is_final(&e, &mut refusals) {
                                            continue;
                                        }
                                    }
                                    Err(e) => {
                                        log::error!("registering with the controller again: {e:#}");
                                        log::warn!(
                                            "this node serves no client until a member answers \
                                             its registration: asking again"
                                        );
                                        continue;
                                    }
                                }
                                break;
                            }
                        }
                        // A removal that lands while this node starts (its registration
                        // answered before the removal applied here: a restart slower than
                        // --dead-node-timeout) was made while it was away, as one read from
                        // its log: once its state is fresh, it registers again.
                        while !node.stopping() {
                            if consensus::raft::seam::fresh(&node).is_err() {
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                            let removed = node
                                .state()
                                .nodes
                                .get(&id.node_id)
                                .is_some_and(|n| n.removed);
                            if !removed || node.removed_while_running() {
                                break;
                            }
                            match register(false) {
                                Ok(j) => log::info!(
                                    "removed while it started: registered with the controller \
                                     again as node {}",
                                    j.node_id
                                ),
                                Err(e) if e.downcast_ref::<Refused>().is_some() => {
                                    if is_final(&e, &mut refusals) {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    log::error!("registering with the controller again: {e:#}")
                                }
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    })
                    .context("starting the rejoin thread")?;
            }
        }
    }
    Ok(())
}

fn peer_tls(settings: &Settings) -> anyhow::Result<Option<net::peer::PeerTls>> {
    match settings.gossip.as_ref().and_then(|g| g.peer_tls.as_ref()) {
        Some(files) => Ok(Some(files.load().context("loading the peer TLS settings")?)),
        None => Ok(None),
    }
}

/// Opens (creating if new) the controller's partition on shard 0. One the catalog no
/// longer holds (the node stopped while starting that replica afresh, between closing it and
/// opening it again) is opened afresh now, empty.
fn open_controller(
    config: LogConfig,
    node: &ClusterNode,
    engine: &EngineHandle,
) -> anyhow::Result<()> {
    if engine.topic(CONTROLLER_TOPIC).is_ok() {
        if engine
            .held_partitions(CONTROLLER_TOPIC)
            .is_ok_and(|h| !h.contains(&0))
        {
            log::warn!("the controller's replica was being started afresh: opening it empty");
            // Never as a first voter: the cluster exists (see `reset_controller_replica`).
            node.bootstrapper
                .store(false, std::sync::atomic::Ordering::Relaxed);
            futures_lite::future::block_on(engine.open_partition(CONTROLLER_TOPIC, 0))
                .context("opening the controller's partition afresh")?;
        }
        return Ok(());
    }
    match futures_lite::future::block_on(engine.create_topic(CONTROLLER_TOPIC, 1, config)) {
        Ok(_) | Err(engine::Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(anyhow!(e)).context("creating the controller's partition"),
    }
}

/// Whether this node's controller replica was started afresh (`reset_controller_replica`,
/// or its reopening at start above), or was found lost at start (its log marked lost: it
/// opens stopped, with nothing to replay): it holds no configuration it may act on and
/// applied no state, and waits for the controller's leader to add it back, as a joining
/// node's replica (a lost one once it is started afresh). The cluster exists: the first node
/// has nothing to bootstrap, and waiting for a leader or a state it cannot have before its
/// registration (sent after `bootstrap`) would fail its start. Waits briefly for the
/// replica's first view; none yet: neither (the bootstrap wait as before).
fn controller_awaits_the_cluster(node: &ClusterNode) -> bool {
    let _ = wait_for("the controller's replica", Duration::from_secs(5), || {
        node.controller().is_some()
    });
    let (v, cluster_id) = (node.controller(), node.state().cluster_id);
    let lost = consensus::cluster::lost_without_state(v.as_ref(), &cluster_id);
    if lost {
        log::warn!(
            "the controller's replica here was found lost (its log's acknowledged entries are \
             gone): not bootstrapping; it is reported stopped, left out of the controller's \
             group and started afresh"
        );
    }
    lost || consensus::cluster::started_afresh(v.as_ref(), &cluster_id)
}

/// Logs an error if the controller's log names another cluster than cluster.meta.
fn check_cluster_id(node: &ClusterNode, expected: &str) {
    let s = node.state();
    if !s.cluster_id.is_empty() && s.cluster_id != expected {
        log::error!(
            "cluster.meta names cluster {expected}, but the controller's log cluster {}",
            s.cluster_id
        );
    }
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    while !done() {
        if Instant::now() >= until {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The first node: the bootstrap command, topics of an older data directory, `default`.
fn bootstrap(
    settings: &Settings,
    node: &Arc<ClusterNode>,
    engine: &EngineHandle,
    cluster_id: &str,
    me: &NodeEntry,
) -> anyhow::Result<()> {
    // Replayed from the log on a restart; proposed once on a new cluster (applied once even
    // if proposed again after a crash).
    wait_for(
        "the controller to elect a leader",
        Duration::from_secs(60),
        || !node.state().cluster_id.is_empty() || node.is_controller_leader(),
    )?;
    if node.state().cluster_id.is_empty() {
        let c = Command::Bootstrap {
            cluster_id: cluster_id.to_owned(),
            node: me.clone(),
        };
        futures_lite::future::block_on(node.propose(&c)).context("bootstrapping the controller")?;
    }
    if !node.is_controller_leader() {
        return Ok(());
    }
    // Topics of a single-node data directory from before the controller: placed here.
    let state = node.state();
    for t in engine.list_topics().map_err(|e| anyhow!(e))? {
        if t.name == CONTROLLER_TOPIC || state.topics.contains_key(&t.name) {
            continue;
        }
        let partitions = (0..t.partitions)
            .map(|p| PartitionEntry {
                initial: vec![FIRST_NODE_ID],
                replicas: vec![Replica {
                    node: FIRST_NODE_ID,
                    shard: engine.shard_of(&t.name, p) as u32,
                }],
                stopped: Vec::new(),
                departed: Vec::new(),
            })
            .collect();
        let c = Command::CreateTopic {
            name: t.name.clone(),
            config: t.config.clone(),
            replication_factor: 1,
            partitions,
        };
        futures_lite::future::block_on(node.propose(&c))
            .with_context(|| format!("registering topic {:?} with the controller", t.name))?;
    }
    if !node.state().topics.contains_key(DEFAULT_TOPIC) {
        futures_lite::future::block_on(node.create_topic(
            DEFAULT_TOPIC,
            1,
            settings.log_config(),
            Some(1),
        ))
        .context("creating the default topic")?;
        log::info!("created topic {DEFAULT_TOPIC:?} (1 partition) for clients that name none");
    }
    Ok(())
}

/// Whether a registration that a member of another cluster refused (`e`) ends this node's
/// asking. A node alone in its cluster has nobody of its own to ask: it stops, and if it was
/// started with join addresses (`joins`: it meant to be in theirs), refused for belonging to
/// another cluster, and bootstrapped its own only because none of them answered, it is a
/// second cluster started by mistake and stops serving too
/// (`ClusterNode::refused_by_another_cluster`), the fence kept in cluster.meta (`dir`, this
/// node's identity `id`) so that it holds after a restart from the start, before any member
/// is asked again; a node bootstrapped without asking is the cluster a stray was pointed at,
/// and serves on. A node whose cluster has other nodes asks again after a pause (a stray
/// must not keep it from them), the first refusal logged as an error and the others at
/// debug level.
fn refusal_is_final(
    node: &ClusterNode,
    e: &anyhow::Error,
    seen: &mut u32,
    joins: bool,
    (dir, id): (&std::path::Path, &ClusterIdentity),
) -> bool {
    let why = format!("{e:#}");
    let other_cluster = e.downcast_ref::<Refused>().is_some_and(|r| r.other_cluster);
    if joins && other_cluster && node.refused_by_another_cluster(&why) {
        let fenced = ClusterIdentity {
            fenced: Some(why),
            ..id.clone()
        };
        if let Err(e) = identity::write(dir, &fenced) {
            log::error!(
                "writing the fence into cluster.meta: {e:#} (restarted, this node serves \
                 again until refused again)"
            );
        }
        return true;
    }
    if node.alone_in_cluster() {
        log::error!("registering with the controller again: {why}");
        return true;
    }
    if *seen == 0 {
        log::error!(
            "registering with the controller again: {why}; asking this cluster's members again"
        );
    } else {
        log::debug!("registering with the controller again: {why}");
    }
    *seen = seen.saturating_add(1);
    std::thread::sleep(Duration::from_secs(1));
    false
}

/// Asks the members gossip shows for a Raft id until one answers (see [`join`]).
/// A member's refusal to admit this node (another cluster's): asking again does not help.
#[derive(Debug)]
struct Refused {
    why: String,
    /// For belonging to another cluster (not, say, for joining without peer TLS).
    other_cluster: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Refused {}

#[allow(clippy::too_many_arguments)]
fn join_cluster(
    tls: &Option<net::peer::PeerTls>,
    node: &ClusterNode,
    engine: &EngineHandle,
    members: &consensus::membership::MembershipWatch,
    me: &NodeEntry,
    cluster_id: Option<String>,
    quiet: bool,
    join: &[String],
) -> anyhow::Result<consensus::cluster::identity::ClusterIdentity> {
    let req = JoinRequest {
        cluster_id,
        node: me.clone(),
    };
    let until = Instant::now() + JOIN_DEADLINE;
    let mut last_error = String::from(if tls.is_some() {
        "no other member seen through gossip yet (are --start-join-addrs right, and do the \
         members' peer certificates chain to this node's --peer-tls-ca-file?)"
    } else {
        "no other member seen through gossip yet (are --start-join-addrs right? Members that \
         run with peer TLS, --peer-tls-*, drop this node's gossip until it runs with it too)"
    });
    let mut last_log = Instant::now();
    let mut redirect: Option<String> = None;
    loop {
        // A refusal (the member belongs to another cluster) is the answer only when no other
        // member of this pass answered at all: one stray member (a second cluster started by
        // mistake beside this one) must not keep a node from its own cluster, whose members
        // may be electing a leader (they answer "not the leader") or not see it yet.
        let mut refused: Option<Refused> = None;
        let mut answered_otherwise = false;
        let mut targets: Vec<String> = redirect.take().into_iter().collect();
        for m in &members.members().members {
            if !m.is_self && m.state.is_live() {
                targets.push(m.rpc_addr.to_string());
            }
        }
        // A node that bootstrapped because no member at its join addresses answered asks
        // those addresses directly when gossip shows no member: with peer TLS, members of
        // another cluster gossip under that cluster's key, which this node's gossip drops
        // (and theirs its own), so only a join request over peer TLS shows them for what
        // they are. Each silent address costs a second; a list naming every node names this
        // one too, which is not asked.
        if node.probed.load(Ordering::Relaxed) && targets.is_empty() {
            for a in join.iter().filter_map(|j| rpc_addr_at(j)) {
                let a = a.to_string();
                if a != me.rpc_addr && !targets.contains(&a) {
                    targets.push(a);
                }
            }
        }
        for t in targets {
            let Ok(addr) = t.parse::<std::net::SocketAddr>() else {
                continue;
            };
            match ask(engine, tls, addr, &req) {
                Ok(JoinAnswer::Joined {
                    cluster_id,
                    node_id,
                    nodes,
                    applied,
                }) => {
                    node.learn_addresses(&nodes);
                    // An older member names no index: caught up is all it can say.
                    node.note_member_applied(applied.unwrap_or(1));
                    return Ok(ClusterIdentity::new(cluster_id, node_id));
                }
                Ok(JoinAnswer::NotLeader { leader_addr, .. }) => {
                    answered_otherwise = true;
                    last_error = format!("{addr} is not the controller's leader");
                    if let Some(a) = leader_addr {
                        redirect = Some(a);
                        break;
                    }
                }
                // Gossip there has not seen this node yet: it will.
                Ok(JoinAnswer::Refused { reason }) if reason.contains(join::NOT_SEEN_YET) => {
                    answered_otherwise = true;
                    last_error = format!("{addr}: {reason}");
                }
                Ok(JoinAnswer::Refused { reason }) => {
                    refused.get_or_insert(Refused {
                        other_cluster: reason.starts_with(join::OF_ANOTHER_CLUSTER),
                        why: format!("joining through {addr} was refused: {reason}"),
                    });
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        if redirect.is_none() && !answered_otherwise {
            if let Some(r) = refused {
                return Err(r.into());
            }
        }
        if Instant::now() >= until {
            bail!("could not join a cluster in {JOIN_DEADLINE:?}: {last_error}");
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            if quiet {
                log::debug!("confirming this node's registration: {last_error}");
            } else {
                log::warn!("still joining: {last_error}");
            }
            last_log = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One join request to `addr`, sent from shard 0.
fn ask(
    engine: &EngineHandle,
    tls: &Option<net::peer::PeerTls>,
    addr: std::net::SocketAddr,
    req: &JoinRequest,
) -> Result<JoinAnswer, String> {
    let (tls, req) = (tls.clone(), req.clone());
    futures_lite::future::block_on(engine.on_shard(0, move |_| async move {
        Ok(join::request(addr, tls.as_ref(), &req).await)
    }))
    .map_err(|e| e.to_string())
    .and_then(|r| r)
}

/// The RPC address that the member at gossip address `join` (a `--start-join-addrs` entry)
/// advertises, asked as membership asks it before it has a gossip key (a query that needs
/// none, answered to the asking socket); `None` when nothing answers within a second.
fn rpc_addr_at(join: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    join.to_socket_addrs().ok()?.find_map(rpc_addr_from)
}

/// [`rpc_addr_at`] for one resolved address.
fn rpc_addr_from(to: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    use consensus::membership::envelope::{self, Opened};
    let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    // Tells this query's answer from a late one to another (no secret: the query is not
    // authenticated).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut query = Vec::new();
    envelope::query(nonce, &mut query);
    socket.send_to(&query, to).ok()?;
    let until = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        if from != to {
            continue;
        }
        if let Ok(Opened::Answer {
            nonce: got,
            rpc_addr,
        }) = envelope::open(None, &buf[..n])
        {
            if got == nonce {
                return Some(rpc_addr);
            }
        }
    }
}

/// Asks the live members gossip shows (the `--start-join-addrs` and whom they gossip with)
/// for up to [`BOOTSTRAP_PROBE`] once gossip runs whether they belong to a cluster, as a
/// joining node would; says which answered so, if one did. A member that knows no leader, or has not
/// seen this node through gossip yet, belongs to one all the same; a node still joining,
/// or bootstrapping after its own probe, does not (yet). A member of a cluster may register
/// this node while answering: the join that follows then gets the same Raft id.
fn find_a_cluster(
    tls: &Option<net::peer::PeerTls>,
    engine: &EngineHandle,
    members: &consensus::membership::MembershipWatch,
    me: &NodeEntry,
    join: &[String],
) -> Option<String> {
    let req = JoinRequest {
        cluster_id: None,
        node: me.clone(),
    };
    // With peer TLS gossip starts once a member gave the cluster's key, or once none did
    // in BOOTSTRAP_PROBE (membership then creates it): the probe counts from then. A key
    // created here because none gave it means that no member at those addresses runs with
    // it: gossip never talks to them, there is no cluster to find.
    // (Not bootstrapping meanwhile: membership creates the key if none is given in time.)
    while wait_for("gossip to start", BOOTSTRAP_PROBE, || members.gossiping()).is_err() {
        log::info!(
            "--bootstrap: gossip has not started yet (the cluster's gossip key is being \
             fetched): waiting before looking for a cluster"
        );
    }
    if members.key_created_here() {
        return None;
    }
    let until = Instant::now() + BOOTSTRAP_PROBE;
    // The gossip addresses of members that said they belong to no cluster: once every
    // join address is one of them (a cluster's first start, every node up), there is
    // nothing more to wait for.
    let mut without = std::collections::HashSet::new();
    while Instant::now() < until {
        for m in &members.members().members {
            if m.is_self || !m.state.is_live() {
                continue;
            }
            let addr = m.rpc_addr;
            match ask(engine, tls, addr, &req) {
                Ok(JoinAnswer::Joined { cluster_id, .. }) => {
                    return Some(format!(
                        "{} ({addr}) is a member of cluster {cluster_id}",
                        m.name
                    ))
                }
                Ok(JoinAnswer::NotLeader {
                    leader_addr,
                    in_cluster,
                }) if in_cluster || leader_addr.is_some() => {
                    return Some(format!("{} ({addr}) belongs to a cluster", m.name))
                }
                Ok(JoinAnswer::NotLeader { .. }) => {
                    without.insert(m.gossip_addr);
                }
                // Only a member with cluster state gets as far as asking its gossip; any
                // other refusal (peer TLS on one side only) the join reports again.
                Ok(JoinAnswer::Refused { reason }) => {
                    return Some(format!("{} ({addr}) answered: {reason}", m.name))
                }
                Err(e) => log::debug!("asking {addr} whether it belongs to a cluster: {e}"),
            }
        }
        let resolved: Vec<std::net::SocketAddr> = join
            .iter()
            .filter_map(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok())
            .flatten()
            .collect();
        if resolved.len() >= join.len() && resolved.iter().all(|a| without.contains(a)) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}
