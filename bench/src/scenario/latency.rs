//! Latency: the distribution of send→ack and send→delivered at one fixed rate.

use crate::accounts;
use crate::cli::Args;
use crate::connect::Dialer;
use crate::load;
use crate::report::{self, Report};
use crate::scenario::ceilings;

pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let dialer = Dialer::new(&args.servers, args.source_addrs)?;
    let run = accounts::run_prefix();
    let accounts = accounts::pairs(args, &dialer, &run).await?;
    let pairs = load::open_pairs(&dialer, accounts).await?;
    let rate = args.rate_or(10_000.0);
    let duration = args.duration_or(60.0);
    let pairs = load::warm_up(pairs, rate, args.warmup).await?;

    report::print_header();
    let (pairs, outcome) = load::run_round(pairs, rate, duration, 1).await?;
    drop(pairs);
    let row = super::row("latency", &outcome);
    report.push_row(row.clone());
    if let Some(error) = &outcome.first_error {
        println!("  first error: {error}");
    }
    report::print_latency("send→ack", &row.ack);
    report::print_latency("send→delivered", &row.delivered_latency);
    let clean = row.clean() && row.delivered > 0;
    ceilings::after_load(args, report, &row).await?;
    Ok(clean)
}
