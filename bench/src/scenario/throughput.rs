//! Throughput: the highest rate the server carries within the latency budget.
//!
//! Rounds of open-loop load at a rising rate (times `--step` each round), each held for
//! `--duration`. A round passes when nothing failed, nothing was lost, and send→delivered
//! p99 stayed within `--p99-limit-ms`; the first round that does not pass ends the climb.
//! The answer is the last passing round, reported with every round's row.

use serde_json::json;

use crate::accounts;
use crate::cli::Args;
use crate::connect::Dialer;
use crate::load;
use crate::report::{self, Report, Row};
use crate::scenario::ceilings;

pub(crate) async fn run(args: &Args, report: &mut Report) -> anyhow::Result<bool> {
    let dialer = Dialer::new(&args.servers, args.source_addrs)?;
    let run = accounts::run_prefix();
    let accounts = accounts::pairs(args, &dialer, &run).await?;
    let mut pairs = load::open_pairs(&dialer, accounts).await?;
    let duration = args.duration_or(60.0);
    let mut rate = args.rate_or(1000.0);
    pairs = load::warm_up(pairs, rate, args.warmup).await?;
    let mut best: Option<Row> = None;
    let mut last: Option<Row> = None;
    let mut clean = true;

    report::print_header();
    for round in 1u32.. {
        if args.max_rate.is_some_and(|max| rate > max * (1.0 + 1e-9)) {
            break;
        }
        let (back, outcome) = load::run_round(pairs, rate, duration, round).await?;
        pairs = back;
        let row = super::row("throughput", &outcome);
        let passed =
            row.clean() && row.delivered > 0 && row.delivered_latency.p99_ms <= args.p99_limit_ms;
        clean &= row.clean() && row.delivered > 0;
        report.push_row(row.clone());
        if let Some(error) = &outcome.first_error {
            println!("  first error: {error}");
        }
        last = Some(row.clone());
        if !passed {
            break;
        }
        best = Some(row);
        rate *= args.step;
    }
    // The devices hang up before the ceilings are measured on the same machine.
    drop(pairs);

    match &best {
        Some(best) => println!(
            "highest passing rate: {:.0}/s target, {:.0}/s delivered (p99 {:.2} ms ≤ {} ms)",
            best.target_rate, best.achieved_rate, best.delivered_latency.p99_ms, args.p99_limit_ms
        ),
        None => println!("no round passed (p99 limit {} ms)", args.p99_limit_ms),
    }
    report.set(
        "throughput",
        json!({
            "p99_limit_ms": args.p99_limit_ms,
            "step": args.step,
            "pairs": args.pairs,
            "highest_passing_target_rate": best.as_ref().map(|b| b.target_rate),
            "highest_passing_achieved_rate": best.as_ref().map(|b| b.achieved_rate),
        }),
    )?;
    // Compare the best passing round (or, when none passed, the last one) with the ceilings.
    if let Some(product) = best.or(last) {
        ceilings::after_load(args, report, &product).await?;
    }
    Ok(clean)
}
