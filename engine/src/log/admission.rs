//! Admission of appends: limits, then first come first served into the active segment's
//! write-behind buffer (records encoded here, or a payload the caller encoded on its own
//! core), where each append gets its offsets; then, under `always`, the wait for durability
//! (`commit.rs`).

use super::{Appended, Log, State};
use crate::batch::{self, now_ms, Header, Kind, NewRecord, Parsed, Stamp, HEADER_LEN};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::metrics::AppendTiming;
use crate::seam::EncodedBatch;
use crate::segment;
use std::time::{Duration, Instant, SystemTime};

/// Why an append cannot be buffered yet.
enum Need {
    /// Appenders that arrived earlier are still waiting.
    Turn,
    /// A roll, truncation or reset is rebuilding the active segment.
    Exclusive,
    /// The batch does not fit in the active segment (or its index is full).
    Roll,
    /// The batch does not fit in the write-behind buffer.
    WriteOut,
}

/// An appender's place in the admission queue; leaving it (appended, failed or dropped)
/// wakes the others.
struct Ticket<'a> {
    log: &'a Log,
    id: Option<u64>,
}

impl Ticket<'_> {
    /// Takes a place at the back of the queue, unless it holds one already.
    fn queue(&mut self, st: &mut State) {
        if self.id.is_none() {
            let id = st.next_ticket;
            st.next_ticket += 1;
            st.admission.push_back(id);
            self.id = Some(id);
        }
    }

    /// Leaves the queue after appending; true if it held a place (the others must be woken).
    fn leave(&mut self, st: &mut State) -> bool {
        let Some(id) = self.id.take() else {
            return false;
        };
        st.admission.retain(|&t| t != id);
        true
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut st = self.log.state_mut();
            if st.admission.front() == Some(&id) {
                st.admission.pop_front();
            } else {
                st.admission.retain(|&t| t != id);
            }
            drop(st);
            self.log.io_done.notify(usize::MAX);
        }
    }
}

/// What an append writes: records to encode as one batch, a payload encoded by the caller
/// that only needs its header, or a whole batch already stored elsewhere.
pub(super) enum Payload<'a> {
    Records {
        term: u64,
        records: &'a [NewRecord],
    },
    Encoded {
        term: u64,
        batch: &'a EncodedBatch,
    },
    /// A stored batch in two pieces (the second may be empty) written back to back.
    Raw {
        header: Header,
        head: &'a [u8],
        body: &'a [u8],
    },
}

impl Payload<'_> {
    /// Bytes the batch takes in the segment.
    fn len(&self) -> u64 {
        (match self {
            Payload::Records { records, .. } => batch::encoded_len(*records),
            Payload::Encoded { batch, .. } => HEADER_LEN + batch.payload_len(),
            Payload::Raw { head, body, .. } => head.len() + body.len(),
        }) as u64
    }
}

impl Log {
    /// Appends records as one batch under the log's current term; resolves once the
    /// durability policy is satisfied.
    pub async fn append(&self, records: &[NewRecord]) -> Result<Appended> {
        let term = self.state.borrow().term;
        self.append_with_term(term, records).await
    }

    /// Appends records as one batch stamped with `term`.
    pub async fn append_with_term(&self, term: u64, records: &[NewRecord]) -> Result<Appended> {
        self.check_batch(records)?;
        let appended = self
            .append_payload(Payload::Records { term, records })
            .await?;
        self.after_append(appended).await
    }

    /// [`append`](Self::append), also reporting where the time went (for slow-request logs).
    /// `queue` is left zero: only the caller knows how long it took to get here.
    pub async fn append_timed(&self, records: &[NewRecord]) -> Result<(Appended, AppendTiming)> {
        let started = Instant::now();
        let term = self.state.borrow().term;
        self.check_batch(records)?;
        let appended = self
            .append_payload(Payload::Records { term, records })
            .await?;
        self.after_append_timed(started, appended).await
    }

    /// [`after_append`](Self::after_append), timed: `append` is the time from `started` until
    /// the batch was buffered (now), `fsync` the wait for the durability policy after it.
    async fn after_append_timed(
        &self,
        started: Instant,
        appended: Appended,
    ) -> Result<(Appended, AppendTiming)> {
        let buffered = Instant::now();
        let appended = self.after_append(appended).await?;
        let timing = AppendTiming {
            queue: Duration::ZERO,
            append: buffered - started,
            fsync: buffered.elapsed(),
        };
        Ok((appended, timing))
    }

    /// Appends a batch encoded on the caller's core, under the log's current term: stamps
    /// its header (offset, term, time, a CRC combined from the payload's) and copies it into
    /// the write-behind buffer, with no per-record work here. Resolves once the durability
    /// policy is satisfied, reporting where the time went (`queue` left zero, as in
    /// [`append_timed`](Self::append_timed)).
    pub async fn append_encoded(&self, batch: &EncodedBatch) -> Result<(Appended, AppendTiming)> {
        let started = Instant::now();
        self.check_encoded(batch)?;
        let term = self.state.borrow().term;
        let appended = self
            .append_payload(Payload::Encoded { term, batch })
            .await?;
        self.after_append_timed(started, appended).await
    }

