//! The connections of one executor: how many, which are idle, and which to close first.
//!
//! A connection is counted from `accept`, through its first byte, TLS and HTTP/2 handshakes,
//! until its task ends, so a flood of handshakes cannot overshoot the limit and shows in the
//! connection gauge. A connection is *idle* while it runs no call, from accept on: one that
//! only sent the preface and SETTINGS is idle, and so is one still in its handshake.
//!
//! At the limit a new connection is not refused while a quiet one exists: one whose calls, if
//! it has any, all wait for their request (they sent their headers and no message yet). The
//! connection quiet the longest is told to close (GOAWAY once HTTP/2 is up, else closed at
//! once) and stops counting at that moment, and the new one takes its slot. So a flood of
//! idle connections, or of connections that open a call and never send its request, churns
//! through itself, while a connection with a call that has its request (an append, a tail
//! waiting for records, a stream between two messages, whose earlier ones may be in flight)
//! is never closed to make room. Only when every connection has such a call is a new one
//! refused.
//!
//! Calls are bounded per executor too (`max_calls`: each holds a task, its request's headers
//! and HTTP/2 state, 12-42 KiB): at the bound the call that has waited the longest for its
//! request is refused (RST_STREAM REFUSED_STREAM: nothing was processed, and clients may send
//! it again) to make room. When every open call has its request, a new call is still taken
//! on a connection that holds fewer than [`FAIR_CALLS`] (so a few connections full of tails
//! cannot lock everyone else out), and refused on the others. Streams that never send a
//! message (1,024 per connection) took 2.5 GB over 60 connections before.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// What one connection's task and its calls share about its life.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Calls running on the connection now.
    streams: Cell<usize>,
    /// Of those, the calls still waiting for their request (no message yet).
    waiting: Cell<usize>,
    /// When the connection last became idle (accept, or its last call ending).
    idle_since: Cell<Instant>,
    /// When it last became quiet: every call it runs waiting for its request, or none.
    quiet_since: Cell<Instant>,
    /// Set when the registry closed the connection to make room for a new one.
    evicted: Cell<bool>,
    /// Set when the client reset streams faster than allowed (rapid reset).
    calm: Cell<bool>,
    /// The connection task, woken when one of the above changes.
    waker: RefCell<Option<Waker>>,
    /// Client resets, as a token bucket: see [`ConnState::client_reset`].
    resets: RefCell<ResetBucket>,
}

#[derive(Debug)]
struct ResetBucket {
    tokens: f64,
    at: Instant,
}

impl ConnState {
    fn new(now: Instant, reset_burst: u32) -> ConnState {
        ConnState {
            streams: Cell::new(0),
            waiting: Cell::new(0),
            idle_since: Cell::new(now),
            quiet_since: Cell::new(now),
            evicted: Cell::new(false),
            calm: Cell::new(false),
            waker: RefCell::new(None),
            resets: RefCell::new(ResetBucket {
                tokens: f64::from(reset_burst),
                at: now,
            }),
        }
    }

