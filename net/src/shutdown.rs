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
            registered: None,
        }
    }
}

/// Future returned by [`Shutdown::wait`].
///
/// Streams race their work against it (`or(work, shutdown.wait())`), so it is polled every
/// time their work makes progress: it takes the shared lock only when its waker is new, not
/// on every poll, so that streams on different cores do not contend for it.
#[derive(Debug)]
pub struct Wait {
    inner: Arc<Inner>,
    id: u64,
    /// The waker in `waiters` under `id`, if any.
    registered: Option<Waker>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        // Registered with this waker already: trigger() sets the flag before it takes the
        // wakers, so it will wake this one (or the flag check above sees it fired).
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut waiters = match this.inner.waiters.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Re-check under the lock: trigger() drains after setting the flag,
        // so a waker inserted now is either drained or sees the flag.
        if this.inner.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        waiters.insert(this.id, cx.waker().clone());
        drop(waiters);
        this.registered = Some(cx.waker().clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiter_polled_again_stays_registered_once_and_is_woken() {
        let s = Shutdown::new();
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut w = Box::pin(s.wait());
        for _ in 0..3 {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.inner.waiters.lock().map(|m| m.len()).unwrap_or(0), 1);
        s.trigger();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(w.as_mut().poll(&mut cx).is_ready());
        drop(w);
        assert_eq!(s.inner.waiters.lock().map(|m| m.len()).unwrap_or(1), 0);
    }
}
