//! `--verify`: reads back every acknowledged offset and checks what is there.
//!
//! Read-back uses ConsumeStream (a book RPC) from the lowest acknowledged offset to the
//! highest, so it works against any log.v1 server and costs one call, not one per record.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use net::client::{CallOptions, Channel, ClientConfig};
use proto::log::v1::{paths, ConsumeRequest, ConsumeResponse};
use serde_json::{json, Value};

use super::opts::{Fault, Opts};
use super::payload::{self, Bad, Pattern};
use super::run::{on_executor, Ack};

/// How long read-back waits for the next record before it counts the rest as lost.
const STALL: Duration = Duration::from_secs(10);
/// Problems listed by name in the report (the counts are complete).
const EXAMPLES: usize = 10;

#[derive(Debug, Default, Clone)]
pub struct VerifyResult {
    pub acked: u64,
    /// Acknowledged records read back intact.
    pub ok: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub mismatches: u64,
    /// Records in the range written by someone else (another client or run): not checked.
    pub foreign: u64,
    /// Checksum failures seen by consumers during the load.
    pub bad_during_load: u64,
    pub read_error: Option<String>,
    pub examples: Vec<String>,
}

impl VerifyResult {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.mismatches == 0
            && self.bad_during_load == 0
            && self.read_error.is_none()
            && self.ok == self.acked
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(s);
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "acked": self.acked,
            "read_back_ok": self.ok,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "mismatches": self.mismatches,
            "foreign_records": self.foreign,
            "bad_records_during_load": self.bad_during_load,
            "read_error": self.read_error,
            "examples": self.examples,
        })
    }
}

