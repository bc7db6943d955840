//! Catch-up: everyone reconnects at once with messages waiting (a deploy, a network
//! blip). Seeds `--users` receivers with `--messages` each, then opens every receiver's
//! session at once, limited only by how many connects may be in flight, and measures the
//! time until the last one has replayed all its messages and said `caught_up`.
//! Sessions stay open until then, as reconnecting clients would.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chat_sdk::{Client, Cursors, Event, Session, SessionOptions};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, Account};
use crate::cli::Args;
use crate::connect::Dialer;
use crate::report::{self, Percentiles, Recorder, Report};
use crate::scenario::Failures;
use crate::seed;

/// Connects (TCP + HTTP/2 + `welcome`) in flight at once.
const CONNECTS_IN_FLIGHT: usize = 2000;
/// Longest the whole reconnect may take unless `--duration` says otherwise.
const DEFAULT_LIMIT_SECS: f64 = 600.0;

#[derive(Debug, Serialize)]
struct CatchUpResult {
    receivers: usize,
    messages_each: u32,
    caught_up: u64,
    failed: u64,
    missing_messages: u64,
    total_s: f64,
    reconnects_per_s: f64,
    messages_per_s: f64,
    /// From the start to each session's `welcome`.
    welcome: Percentiles,
    /// From the start to each session's `caught_up`.
    caught_up_at: Percentiles,
}

/// What every reconnecting task shares.
struct Shared {
    dialer: Dialer,
    connects: Semaphore,
    welcomed: Recorder,
    caught_up: Recorder,
    release: CancellationToken,
    start: Instant,
    expected: u64,
}

pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let url = args
        .database_url
        .as_deref()
        .context("catch-up seeds its waiting messages in SQL: pass --database-url")?;
    let seeding = Instant::now();
    let pool = seed::pool(url, 4).await?;
    let run = accounts::run_prefix();
    let receivers = seed::catch_up(&pool, &run, args.users, u64::from(args.messages)).await?;
    pool.close().await;
    println!(
        "seeded {} receivers with {} waiting messages each in {:.1} s",
        receivers.len(),
        args.messages,
        seeding.elapsed().as_secs_f64()
    );

    let total = receivers.len();
    let shared = Arc::new(Shared {
        dialer: Dialer::new(&args.servers, args.source_addrs)?,
        connects: Semaphore::new(CONNECTS_IN_FLIGHT),
        welcomed: Recorder::new()?,
        caught_up: Recorder::new()?,
        release: CancellationToken::new(),
        start: Instant::now(),
        expected: u64::from(args.messages),
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for (i, account) in receivers.into_iter().enumerate() {
        tokio::spawn(reconnect(i, account, shared.clone(), done_tx.clone()));
    }
    drop(done_tx);

    let deadline = shared.start + args.duration_or(DEFAULT_LIMIT_SECS);
    let failures = Failures::default();
    let (mut finished, mut caught_up, mut missing) = (0usize, 0u64, 0u64);
    while finished < total {
        match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
            Ok(Some(Ok(short))) => {
                finished += 1;
                caught_up += 1;
                missing += short;
            }
            Ok(Some(Err(error))) => {
                finished += 1;
                failures.add(|| error);
            }
            Ok(None) => break,
            Err(_) => {
                let left = total - finished;
                failures.add_many(left as u64, || {
                    format!("{left} sessions had not caught up in time")
                });
                break;
            }
        }
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    shared.release.cancel();

    let result = CatchUpResult {
        receivers: total,
        messages_each: args.messages,
        caught_up,
        failed: failures.count(),
        missing_messages: missing,
        total_s: elapsed,
        reconnects_per_s: caught_up as f64 / elapsed,
        messages_per_s: (caught_up * shared.expected).saturating_sub(missing) as f64 / elapsed,
        welcome: Percentiles::of(&shared.welcomed.merged()?),
        caught_up_at: Percentiles::of(&shared.caught_up.merged()?),
    };
    println!(
        "catch-up: {caught_up} of {total} sessions caught up in {elapsed:.2} s: \
         {:.0} reconnects/s, {:.0} messages/s replayed; {missing} messages missing",
        result.reconnects_per_s, result.messages_per_s
    );
    report::print_latency("start→welcome", &result.welcome);
    report::print_latency("start→caught up", &result.caught_up_at);
    failures.print();
    let clean = result.failed == 0 && missing == 0;
    report.set("catch_up", &result)?;
    Ok(clean)
}

/// One receiver: reconnect, replay, report, then stay connected until released.
async fn reconnect(
    i: usize,
    account: Account,
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<Result<u64, String>>,
) {
    match catch_up(i, &account, &shared).await {
        Ok((session, missing)) => {
            let _ = done.send(Ok(missing));
            shared.release.cancelled().await;
            drop(session);
        }
        Err(e) => {
            let _ = done.send(Err(format!("{}: {e:#}", account.name)));
        }
    }
}

/// Opens the session and reads until `caught_up`; returns it and how many of the
/// expected messages did not come.
async fn catch_up(i: usize, account: &Account, shared: &Shared) -> anyhow::Result<(Session, u64)> {
    let mut session = {
        let _connecting = shared.connects.acquire().await?;
        Client::from_channel(shared.dialer.channel(i).await?)
            .with_token(&account.token)?
            .open_session(Cursors::new(), SessionOptions::default())
            .await?
    };
    shared.welcomed.record(i, shared.start.elapsed());
    let mut received = 0u64;
    loop {
        match session.next_event().await {
            Some(Event::Message(_)) => received += 1,
            Some(Event::CaughtUp(_)) => break,
            Some(Event::Closed(status)) => bail!("closed before catching up: {status:?}"),
            None => bail!("ended before catching up"),
            Some(_) => {}
        }
    }
    shared.caught_up.record(i, shared.start.elapsed());
    Ok((session, shared.expected.saturating_sub(received)))
}
