//! The membership state machine without I/O: foca (SWIM) plus everything proglog adds to it
//! (authenticated envelopes, join retries, "left" told apart from "down", suspicion,
//! the published member list). A driver feeds it datagrams and timers and carries out what
//! it asks through [`Io`]; the glommio driver ([`super::driver`]) and the seeded network
//! simulation in the tests run this same code.
//!
//! Time is a [`Duration`] since the driver started (the *membership clock*); the core never
//! reads a clock itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use foca::{BroadcastHandler, Foca, Invalidates, Notification, OwnedNotification, PostcardCodec};
use rand010::rngs::SmallRng;
use rand010::SeedableRng;

use super::envelope::{self, Opened, Rejected};
use super::identity::{NodeId, NodeIdentity};
use super::key::GossipKey;
use super::view::{GossipStats, Member, MemberList, MemberState, Shared};

/// What the core asks of its driver: the network and the timers.
pub trait Io {
    /// Sends one datagram; failures are the driver's to count (UDP promises nothing).
    fn send_to(&mut self, to: SocketAddr, packet: &[u8]);
    /// Delivers `timer` back through [`Core::handle_timer`] after `after`. Every timer must
    /// be delivered: foca counts on it.
    fn schedule(&mut self, after: Duration, timer: Timer);
    /// Resolve the start-join addresses afresh (host names may point elsewhere now) and
    /// call [`Core::join`] with the result.
    fn request_join(&mut self);
}

/// An [`Io`] that only records what was asked, for a driver to carry out afterwards.
#[derive(Debug, Default)]
pub struct Effects {
    pub sends: Vec<(SocketAddr, Vec<u8>)>,
    pub timers: Vec<(Duration, Timer)>,
    pub join: bool,
}

impl Io for Effects {
    fn send_to(&mut self, to: SocketAddr, packet: &[u8]) {
        self.sends.push((to, packet.to_vec()));
    }

    fn schedule(&mut self, after: Duration, timer: Timer) {
        self.timers.push((after, timer));
    }

    fn request_join(&mut self) {
        self.join = true;
    }
}

/// Timers of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    Foca(foca::Timer<NodeIdentity>),
    /// Try to join again if this node still knows no live member.
    Join,
}

/// Gossip settings. The defaults suit a LAN: a dead member is suspected within about one
/// probe period and declared down `suspect_to_down_after` later.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Each member probes one other member this often.
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect probes go out.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly; also the fan-out of an explicit gossip round.
    pub indirect_probes: usize,
    /// How long a suspect member has to refute the suspicion before it is declared down.
    pub suspect_to_down_after: Duration,
    /// Piggy-backed updates are also pushed to `gossip_fanout` members this often.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// Announce to a random live member this often, to learn members nobody mentioned.
    pub announce_interval: Duration,
    /// Announce to down members this often: this heals partitions (both sides declared the
    /// other down) and finds restarted nodes at their old addresses.
    pub announce_down_interval: Duration,
    /// How many times an update is passed on.
    pub max_transmissions: u8,
    /// Largest datagram, envelope included.
    pub max_packet_bytes: usize,
    /// How long down and left members stay in the list (the Raft reconcile loop acts on
    /// "down for longer than --dead-node-timeout", so keep this above it).
    pub retention: Duration,
    /// Bound on listed members; the oldest down or left ones go first.
    pub max_members: usize,
    /// First and longest wait between join attempts (doubling in between).
    pub join_backoff_min: Duration,
    pub join_backoff_max: Duration,
    /// Answers to RPC address queries per second at most (they are unauthenticated).
    pub max_answers_per_second: u32,
}

impl Default for MembershipConfig {
    fn default() -> MembershipConfig {
        MembershipConfig {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(4),
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(10),
            announce_down_interval: Duration::from_secs(2),
            max_transmissions: 6,
            max_packet_bytes: 1400,
            retention: Duration::from_secs(3600),
            max_members: 1024,
            join_backoff_min: Duration::from_millis(500),
            // A join attempt is one small datagram per address: retrying every few seconds
            // costs nothing, and it bounds how long an isolated node takes to come back.
            join_backoff_max: Duration::from_secs(5),
            max_answers_per_second: 50,
        }
    }
}

