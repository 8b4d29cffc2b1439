//! The server's memory budget: one limit for every buffer that grows with load, shares per
//! connection, and leases that give memory back when the bytes they cover are gone.
//!
//! # Model
//!
//! [`MemoryBudget`] is one per process, shared by every executor (atomics, no lock). Each
//! server connection has a [`ConnMemory`]: its share of the budget, and what it holds now.
//! Bytes are held as a [`Lease`], which returns them to the connection and the budget when
//! dropped. What is charged, from the socket inward:
//!
//! | buffer | charged when | returned when |
//! |---|---|---|
//! | request bytes being assembled into a message | before their flow-control window is released | the handler is done with the message (a unary call ends, a ProduceStream request is answered) |
//! | response frames queued for the socket (unary replies, a streaming handler's sink) | encoded | h2 has written them to the socket, or the stream was reset |
//! | h2's own send buffer | (the frame's lease moves into it) | as above: DATA frames are counted as they leave for the socket |
//! | a consume stream's read-ahead (records read from the log, then encoded) | before the read | the chunk is sent |
//! | the engine's write-behind buffers | as they grow (through the engine's own hook) | the log closes |
//!
//! # Waiting
//!
//! Code waits for memory only *before* it brings new bytes in (reads the log, takes the next
//! bytes from the socket), and never while holding memory that only its own wait could free:
//! a consume stream whose client does not read stops at its next read-ahead until its queued
//! frames leave; a request upload waits with its window closed, so HTTP/2 flow control stops
//! the client. Bytes derived from bytes already held (a response encoded from records read)
//! are *charged* without waiting ([`ConnMemory::charge`]), so the total can pass a share by
//! what is in flight, but never grows while nobody reads.
//!
//! A reservation is granted when the connection stays within its share and the server within
//! its budget; a connection holding nothing may ask for more than its share at once, so that
//! one call larger than a share still makes progress. One connection that stops reading thus
//! holds at most about its share, and other clients keep being served from the rest. The
//! budget's last eighth ([`MemoryBudget::headroom`]) is granted only to connections holding
//! at most [`SMALL_HOLDER_BYTES`] with what they ask: connections that stop reading fill at
//! most the other seven eighths, and a new stream or a tail's next chunk still gets memory
//! (before, 16 stalled connections of 32 MiB filled a 256 MiB budget and every other consumer
//! waited until they went away).
//!
//! # Returning memory to the OS
//!
//! When a connection that held more than [`TRIM_AFTER_BYTES`] closes, a background thread is
//! asked to run `malloc_trim(0)` (glibc), at most once per [`TRIM_INTERVAL`]: freed buffers
//! go back to the kernel instead of staying in the allocator's arenas.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_listener::Event;

/// A connection holding at most this much (with what it asks for) may use the budget's
/// headroom ([`MemoryBudget::headroom`]), which the others leave free: room for a new
/// stream's first chunk (a read is reserved for twice its bytes) while other connections
/// hold all the rest.
pub const SMALL_HOLDER_BYTES: usize = 4 << 20;

