//! `chat-server`: parses the configuration, sets up logging, serves until SIGINT or
//! SIGTERM, then shuts down within the grace period.

use anyhow::Context;
use clap::Parser;

use chat_server::config::{Command, Config};
use chat_server::store::redacted_url;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    chat_ops::init_logging(&config.log, config.log_format)?;
    if let Some(Command::Migrate) = config.command {
        let url = config.resolved_database_url();
        chat_server::store::migrate(&url, &config.store_options())
            .await
            .with_context(|| format!("migrating {}", redacted_url(&url)))?;
        println!("migrated {}", redacted_url(&url));
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(database = %redacted_url(&config.resolved_database_url()), "starting");
    let running = chat_server::start(config, listener).await?;
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
