//! ProduceStream throughput over plaintext and over TLS, measured in one run, rounds
//! alternating so that drift of the machine hits both alike. Run by `scripts/tls-bench`,
//! which starts the two servers; by hand:
//!
//! ```text
//! tls_produce_bench --plain 127.0.0.1:8400 --tls 127.0.0.1:8410 --ca ca.pem \
//!     --cert root-client.pem --key root-client-key.pem [--seconds 5] [--rounds 3]
//!     [--streams 4] [--window 256] [--value-bytes 1024]
//! ```
//!
//! Each stream keeps `window` requests in flight; a record counts once its offset is back.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;
use net::client::{CallOptions, Channel, ClientConfig};
use net::tls::ClientTlsOptions;
use proto::log::v1::{paths, ProduceRequest, Record};

struct Args {
    plain: SocketAddr,
    tls: SocketAddr,
    tls_options: ClientTlsOptions,
    seconds: u64,
    rounds: usize,
    streams: usize,
    window: usize,
    value_bytes: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        plain: "127.0.0.1:8400".parse()?,
        tls: "127.0.0.1:8410".parse()?,
        tls_options: ClientTlsOptions::default(),
        seconds: 5,
        rounds: 3,
        streams: 4,
        window: 256,
        value_bytes: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--plain" => a.plain = v.parse()?,
            "--tls" => a.tls = v.parse()?,
            "--ca" => a.tls_options.ca_file = Some(PathBuf::from(v)),
            "--cert" => a.tls_options.cert_file = Some(PathBuf::from(v)),
            "--key" => a.tls_options.key_file = Some(PathBuf::from(v)),
            "--server-name" => a.tls_options.server_name = Some(v),
            "--seconds" => a.seconds = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            "--streams" => a.streams = v.parse()?,
            "--window" => a.window = v.parse()?,
            "--value-bytes" => a.value_bytes = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

async fn one_stream(
    ch: Channel,
    msg: Bytes,
    window: usize,
    until: Instant,
) -> Result<u64, net::Status> {
    let (mut tx, mut rx) = ch
        .streaming(paths::PRODUCE_STREAM, CallOptions::default())
        .await?;
    let room = Rc::new(Semaphore::new(window as u64));
    let acked = Rc::new(Cell::new(0u64));
    let reader = {
        let (room, acked) = (room.clone(), acked.clone());
        glommio::spawn_local(async move {
            while let Some(_m) = rx.message().await? {
                acked.set(acked.get() + 1);
                room.signal(1);
            }
            Ok::<(), net::Status>(())
        })
    };
    while Instant::now() < until {
        // Closed only if the reader is gone, which ends the stream anyway.
        // Units come back from the reader, one per acknowledged record.
        if room.acquire(1).await.is_err() {
            break;
        }
        tx.send(msg.clone()).await?;
    }
    tx.finish()?;
    reader.await?;
    Ok(acked.get())
}

/// Records per second over `seconds`, `streams` streams on one connection each.
async fn measure(addr: SocketAddr, config: ClientConfig, a: &Args) -> anyhow::Result<f64> {
    let msg = net::encode(&ProduceRequest {
        record: Some(Record {
            value: Bytes::from(vec![b'x'; a.value_bytes]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut channels = Vec::new();
    for _ in 0..a.streams {
        channels.push(Channel::connect(addr, config.clone()).await?);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(a.seconds);
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|ch| glommio::spawn_local(one_stream(ch, msg.clone(), a.window, until)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let tls = a
        .tls_options
        .load()?
        .ok_or_else(|| anyhow::anyhow!("--ca is required for the TLS server"))?;
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    ex.run(async move {
        let plain_cfg = ClientConfig::default();
        let tls_cfg = ClientConfig {
            tls: Some(tls),
            ..ClientConfig::default()
        };
        let (mut plain, mut secure) = (Vec::new(), Vec::new());
        for round in 0..a.rounds {
            let p = measure(a.plain, plain_cfg.clone(), &a).await?;
            let t = measure(a.tls, tls_cfg.clone(), &a).await?;
            println!(
                "round {round}: plaintext {p:.0} records/s ({:.1} MiB/s), TLS {t:.0} records/s ({:.1} MiB/s), TLS/plaintext {:.2}",
                p * a.value_bytes as f64 / (1 << 20) as f64,
                t * a.value_bytes as f64 / (1 << 20) as f64,
                t / p
            );
            plain.push(p);
            secure.push(t);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (p, t) = (median(&mut plain), median(&mut secure));
        println!(
            "median: plaintext {p:.0} records/s, TLS {t:.0} records/s, TLS/plaintext {:.2} ({} streams x {} in flight, {} B values, {} s per measurement)",
            t / p,
            a.streams,
            a.window,
            a.value_bytes,
            a.seconds
        );
        Ok(())
    })
}
