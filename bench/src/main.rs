//! `chat-bench`: the chat server's benchmark suite, an open-loop load generator.
//!
//! `chat-bench SCENARIO [--server URL]... [flags]` runs one scenario against running
//! servers, prints a table, and with `--json FILE` writes the figures with the machine
//! and the command line. `scripts/bench` starts the servers (and a fresh database) and
//! runs it. See `cli.rs` for every flag, `load.rs` for what "open loop" means here, and
//! `scenario/` for what each scenario measures.
#![forbid(unsafe_code)]

mod accounts;
mod cli;
mod connect;
mod echo;
mod load;
mod procstat;
mod report;
mod scenario;
mod seed;
mod sender;

use anyhow::bail;
use clap::Parser;

use crate::cli::{Args, Scenario};
use crate::report::Report;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Every simulated device holds a socket: allow as many as the hard limit does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => println!("file descriptor limit: {limit}"),
        Err(e) => eprintln!("could not raise the file descriptor limit: {e}"),
    }
    let mut report = Report::new(args.scenario.name());
    println!(
        "chat-bench {} against {}",
        args.scenario.name(),
        args.servers.join(", ")
    );
    let clean = match args.scenario {
        Scenario::Throughput => scenario::throughput::run(&args, &mut report).await?,
        Scenario::Latency => scenario::latency::run(&args, &mut report).await?,
        Scenario::Idle => scenario::idle::run(&args, &mut report).await?,
        Scenario::CatchUp => scenario::catch_up::run(&args, &mut report).await?,
        Scenario::History => scenario::history::run(&args, &mut report).await?,
        Scenario::Ceilings => scenario::ceilings::run(&args, &mut report).await?,
    };
    report.set("clean", clean)?;
    if let Some(path) = &args.json {
        report.write(path)?;
        println!("wrote {}", path.display());
    }
    if args.strict && !clean {
        bail!(
            "{}: something failed or was lost (--strict)",
            args.scenario.name()
        );
    }
    Ok(())
}
