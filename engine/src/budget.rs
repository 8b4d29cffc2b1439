//! The per-shard budget of open sealed-segment files.
//!
//! A log keeps its active segment open; a sealed segment's files are opened when a read needs
//! them and share one budget per shard, closed least recently used first, so the number of
//! descriptors a shard holds is bounded however many segments its logs have. Each open sealed
//! segment holds two descriptors (data and index).
//!
//! The budget is an LRU queue of `(tick, slot)` entries: every use pushes a fresh entry, and an
//! entry counts only while its tick is the slot's latest use. Stale entries are dropped when
//! they reach the front, or all at once when the queue grows past a bound.

use crate::index::Index;
use crate::limits;
use glommio::io::DmaFile;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

/// The files of a segment while they are open.
pub struct OpenFiles {
    pub data: Rc<DmaFile>,
    pub index: Index,
    /// The budget's tick of the latest use: tells a current LRU entry from a stale one.
    last_use: Cell<u64>,
}

impl OpenFiles {
    pub fn new(data: Rc<DmaFile>, index: Index) -> OpenFiles {
        OpenFiles {
            data,
            index,
            last_use: Cell::new(0),
        }
    }
}

/// Where a sealed segment keeps its files while they are open (`None` while closed). Shared
/// with the budget, which closes them by emptying the slot.
pub type Slot = Rc<RefCell<Option<OpenFiles>>>;

/// The budget's reference to a slot: it never keeps a removed segment alive.
type WeakSlot = Weak<RefCell<Option<OpenFiles>>>;

/// Per-shard bound on open sealed segments.
pub struct FileBudget {
    limit: usize,
    open: Cell<usize>,
    tick: Cell<u64>,
    lru: RefCell<VecDeque<(u64, WeakSlot)>>,
}

impl FileBudget {
    /// A budget of `limit` open sealed segments (at least one).
    pub fn new(limit: usize) -> Rc<FileBudget> {
        Rc::new(FileBudget {
            limit: limit.max(1),
            open: Cell::new(0),
            tick: Cell::new(0),
            lru: RefCell::new(VecDeque::new()),
        })
    }

    /// Sealed segments whose files are open now.
    pub fn open_segments(&self) -> usize {
        self.open.get()
    }

    /// Puts newly opened files into `slot`, closes the least recently used others beyond the
    /// limit, and records a use of `slot`.
    pub(crate) fn install(&self, slot: &Slot, files: OpenFiles) {
        *slot.borrow_mut() = Some(files);
        self.opened(slot);
        self.touch(slot);
    }

    /// Records a use of `slot`'s files; false if they are closed.
    pub(crate) fn touch(&self, slot: &Slot) -> bool {
        let t = self.tick.get() + 1;
        match slot.borrow().as_ref() {
            Some(f) => f.last_use.set(t),
            None => return false,
        }
        self.tick.set(t);
        let mut lru = self.lru.borrow_mut();
        lru.push_back((t, Rc::downgrade(slot)));
        // Stale entries (older ticks of the same slot) are dropped lazily; keep the queue bounded.
        if lru.len()
            > limits::BUDGET_LRU_ENTRIES_PER_FILE * self.limit + limits::BUDGET_LRU_SLACK_ENTRIES
        {
            lru.retain(|(t, w)| {
                w.upgrade()
                    .is_some_and(|s| s.borrow().as_ref().is_some_and(|f| f.last_use.get() == *t))
            });
        }
        true
    }

    /// Takes the files out of `slot` (its owner closes or reuses them).
    pub(crate) fn release(&self, slot: &Slot) -> Option<OpenFiles> {
        let files = slot.borrow_mut().take();
        if files.is_some() {
            self.open.set(self.open.get().saturating_sub(1));
        }
        files
    }

    /// Accounts for a newly opened sealed segment and closes the least recently used ones
    /// beyond the limit. `keep` is never closed.
    fn opened(&self, keep: &Slot) {
        self.open.set(self.open.get() + 1);
        let mut lru = self.lru.borrow_mut();
        while self.open.get() > self.limit {
            let Some((t, w)) = lru.pop_front() else { break };
            let Some(slot) = w.upgrade() else { continue };
            if Rc::ptr_eq(&slot, keep) {
                lru.push_back((t, w));
                if lru.len() == 1 {
                    break;
                }
                continue;
            }
            let mut s = slot.borrow_mut();
            if s.as_ref().is_some_and(|f| f.last_use.get() == t) {
                *s = None;
                self.open.set(self.open.get() - 1);
            }
        }
    }
}
