//! Appends made on behalf of a call, reporting where the time went (the hop to the owning
//! shard, buffering, the fsync wait) to the call's timing breakdown, which the call's log
//! line shows when it is slow, and each whole append as one operation (a stream is slow when
//! one of its operations is).

use engine::{Appended, EngineHandle, NewRecord};

pub async fn append(
    engine: &EngineHandle,
    topic: &str,
    partition: u32,
    records: Vec<NewRecord>,
) -> engine::Result<Appended> {
    let (appended, t) = engine.append_timed(topic, partition, records).await?;
    net::observe::with_current(|c| {
        c.add_timing("queue", t.queue);
        c.add_timing("append", t.append);
        c.add_timing("fsync", t.fsync);
        c.add_operation(t.queue + t.append + t.fsync);
    });
    Ok(appended)
}
