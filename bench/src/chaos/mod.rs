//! `proglog-chaos`: a Jepsen-style fault campaign against real proglog nodes.
//!
//! The pieces, in the order a run uses them:
//! - [`opts`]: the command line and the resolved [`opts::Plan`];
//! - [`sys`]: commands, namespaces, and the teardown that runs however the run ends;
//! - [`net`], [`relay`], [`disk`]: the test network (namespaces, bridge, nftables, routes),
//!   the delay relay (a TUN device of ours) and the loop volumes;
//! - [`node`], [`cluster`]: the proglog processes and what is done to all of them;
//! - [`client`], [`workload`]: gRPC from the client namespace; producers and consumers that
//!   record every operation into a [`history::History`];
//! - [`nemesis`]: the faults, their heals and their order;
//! - [`checker`]: the anomaly classes, with self-tests;
//! - [`report`], [`plot`]: results.json and timeline.png.
//!
//! A run: clean up leftovers, build the network and start the nodes, create the topic,
//! start the workload, inject faults one at a time until `--time` is up, heal, stop the
//! producers, let consumers catch up with every partition's end, read every partition from
//! every node, stop the nodes, check, report, remove everything.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod node;
pub mod opts;
pub mod plot;
pub mod relay;
pub mod report;
pub mod sys;
pub mod workload;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use checker::Report;
use cluster::Cluster;
use history::History;
use nemesis::{Active, Kind, Schedule};
use node::{Mode, Spec};
use opts::{Opts, Plan};
use workload::{Control, Phase};

const TOPIC: &str = "chaos";
/// Smallest size of each node's volume when the disk nemesis runs.
const VOLUME_MIB: u64 = 128;

