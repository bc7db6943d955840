//! `chat`: the command-line client, for people and for scripts (`--json`).
//!
//! Sessions are saved per user name in the config directory, with the cursors `watch`
//! resumes from, so a later `watch` gets exactly what arrived in between. `--server` takes
//! several addresses: `watch` reconnects among them for as long as it runs (a
//! `ReconnectingSession`), and the other commands use the first one that accepts a
//! connection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use chat_sdk::{
    Client, ConnectionState, Cursors, Event, Page, ReconnectEvent, ReconnectOptions,
    ReconnectingSession, SessionOptions, Target, proto,
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "chat",
    version,
    about = "Command-line client for the chat server"
)]
struct Cli {
    /// Server address; repeat the flag or separate addresses with commas to give several
    /// (`watch` reconnects among them, other commands use the first that answers).
    #[arg(
        long,
        env = "CHAT_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: Vec<String>,
    /// Use the saved session of this user (default: the last one logged in).
    #[arg(long = "as", env = "CHAT_AS", global = true)]
    as_user: Option<String>,
    /// Where sessions are saved (default: $XDG_CONFIG_HOME/chat).
    #[arg(long, env = "CHAT_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
    /// Print one JSON object per line, each with a "type" field.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account and save its session.
    Register {
        name: String,
        #[arg(long, env = "CHAT_PASSWORD")]
        password: String,
    },
    /// Log in and save a session.
    Login {
        name: String,
        #[arg(long, env = "CHAT_PASSWORD")]
        password: String,
    },
    /// End the saved session on the server and forget it.
    Logout,
    /// Send TEXT to the user TO; prints the ack.
    Send { to: String, text: String },
    /// Stay connected and print messages, receipts, presence and typing as they come.
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds without an event.
        #[arg(long, value_parser = parse_seconds)]
        timeout: Option<Duration>,
    },
    /// Mark the conversation with TO read.
    Read {
        to: String,
        /// Read up to this seq (default: everything).
        #[arg(long)]
        up_to: Option<u64>,
    },
    /// Show the conversation with TO, newest page first.
    History {
        to: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Show messages before this seq (page back).
        #[arg(long)]
        before: Option<u64>,
    },
    /// List conversations with their last message and unread count.
    Conversations,
    /// Show whether NAME is online, or when they were last seen.
    Presence { name: String },
    /// Push notifications for when no session of yours is connected.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Stop pushes from the conversation with TO (a user name or a conversation id).
    Mute { to: String },
    /// Push the conversation with TO again.
    Unmute { to: String },
}

