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
    /// Its place in the budget's count while it sits in a slot.
    counted: Option<Counted>,
}

impl OpenFiles {
    pub fn new(data: Rc<DmaFile>, index: Index) -> OpenFiles {
        OpenFiles {
            data,
            index,
            last_use: Cell::new(0),
            counted: None,
        }
    }
}

/// One open sealed segment in a budget's count, taken off when this is dropped: however
/// the files leave their slot (closed by the budget, released, replaced, or dropped with a
/// segment a cut took out while deleting an earlier one failed), the count follows, so it
/// is never more than the files that are open.
struct Counted(Rc<Cell<usize>>);

impl Counted {
    fn new(open: &Rc<Cell<usize>>) -> Counted {
        open.set(open.get() + 1);
        Counted(Rc::clone(open))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
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
    /// Open sealed segments: one for each `Counted` alive.
    open: Rc<Cell<usize>>,
    tick: Cell<u64>,
    lru: RefCell<VecDeque<(u64, WeakSlot)>>,
}

impl FileBudget {
    /// A budget of `limit` open sealed segments (at least one).
    pub fn new(limit: usize) -> Rc<FileBudget> {
        Rc::new(FileBudget {
            limit: limit.max(1),
            open: Rc::new(Cell::new(0)),
            tick: Cell::new(0),
            lru: RefCell::new(VecDeque::new()),
        })
    }

    /// Sealed segments whose files are open now.
    pub fn open_segments(&self) -> usize {
        self.open.get()
    }

    /// Puts newly opened files into `slot`, closes the least recently used others beyond the
    /// limit, and records a use of `slot`. Files that replace open ones close those, which
    /// leave the count as these enter it.
    pub(crate) fn install(&self, slot: &Slot, mut files: OpenFiles) {
        files.counted = Some(Counted::new(&self.open));
        let replaced = slot.borrow_mut().replace(files);
        drop(replaced);
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

    /// Takes the files out of `slot`, and out of the count (its owner closes or reuses them).
    pub(crate) fn release(&self, slot: &Slot) -> Option<OpenFiles> {
        let mut files = slot.borrow_mut().take()?;
        files.counted = None;
        Some(files)
    }

    /// Closes the least recently used open segments while more than the limit are open.
    /// `keep` is never closed.
    /// Every entry taken from the queue is either dropped or set aside, so this ends even if
    /// the count were wrong.
    fn opened(&self, keep: &Slot) {
        let mut lru = self.lru.borrow_mut();
        let mut kept = Vec::new();
        while self.open.get() > self.limit {
            let Some((t, w)) = lru.pop_front() else { break };
            let Some(slot) = w.upgrade() else { continue };
            if Rc::ptr_eq(&slot, keep) {
                kept.push((t, w));
                continue;
            }
            let mut s = slot.borrow_mut();
            if s.as_ref().is_some_and(|f| f.last_use.get() == t) {
                // Closed, and off the count (`Counted`).
                *s = None;
            }
        }
        for e in kept.into_iter().rev() {
            lru.push_front(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Files of a segment at `n` in `dir` (any files do: the budget only counts and drops them).
    async fn files(dir: &std::path::Path, n: u32) -> OpenFiles {
        let data = crate::segment::open_dma(&dir.join(format!("{n}.log")), true)
            .await
            .expect("data");
        let index = Index::open(&dir.join(format!("{n}.index")), 64).expect("index");
        OpenFiles::new(Rc::new(data), index)
    }

    /// Files put over open ones replace them and are not counted twice; the least recently
    /// used others are closed; and a count past the limit with nothing else to close (all
    /// queue entries are the kept slot's) ends instead of going round forever.
    #[test]
    fn installs_count_each_open_segment_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        crate::run_local(tmp.path(), move || async move {
            let budget = FileBudget::new(2);
            let slots: Vec<Slot> = (0..3).map(|_| Rc::new(RefCell::new(None))).collect();
            budget.install(&slots[0], files(&dir, 0).await);
            budget.install(&slots[1], files(&dir, 1).await);
            assert_eq!(budget.open_segments(), 2);
            // Opened again (a second reader, or a roll handing over its writer's files).
            budget.install(&slots[1], files(&dir, 11).await);
            assert_eq!(budget.open_segments(), 2);
            assert!(
                slots[0].borrow().is_some(),
                "nothing closed for a replacement"
            );
            budget.touch(&slots[1]);
            budget.install(&slots[2], files(&dir, 2).await);
            assert_eq!(budget.open_segments(), 2);
            assert!(slots[0].borrow().is_none(), "least recently used closed");
            assert!(slots[1].borrow().is_some() && slots[2].borrow().is_some());

            // A slot dropped while open (its segment taken out of a log) leaves the count
            // with its files.
            let dropped: Slot = Rc::new(RefCell::new(None));
            budget.install(&dropped, files(&dir, 3).await);
            assert_eq!(
                budget.open_segments(),
                2,
                "the least recently used other closed"
            );
            drop(dropped);
            assert_eq!(budget.open_segments(), 1);

            // A count past the limit (set so by hand) with only the kept slot's entries in
            // the queue: the limit cannot be met, and that must end.
            let lone = FileBudget::new(1);
            budget.release(&slots[1]);
            budget.release(&slots[2]);
            lone.install(&slots[1], files(&dir, 21).await);
            lone.touch(&slots[1]);
            lone.open.set(lone.open.get() + 1);
            lone.touch(&slots[1]);
            lone.install(&slots[2], files(&dir, 22).await);
            lone.touch(&slots[2]);
            lone.opened(&slots[2]);
            assert!(slots[2].borrow().is_some(), "the kept slot stays open");
        })
        .expect("executor");
    }
}
