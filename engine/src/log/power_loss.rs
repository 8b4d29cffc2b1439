//! TEST-ONLY: what a completed fdatasync of the active segment covered, for the power-loss
//! journal ([`crate::power_loss`]). Nothing here changes what the log writes or acknowledges.

use super::Log;
use crate::power_loss;
use std::path::PathBuf;

/// The active data file and the bytes written to it, read just before an fdatasync starts:
/// what that sync will have made durable once it completes.
pub(super) struct SyncMark(Option<(PathBuf, u64)>);

impl Log {
    /// Read before calling fdatasync (no await in between): writes that complete later are
    /// not covered by it.
    pub(super) fn power_loss_mark(&self) -> SyncMark {
        if !power_loss::enabled() {
            return SyncMark(None);
        }
        let st = self.state.borrow();
        SyncMark(
            st.segments
                .last()
                .and_then(|s| s.writer.as_ref().map(|w| (s.data_path.clone(), w.written))),
        )
    }

    /// Called once the fdatasync completed, before any appender waiting for it is woken.
    pub(super) fn power_loss_synced(&self, mark: SyncMark) {
        if let SyncMark(Some((path, len))) = mark {
            power_loss::synced_at_least(&path, len);
        }
    }
}
