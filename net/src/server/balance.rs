//! Spreading accepted connections evenly over the executors.
//!
//! Every executor accepts on its own SO_REUSEPORT listener, and the kernel picks the listener
//! by a hash of the connection's addresses: with the handful of connections a client opens,
//! one executor often gets most of them (four connections all land on one of two executors
//! one time in eight, three to one half the time) and does their HTTP/2 and protobuf work
//! while the other idles. So, as Seastar's `connection_distribution` does, an executor that
//! accepts a connection while another serves fewer connections than it does hands the socket
//! over (its descriptor, through a bounded channel, waking the other executor), and the other
//! serves it as if it had accepted it. The counts are shared atomics: two executors deciding
//! at once may both move or both keep, which leaves them one apart at worst. Connections go
//! only to executors whose servers run (from the moment each takes its inbox until it stops),
//! so none waits in the inbox of one that has not started, failed to bind or stopped.
//!
//! A connection is counted on the executor that serves it from accept until its task ends
//! ([`Placed`]), handshakes included, so a client holding idle connections open weighs as
//! much as a busy one: placement spreads sockets, not load.
//!
//! Among executors serving equally few, one may be preferred ([`Balancer::prefer`]): the
//! server names the executor that owns the partition clients use when they name none (the
//! book's clients open one channel to it), so that a lone connection is served where its
//! calls' partition lives rather than wherever the hash put it, and its calls need no hop
//! between executors. The preference only breaks ties: executors stay within one of each
//! other.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use crossbeam::utils::CachePadded;
use glommio::net::TcpStream;

/// Connections waiting in one executor's inbox at most; past it, the accepting executor
/// serves the connection itself.
const INBOX_CAPACITY: usize = 256;

/// The executors' connection counts and inboxes, shared by every executor of one server.
pub struct Balancer {
    shards: Vec<CachePadded<Shard>>,
    moved: AtomicU64,
    /// The executor that takes a tie ([`Balancer::prefer`]); [`NO_PREFERENCE`] for none.
    preferred: AtomicUsize,
}

const NO_PREFERENCE: usize = usize::MAX;

struct Shard {
    /// Connections this executor serves or has been handed and not yet started.
    conns: AtomicUsize,
    /// Set while the executor takes hand-overs (its [`Inbox`] exists): from the start of its
    /// server to the end. Connections go only to executors that serve.
    serving: AtomicBool,
    tx: Sender<Handoff>,
    /// Taken by the executor when it starts serving (see [`Balancer::inbox`]).
    rx: Mutex<Option<Receiver<Handoff>>>,
    waker: AtomicWaker,
}

/// A connection on its way to another executor, counted there. It holds no reference to the
/// balancer (which holds the inboxes), so one left in an inbox at shutdown is only a
/// descriptor, closed when the balancer goes.
struct Handoff {
    socket: OwnedFd,
    peer: Option<SocketAddr>,
}

/// A connection counted on executor `shard`; dropping it (the connection's task ending, or
/// the connection refused) uncounts it.
pub(crate) struct Placed {
    balancer: Arc<Balancer>,
    shard: usize,
}

impl Placed {
    /// Keeps the count without the guard (the inbox that receives the connection makes a
    /// new one).
    fn keep_counted(self) {
        std::mem::forget(self);
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.balancer.shards[self.shard]
            .conns
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("connections", &self.connections())
            .field("moved", &self.moved())
            .finish()
    }
}

impl Balancer {
    /// A balancer for `executors` executors, numbered from 0.
    pub fn new(executors: usize) -> Arc<Balancer> {
        let shards = (0..executors.max(1))
            .map(|_| {
                let (tx, rx) = channel::bounded(INBOX_CAPACITY);
                CachePadded::new(Shard {
                    conns: AtomicUsize::new(0),
                    serving: AtomicBool::new(false),
                    tx,
                    rx: Mutex::new(Some(rx)),
                    waker: AtomicWaker::new(),
                })
            })
            .collect();
        Arc::new(Balancer {
            shards,
            moved: AtomicU64::new(0),
            preferred: AtomicUsize::new(NO_PREFERENCE),
        })
    }

    /// Makes `executor` take every connection that would otherwise stay on an executor
    /// serving as few as it does (`None`, or one out of range: ties stay where they were
    /// accepted).
    pub fn prefer(&self, executor: Option<usize>) {
        let p = executor
            .filter(|&e| e < self.shards.len())
            .unwrap_or(NO_PREFERENCE);
        self.preferred.store(p, Ordering::Relaxed);
    }

