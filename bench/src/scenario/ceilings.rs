//! Ceilings: what the product's figures are measured against, on the same machine.
//!
//! 1. Raw Postgres: how many message rows per second batched multi-row INSERTs write
//!    into a scratch copy of `messages`, over as many connections as the server's pool.
//!    No send can be stored faster than its row can be written.
//! 2. Raw tonic: a `Connect` echo server that stores nothing, driven closed-loop over as
//!    many streams as the load had pairs. No send can be acknowledged faster than gRPC
//!    carries it.
//!
//! After throughput and latency the product's figures are printed beside these, as ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::postgres::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cli::Args;
use crate::connect::Dialer;
use crate::echo;
use crate::report::{Percentiles, Recorder, Report, Row};
use crate::seed;
use crate::sender::{Frame, SenderDevice};

/// Ceilings last this long unless `--duration` says otherwise.
const DEFAULT_SECS: f64 = 10.0;
/// Rows per INSERT of the Postgres ceiling.
const ROWS_PER_STATEMENT: usize = 500;
/// Echo streams being opened at once.
const CONNECTS_IN_FLIGHT: usize = 256;

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Ceilings {
    pub(crate) duration_s: f64,
    pub(crate) postgres_pool_size: u32,
    pub(crate) postgres_insert_rows_per_s: Option<f64>,
    pub(crate) echo_streams: usize,
    pub(crate) echo_messages_per_s: f64,
    pub(crate) echo_ack: Percentiles,
}

/// The `ceilings` scenario on its own.
pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let ceilings = measure(args).await?;
    report.set("ceilings", &ceilings)?;
    Ok(true)
}

/// Measures after a load scenario (unless `--no-ceilings`) and compares `product` with
/// the ceilings.
pub(crate) async fn after_load(
    args: &Args,
    report: &mut Report,
    product: &Row,
) -> anyhow::Result<()> {
    if args.no_ceilings {
        return Ok(());
    }
    let ceilings = measure(args).await?;
    report.set("ceilings", &ceilings)?;
    report.set("versus_ceilings", compare(product, &ceilings))?;
    Ok(())
}

pub(crate) async fn measure(args: &Args) -> anyhow::Result<Ceilings> {
    let duration = args.duration_or(DEFAULT_SECS);
    println!("measuring ceilings for {} s each", duration.as_secs_f64());
    let postgres = match &args.database_url {
        Some(url) => {
            let rate = postgres_insert_rate(url, args.pool_size, duration).await?;
            println!(
                "ceiling: Postgres batched INSERT, {} connections: {rate:.0} rows/s",
                args.pool_size
            );
            Some(rate)
        }
        None => {
            println!("ceiling: Postgres skipped (no --database-url)");
            None
        }
    };
    let streams = args.pairs.max(1);
    let (echo_rate, echo_ack) = echo_rate(streams, args.source_addrs, duration).await?;
    println!(
        "ceiling: tonic echo, {streams} streams closed-loop: {echo_rate:.0} messages/s, \
         ack p50 {:.2} ms, p99 {:.2} ms",
        echo_ack.p50_ms, echo_ack.p99_ms
    );
    Ok(Ceilings {
        duration_s: duration.as_secs_f64(),
        postgres_pool_size: args.pool_size,
        postgres_insert_rows_per_s: postgres,
        echo_streams: streams,
        echo_messages_per_s: echo_rate,
        echo_ack,
    })
}

/// The product's figures beside the ceilings.
#[derive(Debug, Serialize)]
struct Versus {
    product_messages_per_s: f64,
    postgres_insert_rows_per_s: Option<f64>,
    ratio_to_postgres_insert: Option<f64>,
    echo_messages_per_s: f64,
    ratio_to_echo: Option<f64>,
    product_ack_p50_ms: f64,
    echo_ack_p50_ms: f64,
    /// How many times slower the product's ack is than the echo's (p50).
    ack_p50_ratio: Option<f64>,
}

fn compare(product: &Row, ceilings: &Ceilings) -> Versus {
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let versus = Versus {
        product_messages_per_s: product.achieved_rate,
        postgres_insert_rows_per_s: ceilings.postgres_insert_rows_per_s,
        ratio_to_postgres_insert: ceilings
            .postgres_insert_rows_per_s
            .and_then(|pg| ratio(product.achieved_rate, pg)),
        echo_messages_per_s: ceilings.echo_messages_per_s,
        ratio_to_echo: ratio(product.achieved_rate, ceilings.echo_messages_per_s),
        product_ack_p50_ms: product.ack.p50_ms,
        echo_ack_p50_ms: ceilings.echo_ack.p50_ms,
        ack_p50_ratio: ratio(product.ack.p50_ms, ceilings.echo_ack.p50_ms),
    };
    let percent = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!(
        "product {:.0} msg/s = {} of the Postgres insert ceiling, {} of the echo ceiling; \
         ack p50 {:.2} ms vs echo {:.2} ms ({})",
        versus.product_messages_per_s,
        percent(versus.ratio_to_postgres_insert),
        percent(versus.ratio_to_echo),
        versus.product_ack_p50_ms,
        versus.echo_ack_p50_ms,
        versus
            .ack_p50_ratio
            .map_or("n/a".to_owned(), |r| format!("{r:.1}×")),
    );
    versus
}