    /// Whether the log would take `batch` now: writable (not latched, closed or waiting for
    /// disk space) and within the topic's limits. For owners that append through a
    /// replication layer, which writes the batch later in its own rounds.
    pub fn check_append(&self, batch: &EncodedBatch) -> Result<()> {
        self.check_writable(&self.state.borrow())?;
        self.check_encoded(batch)
    }

    /// True while the log takes writes (not latched, closed or waiting for disk space).
    pub fn is_writable(&self) -> bool {
        self.check_writable(&self.state.borrow()).is_ok()
    }

    /// The limits of `check_batch`, from what the encoded batch says of itself: O(1).
    fn check_encoded(&self, b: &EncodedBatch) -> Result<()> {
        let c = &self.config;
        let count = b.record_count() as usize;
        if count > c.max_batch_records {
            return Err(Error::BatchTooLarge {
                size: count,
                limit: c.max_batch_records,
                unit: "records",
            });
        }
        if b.max_value_len() as usize > c.max_record_bytes {
            return Err(Error::RecordTooLarge {
                size: b.max_value_len() as usize,
                limit: c.max_record_bytes,
            });
        }
        if b.payload_len() > c.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: b.payload_len(),
                limit: c.max_batch_bytes,
                unit: "bytes",
            });
        }
        Ok(())
    }

    fn check_batch(&self, records: &[NewRecord]) -> Result<()> {
        let c = &self.config;
        if records.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        if records.len() > c.max_batch_records {
            return Err(Error::BatchTooLarge {
                size: records.len(),
                limit: c.max_batch_records,
                unit: "records",
            });
        }
        if let Some(r) = records.iter().find(|r| r.value.len() > c.max_record_bytes) {
            return Err(Error::RecordTooLarge {
                size: r.value.len(),
                limit: c.max_record_bytes,
            });
        }
        let len = batch::encoded_len(records) - HEADER_LEN;
        if len > c.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: len,
                limit: c.max_batch_bytes,
                unit: "bytes",
            });
        }
        Ok(())
    }

    /// Waits until the batch is durable (`always`) or written (`interval`, `never`), which is
    /// when it is acknowledged and readers see it; fails if a truncation, a reset or the
    /// recovery from a full disk cut it meanwhile.
    pub(super) async fn after_append(&self, appended: Appended) -> Result<Appended> {
        let epoch = self.state.borrow().cut_epoch;
        if self.config.durability != Durability::Always {
            // Acknowledged once written (not synced): a crash of this process cannot take
            // it back, only an OS crash or power loss.
            self.wait_written(appended.last_offset + 1).await?;
        } else {
            self.appended.notify(usize::MAX);
            self.wait_durable(appended.last_offset + 1).await?;
        }
        {
            let st = self.state.borrow();
            if st.cut_epoch != epoch && st.cut_floor <= appended.last_offset {
                return Err(Error::InvalidArgument(format!(
                    "offsets {}..={} were truncated before they became durable",
                    appended.base_offset, appended.last_offset
                )));
            }
        }
        Ok(appended)
    }

    /// Appends one batch: waits for its turn and for room, then buffers it, with no await in
    /// between, at the next offset.
    ///
    /// Admission is first come, first served: an appender that cannot append at once takes a
    /// ticket, and while tickets are queued nobody else appends out of turn. So offsets follow
    /// call order and no appender starves behind others that keep finding room.
    pub(super) async fn append_payload(&self, payload: Payload<'_>) -> Result<Appended> {
        let len = payload.len();
        let mut ticket = Ticket {
            log: self,
            id: None,
        };
        loop {
            let need = {
                let mut st = self.state_mut();
                self.check_writable(&st)?;
                match self.need(&st, &ticket, len)? {
                    Some(need) => {
                        ticket.queue(&mut st);
                        need
                    }
                    None => {
                        let appended = self.buffer(&mut st, &payload, len)?;
                        if ticket.leave(&mut st) {
                            self.io_done.notify(usize::MAX);
                        }
                        return Ok(appended);
                    }
                }
            };
            self.make_room(need, &ticket, len).await?;
        }
    }

    /// What keeps an append of `len` bytes from being buffered now, if anything.
    fn need(&self, st: &State, ticket: &Ticket<'_>, len: u64) -> Result<Option<Need>> {
        let my_turn = match ticket.id {
            None => st.admission.is_empty(),
            Some(id) => st.admission.front() == Some(&id),
        };
        if !my_turn {
            return Ok(Some(Need::Turn));
        }
        if st.exclusive {
            return Ok(Some(Need::Exclusive));
        }
        let seg = st.segments.last().ok_or(Error::ShutDown)?;
        let w = seg.writer.as_ref().ok_or(Error::ShutDown)?;
        // A segment without records cannot roll: the next one would get its name (the base
        // offset). It grows past `segment_bytes` instead (control batches are small).
        let can_roll = !seg.has_no_records();
        Ok(
            if can_roll
                && ((seg.size + len > self.config.segment_bytes && seg.size > 0)
                    || w.index.is_full())
            {
                Some(Need::Roll)
            } else if w.buf.len() as u64 + len > self.config.write_behind_bytes as u64 {
                Some(Need::WriteOut)
            } else {
                None
            },
        )
    }

    /// Waits until `need` is met (or may be: the caller checks again).
    async fn make_room(&self, need: Need, ticket: &Ticket<'_>, len: u64) -> Result<()> {
        match need {
            Need::Turn => {
                let listener = self.io_done.listen();
                let still_waiting = {
                    let st = self.state.borrow();
                    st.admission.front() != ticket.id.as_ref()
                        && st.latched.is_none()
                        && st.disk_full.is_none()
                        && !st.closed
                };
                if still_waiting {
                    listener.await;
                }
            }
            Need::Exclusive => {
                let _permit = self.lock_io().await?;
            }
            Need::Roll => {
                let _permit = self.lock_io().await?;
                self.roll_locked(len).await?
            }
            Need::WriteOut => {
                if self.state.borrow().io_busy {
                    self.wait_io().await
                } else {
                    self.lead_io(false).await?
                }
            }
        }
        Ok(())
    }

    /// Encodes (or copies) the batch into the active segment's buffer at the next offset and
    /// indexes it. The caller has checked that it fits.
    fn buffer(&self, st: &mut State, payload: &Payload<'_>, len: u64) -> Result<Appended> {
        let base = st.next;
        let raft_index = st.next_index;
        let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
        let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
        let pos = seg.size;
        let start = w.buf.len();
        // What the single-node path stamps: the next Raft index (the log's own counter, so
        // indexes stay dense whoever appends), and as commit index the last one durable
        // (0: none), which is what a single node has committed: a recovery that finds this
        // batch whole knows every batch before that index was synced (`segment::scan`).
        let durable = st.durable_index.saturating_sub(1).min(raft_index);
        let stamp = |term: u64| Stamp {
            kind: Kind::Data,
            base_offset: base,
            term,
            raft_index,
            commit_index: durable,
            timestamp_ms: now_ms(),
        };
        let (header, count) = match payload {
            Payload::Records { term, records } => {
                batch::encode_into(&mut w.buf, &stamp(*term), records);
                let Parsed::Header(h) = batch::parse_header(&w.buf[start..]) else {
                    unreachable!("a batch just encoded parses")
                };
                (h, records.len() as u64)
            }
            Payload::Encoded { term, batch } => {
                let header = batch.header(&stamp(*term));
                w.buf.extend_from_slice(&header);
                w.buf.extend_from_slice(batch.payload());
                let Parsed::Header(h) = batch::parse_header(&header) else {
                    unreachable!("a header just stamped parses")
                };
                (h, u64::from(batch.record_count()))
            }
            Payload::Raw { header, head, body } => {
                w.buf.extend_from_slice(head);
                w.buf.extend_from_slice(body);
                (*header, u64::from(header.record_count))
            }
        };
        w.track_buffer();
        let interval = u64::from(self.config.index_interval_bytes);
        if !segment::index_batch(
            &mut w.index,
            seg.base,
            pos,
            &header,
            seg.last_term,
            &mut w.since_index,
            interval,
        ) {
            // The index filled up between the check and here: cannot happen on one thread,
            // but never leave an unindexed batch behind.
            w.buf.truncate(start);
            return Err(Error::InvalidArgument("segment index is full".into()));
        }
        if seg.size == 0 {
            seg.base_index = header.raft_index;
        }
        seg.size += len;
        seg.next = base + count;
        seg.next_index = header.raft_index + 1;
        seg.last_term = header.term;
        seg.modified = SystemTime::now();
        st.next = base + count;
        st.next_index = header.raft_index + 1;
        // Appends of records: a control batch (a Raft no-op or configuration change) is none.
        if count > 0 {
            st.stats.appends += 1;
        }
        st.stats.records_appended += count;
        if header.is_data() {
            st.stats.payload_bytes +=
                u64::from(header.payload_len).saturating_sub(8 * u64::from(header.record_count));
        }
        // A control batch holds no record: its "last offset" is the one before it (or 0 at
        // the very start), which no caller waits on (control batches come only through
        // `append_buffered`, which waits for nothing).
        Ok(Appended {
            base_offset: base,
            last_offset: (base + count).saturating_sub(1),
        })
    }
}