#[derive(Subcommand)]
enum PushCommand {
    /// POST this device's notifications to URL, signed with HMAC-SHA256 under SECRET.
    AddWebhook {
        url: String,
        /// 16 to 256 bytes; the receiver verifies `x-chat-signature` with it.
        #[arg(long, env = "CHAT_PUSH_SECRET")]
        secret: String,
    },
    /// List your push targets on every device.
    List,
    /// Remove a push target by its id (see `chat push list`).
    Remove { id: String },
    /// Whether pushes show sender and text, or only that something arrived.
    Mode { mode: PushModeArg },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PushModeArg {
    /// Sender and text.
    Content,
    /// No sender and no text: "2 new messages".
    ContentFree,
}

/// A saved device session.
#[derive(Serialize, Deserialize)]
struct Saved {
    server: String,
    name: String,
    user_id: String,
    token: String,
    #[serde(default)]
    cursors: Cursors,
}

struct Output {
    json: bool,
}

impl Output {
    fn emit(&self, value: serde_json::Value, text: String) {
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{text}")
        };
        let _ = out.flush();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<chat_sdk::Error>() {
                Some(sdk) => eprintln!("error: {sdk}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = config_dir(cli.config_dir.clone())?;
    let out = Output { json: cli.json };
    let servers = server_list(&cli.server)?;
    match cli.command {
        Command::Register {
            ref name,
            ref password,
        } => {
            let (server, client) = connect_any(&servers).await?;
            let creds = client.register(name, password, "cli").await?;
            save_new(&dir, &server, creds, &out, "registered")
        }
        Command::Login {
            ref name,
            ref password,
        } => {
            let (server, client) = connect_any(&servers).await?;
            let creds = client.login(name, password, "cli").await?;
            save_new(&dir, &server, creds, &out, "logged in")
        }
        Command::Logout => {
            let (saved, client) = logged_in(&cli, &servers, &dir).await?;
            client.logout().await?;
            std::fs::remove_file(session_path(&dir, &saved.name)).ok();
            out.emit(
                json!({"type": "logout", "user": saved.name}),
                format!("logged out {}", saved.name),
            );
            Ok(())
        }
        Command::Send { ref to, ref text } => {
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            let ack = client.send(Target::User(to.clone()), text).await?;
            out.emit(
                json!({"type": "sent", "conversation_id": ack.conversation_id, "seq": ack.seq, "id": ack.message_id,
                       "client_msg_id": ack.client_msg_id, "duplicate": ack.duplicate}),
                format!("sent #{} to {to}", ack.seq),
            );
            Ok(())
        }
        Command::Watch { count, timeout } => {
            let saved = saved_session(&cli, &dir)?;
            watch(&dir, saved, servers, count, timeout, &out).await
        }
        Command::Read { ref to, up_to } => {
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            let conversation = client.open_direct(to).await?;
            let receipt = client
                .mark_read(&conversation.id, up_to.unwrap_or(0))
                .await?;
            print_receipt(&out, &receipt);
            Ok(())
        }
        Command::History {
            ref to,
            limit,
            before,
        } => {
            let (saved, client) = logged_in(&cli, &servers, &dir).await?;
            let conversation = client.open_direct(to).await?;
            let page = before.map(Page::Before).unwrap_or(Page::Latest);
            let history = client.history(&conversation.id, page, limit).await?;
            for m in &history.messages {
                print_message(&out, m, Some(status_name(m.status())), &saved.name);
            }
            if history.has_more
                && !out.json
                && let Some(first) = history.messages.first()
            {
                println!("(older messages: chat history {to} --before {})", first.seq);
            }
            Ok(())
        }
        Command::Conversations => {
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            for c in client.conversations().await? {
                let peer = c.peer.as_ref().map(|p| p.name.clone()).unwrap_or_default();
                let last = c
                    .last_message
                    .as_ref()
                    .map(|m| m.text.clone())
                    .unwrap_or_default();
                let presence = c
                    .peer_presence
                    .as_ref()
                    .map(presence_text)
                    .unwrap_or_default();
                out.emit(
                    json!({"type": "conversation", "conversation_id": c.id, "peer": peer, "last_seq": c.last_seq,
                           "unread": c.unread, "last_message": last,
                           "online": c.peer_presence.as_ref().map(|p| p.online)}),
                    format!("{peer:<16} {:>3} unread  {presence:<28} {last}", c.unread),
                );
            }
            Ok(())
        }
        Command::Presence { ref name } => {
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            for p in client.presence(&[name.as_str()]).await? {
                print_presence(&out, &p);
            }
            Ok(())
        }
        Command::Push { ref command } => {
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            push(&client, command, &out).await
        }
        Command::Mute { ref to } | Command::Unmute { ref to } => {
            let muted = matches!(cli.command, Command::Mute { .. });
            let (_, client) = logged_in(&cli, &servers, &dir).await?;
            let conversation = conversation_of(&client, to).await?;
            client.set_muted(&conversation, muted).await?;
            let word = if muted { "muted" } else { "unmuted" };
            out.emit(
                json!({"type": word, "conversation_id": conversation}),
                format!("{word} {to}"),
            );
            Ok(())
        }
    }
}

/// A conversation id as given, or the direct conversation with a user name (names are
/// at most 32 characters, ids 36).
async fn conversation_of(client: &Client, to: &str) -> anyhow::Result<String> {
    if to.len() == 36 && to.matches('-').count() == 4 {
        return Ok(to.to_owned());
    }
    Ok(client.open_direct(to).await?.id)
}

async fn push(client: &Client, command: &PushCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        PushCommand::AddWebhook { url, secret } => {
            let target = client.add_webhook(url, secret).await?;
            print_push_target(out, &target);
        }
        PushCommand::List => {
            for target in client.push_targets().await? {
                print_push_target(out, &target);
            }
        }
        PushCommand::Remove { id } => {
            client.remove_push_target(id).await?;
            out.emit(
                json!({"type": "push_target_removed", "id": id}),
                format!("removed {id}"),
            );
        }
        PushCommand::Mode { mode } => {
            let (mode, name) = match mode {
                PushModeArg::Content => (proto::PushMode::Content, "content"),
                PushModeArg::ContentFree => (proto::PushMode::ContentFree, "content-free"),
            };
            client.set_push_mode(mode).await?;
            out.emit(
                json!({"type": "push_mode", "mode": name}),
                format!("push mode: {name}"),
            );
        }
    }
    Ok(())
}

fn print_push_target(out: &Output, target: &proto::PushTarget) {
    let (kind, url) = match &target.kind {
        Some(proto::push_target::Kind::Webhook(w)) => ("webhook", w.url.as_str()),
        Some(proto::push_target::Kind::WebPush(w)) => ("web_push", w.endpoint.as_str()),
        None => ("unknown", ""),
    };
    out.emit(
        json!({"type": "push_target", "id": target.id, "kind": kind, "url": url,
               "device": target.device_name}),
        format!("{}  {kind:<8} {url}  ({})", target.id, target.device_name),
    );
}

async fn watch(
    dir: &Path,
    mut saved: Saved,
    servers: Vec<String>,
    count: Option<usize>,
    timeout: Option<Duration>,
    out: &Output,
) -> anyhow::Result<()> {
    // Delivery is acknowledged, and the saved cursors advanced, only for what was
    // printed: events still buffered when `--count` is reached are shown next time.
    let options = ReconnectOptions {
        addresses: servers,
        session: SessionOptions {
            auto_ack: false,
            ..SessionOptions::default()
        },
        cursors: saved.cursors.clone(),
        ..ReconnectOptions::default()
    };
    let mut session = ReconnectingSession::open(options, &saved.token).await?;
    // `--timeout` counts the time without a chat event: connection changes do not count,
    // so a watch whose servers are all down still ends.
    let idle_deadline = || timeout.map(|idle| tokio::time::Instant::now() + idle);
    let mut deadline = idle_deadline();
    let mut seen = 0usize;
    let mut caught_up = false;
    let me = saved.name.clone();
    let result = loop {
        if count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            next = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, session.next_event()).await.ok(),
                    None => Some(session.next_event().await),
                }
            } => next,
        };
        let Some(next) = next else { break Ok(()) };
        let event = match next {
            None => break Ok(()),
            Some(ReconnectEvent::State(state)) => {
                print_connection(out, &state);
                continue;
            }
            Some(ReconnectEvent::Event(event)) => event,
        };
        deadline = idle_deadline();
        match event {
            Event::Closed(None) => break Ok(()),
            Event::Closed(Some(status)) => {
                break Err(anyhow::Error::new(chat_sdk::Error::Status(status)));
            }
            Event::CaughtUp(replayed) => {
                caught_up = true;
                for (conversation, seq) in replayed.iter() {
                    saved.cursors.advance(conversation, seq);
                }
                if !out.json {
                    eprintln!("-- caught up --");
                }
            }
            // Receipts replayed before the first "caught up" are a snapshot, not news.
            // After a reconnection, the session shows only receipts that moved meanwhile.
            Event::Receipt(_) if !caught_up => {}
            Event::Message(m) => {
                seen += 1;
                print_message(out, &m, None, &me);
                saved.cursors.advance(&m.conversation_id, m.seq);
                // A unary ack, answered before `watch` exits: a frame on the stream could
                // still be queued when the stream closes.
                let acked = match session.client() {
                    Some(client) => client.ack(&m.conversation_id, m.seq).await.map(|_| ()),
                    None => Err(chat_sdk::Error::NotConnected),
                };
                if let Err(e) = acked {
                    eprintln!("warning: could not acknowledge delivery: {e}");
                }
            }
            Event::Receipt(r) => {
                seen += 1;
                print_receipt(out, &r);
            }
            Event::Presence(p) => {
                seen += 1;
                print_presence(out, &p);
            }
            Event::Typing(t) => {
                seen += 1;
                let user = t.user.map(|u| u.name).unwrap_or_default();
                out.emit(
                    json!({"type": "typing", "conversation_id": t.conversation_id, "user": user, "typing": t.typing}),
                    if t.typing { format!("{user} is typing…") } else { format!("{user} stopped typing") },
                );
            }
            Event::Error(e) => eprintln!("error: {}: {}", e.code, e.message),
        }
    };
    session.close();
    save(dir, &saved)?;
    result
}