const CREATE_SCRATCH: &str = "DROP TABLE IF EXISTS bench_scratch_messages; \
     CREATE TABLE bench_scratch_messages (LIKE messages INCLUDING ALL)";

const INSERT_SCRATCH: &str = "INSERT INTO bench_scratch_messages \
         (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
     SELECT $1::uuid, seq, id, $2::uuid, client_msg_id, body, now() \
     FROM UNNEST($3::bigint[], $4::uuid[], $5::text[], $6::text[]) \
         AS r(seq, id, client_msg_id, body)";

/// Rows per second that `pool_size` connections insert for `duration`.
async fn postgres_insert_rate(
    url: &str,
    pool_size: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let pool = seed::pool(url, pool_size).await?;
    sqlx::raw_sql(CREATE_SCRATCH)
        .execute(&pool)
        .await
        .context("creating the scratch table (is the schema migrated?)")?;
    let sender = Uuid::new_v4();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..pool_size.max(1))
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut rows = 0u64;
                while Instant::now() < deadline {
                    insert_batch(&pool, sender).await?;
                    rows += ROWS_PER_STATEMENT as u64;
                }
                Ok::<u64, anyhow::Error>(rows)
            })
        })
        .collect();
    let mut total = 0;
    let mut failure = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(rows)) => total += rows,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let dropped = sqlx::query("DROP TABLE bench_scratch_messages")
        .execute(&pool)
        .await;
    pool.close().await;
    if let Some(e) = failure {
        return Err(e.context("Postgres insert ceiling"));
    }
    dropped?;
    Ok(total as f64 / elapsed)
}

/// One statement of rows shaped like the product's: one conversation, consecutive seqs.
async fn insert_batch(pool: &PgPool, sender: Uuid) -> anyhow::Result<()> {
    let conversation = Uuid::new_v4();
    let seqs: Vec<i64> = (1..=ROWS_PER_STATEMENT as i64).collect();
    let ids: Vec<Uuid> = seqs.iter().map(|_| Uuid::now_v7()).collect();
    let client_msg_ids: Vec<String> = seqs.iter().map(|s| format!("0.{s}")).collect();
    let bodies: Vec<String> = client_msg_ids
        .iter()
        .map(|c| format!("bench {c}"))
        .collect();
    sqlx::query(INSERT_SCRATCH)
        .bind(conversation)
        .bind(sender)
        .bind(seqs)
        .bind(ids)
        .bind(client_msg_ids)
        .bind(bodies)
        .execute(pool)
        .await?;
    Ok(())
}

/// Messages per second, and ack latency, of `streams` closed-loop streams against an
/// in-process echo server.
async fn echo_rate(
    streams: usize,
    source_addrs: u8,
    duration: Duration,
) -> anyhow::Result<(f64, Percentiles)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(echo::serve(listener, stop.clone()));
    let dialer = Dialer::new(&[format!("http://{addr}")], source_addrs)?;
    let dialer = &dialer;
    let devices: Vec<SenderDevice> = futures::stream::iter(0..streams)
        .map(|i| async move {
            SenderDevice::open(dialer.channel(i).await?, "echo", "echo".to_owned()).await
        })
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .try_collect()
        .await?;

    let recorder = Arc::new(Recorder::new()?);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, device)| tokio::spawn(closed_loop(i, device, recorder.clone(), deadline)))
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(joined) => joined??,
        Err(_) => eprintln!("the echo server did not stop within 5 s; carrying on"),
    }
    Ok((total as f64 / elapsed, Percentiles::of(&recorder.merged()?)))
}

/// Sends, waits for the ack, sends again, until `deadline`; returns the acks counted.
async fn closed_loop(
    i: usize,
    mut device: SenderDevice,
    recorder: Arc<Recorder>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut acked = 0u64;
    while Instant::now() < deadline {
        let sent_at = Instant::now();
        if !device.try_send(format!("0.{acked}")) {
            bail!("echo stream {i}: the outbound queue is closed");
        }
        match tokio::time::timeout(Duration::from_secs(10), device.next_frame()).await {
            Ok(Frame::Ack(_)) => {}
            Ok(Frame::Refused(e)) => bail!("echo stream {i}: {}: {}", e.code, e.message),
            Ok(Frame::Ended(status)) => bail!("echo stream {i} ended: {status:?}"),
            Err(_) => bail!("echo stream {i}: no ack within 10 s"),
        }
        recorder.record(i, sent_at.elapsed());
        acked += 1;
    }
    Ok(acked)
}