/// A connection that held more than this when it closed asks for a trim.
pub const TRIM_AFTER_BYTES: usize = 1 << 20;
/// At most one `malloc_trim` per this interval.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// The server-wide limit on buffered bytes. Shared by every executor.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    /// Reservations that had to wait (a count for metrics).
    waits: AtomicU64,
    /// Notified whenever bytes are released, for reservations waiting on the budget.
    released: Event,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
            released: Event::new(),
        })
    }

    /// A budget nothing exceeds (clients, tests).
    pub fn unlimited() -> Arc<MemoryBudget> {
        MemoryBudget::new(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now, over every connection and the engine.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How many reservations had to wait for memory.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// The part of the budget kept for connections that hold little ([`SMALL_HOLDER_BYTES`]
    /// with the bytes they ask for): an eighth of it.
    pub fn headroom(&self) -> usize {
        self.limit / 8
    }

    /// Takes `n` bytes if they fit.
    pub fn try_reserve(&self, n: usize) -> bool {
        self.try_reserve_within(n, self.limit)
    }

    /// Takes `n` bytes if the total stays within `limit` (at most the budget's).
    fn try_reserve_within(&self, n: usize, limit: usize) -> bool {
        let limit = limit.min(self.limit);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(after) = used.checked_add(n).filter(|a| *a <= limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(after, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `n` bytes whether or not they fit: for bytes that exist already (derived from
    /// bytes held, or buffers the engine must have), so that they are counted and others wait.
    pub fn charge(&self, n: usize) {
        let after = self.used.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        self.peak.fetch_max(after, Ordering::Relaxed);
    }

    /// Gives `n` bytes back and wakes whoever waits for memory.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "released {n} of {before} bytes held");
        self.released.notify(usize::MAX);
    }
}

/// What one connection holds, within its share of the budget. Lives on the connection's
/// executor.
#[derive(Debug)]
pub struct ConnMemory {
    budget: Arc<MemoryBudget>,
    share: usize,
    used: Cell<usize>,
    peak: Cell<usize>,
    /// Notified when this connection releases bytes (its own waiters wake first).
    released: Event,
    /// Bytes handed to h2 and not yet written to the socket, per HTTP/2 stream id.
    in_h2: RefCell<HashMap<u32, usize>>,
}

impl ConnMemory {
    pub fn new(budget: Arc<MemoryBudget>, share: usize) -> Rc<ConnMemory> {
        Rc::new(ConnMemory {
            budget,
            share,
            used: Cell::new(0),
            peak: Cell::new(0),
            released: Event::new(),
            in_h2: RefCell::new(HashMap::new()),
        })
    }

    /// A connection with no limit (clients, tests).
    pub fn unlimited() -> Rc<ConnMemory> {
        ConnMemory::new(MemoryBudget::unlimited(), usize::MAX)
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn share(&self) -> usize {
        self.share
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    fn try_take(&self, n: usize) -> bool {
        let used = self.used.get();
        if used > 0 && used.saturating_add(n) > self.share {
            return false;
        }
        // The budget's last eighth is for connections that hold little: connections that
        // stop reading hold their shares and nothing more, and a few of them (16 of 32 MiB
        // each fill 256 MiB) left every other connection waiting for memory; what they
        // cannot take serves the others (a new stream, a tail's next chunk).
        let limit = if used.saturating_add(n) <= SMALL_HOLDER_BYTES {
            self.budget.limit
        } else {
            self.budget.limit.saturating_sub(self.budget.headroom())
        };
        if !self.budget.try_reserve_within(n, limit) {
            return false;
        }
        self.add(n);
        true
    }

    fn add(&self, n: usize) {
        let after = self.used.get().saturating_add(n);
        self.used.set(after);
        self.peak.set(self.peak.get().max(after));
    }

    /// Reserves `n` bytes, waiting while the connection's share or the server's budget is
    /// used up. Call it *before* bringing the bytes in.
    pub async fn reserve(self: &Rc<Self>, n: usize) -> Lease {
        if n == 0 || self.try_take(n) {
            return self.lease(n);
        }
        self.budget.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            let mine = self.released.listen();
            let anyone = self.budget.released.listen();
            if self.try_take(n) {
                return self.lease(n);
            }
            futures_lite::future::or(mine, anyone).await;
            if self.try_take(n) {
                return self.lease(n);
            }
        }
    }

    /// Takes `n` bytes without waiting, over the share and the budget if need be: for bytes
    /// that already exist (a frame encoded from records held).
    pub fn charge(self: &Rc<Self>, n: usize) -> Lease {
        self.budget.charge(n);
        self.add(n);
        self.lease(n)
    }

    fn lease(self: &Rc<Self>, bytes: usize) -> Lease {
        Lease {
            mem: Some(self.clone()),
            bytes,
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.set(self.used.get().saturating_sub(n));
        self.budget.release(n);
        self.released.notify(usize::MAX);
    }

    /// `lease`'s first `n` bytes now cover bytes handed to h2 for `stream`: they stay
    /// charged until [`written`](Self::written) or [`discard`](Self::discard).
    pub(crate) fn handed_to_h2(&self, stream: u32, lease: &mut Lease, n: usize) {
        let moved = lease.bytes.min(n);
        lease.bytes -= moved;
        if moved > 0 {
            *self.in_h2.borrow_mut().entry(stream).or_insert(0) += moved;
        }
    }

    /// `n` DATA bytes of `stream` went to the socket.
    pub(crate) fn written(&self, stream: u32, n: usize) {
        let freed = {
            let mut map = self.in_h2.borrow_mut();
            let Some(held) = map.get_mut(&stream) else {
                return;
            };
            let freed = (*held).min(n);
            *held -= freed;
            if *held == 0 {
                map.remove(&stream);
            }
            freed
        };
        self.release(freed);
    }

    /// `stream` was reset: h2 dropped whatever it still buffered for it.
    pub(crate) fn discard(&self, stream: u32) {
        let freed = self.in_h2.borrow_mut().remove(&stream).unwrap_or(0);
        self.release(freed);
    }
}

impl Drop for ConnMemory {
    /// The connection is gone, and with it h2's buffers.
    fn drop(&mut self) {
        let held: usize = self.in_h2.get_mut().values().sum();
        self.budget.release(held);
        if self.peak.get() > TRIM_AFTER_BYTES {
            request_trim();
        }
    }
}

/// Bytes held on behalf of something; returned when dropped.
#[derive(Debug, Default)]
pub struct Lease {
    mem: Option<Rc<ConnMemory>>,
    bytes: usize,
}

impl Lease {
    /// A lease of nothing (where nothing is accounted, e.g. the client side).
    pub fn none() -> Lease {
        Lease::default()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back all but `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.bytes {
            let give = self.bytes - n;
            self.bytes = n;
            if let Some(m) = &self.mem {
                m.release(give);
            }
        }
    }

    /// Splits off a lease of up to `n` bytes.
    pub fn split(&mut self, n: usize) -> Lease {
        let take = n.min(self.bytes);
        self.bytes -= take;
        Lease {
            mem: self.mem.clone(),
            bytes: take,
        }
    }

    /// Adds `other`'s bytes to this lease (both of one connection).
    pub fn merge(&mut self, mut other: Lease) {
        if self.mem.is_none() {
            self.mem = other.mem.take();
        } else if let (Some(a), Some(b)) = (&self.mem, &other.mem) {
            debug_assert!(Rc::ptr_eq(a, b), "leases of two connections merged");
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// A lease of `n` more bytes than this one, charged without waiting (see
    /// [`ConnMemory::charge`]); on a lease of nothing, nothing is charged.
    pub fn charge_more(&mut self, n: usize) {
        if let Some(m) = &self.mem {
            let extra = m.charge(n);
            self.merge(extra);
        }
    }

    pub(crate) fn memory(&self) -> Option<&Rc<ConnMemory>> {
        self.mem.as_ref()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(m) = &self.mem {
            m.release(self.bytes);
        }
    }
}

static TRIM_WANTED: AtomicBool = AtomicBool::new(false);
static TRIMMER: OnceLock<()> = OnceLock::new();

/// Asks the trimming thread (started on first use) to give free heap pages back to the OS.
fn request_trim() {
    TRIM_WANTED.store(true, Ordering::Relaxed);
    TRIMMER.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_INTERVAL);
                if TRIM_WANTED.swap(false, Ordering::Relaxed) {
                    trim();
                }
            });
        if let Err(e) = started {
            log::warn!("cannot start the malloc-trim thread: {e}");
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and shrinks the allocator's own arenas under their
    // locks; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_the_budget_bound_reservations() {
        let budget = MemoryBudget::new(100);
        let a = ConnMemory::new(budget.clone(), 60);
        let b = ConnMemory::new(budget.clone(), 60);
        assert!(a.try_take(50));
        // Over a's share.
        assert!(!a.try_take(20));
        assert!(b.try_take(50));
        // Within b's share but over the budget.
        assert!(!b.try_take(5));
        assert_eq!(budget.used(), 100);
        a.release(50);
        b.release(50);
        assert_eq!(budget.used(), 0);
        // Holding nothing, a connection gets more than its share (progress).
        assert!(a.try_take(80));
        a.release(80);
    }

    #[test]
    fn leases_return_their_bytes() {
        let budget = MemoryBudget::new(1000);
        let m = ConnMemory::new(budget.clone(), 1000);
        let mut l = m.charge(300);
        let part = l.split(100);
        assert_eq!((l.bytes(), part.bytes(), budget.used()), (200, 100, 300));
        drop(part);
        assert_eq!(budget.used(), 200);
        l.shrink_to(50);
        assert_eq!((m.used(), budget.used()), (50, 50));
        l.charge_more(25);
        assert_eq!(budget.used(), 75);
        drop(l);
        assert_eq!((m.used(), budget.used()), (0, 0));
    }

    #[test]
    fn bytes_in_h2_leave_as_written_or_discarded() {
        let budget = MemoryBudget::new(1000);
        let m = ConnMemory::new(budget.clone(), 1000);
        let mut l = m.charge(300);
        m.handed_to_h2(1, &mut l, 200);
        m.handed_to_h2(3, &mut l, 100);
        assert_eq!(l.bytes(), 0);
        drop(l);
        assert_eq!(budget.used(), 300);
        m.written(1, 150);
        assert_eq!(budget.used(), 150);
        // DATA of a stream nothing is held for (reset meanwhile) changes nothing.
        m.written(5, 10);
        m.discard(3);
        assert_eq!(budget.used(), 50);
        // The connection ends: h2's buffers go with it.
        drop(m);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_waiting_reservation_wakes_when_memory_returns() {
        let budget = MemoryBudget::new(100);
        let m = ConnMemory::new(budget.clone(), 100);
        let held = m.charge(90);
        let m2 = m.clone();
        let got = futures_lite::future::block_on(async move {
            let waiter = async { m2.reserve(50).await.bytes() };
            let freer = async {
                futures_lite::future::yield_now().await;
                drop(held);
                0
            };
            let (a, _) = futures_lite::future::zip(waiter, freer).await;
            a
        });
        assert_eq!(got, 50);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.waits(), 1);
    }
}
