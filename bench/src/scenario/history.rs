//! History: how fast the latest page of a conversation comes back from a large table.
//! Seeds `--rows` messages over `--conversations` conversations once per database, then
//! `--callers` concurrent callers ask for the latest 50 messages of random seeded
//! conversations, each as a member, for `--duration` seconds.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chat_sdk::{Client, Page};
use serde::Serialize;

use crate::accounts;
use crate::cli::Args;
use crate::connect::Dialer;
use crate::report::{self, Percentiles, Recorder, Report};
use crate::scenario::Failures;
use crate::seed::{self, HistoryTarget};

/// Messages per page, as a client scrolling a conversation asks for.
const PAGE: u32 = 50;

#[derive(Debug, Serialize)]
struct HistoryResult {
    rows: u64,
    conversations: usize,
    callers: usize,
    duration_s: f64,
    calls: u64,
    calls_per_s: f64,
    failed: u64,
    latency: Percentiles,
}

pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let url = args
        .database_url
        .as_deref()
        .context("history seeds its data set in SQL: pass --database-url")?;
    let seeding = Instant::now();
    let pool = seed::pool(url, 4).await?;
    let run = accounts::run_prefix();
    let targets = seed::history(&pool, &run, args.rows, args.conversations).await;
    pool.close().await;
    let targets = Arc::new(targets?);
    if targets.is_empty() {
        bail!("the history data set has no conversations");
    }
    println!(
        "history data set ready in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let dialer = Dialer::new(&args.servers, args.source_addrs)?;
    let duration = args.duration_or(60.0);
    let recorder = Arc::new(Recorder::new()?);
    let failures = Arc::new(Failures::default());
    let callers = args.callers.max(1);
    let mut clients = Vec::with_capacity(callers);
    for caller in 0..callers {
        clients.push(Client::from_channel(dialer.channel(caller).await?));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(caller, client)| {
            tokio::spawn(call(
                caller,
                client,
                targets.clone(),
                recorder.clone(),
                failures.clone(),
                deadline,
            ))
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let result = HistoryResult {
        rows: targets.iter().map(|t| t.messages).sum(),
        conversations: targets.len(),
        callers,
        duration_s: elapsed,
        calls,
        calls_per_s: calls as f64 / elapsed,
        failed: failures.count(),
        latency: Percentiles::of(&recorder.merged()?),
    };
    println!(
        "history: {calls} GetHistory calls by {callers} callers in {elapsed:.1} s ({:.0}/s)",
        result.calls_per_s
    );
    report::print_latency("GetHistory latest page of 50", &result.latency);
    failures.print();
    let clean = result.failed == 0 && calls > 0;
    report.set("history", &result)?;
    Ok(clean)
}

/// One caller: latest page of a random conversation, again and again, until `deadline`.
async fn call(
    caller: usize,
    base: Client,
    targets: Arc<Vec<HistoryTarget>>,
    recorder: Arc<Recorder>,
    failures: Arc<Failures>,
    deadline: Instant,
) -> u64 {
    let mut calls = 0;
    while Instant::now() < deadline {
        let pick = (rand::random::<u64>() % targets.len() as u64) as usize;
        let target = &targets[pick];
        let client = match base.with_token(&target.token) {
            Ok(client) => client,
            Err(e) => {
                failures.add(|| format!("token of {}: {e}", target.conversation_id));
                continue;
            }
        };
        let started = Instant::now();
        match client
            .history(&target.conversation_id, Page::Latest, PAGE)
            .await
        {
            Ok(page) => {
                recorder.record(caller, started.elapsed());
                calls += 1;
                let want = target.messages.min(u64::from(PAGE));
                if page.messages.len() as u64 != want {
                    failures.add(|| {
                        format!(
                            "{}: a page of {} messages, expected {want}",
                            target.conversation_id,
                            page.messages.len()
                        )
                    });
                }
            }
            Err(e) => failures.add(|| format!("{}: {e}", target.conversation_id)),
        }
    }
    calls
}
