//! Idle: what a connected, heart-beating but quiet device costs the server.
//!
//! Reads each server process's resident memory before the sessions open, opens them all
//! (the SDK heartbeats at the interval the server asks for), lets them settle, then
//! samples memory and CPU time from /proc over `--duration` (30 s by default). Reports
//! memory per connection, (RSS with − RSS before) / sessions, and CPU as a percentage
//! of one core, per 10,000 sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_sdk::{Client, Cursors, Event, Session, SessionOptions};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::accounts;
use crate::cli::{Args, SessionCount};
use crate::connect::Dialer;
use crate::procstat::{self, ProcSample};
use crate::report::Report;
use crate::scenario::Failures;

/// Sessions being opened at once.
const CONNECTS_IN_FLIGHT: usize = 500;
/// File descriptors left for everything else (Postgres, stdio, the runtime) with `max`.
const FD_HEADROOM: u64 = 256;

#[derive(Debug, Serialize)]
struct ProcessCost {
    pid: u32,
    rss_before_kib: u64,
    rss_with_kib: u64,
    cpu_percent: f64,
}

#[derive(Debug, Serialize)]
struct IdleResult {
    sessions: usize,
    failed_to_open: u64,
    closed_while_idle: u64,
    settle_s: f64,
    sample_s: f64,
    processes: Vec<ProcessCost>,
    rss_per_connection_bytes: Option<f64>,
    cpu_percent_total: Option<f64>,
    cpu_percent_per_10k_sessions: Option<f64>,
}

pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let wanted = match args.sessions {
        SessionCount::Count(n) => n,
        SessionCount::Max => max_sessions(args.source_addrs)?,
    };
    let dialer = Dialer::new(&args.servers, args.source_addrs)?;
    let run = accounts::run_prefix();
    let accounts = accounts::users(args, &dialer, &run, "i", wanted).await?;
    if args.server_pids.is_empty() {
        println!("no --server-pid: opening sessions without sampling the server");
    }
    let before = sample_all(&args.server_pids)?;

    let failures = Failures::default();
    let closed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let (dialer, failures_ref) = (&dialer, &failures);
    let opened: usize = futures::stream::iter(accounts.into_iter().enumerate())
        .map(|(i, account)| {
            let (closed, stop) = (closed.clone(), stop.clone());
            async move {
                let opened = async {
                    let channel = dialer.channel(i).await?;
                    Client::from_channel(channel)
                        .with_token(&account.token)?
                        .open_session(Cursors::new(), SessionOptions::default())
                        .await
                        .with_context(|| format!("opening the session of {}", account.name))
                }
                .await;
                match opened {
                    Ok(session) => {
                        tokio::spawn(hold(session, closed, stop));
                        1_usize
                    }
                    Err(e) => {
                        failures_ref.add(|| format!("{e:#}"));
                        0_usize
                    }
                }
            }
        })
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .fold(0_usize, |n, one| async move { n + one })
        .await;
    println!(
        "{opened} sessions open in {:.1} s ({} failed)",
        started.elapsed().as_secs_f64(),
        failures.count()
    );
    failures.print();
    if opened == 0 {
        bail!("no session opened");
    }

    let settle = Duration::from_secs_f64(args.settle);
    println!("settling for {} s", settle.as_secs_f64());
    tokio::time::sleep(settle).await;
    let first = sample_all(&args.server_pids)?;
    let sampling = Instant::now();
    tokio::time::sleep(args.duration_or(30.0)).await;
    let last = sample_all(&args.server_pids)?;
    let seconds = sampling.elapsed().as_secs_f64();
    let closed_while_idle = closed.load(Ordering::Relaxed);
    stop.cancel();

    let processes: Vec<ProcessCost> = args
        .server_pids
        .iter()
        .zip(before.iter().zip(first.iter().zip(&last)))
        .map(|(&pid, (b, (f, l)))| ProcessCost {
            pid,
            rss_before_kib: b.rss_kib,
            rss_with_kib: l.rss_kib,
            cpu_percent: procstat::cpu_percent(*f, *l, seconds),
        })
        .collect();
    let sampled = !processes.is_empty();
    let rss_delta_kib: i64 = processes
        .iter()
        .map(|p| p.rss_with_kib as i64 - p.rss_before_kib as i64)
        .sum();
    let cpu_total: f64 = processes.iter().map(|p| p.cpu_percent).sum();
    let result = IdleResult {
        sessions: opened,
        failed_to_open: failures.count(),
        closed_while_idle,
        settle_s: settle.as_secs_f64(),
        sample_s: seconds,
        rss_per_connection_bytes: sampled.then(|| rss_delta_kib as f64 * 1024.0 / opened as f64),
        cpu_percent_total: sampled.then_some(cpu_total),
        cpu_percent_per_10k_sessions: sampled.then(|| cpu_total * 10_000.0 / opened as f64),
        processes,
    };
    for p in &result.processes {
        println!(
            "pid {}: RSS {} KiB before, {} KiB with {opened} sessions; CPU {:.2}% of a core",
            p.pid, p.rss_before_kib, p.rss_with_kib, p.cpu_percent
        );
    }
    if let (Some(per_conn), Some(per_10k)) = (
        result.rss_per_connection_bytes,
        result.cpu_percent_per_10k_sessions,
    ) {
        println!(
            "idle: {opened} sessions, {:.1} KiB per connection, {per_10k:.2}% of a core per 10,000 sessions",
            per_conn / 1024.0
        );
    }
    if closed_while_idle > 0 {
        println!("{closed_while_idle} sessions closed while idle");
    }
    let clean = result.failed_to_open == 0 && closed_while_idle == 0;
    report.set("idle", &result)?;
    Ok(clean)
}

/// Keeps a session open, reading its events, until `stop`; counts it if it closes first.
async fn hold(mut session: Session, closed: Arc<AtomicU64>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = session.next_event() => match event {
                Some(Event::Closed(_)) | None => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(_) => {}
            },
        }
    }
}

fn sample_all(pids: &[u32]) -> anyhow::Result<Vec<ProcSample>> {
    pids.iter().map(|&pid| procstat::sample(pid)).collect()
}

/// As many sessions as this process may hold sockets for (RLIMIT_NOFILE, already raised
/// to its hard limit in `main`), and as the source addresses have ephemeral ports.
fn max_sessions(source_addrs: u8) -> anyhow::Result<usize> {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let by_files = soft.saturating_sub(FD_HEADROOM + soft / 20);
    let ports = ephemeral_ports().unwrap_or(28_232) * u64::from(source_addrs);
    let n = by_files.min(ports.saturating_sub(FD_HEADROOM));
    println!(
        "--sessions max: {n} (file limit {soft}; {ports} ephemeral ports over {source_addrs} source addresses)"
    );
    Ok(usize::try_from(n)?)
}

/// The size of the ephemeral port range, from /proc.
fn ephemeral_ports() -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = range.split_whitespace().map(|b| b.parse::<u64>().ok());
    let (low, high) = (bounds.next()??, bounds.next()??);
    Some(high.saturating_sub(low) + 1)
}