/// A node's volume: room for everything the run may write (twice the values' bytes, for
/// batch headers, indexes and retried produces; nothing is removed by retention) on top of
/// [`VOLUME_MIB`], so that the disk is full only while the nemesis fills it. The image is
/// sparse: only what is written takes space.
fn volume_mib(plan: &Plan) -> u64 {
    let bytes = plan.rate * (plan.value_bytes as f64 + 64.0) * 2.0 * plan.time.as_secs_f64();
    VOLUME_MIB + (bytes / f64::from(1 << 20)).ceil() as u64
}
/// Load before the first fault and after the last heal.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs what the options ask for; the exit status follows `--help`.
pub fn main(opts: Opts) -> ExitCode {
    if opts.cleanup {
        if !sys::is_root() {
            eprintln!("proglog-chaos: --cleanup needs root");
            return ExitCode::from(2);
        }
        // Never under a run that is still going.
        let _lock = match sys::machine_lock() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("proglog-chaos: {e:#}");
                return ExitCode::from(2);
            }
        };
        sys::cleanup_leftovers();
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &opts.check_history {
        return match History::read_jsonl(path) {
            Ok(h) => {
                let r = checker::check(&h);
                if !crate::out::emit("proglog-chaos", &r.render(5)) {
                    return ExitCode::from(2);
                }
                if r.total() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("proglog-chaos: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let plan = match opts.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("proglog-chaos: {e}\n\nFor more information, try '--help'.");
            return ExitCode::from(2);
        }
    };
    match campaign(&plan) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<cluster::NotReplicated>().is_some() => {
            eprintln!("proglog-chaos: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("proglog-chaos: the run failed: {e:#}");
            eprintln!("replay with: {}", replay(&plan));
            ExitCode::from(2)
        }
    }
}

/// The command line that replays this run's choices.
pub fn replay(p: &Plan) -> String {
    let kinds: Vec<&str> = p.nemeses.iter().map(|k| k.name()).collect();
    format!(
        "proglog-chaos --seed {} --nodes {} --time {} --nemesis {} --durability {} \
         --partitions {} --producers {} --stream-producers {} --rate {} --fault-min {} \
         --fault-max {} --quiet-max {} --disk-hold {} --dead-node-timeout {}",
        p.seed,
        p.nodes,
        p.time.as_secs(),
        kinds.join(","),
        p.durability,
        p.partitions,
        p.producers,
        p.stream_producers,
        p.rate,
        p.fault.0.as_secs_f64(),
        p.fault.1.as_secs_f64(),
        p.quiet_max.as_secs_f64(),
        p.disk_hold.as_secs_f64(),
        p.dead_node_timeout.as_secs()
    )
}

fn campaign(plan: &Plan) -> Result<ExitCode> {
    if !sys::is_root() {
        bail!("needs root (network namespaces, nftables, loop mounts)");
    }
    nemesis::preflight(&plan.nemeses)?;
    // Held for the whole run: another run's start-up cleanup would remove our namespaces.
    let _lock = sys::machine_lock()?;
    // Before anything is created or cleaned up: a run of several nodes that do not
    // replicate is refused here.
    if plan.nodes > 1 && !node::replicates(&plan.bin)? {
        return Err(cluster::NotReplicated {
            nodes: plan.nodes as usize,
            log: None,
        }
        .into());
    }
    let kinds: Vec<&str> = plan.nemeses.iter().map(|k| k.name()).collect();
    eprintln!(
        "proglog-chaos: seed {} ({} node{}, {} s, nemeses {}, durability {}); replay with:\n  {}",
        plan.seed,
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        plan.time.as_secs(),
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(",")
        },
        plan.durability,
        replay(plan)
    );
    sys::handle_signals()?;
    let _guard = sys::Guard;
    sys::cleanup_leftovers();
    std::fs::create_dir_all(&plan.dir).with_context(|| format!("{}", plan.dir.display()))?;
    let dir = plan.dir.canonicalize()?;
    let epoch = Instant::now();
    let spec = Spec {
        bin: plan.bin.clone(),
        durability: plan.durability.clone(),
        segment_bytes: plan.segment_bytes.clone(),
        nodes: plan.nodes,
        partitions: plan.partitions,
        dead_node_timeout: plan.dead_node_timeout,
        power_loss: plan.nemeses.contains(&Kind::Power),
    };
    let nft = plan.nemeses.iter().any(|k| k.needs_nft());
    let volumes = plan.nemeses.contains(&Kind::Disk).then(|| volume_mib(plan));
    let mut cluster = Cluster::start(spec, &dir, nft, volumes, epoch)?;
    let mode = cluster.mode;
    eprintln!(
        "[{:6.1}s] {} node{} ready ({})",
        epoch.elapsed().as_secs_f64(),
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        mode_name(mode)
    );
    let targets = cluster.targets();
    // A replicated cluster creates the topic once (through whichever node leads the
    // controller), then waits until every partition is led with all its voters; a single
    // node creates it for itself.
    client::create_topic(
        targets.clone(),
        mode != Mode::Replicated,
        TOPIC.into(),
        plan.partitions,
        plan.durability.clone(),
    )?;
    if mode == Mode::Replicated {
        cluster.wait_whole(Some((TOPIC, plan.partitions)), cluster::READY_LIMIT)?;
        eprintln!(
            "[{:6.1}s] topic {TOPIC}: {} partitions, each led with {} voters",
            epoch.elapsed().as_secs_f64(),
            plan.partitions,
            cluster.voters()
        );
    }
    let control = Arc::new(Control::default());
    let load = workload::start(
        workload::Config {
            targets: targets.clone(),
            topic: TOPIC.into(),
            partitions: plan.partitions,
            producers: plan.producers,
            stream_producers: plan.stream_producers,
            rate: plan.rate,
            value_bytes: plan.value_bytes,
            seed: plan.seed,
            epoch,
        },
        control.clone(),
    );
    let faults = run_faults(plan, &mut cluster, &control, epoch);
    // Whatever happened, the load must stop before anything is read back.
    let faults = match faults {
        Ok(f) => f,
        Err(e) => {
            control.set_phase(Phase::Stop);
            let _ = load.join();
            cluster.stop(plan.keep_data);
            return Err(e);
        }
    };
    let finals = finish(plan, &mut cluster, &control, &targets, epoch);
    let recorded = load
        .join()
        .map_err(|_| anyhow::anyhow!("the workload thread panicked"))??;
    let finals = finals?;
    let end_ms = epoch.elapsed().as_secs_f64() * 1000.0;
    cluster.stop(plan.keep_data);
    cluster.collect_panics();
    let history = History {
        partitions: plan.partitions,
        nodes: targets.iter().map(|t| t.name.clone()).collect(),
        ops: recorded.ops,
        reads: recorded.reads,
        consumers: recorded.consumers,
        finals,
        faults,
        end_ms,
    };
    let report = checker::check(&history);
    let code = conclude(plan, &dir, mode, &cluster, &history, &report)?;
    Ok(code)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Single => "single node",
        Mode::Replicated => "replicated",
    }
}

