//! `chat-gateway`: parses the configuration, sets up logging, serves until SIGINT or
//! SIGTERM, then drains within the grace period.

use anyhow::Context;
use clap::Parser;

use chat_gateway::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    chat_ops::init_logging(&config.log, config.log_format)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let running = chat_gateway::start(config, listener).await?;
    // Scripts that start us on port 0 read the address from this line.
    println!("listening on {}", running.addr);
    if let Some(addr) = running.metrics_addr {
        println!("metrics on http://{addr}/metrics");
    }
    chat_ops::cancel_on_signal(running.shutdown_token());
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}