impl MembershipConfig {
    fn foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions.max(1))
                .unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            // Our own list keeps down members for `retention`; foca may forget them then too.
            remove_down_after: Some(self.retention),
            max_packet_size: nz(self
                .max_packet_bytes
                .saturating_sub(envelope::OVERHEAD_BYTES)),
            // A member wrongly declared down hears so at once and rejoins (renew).
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: nz(1),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_down_interval,
                num_members: nz(2),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: nz(self.gossip_fanout),
            }),
        }
    }
}

/// Custom broadcast kinds (first byte of a foca custom broadcast).
const BROADCAST_LEFT: u8 = 1;
const LEFT_BYTES: usize = 1 + 16 + 8 + 4;

/// The runs that announced they are leaving, shared with foca's broadcast handler.
type LeftRuns = Rc<RefCell<HashMap<NodeId, (u64, u32)>>>;

/// How often, and for how long after learning of it, a member re-announces a departure.
/// foca hands a broadcast to a few members a few times; each member that learns it passes it
/// on once. A member that lost every copy (5% loss, membership_sim seed 9010) listed the
/// leaver down for ever. Everyone that knows re-announcing it for a while closes that gap,
/// at 29 bytes per piggybacked copy.
const LEFT_REANNOUNCE_EVERY: Duration = Duration::from_secs(1);
const LEFT_REANNOUNCE_FOR: Duration = Duration::from_secs(20);

fn left_message(node: NodeId, run: (u64, u32)) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEFT_BYTES);
    b.push(BROADCAST_LEFT);
    b.extend_from_slice(&node.0);
    b.extend_from_slice(&run.0.to_le_bytes());
    b.extend_from_slice(&run.1.to_le_bytes());
    b
}

#[derive(Debug, thiserror::Error)]
#[error("malformed custom broadcast: {0}")]
pub struct BadBroadcast(&'static str);

/// Disseminates "run R of node N left on purpose" through foca's custom broadcasts.
struct LeftHandler {
    left: LeftRuns,
    max_entries: usize,
}

#[derive(Debug, Clone, Copy)]
struct LeftKey {
    node: NodeId,
    run: (u64, u32),
}

impl Invalidates for LeftKey {
    fn invalidates(&self, other: &LeftKey) -> bool {
        self.node == other.node && self.run >= other.run
    }
}

impl BroadcastHandler<NodeIdentity> for LeftHandler {
    type Key = LeftKey;
    type Error = BadBroadcast;

    /// `sender` is `None` for this member's own announcements (foca's `add_broadcast`): a
    /// departure it already knows is queued again (a re-announcement), where a copy from the
    /// network of a known departure is not passed on again.
    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<LeftKey>, BadBroadcast> {
        if data.len() != LEFT_BYTES || data[0] != BROADCAST_LEFT {
            return Err(BadBroadcast("unknown kind or length"));
        }
        let mut node = [0u8; 16];
        node.copy_from_slice(&data[1..17]);
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&data[17..25]);
        let mut renewal = [0u8; 4];
        renewal.copy_from_slice(&data[25..29]);
        let key = LeftKey {
            node: NodeId(node),
            run: (u64::from_le_bytes(generation), u32::from_le_bytes(renewal)),
        };
        let mut left = self.left.borrow_mut();
        match left.get(&key.node) {
            Some(run) if *run > key.run => return Ok(None),
            Some(run) if *run == key.run => {
                return Ok(sender.is_none().then_some(key));
            }
            _ => {}
        }
        if left.len() >= self.max_entries && !left.contains_key(&key.node) {
            // Bounded: forgetting an old departure only makes it show as down.
            if let Some(k) = left.keys().next().copied() {
                left.remove(&k);
            }
        }
        left.insert(key.node, key.run);
        Ok(Some(key))
    }
}