/// Injects faults until the plan's time is up (or a signal), heals the last one. Returns
/// the fault windows.
fn run_faults(
    plan: &Plan,
    cluster: &mut Cluster,
    control: &Control,
    epoch: Instant,
) -> Result<Vec<history::Fault>> {
    let mut rng = crate::Rng::new(plan.seed);
    let mut schedule = Schedule::new(plan.nemeses.clone());
    let mut faults = Vec::new();
    let end = epoch + plan.time;
    let mut last_progress = Instant::now();
    let between = |rng: &mut crate::Rng, lo: Duration, hi: Duration| {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rng.below(span + 1))
    };
    let mut next_fault = Instant::now() + SETTLE;
    let mut active: Option<(Active, Instant, Duration)> = None;
    let mut last_felt_check = Instant::now();
    while !sys::interrupted() {
        let now = Instant::now();
        let down = active
            .as_ref()
            .map(|(a, _, _)| a.down())
            .unwrap_or_default();
        cluster.notice_crashes(&down)?;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            progress(control, epoch, active.as_ref().map(|(a, _, _)| a));
            last_progress = Instant::now();
        }
        if let Some((a, until, window)) = active.as_mut() {
            if a.unfelt.is_some() && now >= last_felt_check + Duration::from_secs(1) {
                last_felt_check = now;
                if a.felt_now(cluster) {
                    // The full disk lasts its whole window from the moment it bites.
                    *until = (Instant::now() + *window).min(end);
                    eprintln!(
                        "[{:6.1}s] #{} felt: its node refuses writes",
                        epoch.elapsed().as_secs_f64(),
                        a.fault.id
                    );
                }
            }
            // A full disk not felt yet is held on (up to --disk-hold), its node asked again
            // each second.
            let holding = a
                .unfelt
                .as_ref()
                .is_some_and(|u| u.since.elapsed() < plan.disk_hold);
            if (now >= *until && !holding) || now >= end {
                nemesis::heal(cluster, a)
                    .with_context(|| format!("healing fault #{}", a.fault.id))?;
                eprintln!(
                    "[{:6.1}s] healed #{} {}",
                    epoch.elapsed().as_secs_f64(),
                    a.fault.id,
                    a.fault.kind
                );
                if let Some((a, _, _)) = active.take() {
                    faults.push(a.fault);
                }
                next_fault =
                    Instant::now() + between(&mut rng, Duration::from_secs(1), plan.quiet_max);
            }
        } else if now >= end {
            break;
        } else if now >= next_fault && !plan.nemeses.is_empty() {
            let left = end.saturating_duration_since(now);
            // A fault needs its whole window (and a heal) before the end.
            if left > plan.fault.0 {
                if let Some(kind) = schedule.next(&mut rng) {
                    let id = faults.len() as u32;
                    let window = between(&mut rng, plan.fault.0, plan.fault.1).min(left);
                    let a = nemesis::inject(cluster, kind, id, &mut rng, plan.seed)
                        .with_context(|| format!("injecting {}", kind.name()))?;
                    eprintln!(
                        "[{:6.1}s] fault #{id} for {:.1}s: {}",
                        epoch.elapsed().as_secs_f64(),
                        window.as_secs_f64(),
                        a.fault.detail
                    );
                    active = Some((a, Instant::now() + window, window));
                }
            } else {
                next_fault = end;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some((mut a, _, _)) = active.take() {
        nemesis::heal(cluster, &mut a)?;
        faults.push(a.fault);
    }
    cluster.net.heal_rules()?;
    cluster.net.heal_routes()?;
    for i in 0..cluster.nodes.len() {
        cluster.nodes[i].resume();
        cluster.restart(i)?;
    }
    if cluster.mode == Mode::Replicated {
        nemesis::final_readmit(cluster)?;
        // Every partition led again with all its voters before the load stops; one that is
        // not is said here and shows in the final reads.
        if let Err(e) = cluster.wait_whole(Some((TOPIC, plan.partitions)), Duration::from_secs(90))
        {
            eprintln!(
                "[{:6.1}s] WARNING: after the final heal: {e:#}",
                epoch.elapsed().as_secs_f64()
            );
        }
    }
    progress(control, epoch, None);
    Ok(faults)
}

fn progress(control: &Control, epoch: Instant, active: Option<&Active>) {
    eprintln!(
        "[{:6.1}s] produces ok {} fail {} unknown {}, records read {}{}",
        epoch.elapsed().as_secs_f64(),
        control.ok.load(Ordering::Relaxed),
        control.fail.load(Ordering::Relaxed),
        control.unknown.load(Ordering::Relaxed),
        control.reads.load(Ordering::Relaxed),
        active
            .map(|a| format!(" | fault #{} {}", a.fault.id, a.fault.kind))
            .unwrap_or_default()
    );
}

/// Stops the producers, waits for the replicas to agree (replicated mode), lets consumers
/// reach every partition's end, and reads every partition from every node.
fn finish(
    plan: &Plan,
    cluster: &mut Cluster,
    control: &Control,
    targets: &[client::Target],
    epoch: Instant,
) -> Result<Vec<history::FinalRead>> {
    std::thread::sleep(SETTLE);
    control.set_phase(Phase::Drain);
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.producers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ends = if cluster.mode == Mode::Replicated {
        converge(targets, Duration::from_secs(60))?
    } else {
        client::ends(targets.to_vec(), TOPIC.into())?
    };
    let mut target = vec![0u64; plan.partitions as usize];
    for e in ends.iter().flatten() {
        for (t, v) in target.iter_mut().zip(e) {
            *t = (*t).max(*v);
        }
    }
    eprintln!(
        "[{:6.1}s] producers stopped; consumers catch up to {target:?}",
        epoch.elapsed().as_secs_f64()
    );
    control.set_targets(target);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // The workload thread ends once every consumer reached its target.
        if control.producers.load(Ordering::SeqCst) == 0 && consumers_done(control) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    control.set_phase(Phase::Stop);
    cluster.notice_crashes(&[])?;
    eprintln!(
        "[{:6.1}s] final read of every partition from every node",
        epoch.elapsed().as_secs_f64()
    );
    client::final_reads(targets.to_vec(), TOPIC.into(), plan.partitions)
}

/// Consumers report nothing directly; the workload's read counter stops moving once they
/// are done or stuck, which the caller's deadline bounds. Checked by the phase: a consumer
/// task exits once it reached its target.
fn consumers_done(control: &Control) -> bool {
    control.consumers_left() == 0
}

/// Waits until every node reports the same end for every partition, twice in a row.
fn converge(targets: &[client::Target], limit: Duration) -> Result<Vec<Option<Vec<u64>>>> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        let ends = client::ends(targets.to_vec(), TOPIC.into())?;
        let agree = ends.iter().all(|e| e.is_some() && *e == ends[0]);
        if agree && last.as_ref() == Some(&ends) {
            return Ok(ends);
        }
        if Instant::now() > deadline {
            eprintln!("warning: the nodes' ends did not converge within {limit:?}: {ends:?}");
            return Ok(ends);
        }
        last = Some(ends);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Writes the history, results.json and timeline.png, prints the report; the exit status.
fn conclude(
    plan: &Plan,
    dir: &std::path::Path,
    mode: Mode,
    cluster: &Cluster,
    h: &History,
    r: &Report,
) -> Result<ExitCode> {
    let history_path = dir.join("history.jsonl");
    h.write_jsonl(&history_path)?;
    let expected_found = match &plan.expect {
        None => None,
        Some(classes) if classes.is_empty() => Some(r.total() > 0),
        Some(classes) => Some(classes.iter().all(|c| r.found(*c))),
    };
    let crashed = !cluster.crashes.is_empty();
    // A campaign that never injected a fault it was asked for proves nothing about it.
    let missed: Vec<&str> = plan
        .nemeses
        .iter()
        .map(|k| k.name())
        .filter(|k| !h.faults.iter().any(|f| f.kind == *k))
        .collect();
    // A node that cannot be read in full after the heal is a failure of its own (the
    // checker only notes it: it has nothing to judge there).
    let unread: Vec<String> = h
        .finals
        .iter()
        .filter_map(|f| {
            f.error
                .as_ref()
                .map(|e| format!("{} partition {}: {e}", f.node, f.partition))
        })
        .collect();
    let pass = missed.is_empty()
        && unread.is_empty()
        && !crashed
        && match expected_found {
            None => r.total() == 0,
            Some(found) => found,
        };
    let mut verdict = report::verdict_line(plan, r, cluster.crashes.len(), pass);
    if !missed.is_empty() {
        verdict.push_str(&format!(
            "; never injected: {} (a longer --time, or shorter --fault-max/--quiet-max)",
            missed.join(", ")
        ));
    }
    if !unread.is_empty() {
        verdict.push_str(&format!("; {} final read(s) failed", unread.len()));
    }
    let png = dir.join("timeline.png");
    let title = format!(
        "proglog-chaos seed {}: {} node{} ({}), durability {}",
        plan.seed,
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        mode_name(mode),
        plan.durability
    );
    plot::timeline(h, &title, &verdict, &png)?;
    let results = report::results(plan, mode, cluster, h, r, pass, &replay(plan));
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut out = String::new();
    let mut line = |l: &str| {
        out.push_str(l);
        out.push('\n');
    };
    line(&report::summary(h, r));
    let checked: Vec<&str> = checker::Class::ALL
        .iter()
        .filter(|c| report::applies(**c, mode))
        .map(|c| c.name())
        .collect();
    line(&format!("classes checked: {}", checked.join(", ")));
    if mode == Mode::Single {
        line(
            "single-node mode: one node against its own history; replica-divergence does not \
             apply, and nothing here tests replication",
        );
    }
    line(r.render(3).trim_end_matches('\n'));
    for c in &cluster.crashes {
        line(&format!(
            "CRASH: {} exited by itself at {:.1}s ({})",
            c.node,
            c.at_ms / 1000.0,
            c.status
        ));
    }
    for u in &unread {
        line(&format!("UNREAD: the final read of {u}"));
    }
    line(&verdict);
    line(&format!(
        "results: {}\ntimeline: {}\nhistory: {}",
        dir.join("results.json").display(),
        png.display(),
        history_path.display()
    ));
    crate::out::write(&out).context("writing standard output")?;
    if sys::interrupted() {
        return Ok(ExitCode::from(130));
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