pub fn verify(
    opts: &Opts,
    addr: SocketAddr,
    config: ClientConfig,
    run_id: u32,
    mut acks: Vec<Ack>,
    bad_during_load: u64,
) -> Result<VerifyResult> {
    let opts = opts.clone();
    on_executor("bench-verify", move || async move {
        let mut r = VerifyResult {
            acked: acks.len() as u64,
            bad_during_load,
            ..Default::default()
        };
        if bad_during_load > 0 {
            r.note(format!(
                "{bad_during_load} records failed their checksum while consumers read them"
            ));
        }
        acks.sort_unstable();
        // Two acknowledgements of one offset: the server gave one offset to two records.
        let before = acks.len();
        acks.dedup_by_key(|a| a.offset);
        let dup_offsets = (before - acks.len()) as u64;
        if dup_offsets > 0 {
            r.duplicates += dup_offsets;
            r.mismatches += dup_offsets;
            r.note(format!(
                "{dup_offsets} offsets were acknowledged for two different records"
            ));
        }
        let (Some(first), Some(last)) = (acks.first().copied(), acks.last().copied()) else {
            return Ok(r);
        };
        // `--inject-fault skip` drops one record as if the server had lost it.
        let skip = (opts.inject_fault == Some(Fault::Skip)).then(|| acks[acks.len() / 2].offset);
        let pattern = Pattern::new(run_id, opts.record_size.max);
        // Read back where the load went, else from another node given (any replica serves
        // what was committed: a leader killed during the run costs not the verification).
        // None reachable is the verification's failure, reported with the run's figures.
        let ch = match connect_any(addr, &opts.addrs(), &config).await {
            Ok(ch) => ch,
            Err(e) => {
                r.read_error = Some(format!("reading back: {e}"));
                return Ok(r);
            }
        };
        let req = ConsumeRequest {
            offset: first.offset,
            topic: opts.topic.clone().unwrap_or_default(),
            partition: opts.partition,
        };
        let mut seen: HashSet<(u32, u64)> = HashSet::with_capacity(acks.len());
        let mut next_ack = 0usize;
        let mut found = vec![false; acks.len()];
        match ch
            .server_streaming(
                paths::CONSUME_STREAM,
                net::encode(&req),
                CallOptions::default(),
            )
            .await
        {
            Err(st) => {
                r.read_error = Some(format!(
                    "ConsumeStream({}): {} {}",
                    first.offset,
                    st.code.name(),
                    st.message
                ))
            }
            Ok(mut rx) => loop {
                let m = glommio::timer::timeout(STALL, async {
                    Ok(rx.message_as::<ConsumeResponse>().await)
                })
                .await;
                let rec = match m {
                    Err(_) => {
                        r.note(format!(
                            "read-back stalled: no record for {STALL:?} before offset {}",
                            last.offset
                        ));
                        break;
                    }
                    Ok(Err(st)) => {
                        r.read_error =
                            Some(format!("ConsumeStream: {} {}", st.code.name(), st.message));
                        break;
                    }
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(resp))) => resp.record.unwrap_or_default(),
                };
                if Some(rec.offset) == skip {
                    continue;
                }
                while next_ack < acks.len() && acks[next_ack].offset < rec.offset {
                    next_ack += 1;
                }
                let ack = acks
                    .get(next_ack)
                    .filter(|a| a.offset == rec.offset)
                    .copied();
                match payload::check(&rec.value, Some(&pattern)) {
                    Err(Bad::Foreign) => {
                        if ack.is_some() {
                            r.mismatches += 1;
                            r.note(format!(
                                "offset {}: acknowledged, but holds a record that is not ours",
                                rec.offset
                            ));
                        } else {
                            r.foreign += 1;
                        }
                    }
                    Err(bad) => {
                        r.mismatches += 1;
                        r.note(format!("offset {}: {bad:?} check failed", rec.offset));
                    }
                    Ok(st) if st.run_id != run_id => {
                        if ack.is_some() {
                            r.mismatches += 1;
                            r.note(format!(
                                "offset {}: holds a record of another run",
                                rec.offset
                            ));
                        } else {
                            r.foreign += 1;
                        }
                    }
                    Ok(st) => {
                        if !seen.insert((st.lane, st.seq)) {
                            r.duplicates += 1;
                            r.note(format!(
                                "offset {}: lane {} sequence {} was already read at a lower offset",
                                rec.offset, st.lane, st.seq
                            ));
                        }
                        if let Some(a) = ack {
                            if a.lane == st.lane
                                && a.seq == st.seq
                                && a.len as usize == rec.value.len()
                            {
                                r.ok += 1;
                            } else {
                                r.mismatches += 1;
                                r.note(format!(
                                    "offset {}: acknowledged for lane {} sequence {} ({} B), holds lane {} sequence {} ({} B)",
                                    rec.offset, a.lane, a.seq, a.len, st.lane, st.seq, rec.value.len()
                                ));
                            }
                        }
                    }
                }
                if ack.is_some() {
                    found[next_ack] = true;
                }
                if rec.offset >= last.offset {
                    break;
                }
            },
        }
        for (a, f) in acks.iter().zip(&found) {
            if !f {
                r.lost += 1;
                if r.examples.len() < EXAMPLES {
                    r.note(format!(
                        "offset {}: acknowledged (lane {} sequence {}) but not read back",
                        a.offset, a.lane, a.seq
                    ));
                }
            }
        }
        Ok(r)
    })
}

/// A connection to `first`, else to the first of `seeds` (`--addr`) that accepts one.
async fn connect_any(
    first: SocketAddr,
    seeds: &[String],
    config: &ClientConfig,
) -> std::result::Result<Channel, String> {
    let others = seeds
        .iter()
        .filter_map(|s| std::net::ToSocketAddrs::to_socket_addrs(s).ok())
        .flatten()
        .filter(|a| *a != first);
    let mut errors = Vec::new();
    for a in std::iter::once(first).chain(others) {
        match Channel::connect(a, config.clone()).await {
            Ok(ch) => return Ok(ch),
            Err(e) => errors.push(format!("{a}: {e}")),
        }
    }
    Err(format!(
        "no node given accepts a connection ({})",
        errors.join("; ")
    ))
}