/// A connection change: a JSON line in `--json` mode, else a short line on stderr.
fn print_connection(out: &Output, state: &ConnectionState) {
    let (value, text) = match state {
        ConnectionState::Connecting { attempt, address } => (
            json!({"type": "connection", "state": "connecting", "server": address, "attempt": attempt}),
            format!("-- connecting to {address} (attempt {attempt}) --"),
        ),
        ConnectionState::Connected { address } => (
            json!({"type": "connection", "state": "connected", "server": address}),
            format!("-- connected to {address} --"),
        ),
        ConnectionState::Disconnected { reason, retry_in } => (
            json!({"type": "connection", "state": "disconnected", "reason": reason,
                   "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)}),
            format!(
                "-- disconnected: {reason}; retrying in {:.1} s --",
                retry_in.as_secs_f64()
            ),
        ),
    };
    if out.json {
        out.emit(value, text);
    } else {
        eprintln!("{text}");
    }
}

fn timestamp_text(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let at = UNIX_EPOCH.checked_add(Duration::new(
        u64::try_from(t.seconds).ok()?,
        u32::try_from(t.nanos).ok()?,
    ))?;
    Some(humantime::format_rfc3339_millis(at).to_string())
}

fn status_name(s: proto::MessageStatus) -> &'static str {
    match s {
        proto::MessageStatus::Read => "read",
        proto::MessageStatus::Delivered => "delivered",
        _ => "sent",
    }
}

fn print_message(out: &Output, m: &proto::Message, status: Option<&str>, me: &str) {
    let sender = m
        .sender
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    let sent_at = timestamp_text(m.sent_at.as_ref());
    let mut value = json!({"type": "message", "conversation_id": m.conversation_id, "seq": m.seq, "id": m.id,
                           "sender": sender, "text": m.text, "sent_at": sent_at});
    let mut text = format!("#{:<4} {sender}: {}", m.seq, m.text);
    if let Some(status) = status {
        value["status"] = json!(status);
        if sender == me {
            let tick = match status {
                "read" => "✓✓ read",
                "delivered" => "✓✓",
                _ => "✓",
            };
            text.push_str(&format!("  {tick}"));
        }
    }
    out.emit(value, text);
}

fn print_receipt(out: &Output, r: &proto::Receipt) {
    let user = r.user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    out.emit(
        json!({"type": "receipt", "conversation_id": r.conversation_id, "user": user,
               "delivered_seq": r.delivered_seq, "read_seq": r.read_seq}),
        format!(
            "{user}: delivered up to #{}, read up to #{}",
            r.delivered_seq, r.read_seq
        ),
    );
}

fn presence_text(p: &proto::Presence) -> String {
    if p.online {
        "online".into()
    } else {
        match timestamp_text(p.last_seen.as_ref()) {
            Some(at) => format!("last seen {at}"),
            None => "offline".into(),
        }
    }
}

fn print_presence(out: &Output, p: &proto::Presence) {
    let user = p.user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    out.emit(
        json!({"type": "presence", "user": user, "online": p.online, "last_seen": timestamp_text(p.last_seen.as_ref())}),
        format!("{user}: {}", presence_text(p)),
    );
}

/// A number of seconds: positive and finite.
fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let secs: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{raw} must be a positive number of seconds"))
}