type SwimNode = Foca<NodeIdentity, PostcardCodec, SmallRng, LeftHandler>;

/// Carries foca's requests to the driver, sealing every datagram in the envelope.
struct Runtime<'a, I: Io> {
    io: &'a mut I,
    key: Option<&'a GossipKey>,
    stats: &'a GossipStats,
    buf: &'a mut Vec<u8>,
    notes: &'a mut Vec<OwnedNotification<NodeIdentity>>,
    /// The timer token of the last timer foca asked for.
    token: &'a mut Option<foca::TimerToken>,
}

impl<I: Io> foca::Runtime<NodeIdentity> for Runtime<'_, I> {
    fn notify(&mut self, n: Notification<'_, NodeIdentity>) {
        match n {
            Notification::DataSent(_) | Notification::DataReceived(_) => {}
            n => self.notes.push(n.to_owned()),
        }
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        envelope::seal_swim(self.key, data, self.buf);
        GossipStats::add(&self.stats.packets_sent, 1);
        GossipStats::add(&self.stats.bytes_sent, self.buf.len() as u64);
        self.io.send_to(to.gossip_addr, self.buf);
    }

    fn submit_after(&mut self, event: foca::Timer<NodeIdentity>, after: Duration) {
        if let Some(t) = timer_token(&event) {
            *self.token = Some(t);
        }
        self.io.schedule(after, Timer::Foca(event));
    }
}

/// The token a foca timer carries (foca ignores timers whose token is not its current one).
fn timer_token(t: &foca::Timer<NodeIdentity>) -> Option<foca::TimerToken> {
    use foca::Timer as T;
    match t {
        T::ProbeRandomMember(token)
        | T::PeriodicAnnounce(token)
        | T::PeriodicAnnounceDown(token)
        | T::PeriodicGossip(token)
        | T::SendIndirectProbe { token, .. }
        | T::ChangeSuspectToDown { token, .. } => Some(*token),
        T::RemoveDown(_) => None,
    }
}

/// One node's membership.
pub struct Core {
    foca: SwimNode,
    key: Option<GossipKey>,
    config: MembershipConfig,
    shared: Arc<Shared>,
    left: LeftRuns,
    /// Departures being re-announced, with when that stops; and when the next pass is due.
    announcing: HashMap<NodeId, ((u64, u32), Duration)>,
    next_announce: Duration,
    /// Every node this one knows of, by id: the published list.
    members: BTreeMap<NodeId, Member>,
    version: u64,
    joins: bool,
    join_pending: bool,
    join_backoff: Duration,
    leaving: bool,
    buf: Vec<u8>,
    notes: Vec<OwnedNotification<NodeIdentity>>,
    answers: (Duration, u32),
    /// foca's timer token as last seen (see `rearm_suspicions`).
    token: Option<foca::TimerToken>,
    /// When a dropped unauthenticated packet was last logged at warn (once a minute at most).
    unauthenticated_logged: Option<Duration>,
}

