//! The engine's write-behind buffers, charged to a memory budget that its embedder owns.
//!
//! The engine knows nothing of the server's budget; [`EngineConfig::memory`] hands it a
//! [`MemoryAccount`], which each shard makes its own (a thread-local, as the metrics slot).
//! Every active segment's write-behind buffer charges its capacity as it grows and returns it
//! when the buffer shrinks (an idle log's, on the background task's tick) or goes (a roll, a
//! close). Charges never wait: the buffers are bounded per partition (`write_behind_bytes`),
//! and appends are paced by their writes; the budget sees them, and whatever waits for memory
//! elsewhere (a connection's read-ahead) waits for them too.
//!
//! [`EngineConfig::memory`]: crate::EngineConfig::memory

use std::cell::RefCell;
use std::sync::Arc;

/// Where the engine's buffers are counted.
pub trait MemoryAccount: Send + Sync + 'static {
    /// `bytes` more are held (without waiting).
    fn charge(&self, bytes: usize);
    /// `bytes` are given back.
    fn release(&self, bytes: usize);
}

/// A shareable [`MemoryAccount`], for the engine's settings.
#[derive(Clone)]
pub struct MemoryHook(pub Arc<dyn MemoryAccount>);

impl std::fmt::Debug for MemoryHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryHook")
    }
}

thread_local! {
    static LOCAL: RefCell<Option<MemoryHook>> = const { RefCell::new(None) };
}

/// Makes `hook` the account of buffers created on this thread (a shard sets it when it
/// starts; `None` when it stops).
pub(crate) fn set_local(hook: Option<MemoryHook>) {
    LOCAL.with(|l| *l.borrow_mut() = hook);
}

/// The bytes one buffer has charged, to the account of the thread that made it.
#[derive(Debug, Default)]
pub(crate) struct Charged {
    hook: Option<MemoryHook>,
    bytes: usize,
}

impl Charged {
    /// Charges to this thread's account (if it has one) from now on.
    pub(crate) fn local() -> Charged {
        Charged {
            hook: LOCAL.with(|l| l.borrow().clone()),
            bytes: 0,
        }
    }

    /// Brings the charge to `bytes` (a buffer's new capacity).
    pub(crate) fn track(&mut self, bytes: usize) {
        let Some(hook) = &self.hook else {
            return;
        };
        if bytes > self.bytes {
            hook.0.charge(bytes - self.bytes);
        } else if bytes < self.bytes {
            hook.0.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.track(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl MemoryAccount for Count {
        fn charge(&self, bytes: usize) {
            self.0.fetch_add(bytes, Ordering::SeqCst);
        }
        fn release(&self, bytes: usize) {
            self.0.fetch_sub(bytes, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_buffer_charges_its_capacity_and_returns_it() {
        let count = Arc::new(Count::default());
        set_local(Some(MemoryHook(count.clone())));
        let mut c = Charged::local();
        set_local(None);
        c.track(4096);
        c.track(65536);
        assert_eq!(count.0.load(Ordering::SeqCst), 65536);
        c.track(1024);
        assert_eq!(count.0.load(Ordering::SeqCst), 1024);
        drop(c);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // Without an account nothing is counted.
        let mut none = Charged::local();
        none.track(100);
    }
}