// --- saved sessions ---

fn config_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("chat"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("set HOME, XDG_CONFIG_HOME or --config-dir"))?;
    Ok(PathBuf::from(home).join(".config").join("chat"))
}

fn session_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("sessions").join(format!("{name}.json"))
}

fn save(dir: &Path, saved: &Saved) -> anyhow::Result<()> {
    let path = session_path(dir, &saved.name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(saved)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn save_new(
    dir: &Path,
    server: &str,
    creds: chat_sdk::Credentials,
    out: &Output,
    verb: &str,
) -> anyhow::Result<()> {
    let saved = Saved {
        server: server.to_owned(),
        name: creds.user.name.clone(),
        user_id: creds.user.id.clone(),
        token: creds.token,
        cursors: Cursors::new(),
    };
    save(dir, &saved)?;
    std::fs::write(dir.join("current"), &saved.name)?;
    out.emit(
        json!({"type": "session", "user": saved.name, "user_id": saved.user_id,
               "expires_at": timestamp_text(creds.expires_at.as_ref())}),
        format!("{verb} as {}", saved.name),
    );
    Ok(())
}

/// The addresses of `--server` / `CHAT_SERVER`: each value may hold several, separated by
/// commas.
fn server_list(values: &[String]) -> anyhow::Result<Vec<String>> {
    let servers: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if servers.is_empty() {
        return Err(anyhow!("--server needs at least one address"));
    }
    Ok(servers)
}

/// A connection to the first server that accepts one, and its address.
async fn connect_any(servers: &[String]) -> anyhow::Result<(String, Client)> {
    let mut last = None;
    for server in servers {
        match Client::connect(server).await {
            Ok(client) => return Ok((server.clone(), client)),
            // Unreachable: try the next one.
            Err(e) if e.is_retryable() => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => anyhow!("--server needs at least one address"),
    })
}

/// The saved session of `--as`, or of the user who logged in last.
fn saved_session(cli: &Cli, dir: &Path) -> anyhow::Result<Saved> {
    let name = match &cli.as_user {
        Some(name) => name.to_ascii_lowercase(),
        None => std::fs::read_to_string(dir.join("current"))
            .map(|s| s.trim().to_owned())
            .map_err(|_| {
                anyhow!("not logged in: run `chat register NAME` or `chat login NAME` first")
            })?,
    };
    let raw = std::fs::read(session_path(dir, &name))
        .map_err(|_| anyhow!("no saved session for {name}: run `chat login {name}`"))?;
    serde_json::from_slice(&raw).context("saved session is unreadable")
}

async fn logged_in(cli: &Cli, servers: &[String], dir: &Path) -> anyhow::Result<(Saved, Client)> {
    let saved = saved_session(cli, dir)?;
    let (_, client) = connect_any(servers).await?;
    let client = client.with_token(&saved.token)?;
    Ok((saved, client))
}