    /// Each executor's connection count.
    pub fn connections(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.conns.load(Ordering::Relaxed))
            .collect()
    }

    /// Connections handed from the executor that accepted them to another, since start.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Executor `shard`'s inbox; `None` if it was taken already or `shard` is out of range.
    pub(crate) fn inbox(self: &Arc<Self>, shard: usize) -> Option<Inbox> {
        let s = self.shards.get(shard)?;
        let rx = s.rx.lock().ok()?.take()?;
        s.serving.store(true, Ordering::Release);
        Some(Inbox {
            balancer: self.clone(),
            shard,
            rx,
        })
    }

    /// Where a connection accepted on `here` is served: the preferred executor if it serves
    /// no more than any other; else the executor serving the fewest connections if it serves
    /// fewer than `here` does (ties stay), else `here`. Counted there at once, so that the
    /// next decision sees it.
    fn place(self: &Arc<Self>, here: usize) -> Placed {
        let preferred = self.preferred.load(Ordering::Relaxed);
        // The fewest; among equals the preferred executor, then `here`, then the first.
        let (shard, _) = self
            .shards
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == here || s.serving.load(Ordering::Acquire))
            .map(|(i, s)| (i, s.conns.load(Ordering::Relaxed)))
            .min_by_key(|&(i, n)| (n, i != preferred, i != here))
            .unwrap_or((here, 0));
        self.counted(shard)
    }

    fn counted(self: &Arc<Self>, shard: usize) -> Placed {
        self.shards[shard].conns.fetch_add(1, Ordering::Relaxed);
        Placed {
            balancer: self.clone(),
            shard,
        }
    }

    /// Places a connection accepted on executor `here`: `Ok` to serve it here, `Err` when it
    /// was handed to another executor. A connection that cannot be handed over (the other's
    /// inbox full or closed, its descriptor not duplicated) is served here.
    pub(crate) fn route(
        self: &Arc<Self>,
        here: usize,
        stream: TcpStream,
        peer: Option<SocketAddr>,
    ) -> Result<(TcpStream, Placed), ()> {
        let placed = self.place(here);
        if placed.shard == here {
            return Ok((stream, placed));
        }
        // SAFETY: the descriptor belongs to `stream`, which lives until after the borrow
        // ends (the duplicate is a descriptor of its own).
        let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let socket = match borrowed.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("keeping connection {peer:?} on executor {here}: dup: {e}");
                drop(placed);
                return Ok((stream, self.counted(here)));
            }
        };
        let to = placed.shard;
        match self.shards[to].tx.try_send(Handoff { socket, peer }) {
            Ok(()) => {
                placed.keep_counted();
                self.shards[to].waker.wake();
                self.moved.fetch_add(1, Ordering::Relaxed);
                // The other executor holds the connection through its own descriptor; this
                // one's closes with `stream`.
                drop(stream);
                Err(())
            }
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => {
                // Closes the duplicate; `placed` uncounts it there.
                drop(h);
                drop(placed);
                Ok((stream, self.counted(here)))
            }
        }
    }
}

/// An executor's end of the hand-over: connections other executors accepted for it.
pub(crate) struct Inbox {
    balancer: Arc<Balancer>,
    shard: usize,
    rx: Receiver<Handoff>,
}

impl Inbox {
    /// The next connection handed over, as a stream of the current executor (the inbox's),
    /// with its peer and its count here. Waits for one; the balancer keeps the inbox's
    /// sender, so there is always a next one to wait for.
    pub(crate) async fn next(&self) -> (TcpStream, Option<SocketAddr>, Placed) {
        let waker = &self.balancer.shards[self.shard].waker;
        let h = std::future::poll_fn(|cx| {
            if let Ok(h) = self.rx.try_recv() {
                return Poll::Ready(h);
            }
            waker.register(cx.waker());
            match self.rx.try_recv() {
                Ok(h) => Poll::Ready(h),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => Poll::Pending,
            }
        })
        .await;
        let placed = Placed {
            balancer: self.balancer.clone(),
            shard: self.shard,
        };
        // SAFETY: `into_raw_fd` gives up the descriptor, so the stream is its only owner.
        let stream = unsafe { TcpStream::from_raw_fd(h.socket.into_raw_fd()) };
        (stream, h.peer, placed)
    }
}