/// How often packets this node cannot authenticate are logged at warn: a node started
/// without the cluster's peer TLS keeps sending them.
const UNAUTHENTICATED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Core {
    /// A member that will announce itself to the start-join addresses (when `joins`) and
    /// otherwise waits to be found. `seed` drives foca's random choices.
    pub fn new(
        identity: NodeIdentity,
        config: MembershipConfig,
        key: Option<GossipKey>,
        joins: bool,
        seed: u64,
        shared: Arc<Shared>,
    ) -> Core {
        let left: LeftRuns = Rc::default();
        let handler = LeftHandler {
            left: left.clone(),
            max_entries: config.max_members,
        };
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        Core {
            foca,
            key,
            join_backoff: config.join_backoff_min,
            config,
            shared,
            left,
            announcing: HashMap::new(),
            next_announce: Duration::ZERO,
            members: BTreeMap::new(),
            version: 0,
            joins,
            join_pending: false,
            leaving: false,
            buf: Vec::new(),
            notes: Vec::new(),
            answers: (Duration::ZERO, 0),
            token: None,
            unauthenticated_logged: None,
        }
    }

    /// Publishes the first list (this node alone) and starts joining.
    pub fn start(&mut self, now: Duration, io: &mut impl Io) {
        if self.joins {
            self.join_pending = true;
            io.schedule(Duration::ZERO, Timer::Join);
        }
        self.refresh(now);
    }

    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Live members other than this node, as foca counts them.
    pub fn live_peers(&self) -> usize {
        self.foca.num_members()
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The latest published list.
    pub fn list(&self) -> Arc<MemberList> {
        self.shared.current()
    }

    fn runtime<'a, I: Io>(
        io: &'a mut I,
        key: &'a Option<GossipKey>,
        shared: &'a Shared,
        buf: &'a mut Vec<u8>,
        notes: &'a mut Vec<OwnedNotification<NodeIdentity>>,
        token: &'a mut Option<foca::TimerToken>,
    ) -> Runtime<'a, I> {
        Runtime {
            io,
            key: key.as_ref(),
            stats: &shared.stats,
            buf,
            notes,
            token,
        }
    }

    /// Runs `f` against foca with a runtime over `io`, then reacts to what happened.
    fn with_foca<I: Io>(
        &mut self,
        now: Duration,
        io: &mut I,
        f: impl FnOnce(&mut SwimNode, &mut Runtime<'_, I>) -> Result<(), foca::Error>,
    ) -> Result<(), foca::Error> {
        let mut notes = std::mem::take(&mut self.notes);
        let before = self.token;
        let result = {
            let mut rt = Self::runtime(
                io,
                &self.key,
                &self.shared,
                &mut self.buf,
                &mut notes,
                &mut self.token,
            );
            let r = f(&mut self.foca, &mut rt);
            // foca renews its identity (declared down, it rejoins) by resetting itself to
            // disconnected, and only applying updates connects it again: after a rejoin
            // caused by a message (TurnUndead) it stayed disconnected with members in view,
            // no probe or gossip timer running, so nobody learnt the new identity unless it
            // was probed (membership_sim seed 15098460921498634539). Applying no update
            // connects it now, with its timers under the new token.
            if rt
                .notes
                .iter()
                .any(|n| matches!(n, OwnedNotification::Rejoin(_)))
            {
                if let Err(e) = self.foca.apply_many(std::iter::empty(), false, &mut rt) {
                    log::debug!("gossip: reconnecting after a rejoin: {e}");
                }
            }
            r
        };
        if before.is_some() && self.token != before {
            self.rearm_suspicions(io);
        }
        for n in notes.drain(..) {
            self.on_notification(n, now, io);
        }
        self.notes = notes;
        self.refresh(now);
        result
    }

    fn on_notification(
        &mut self,
        n: OwnedNotification<NodeIdentity>,
        _now: Duration,
        io: &mut impl Io,
    ) {
        match n {
            OwnedNotification::ProbeFailed(_, id) => {
                GossipStats::add(&self.shared.stats.failed_probes, 1);
                log::debug!("gossip: probe of {id:?} failed");
            }
            OwnedNotification::Active => {
                log::info!("gossip: joined the cluster as {:?}", self.foca.identity());
                self.join_backoff = self.config.join_backoff_min;
            }
            OwnedNotification::Idle if !self.leaving => {
                log::warn!("gossip: no live member left in view");
                self.join_backoff = self.config.join_backoff_min;
                self.schedule_join(io, self.config.join_backoff_min);
            }
            OwnedNotification::Rejoin(id) => {
                log::warn!(
                    "gossip: this node was declared down by the cluster; rejoined as {id:?}"
                );
                // foca tells only the members it sees live of the new identity; a node that
                // sees none (it was cut off) announces itself through its join addresses now.
                if self.joins && self.foca.num_members() == 0 {
                    GossipStats::add(&self.shared.stats.join_attempts, 1);
                    io.request_join();
                }
            }
            OwnedNotification::Defunct if !self.leaving => {
                log::warn!("gossip: this node was declared down and cannot rejoin");
            }
            _ => {}
        }
    }

    /// foca drops the timers it set before its timer token changed (this node was declared
    /// down and rejoined, or lost every member), among them the ones that turn a suspect
    /// member down unless it refutes. A member suspected then stays suspect for ever if it
    /// never hears of the suspicion (it was cut off when it was raised): listed suspect, it
    /// is removed from the cluster after --dead-node-timeout while it runs. So each member
    /// still suspect gets its timer again, under the new token: down after
    /// `suspect_to_down_after` unless it refutes by then (a live member declared down hears so
    /// and rejoins renewed).
    fn rearm_suspicions(&mut self, io: &mut impl Io) {
        let Some(token) = self.token else { return };
        for m in self.foca.iter_membership_state() {
            if m.state() == foca::State::Suspect {
                let t = foca::Timer::ChangeSuspectToDown {
                    member_id: m.id().clone(),
                    incarnation: m.incarnation(),
                    token,
                };
                io.schedule(self.config.suspect_to_down_after, Timer::Foca(t));
            }
        }
    }

    fn schedule_join(&mut self, io: &mut impl Io, after: Duration) {
        if self.joins && !self.join_pending && !self.leaving {
            self.join_pending = true;
            io.schedule(after, Timer::Join);
        }
    }

    /// A datagram from `from`. Anything that does not check out is dropped and counted.
    pub fn handle_packet(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Duration,
        io: &mut impl Io,
    ) {
        let stats = &self.shared.stats;
        GossipStats::add(&stats.packets_received, 1);
        GossipStats::add(&stats.bytes_received, data.len() as u64);
        if data.len() > self.config.max_packet_bytes {
            GossipStats::add(&stats.dropped_malformed, 1);
            log::debug!(
                "gossip: dropped {} bytes from {from}: too large",
                data.len()
            );
            return;
        }
        match envelope::open(self.key.as_ref(), data) {
            Err(Rejected::Malformed(why)) => {
                GossipStats::add(&stats.dropped_malformed, 1);
                log::debug!("gossip: dropped a packet from {from}: {why}");
            }
            Err(Rejected::Unauthenticated(why)) => {
                GossipStats::add(&stats.dropped_unauthenticated, 1);
                let due = self
                    .unauthenticated_logged
                    .is_none_or(|t| now.saturating_sub(t) >= UNAUTHENTICATED_LOG_EVERY);
                if due {
                    self.unauthenticated_logged = Some(now);
                    let hint = if self.key.is_some() {
                        "a node started without this cluster's peer TLS (--peer-tls-*), or a \
                         member of another cluster, is trying to reach this one"
                    } else {
                        "a node with peer TLS is trying to reach this one, which runs without \
                         it (--peer-tls-*)"
                    };
                    log::warn!(
                        "gossip: dropped a packet from {from}: {why}; {hint} (logged once a \
                         minute; proglog_gossip_dropped_packets_total{{reason=\"unauthenticated\"}} \
                         counts them)"
                    );
                } else {
                    log::debug!("gossip: dropped a packet from {from}: {why}");
                }
            }
            Ok(Opened::Query { nonce }) => self.answer(from, nonce, now, io),
            Ok(Opened::Answer { .. }) => {
                log::debug!("gossip: unexpected RPC address answer from {from}");
            }
            Ok(Opened::Swim(body)) => {
                if self.names_too_many(body) {
                    GossipStats::add(&stats.dropped_full, 1);
                    log::debug!(
                        "gossip: dropped a packet from {from}: it names members past the \
                         bound of {}",
                        self.config.max_members
                    );
                    return;
                }
                let body = body.to_vec();
                let r = self.with_foca(now, io, |foca, rt| foca.handle_data(&body, rt));
                if let Err(e) = r {
                    match e {
                        // A stray copy of our own datagram, or a message for an earlier
                        // identity of ours: harmless, not an attack.
                        foca::Error::DataFromOurselves | foca::Error::IndirectForOurselves => {
                            log::debug!("gossip: ignored a packet from {from}: {e}")
                        }
                        e => {
                            GossipStats::add(&self.shared.stats.dropped_malformed, 1);
                            log::debug!("gossip: dropped a packet from {from}: {e}");
                        }
                    }
                }
            }
        }
    }

    /// True if foca, taking `body`, would know more than `max_members` members (itself
    /// included): its sender and the members its updates name, counted by gossip address (as
    /// foca keys them) where foca knows no member yet. foca keeps every address it hears of
    /// until it is found down and forgotten, so without this a sender of made-up members
    /// (anyone, without a gossip key) grew the membership without bound. A body foca could
    /// not decode is left to foca, which refuses it.
    fn names_too_many(&self, body: &[u8]) -> bool {
        use foca::{Codec, Identity};
        let mut codec = PostcardCodec;
        let mut data = body;
        let Ok(header) = codec.decode_header(&mut data) else {
            return false;
        };
        let updates = match data {
            [a, b, ..] if header.message != foca::Message::Broadcast => {
                u16::from_be_bytes([*a, *b]) as usize
            }
            _ => 0,
        };
        // Within the bound whatever it names (the usual case): no need to look.
        if self.foca.iter_membership_state().len() + 1 + 1 + updates <= self.config.max_members {
            return false;
        }
        let known: std::collections::HashSet<SocketAddr> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr())
            .collect();
        let me = self.foca.identity().addr();
        let mut new = std::collections::HashSet::new();
        let mut consider = |id: &NodeIdentity| {
            let a = id.addr();
            if a != me && !known.contains(&a) {
                new.insert(a);
            }
        };
        consider(&header.src);
        if updates > 0 {
            data = &data[2..];
            for _ in 0..updates {
                match codec.decode_member(&mut data) {
                    Ok(m) => consider(m.id()),
                    Err(_) => break,
                }
            }
        }
        known.len() + new.len() + 1 > self.config.max_members
    }

    fn answer(&mut self, from: SocketAddr, nonce: u64, now: Duration, io: &mut impl Io) {
        let second = Duration::from_secs(now.as_secs());
        if self.answers.0 != second {
            self.answers = (second, 0);
        }
        if self.answers.1 >= self.config.max_answers_per_second {
            return;
        }
        self.answers.1 += 1;
        let rpc = self.foca.identity().rpc_addr;
        envelope::answer(nonce, rpc, &mut self.buf);
        GossipStats::add(&self.shared.stats.packets_sent, 1);
        GossipStats::add(&self.shared.stats.bytes_sent, self.buf.len() as u64);
        io.send_to(from, &self.buf);
    }

    pub fn handle_timer(&mut self, timer: Timer, now: Duration, io: &mut impl Io) {
        match timer {
            Timer::Foca(t) => {
                if let Err(e) = self.with_foca(now, io, |foca, rt| foca.handle_timer(t, rt)) {
                    log::debug!("gossip: timer: {e}");
                }
            }
            Timer::Join => {
                self.join_pending = false;
                if self.leaving || self.foca.num_members() > 0 {
                    return;
                }
                GossipStats::add(&self.shared.stats.join_attempts, 1);
                io.request_join();
                let next = self.join_backoff;
                self.join_backoff = (self.join_backoff * 2).min(self.config.join_backoff_max);
                self.schedule_join(io, next);
            }
        }
    }

    /// Announces this node to the members behind `addrs` (just resolved by the driver).
    pub fn join(&mut self, addrs: &[SocketAddr], now: Duration, io: &mut impl Io) {
        let own = self.foca.identity().gossip_addr;
        for &addr in addrs.iter().filter(|a| **a != own) {
            let dst = NodeIdentity::placeholder(addr);
            if let Err(e) = self.with_foca(now, io, |foca, rt| foca.announce(dst, rt)) {
                log::debug!("gossip: announcing to {addr}: {e}");
            }
        }
    }

    /// Pushes pending updates to a few members now (used while leaving).
    pub fn gossip(&mut self, now: Duration, io: &mut impl Io) {
        if let Err(e) = self.with_foca(now, io, |foca, rt| foca.gossip(rt)) {
            log::debug!("gossip: {e}");
        }
    }

    /// First step of a clean leave: tells the cluster this run is leaving on purpose, so
    /// that others list it as left rather than down. Follow with a few [`gossip`](Self::gossip)
    /// rounds and then [`finish_leave`](Self::finish_leave).
    pub fn start_leave(&mut self, now: Duration, io: &mut impl Io) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        let me = self.foca.identity();
        let msg = left_message(me.node_id, me.run());
        if let Err(e) = self.foca.add_broadcast(&msg) {
            log::warn!("gossip: could not queue the leave announcement: {e}");
        }
        self.gossip(now, io);
    }

    /// Declares this identity down to a few members; foca then stops.
    pub fn finish_leave(&mut self, now: Duration, io: &mut impl Io) {
        self.leaving = true;
        if let Err(e) = self.with_foca(now, io, |foca, rt| foca.leave_cluster(rt)) {
            log::debug!("gossip: leaving: {e}");
        }
    }

    /// Queues again, once per [`LEFT_REANNOUNCE_EVERY`], each departure learnt in the last
    /// [`LEFT_REANNOUNCE_FOR`] (see there; "learnt" as seen at these once-a-second passes).
    /// Bounded by the departures foca's handler keeps; between passes, a packet costs nothing
    /// here.
    fn reannounce_departures(&mut self, now: Duration) {
        if now < self.next_announce {
            return;
        }
        self.next_announce = now + LEFT_REANNOUNCE_EVERY;
        {
            let left = self.left.borrow();
            for (node, run) in left.iter() {
                match self.announcing.get(node) {
                    Some((have, _)) if have >= run => {}
                    _ => {
                        self.announcing
                            .insert(*node, (*run, now + LEFT_REANNOUNCE_FOR));
                    }
                }
            }
            self.announcing
                .retain(|node, (_, until)| *until > now && left.contains_key(node));
        }
        for (node, (run, _)) in &self.announcing {
            if let Err(e) = self.foca.add_broadcast(&left_message(*node, *run)) {
                log::debug!("gossip: re-announcing the departure of {node}: {e}");
            }
        }
    }

    /// Recomputes the member list from foca's view and publishes it if it changed.
    fn refresh(&mut self, now: Duration) {
        self.reannounce_departures(now);
        let me = self.foca.identity().clone();
        // The newest run foca knows of each node.
        let mut newest: HashMap<NodeId, (&NodeIdentity, foca::State)> = HashMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.node_id == me.node_id || id.node_id == NodeId::UNKNOWN {
                continue;
            }
            match newest.get(&id.node_id) {
                Some((have, _)) if have.run() >= id.run() => {}
                _ => {
                    newest.insert(id.node_id, (id, m.state()));
                }
            }
        }
        let left = self.left.borrow();
        let has_left = |id: &NodeIdentity| left.get(&id.node_id).is_some_and(|r| *r >= id.run());
        let mut changed = false;
        let mut next: Vec<Member> = Vec::with_capacity(newest.len() + 1);
        let self_state = if self.leaving {
            MemberState::Left
        } else {
            MemberState::Up
        };
        next.push(Member::from_identity(&me, self_state, now, true));
        for (id, state) in newest.values() {
            let state = match state {
                _ if has_left(id) => MemberState::Left,
                foca::State::Alive => MemberState::Up,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            next.push(Member::from_identity(id, state, now, false));
        }
        drop(left);
        let seen: Vec<NodeId> = next.iter().map(|m| m.node_id).collect();
        for mut m in next {
            match self.members.get(&m.node_id) {
                Some(old) if (old.generation, old.renewal) > (m.generation, m.renewal) => {}
                Some(old)
                    if old.state == m.state
                        && (old.generation, old.renewal) == (m.generation, m.renewal)
                        && old.gossip_addr == m.gossip_addr
                        && old.rpc_addr == m.rpc_addr
                        && old.name == m.name => {}
                old => {
                    if let Some(old) = old {
                        if old.state == m.state && old.generation == m.generation {
                            m.since = old.since;
                        }
                    }
                    self.log_transition(old, &m);
                    if m.state == MemberState::Suspect
                        && old.is_none_or(|o| o.state != MemberState::Suspect)
                    {
                        GossipStats::add(&self.shared.stats.suspicions, 1);
                    }
                    self.members.insert(m.node_id, m);
                    changed = true;
                }
            }
        }
        // Members foca no longer lists: a live one is stale news, a dead one ages out.
        let retention = self.config.retention;
        let mut expired = Vec::new();
        for (node, m) in self.members.iter_mut() {
            if seen.contains(node) {
                continue;
            }
            if m.state.is_live() {
                m.state = MemberState::Down;
                m.since = now;
                changed = true;
            } else if now.saturating_sub(m.since) > retention {
                expired.push(*node);
            }
        }
        changed |= self.evict(expired);
        if changed {
            self.version += 1;
            self.shared
                .publish(MemberList::from_map(self.version, now, &self.members));
        }
    }

    /// Removes `expired`, then the oldest non-live members while over the bound.
    fn evict(&mut self, expired: Vec<NodeId>) -> bool {
        let mut changed = !expired.is_empty();
        for n in expired {
            self.members.remove(&n);
        }
        while self.members.len() > self.config.max_members {
            let oldest = self
                .members
                .values()
                .filter(|m| !m.state.is_live() && !m.is_self)
                .min_by_key(|m| m.since)
                .map(|m| m.node_id);
            match oldest {
                Some(n) => {
                    self.members.remove(&n);
                    changed = true;
                }
                None => break,
            }
        }
        changed
    }

    fn log_transition(&self, old: Option<&Member>, new: &Member) {
        if new.is_self {
            return;
        }
        let who = format!(
            "{} ({}, gossip {}, rpc {}, generation {})",
            new.name, new.node_id, new.gossip_addr, new.rpc_addr, new.generation
        );
        match old {
            None => log::info!("member {who} is {}", new.state),
            Some(o) if o.state != new.state => {
                log::info!("member {who}: {} -> {}", o.state, new.state)
            }
            Some(o) if o.generation != new.generation => log::info!(
                "member {who} restarted (generation {} -> {}), {}",
                o.generation,
                new.generation,
                new.state
            ),
            Some(_) => log::debug!("member {who} changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Departure broadcasts from other members, mutated (see `crate::mutation`): refused or
    /// taken, never a panic; one taken is the message [`left_message`] makes of it.
    #[test]
    fn mutated_departures_never_panic() {
        use crate::mutation::{iterations, Mutator};
        use rand::Rng;
        let mut m = Mutator::new();
        let corpus: Vec<Vec<u8>> = (0..4)
            .map(|_| left_message(NodeId(m.rng.random()), (m.rng.random(), m.rng.random())))
            .collect();
        let mut handler = LeftHandler {
            left: LeftRuns::default(),
            max_entries: 16,
        };
        m.run("departure broadcast", &corpus, iterations(200_000), |b| {
            if let Ok(Some(key)) = handler.receive_item(b, None) {
                assert_eq!(left_message(key.node, key.run), b);
            }
            assert!(handler.left.borrow().len() <= 16);
        });
    }
}
