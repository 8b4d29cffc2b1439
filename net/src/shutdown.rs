//! A one-shot shutdown signal that any thread can fire and any executor
//! can await.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Cheap to clone; all clones share one state. Once triggered it stays so.
#[derive(Clone, Default, Debug)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    fired: AtomicBool,
    next_id: AtomicU64,
    // Keyed so that a dropped waiter removes its entry: connections come and
    // go for the life of the server and must not leave wakers behind.
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Fires the signal and wakes every waiter, on whichever thread it runs.
    pub fn trigger(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = match self.inner.waiters.lock() {
            Ok(mut w) => w.drain().map(|(_, w)| w).collect(),
            Err(poisoned) => poisoned.into_inner().drain().map(|(_, w)| w).collect(),
        };
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Resolves once [`trigger`](Self::trigger) has been called.
    pub fn wait(&self) -> Wait {
        Wait {
            inner: self.inner.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Future returned by [`Shutdown::wait`].
#[derive(Debug)]
pub struct Wait {
    inner: Arc<Inner>,
    id: u64,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let mut waiters = match self.inner.waiters.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Re-check under the lock: trigger() drains after setting the flag,
        // so a waker inserted now is either drained or sees the flag.
        if self.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        waiters.insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Ok(mut w) = self.inner.waiters.lock() {
            w.remove(&self.id);
        }
    }
}