impl Drop for Inbox {
    /// Closes the connections waiting (shutdown). Once the receiver is gone, hand-overs to
    /// this executor fail and the accepting executor serves them itself.
    fn drop(&mut self) {
        let shard = &self.balancer.shards[self.shard];
        shard.serving.store(false, Ordering::Release);
        while let Ok(h) = self.rx.try_recv() {
            drop(h);
            shard.conns.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every executor's inbox, as their servers take them when they start.
    fn serving(b: &Arc<Balancer>) -> Vec<Inbox> {
        (0..b.shards.len()).filter_map(|i| b.inbox(i)).collect()
    }

    #[test]
    fn placement_keeps_executors_within_one_of_each_other() {
        let b = Balancer::new(3);
        let _inboxes = serving(&b);
        let mut held = Vec::new();
        // Every connection accepted on executor 0, as a hash could well do.
        for _ in 0..9 {
            held.push(b.place(0));
        }
        assert_eq!(b.connections(), vec![3, 3, 3]);
        // Ties stay where they were accepted.
        held.push(b.place(2));
        assert_eq!(b.connections(), vec![3, 3, 4]);
        // Closing connections frees their counts; the next ones fill the gap.
        held.retain(|p| p.shard != 1);
        assert_eq!(b.connections(), vec![3, 0, 4]);
        held.push(b.place(2));
        held.push(b.place(0));
        held.push(b.place(0));
        assert_eq!(b.connections(), vec![3, 3, 4]);
        drop(held);
        assert_eq!(b.connections(), vec![0, 0, 0]);
    }

    #[test]
    fn ties_go_to_the_preferred_executor_and_nothing_more() {
        let b = Balancer::new(3);
        let _inboxes = serving(&b);
        b.prefer(Some(1));
        // A lone connection goes to executor 1 wherever it was accepted.
        let lone = b.place(0);
        assert_eq!(lone.shard, 1);
        drop(lone);
        let lone = b.place(2);
        assert_eq!(lone.shard, 1);
        // More connections still spread evenly: the preference only breaks ties.
        let mut held = vec![lone];
        for _ in 0..5 {
            held.push(b.place(1));
        }
        assert_eq!(b.connections(), vec![2, 2, 2]);
        held.push(b.place(0));
        assert_eq!(b.connections(), vec![2, 3, 2]);
        // Out of range or `None`: ties stay where they were accepted again.
        b.prefer(Some(7));
        held.push(b.place(2));
        assert_eq!(b.connections(), vec![2, 3, 3]);
        b.prefer(None);
        held.push(b.place(0));
        assert_eq!(b.connections(), vec![3, 3, 3]);
        held.push(b.place(2));
        assert_eq!(b.connections(), vec![3, 3, 4]);
    }

    #[test]
    fn a_preferred_executor_that_does_not_serve_takes_nothing() {
        let b = Balancer::new(2);
        let _i0 = b.inbox(0);
        b.prefer(Some(1));
        let p = b.place(0);
        assert_eq!(p.shard, 0);
    }

    #[test]
    fn one_executor_keeps_everything() {
        let b = Balancer::new(1);
        let p: Vec<_> = (0..5).map(|_| b.place(0)).collect();
        assert!(p.iter().all(|p| p.shard == 0));
        assert_eq!(b.connections(), vec![5]);
    }

    #[test]
    fn connections_go_only_to_executors_that_serve() {
        let b = Balancer::new(3);
        // Executor 2 has not started serving (or failed to): nothing is placed on it.
        let (i0, i1) = (b.inbox(0), b.inbox(1));
        let held: Vec<_> = (0..6).map(|_| b.place(0)).collect();
        assert_eq!(b.connections(), vec![3, 3, 0]);
        // Executor 1 stops serving: nothing more goes to it, though it serves fewer.
        drop(i1);
        let more: Vec<_> = (0..3).map(|_| b.place(0)).collect();
        assert_eq!(b.connections(), vec![6, 3, 0]);
        let last = b.place(2);
        assert_eq!(
            last.shard, 2,
            "the accepting executor always counts as a candidate"
        );
        drop((held, more, last, i0));
        assert_eq!(b.connections(), vec![0, 0, 0]);
    }

    #[test]
    fn an_inbox_is_taken_once() {
        let b = Balancer::new(2);
        assert!(b.inbox(1).is_some());
        assert!(b.inbox(1).is_none());
        assert!(b.inbox(2).is_none());
    }
}
