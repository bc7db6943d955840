//! Who the simulated devices are: users with a device token each, and the direct
//! conversation of each sender → receiver pair.
//!
//! With `--database-url` they are seeded in SQL (`seed`): thousands of users in seconds.
//! Without it they register through the API, which costs an argon2 hash per user on the
//! server: fine for the few hundred of a smoke run, hopeless for ten thousand. Names
//! carry a per-run prefix, so runs against one database never collide.

use anyhow::Context;
use chat_sdk::Client;
use futures::{StreamExt, TryStreamExt};

use crate::cli::Args;
use crate::connect::Dialer;
use crate::seed;

/// Registrations in flight at once (the server hashes a few at a time anyway).
const API_CONCURRENCY: usize = 8;
/// Above this many API registrations, say that seeding would be faster.
const API_COMFORTABLE: usize = 400;
const PASSWORD: &str = "bench-password";

/// A user and the bearer token of one of its devices.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) token: String,
}

/// A sender, its receiver, and their direct conversation.
#[derive(Clone, Debug)]
pub(crate) struct PairAccount {
    pub(crate) sender: Account,
    pub(crate) receiver: Account,
    pub(crate) conversation_id: String,
}

/// A prefix for this run's user names: `b` and six hex digits.
pub(crate) fn run_prefix() -> String {
    format!("b{:06x}", rand::random::<u32>() >> 8)
}

/// `args.pairs` sender → receiver pairs.
pub(crate) async fn pairs(
    args: &Args,
    dialer: &Dialer,
    run: &str,
) -> anyhow::Result<Vec<PairAccount>> {
    let n = args.pairs;
    if let Some(url) = &args.database_url {
        let pool = seed::pool(url, 4).await?;
        let pairs = seed::pairs(&pool, run, n).await;
        pool.close().await;
        return pairs;
    }
    warn_if_slow(2 * n);
    let client = Client::from_channel(dialer.channel(0).await?);
    futures::stream::iter(0..n)
        .map(|i| register_pair(&client, run, i))
        .buffered(API_CONCURRENCY)
        .try_collect()
        .await
}

/// `n` users, each with a device token, named `{run}{tag}{i}`.
pub(crate) async fn users(
    args: &Args,
    dialer: &Dialer,
    run: &str,
    tag: &str,
    n: usize,
) -> anyhow::Result<Vec<Account>> {
    let names: Vec<String> = (0..n).map(|i| format!("{run}{tag}{i}")).collect();
    if let Some(url) = &args.database_url {
        let pool = seed::pool(url, 4).await?;
        let users = seed::users(&pool, names).await;
        pool.close().await;
        return Ok(users?.into_iter().map(|u| u.account).collect());
    }
    warn_if_slow(n);
    let client = Client::from_channel(dialer.channel(0).await?);
    futures::stream::iter(names)
        .map(|name| register(&client, name))
        .buffered(API_CONCURRENCY)
        .try_collect()
        .await
}

async fn register_pair(client: &Client, run: &str, i: usize) -> anyhow::Result<PairAccount> {
    let sender = register(client, format!("{run}s{i}")).await?;
    let receiver = register(client, format!("{run}r{i}")).await?;
    let conversation = client
        .with_token(&sender.token)?
        .open_direct(&receiver.name)
        .await
        .with_context(|| {
            format!(
                "opening the conversation of {} and {}",
                sender.name, receiver.name
            )
        })?;
    Ok(PairAccount {
        sender,
        receiver,
        conversation_id: conversation.id,
    })
}

async fn register(client: &Client, name: String) -> anyhow::Result<Account> {
    let credentials = client
        .register(&name, PASSWORD, "bench")
        .await
        .with_context(|| format!("registering {name}"))?;
    Ok(Account {
        name,
        token: credentials.token,
    })
}

fn warn_if_slow(registrations: usize) {
    if registrations > API_COMFORTABLE {
        eprintln!(
            "registering {registrations} users through the API (an argon2 hash each); \
             pass --database-url to seed them in SQL instead"
        );
    }
}
