//! A quick closed-loop measurement of acknowledged sends per second: N pairs of users,
//! each sender sending to its peer as fast as acks come back, for a fixed time.
//! (The benchmark suite measures properly; this is a smoke gauge.)
//!
//! `cargo run --release -p chat-sdk --example send_rate -- http://127.0.0.1:50051 50 10`

use std::time::{Duration, Instant};

use chat_sdk::{Client, Target};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let senders: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let mut clients = Vec::new();
    for i in 0..senders {
        let base = Client::connect(&server).await?;
        let from = base
            .register(&format!("s{run}{i}"), "send-rate-password", "bench")
            .await?;
        base.register(&format!("r{run}{i}"), "send-rate-password", "bench")
            .await?;
        clients.push((base.with_token(&from.token)?, format!("r{run}{i}")));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(client, to)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    client
                        .send(Target::User(to.clone()), "benchmark message")
                        .await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, chat_sdk::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{} senders, {seconds} s: {} acked sends, {:.0}/s; ack latency p50 {:?} p99 {:?} max {:?}",
        senders,
        all.len(),
        all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        all[all.len() - 1],
    );
    Ok(())
}
