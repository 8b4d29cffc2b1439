//! Appends made on behalf of a call, reporting where the time went (the hop to the owning
//! shard, buffering, the fsync wait) to the call's timing breakdown, which the call's log
//! line shows when it is slow, and each whole append as one operation (a stream is slow when
//! one of its operations is).

use engine::seam::{Appended, EncodedBatch, PartitionId, Partitions};
use net::Status;

use super::error::to_status;

pub async fn append(
    partitions: &dyn Partitions,
    id: &PartitionId,
    batch: EncodedBatch,
) -> Result<Appended, Status> {
    let appended = partitions.append(id, batch).await.map_err(to_status)?;
    let t = appended.timing;
    net::observe::with_current(|c| {
        c.add_timing("queue", t.queue);
        c.add_timing("append", t.append);
        c.add_timing("fsync", t.fsync);
        c.add_operation(t.queue + t.append + t.fsync);
    });
    Ok(appended)
}
