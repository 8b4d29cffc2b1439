//! The connections of one executor: how many, which are idle, and which to close first.
//!
//! A connection is counted from `accept`, through its first byte, TLS and HTTP/2 handshakes,
//! until its task ends, so a flood of handshakes cannot overshoot the limit and shows in the
//! connection gauge. A connection is *idle* while it runs no call, from accept on: one that
//! only sent the preface and SETTINGS is idle, and so is one still in its handshake.
//!
//! At the limit a new connection is not refused while an idle one exists: the connection idle
//! the longest is told to close (GOAWAY once HTTP/2 is up, else closed at once) and stops
//! counting at that moment, and the new one takes its slot. So a flood of idle connections
//! churns through itself, while connections running calls are never closed to make room.
//! Only when every connection runs a call is a new one refused.

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
    /// When the connection last became idle (accept, or its last call ending).
    idle_since: Cell<Instant>,
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
            idle_since: Cell::new(now),
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

    /// Counts a call as running until the guard drops.
    pub(crate) fn stream_started(self: &Rc<Self>) -> StreamGuard {
        self.streams.set(self.streams.get() + 1);
        StreamGuard(self.clone())
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

/// A running call; dropping it ends the count.
pub(crate) struct StreamGuard(Rc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.0;
        let n = s.streams.get().saturating_sub(1);
        s.streams.set(n);
        if n == 0 {
            s.idle_since.set(Instant::now());
            // The connection task arms its idle timer from here.
            s.wake();
        }
    }
}

/// One executor's connections.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Counted connections; an evicted one leaves at once, before its task ends.
    conns: RefCell<HashMap<u64, Weak<ConnState>>>,
    next_id: Cell<u64>,
}

/// The outcome of [`Registry::admit`].
pub(crate) enum Admit {
    /// Counted; an idle connection may have been evicted for it (`Some(idle for)`).
    Yes(Slot, Option<Duration>),
    /// At the limit and every connection runs a call.
    Full,
}

impl Registry {
    pub(crate) fn count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Counts a new connection if there is room, making room by evicting the connection idle
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
        let (id, state) = conns
            .iter()
            .filter_map(|(id, w)| w.upgrade().map(|s| (*id, s)))
            .filter(|(_, s)| s.idle_since().is_some())
            .min_by_key(|(_, s)| s.idle_since.get())?;
        conns.remove(&id);
        state.evicted.set(true);
        state.wake();
        Some(now.saturating_duration_since(state.idle_since.get()))
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