    /// `Some(since)` while no call runs.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        (self.streams.get() == 0).then(|| self.idle_since.get())
    }

    /// `Some(since)` while every call it runs waits for its request (idle included).
    pub(crate) fn quiet_since(&self) -> Option<Instant> {
        (self.streams.get() == self.waiting.get()).then(|| self.quiet_since.get())
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.get()
    }

    pub(crate) fn is_calm_needed(&self) -> bool {
        self.calm.get()
    }

    /// Remembers the connection task's waker (cheaply, when it did not change).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Counts a call as running, the server working on it, until the guard drops (a peer
    /// link's, which no registry bounds).
    pub(crate) fn stream_started(self: &Rc<Self>) -> StreamGuard {
        self.streams.set(self.streams.get() + 1);
        StreamGuard {
            call: Rc::new(CallState::new(self.clone())),
            counted: None,
        }
    }

    /// Resolves once the registry closed this connection to make room.
    pub(crate) async fn evicted(&self) {
        poll_fn(|cx| {
            if self.evicted.get() {
                return Poll::Ready(());
            }
            self.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Counts a call the client reset. Resets drain a bucket of `burst` tokens that refills
    /// at `per_second`: a client may cancel every call it has open at once, but one that
    /// keeps resetting faster than `per_second` (the HTTP/2 rapid-reset attack, paced or
    /// not) empties it. Returns true when it just did; the connection then closes.
    pub(crate) fn client_reset(&self, per_second: u32, burst: u32, now: Instant) -> bool {
        if per_second == 0 || self.calm.get() {
            return false;
        }
        let mut b = self.resets.borrow_mut();
        let refill = now.duration_since(b.at).as_secs_f64() * f64::from(per_second);
        b.tokens = (b.tokens + refill).min(f64::from(burst));
        b.at = now;
        b.tokens -= 1.0;
        if b.tokens < 0.0 {
            self.calm.set(true);
            self.wake();
            return true;
        }
        false
    }
}

/// One call's part in its connection's and executor's bounds: whether it still waits for its
/// request, and whether the registry ended it to make room.
#[derive(Debug)]
pub(crate) struct CallState {
    conn: Rc<ConnState>,
    /// Since when it has waited for its request; `None` once a message (or the end of its
    /// body) came, and for a call no registry bounds.
    waiting_since: Cell<Option<Instant>>,
    /// Ended by the registry to make room for a new call.
    ended: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl CallState {
    fn new(conn: Rc<ConnState>) -> CallState {
        CallState {
            conn,
            waiting_since: Cell::new(None),
            ended: Cell::new(false),
            waker: RefCell::new(None),
        }
    }

    /// Its request came (a message, or the end of its body): from now on the server may be
    /// working on it, and it is never ended to make room.
    pub(crate) fn request_came(&self) {
        if self.waiting_since.take().is_some() {
            let c = &self.conn;
            c.waiting.set(c.waiting.get().saturating_sub(1));
        }
    }

    /// Resolves once the registry ended the call to make room; how long it had waited.
    pub(crate) async fn ended(&self) -> Duration {
        poll_fn(|cx| {
            if self.ended.get() {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        self.waiting_since
            .get()
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A running call; dropping it ends the count.
pub(crate) struct StreamGuard {
    call: Rc<CallState>,
    /// Its entry among the executor's calls, when a registry bounds them.
    counted: Option<(Rc<Registry>, u64)>,
}

impl StreamGuard {
    pub(crate) fn call(&self) -> &Rc<CallState> {
        &self.call
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((registry, id)) = &self.counted {
            registry.calls.borrow_mut().remove(id);
        }
        let s = &self.call.conn;
        let was_quiet = s.quiet_since().is_some();
        if self.call.waiting_since.take().is_some() {
            s.waiting.set(s.waiting.get().saturating_sub(1));
        }
        let n = s.streams.get().saturating_sub(1);
        s.streams.set(n);
        let now = Instant::now();
        // Quiet from now on if this was its last call with a request; one quiet already
        // keeps its time (a connection full of stalled calls is not made younger).
        if !was_quiet && s.quiet_since().is_some() {
            s.quiet_since.set(now);
        }
        if n == 0 {
            s.idle_since.set(now);
            // The connection task arms its idle timer from here.
            s.wake();
        }
    }
}

/// One executor's connections and calls.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Counted connections; an evicted one leaves at once, before its task ends.
    conns: RefCell<HashMap<u64, Weak<ConnState>>>,
    next_id: Cell<u64>,
    /// Calls open on the executor's connections; one ended to make room leaves at once.
    calls: RefCell<HashMap<u64, Weak<CallState>>>,
    next_call: Cell<u64>,
    max_calls: usize,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new(usize::MAX)
    }
}

/// Calls a connection may open past the executor's bound while every open call has its
/// request: a few connections full of calls the server works on (tails, health watches)
/// cannot lock every other client out.
pub(crate) const FAIR_CALLS: usize = 8;

/// The outcome of [`Registry::start_call`].
pub(crate) enum CallAdmit {
    /// Counted; a call waiting for its request may have been ended for it (`Some(waited)`).
    Yes(StreamGuard, Option<Duration>),
    /// At the bound, every open call has its request, and the connection has its share.
    Full,
}

/// The outcome of [`Registry::admit`].
pub(crate) enum Admit {
    /// Counted; a quiet connection may have been evicted for it (`Some(quiet for)`).
    Yes(Slot, Option<Duration>),
    /// At the limit and every connection runs a call the server works on.
    Full,
}

impl Registry {
    /// At most `max_calls` calls open at once on the executor's connections.
    pub(crate) fn new(max_calls: usize) -> Registry {
        Registry {
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            calls: RefCell::new(HashMap::new()),
            next_call: Cell::new(0),
            max_calls,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.conns.borrow().len()
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.borrow().len()
    }

    /// Counts a new call on `conn`, waiting for its request until its reader says it came;
    /// at the bound, the call that has waited the longest for its request is ended for it,
    /// or with none waiting, the call is refused unless `conn` holds fewer than
    /// [`FAIR_CALLS`].
    pub(crate) fn start_call(self: &Rc<Self>, conn: &Rc<ConnState>) -> CallAdmit {
        let mut waited = None;
        if self.calls() >= self.max_calls {
            let mut calls = self.calls.borrow_mut();
            let oldest = calls
                .iter()
                .filter_map(|(id, w)| w.upgrade().map(|c| (*id, c)))
                .filter_map(|(id, c)| c.waiting_since.get().map(|t| (id, t, c)))
                .min_by_key(|(_, t, _)| *t);
            match oldest {
                Some((id, since, call)) => {
                    calls.remove(&id);
                    call.ended.set(true);
                    if let Some(w) = call.waker.borrow().as_ref() {
                        w.wake_by_ref();
                    }
                    waited = Some(since.elapsed());
                }
                None if conn.streams.get() < FAIR_CALLS => {}
                None => return CallAdmit::Full,
            }
        }
        // A call waiting for its request leaves a quiet connection quiet, and one that is
        // not, not: its quiet time does not change.
        let mut guard = conn.stream_started();
        guard.call.waiting_since.set(Some(Instant::now()));
        conn.waiting.set(conn.waiting.get() + 1);
        let id = self.next_call.get();
        self.next_call.set(id + 1);
        self.calls
            .borrow_mut()
            .insert(id, Rc::downgrade(&guard.call));
        guard.counted = Some((self.clone(), id));
        CallAdmit::Yes(guard, waited)
    }

    /// Counts a new connection if there is room, making room by evicting the connection quiet
    /// the longest when at `limit`.
    pub(crate) fn admit(self: &Rc<Self>, limit: usize, reset_burst: u32) -> Admit {
        let now = Instant::now();
        let mut evicted_idle = None;
        if self.count() >= limit {
            match self.evict_longest_idle(now) {
                Some(idle) => evicted_idle = Some(idle),
                None => return Admit::Full,
            }
        }
        Admit::Yes(self.add(now, reset_burst), evicted_idle)
    }

    /// Counts a connection whatever the limit (a transport that brings its own).
    pub(crate) fn add(self: &Rc<Self>, now: Instant, reset_burst: u32) -> Slot {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let state = Rc::new(ConnState::new(now, reset_burst));
        self.conns.borrow_mut().insert(id, Rc::downgrade(&state));
        Slot {
            id,
            state,
            registry: self.clone(),
        }
    }

    fn evict_longest_idle(&self, now: Instant) -> Option<Duration> {
        let mut conns = self.conns.borrow_mut();
        let (id, state, since) = conns
            .iter()
            .filter_map(|(id, w)| w.upgrade().map(|s| (*id, s)))
            .filter_map(|(id, s)| s.quiet_since().map(|t| (id, s, t)))
            .min_by_key(|(_, _, t)| *t)?;
        conns.remove(&id);
        state.evicted.set(true);
        state.wake();
        Some(now.saturating_duration_since(since))
    }
}

/// A counted connection; dropping it (its task ending) frees the slot.
pub(crate) struct Slot {
    id: u64,
    pub(crate) state: Rc<ConnState>,
    registry: Rc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An evicted connection was removed when it was evicted.
        self.registry.conns.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_longest_idle_makes_room() {
        let r = Rc::new(Registry::default());
        let Admit::Yes(a, None) = r.admit(2, 10) else {
            panic!("room")
        };
        std::thread::sleep(Duration::from_millis(2));
        let Admit::Yes(b, None) = r.admit(2, 10) else {
            panic!("room")
        };
        let _busy_b = b.state.stream_started();
        // a is idle the longest: evicted for c.
        let Admit::Yes(c, Some(_)) = r.admit(2, 10) else {
            panic!("a should make room")
        };
        assert!(a.state.is_evicted() && !b.state.is_evicted());
        assert_eq!(r.count(), 2);
        drop(a);
        assert_eq!(r.count(), 2);
        let _busy_c = c.state.stream_started();
        // Everyone runs a call: refused.
        assert!(matches!(r.admit(2, 10), Admit::Full));
        drop(_busy_c);
        assert!(c.state.idle_since().is_some());
        assert!(matches!(r.admit(2, 10), Admit::Yes(_, Some(_))));
        assert!(c.state.is_evicted());
    }

    #[test]
    fn a_connection_whose_calls_all_wait_for_their_request_makes_room() {
        let r = Rc::new(Registry::default());
        let Admit::Yes(a, None) = r.admit(2, 10) else {
            panic!("room")
        };
        let Admit::Yes(b, None) = r.admit(2, 10) else {
            panic!("room")
        };
        let a_quiet = a.state.quiet_since();
        // a's call never sent its request; b's did, and the server works on it.
        let CallAdmit::Yes(_stalled, None) = r.start_call(&a.state) else {
            panic!("room")
        };
        let CallAdmit::Yes(working, None) = r.start_call(&b.state) else {
            panic!("room")
        };
        working.call().request_came();
        // A stalled call leaves a's quiet time as it was.
        assert_eq!(a.state.quiet_since(), a_quiet);
        assert!(a.state.idle_since().is_none());
        assert!(b.state.quiet_since().is_none());
        let Admit::Yes(c, Some(_)) = r.admit(2, 10) else {
            panic!("a should make room")
        };
        assert!(a.state.is_evicted() && !b.state.is_evicted());
        let CallAdmit::Yes(w, None) = r.start_call(&c.state) else {
            panic!("room")
        };
        w.call().request_came();
        assert!(matches!(r.admit(2, 10), Admit::Full));
        // Its call over, c is quiet again.
        drop(w);
        assert!(matches!(r.admit(2, 10), Admit::Yes(_, Some(_))));
        assert!(c.state.is_evicted());
    }

    #[test]
    fn at_the_bound_of_calls_the_one_waiting_longest_for_its_request_ends() {
        let r = Rc::new(Registry::new(2));
        let conn = r.add(Instant::now(), 10);
        let CallAdmit::Yes(first, None) = r.start_call(&conn.state) else {
            panic!("room")
        };
        std::thread::sleep(Duration::from_millis(2));
        let CallAdmit::Yes(second, None) = r.start_call(&conn.state) else {
            panic!("room")
        };
        // Both wait: the first, the older, ends for the third.
        let CallAdmit::Yes(third, Some(_)) = r.start_call(&conn.state) else {
            panic!("the first should make room")
        };
        assert!(first.call().ended.get() && !second.call().ended.get());
        assert_eq!(r.calls(), 2);
        drop(first);
        assert_eq!(r.calls(), 2);
        // The server works on both: a connection holding fewer than its fair share still
        // opens calls past the bound, up to that share.
        second.call().request_came();
        third.call().request_came();
        let mut more = Vec::new();
        for _ in 2..FAIR_CALLS {
            let CallAdmit::Yes(g, None) = r.start_call(&conn.state) else {
                panic!("within the fair share")
            };
            g.call().request_came();
            more.push(g);
        }
        assert!(matches!(r.start_call(&conn.state), CallAdmit::Full));
        // Another connection gets its share too.
        let other = r.add(Instant::now(), 10);
        assert!(matches!(
            r.start_call(&other.state),
            CallAdmit::Yes(_, None)
        ));
        drop(more);
        drop(second);
        drop(third);
        assert!(conn.state.idle_since().is_some());
        assert_eq!(conn.state.waiting.get(), 0);
    }

    #[test]
    fn resets_beyond_the_rate_trip_once() {
        let s = ConnState::new(Instant::now(), 5);
        let t0 = Instant::now();
        // A burst of 5 is fine; the 6th within the same instant trips.
        for _ in 0..5 {
            assert!(!s.client_reset(10, 5, t0));
        }
        assert!(s.client_reset(10, 5, t0));
        assert!(s.is_calm_needed());
        assert!(!s.client_reset(10, 5, t0), "reported once");

        // At the allowed rate it never trips.
        let s = ConnState::new(t0, 5);
        for i in 0..1000u64 {
            assert!(!s.client_reset(10, 5, t0 + Duration::from_millis(100 * i)));
        }
        // Off.
        let s = ConnState::new(t0, 0);
        assert!(!s.client_reset(0, 0, t0));
    }
}
