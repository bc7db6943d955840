//! Test harness: real servers on port 0 (in-process, or as a child process for crash
//! tests), users driven through the SDK, and helpers that wait for events with a
//! deadline instead of sleeping.

pub mod checker;
pub mod db;
pub mod fault_proxy;
pub mod push_receiver;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chat_sdk::{Client, Credentials, Cursors, Event, Session, SessionOptions, proto};
pub use checker::{Ledger, Report};
pub use db::{PgCluster, StoreKind, TestDb};
pub use fault_proxy::FaultProxy;
pub use push_receiver::{PushReceiver, Received, Reply};
pub use redis::{RedisCluster, RedisServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server configuration for tests: the given database, generous rate limits, short
/// presence timeouts. `extra` flags override.
pub fn config(database_url: &str, extra: &[&str]) -> chat_server::Config {
    use clap::Parser;
    let defaults = [
        ("--listen", "127.0.0.1:0"),
        ("--database-url", database_url),
        // Tests run in parallel against one Postgres server: keep each server's share of
        // its connections small.
        ("--database-pool-size", "4"),
        ("--send-rate", "100000"),
        ("--send-burst", "100000"),
        ("--presence-timeout", "2s"),
        ("--heartbeat-interval", "500ms"),
        ("--shutdown-grace", "3s"),
    ];
    let mut args = vec!["chat-server"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    chat_server::Config::try_parse_from(args).expect("valid test configuration")
}

/// A chat server running inside the test process.
pub struct TestServer {
    pub url: String,
    pub running: Option<chat_server::Running>,
    pub db: Arc<TestDb>,
}

impl TestServer {
    /// Starts a server on a fresh database of the given kind.
    pub async fn spawn(store: StoreKind) -> Self {
        Self::spawn_with(store, &[]).await
    }

    /// Starts a server with extra command-line flags.
    pub async fn spawn_with(store: StoreKind, extra: &[&str]) -> Self {
        Self::spawn_layered(store, extra, None).await
    }

    /// Starts a server whose bus is wrapped (fault injection).
    pub async fn spawn_layered(
        store: StoreKind,
        extra: &[&str],
        bus_layer: Option<chat_server::BusLayer>,
    ) -> Self {
        Self::spawn_on(Arc::new(TestDb::new(store).await), extra, bus_layer).await
    }

    /// Starts a server on an existing database, e.g. a second one sharing it.
    pub async fn spawn_on(
        db: Arc<TestDb>,
        extra: &[&str],
        bus_layer: Option<chat_server::BusLayer>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = chat_server::start_with(config(db.url(), extra), listener, bus_layer)
            .await
            .expect("server starts");
        TestServer {
            url: format!("http://{}", running.addr),
            running: Some(running),
            db,
        }
    }

    pub fn chat(&self) -> &chat_server::chat::Chat {
        &self.running.as_ref().expect("server running").chat
    }

    /// How many conversations `user` is a member of, straight from the store (empty
    /// ones included): for checking that a refused request created nothing.
    pub async fn memberships(&self, user: &User) -> usize {
        let id =
            chat_server::domain::UserId::parse(&user.creds.user.id, "user id").expect("user id");
        self.chat()
            .store
            .positions(id)
            .await
            .expect("positions")
            .len()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// Registers `name` and returns a client logged in as them.
    pub async fn user(&self, name: &str) -> User {
        let client = self.client().await;
        let creds = client
            .register(name, "correct horse battery", "test")
            .await
            .expect("register");
        let client = client.with_token(&creds.token).expect("token");
        User { client, creds }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }
}

/// A registered user with a logged-in client.
pub struct User {
    pub client: Client,
    pub creds: Credentials,
}

impl User {
    pub fn name(&self) -> &str {
        &self.creds.user.name
    }

    pub async fn session(&self) -> Session {
        self.session_with(Cursors::new(), SessionOptions::default())
            .await
    }

    pub async fn session_with(&self, cursors: Cursors, options: SessionOptions) -> Session {
        self.client
            .open_session(cursors, options)
            .await
            .expect("open session")
    }

    /// Sends `text` to `to` by user name and returns the ack.
    pub async fn send(&self, to: &str, text: &str) -> proto::SendAck {
        self.client
            .send(chat_sdk::Target::User(to.into()), text)
            .await
            .expect("send")
    }
}

/// Waits for the first event `pick` accepts, skipping others; fails at the deadline.
pub async fn expect_event<T>(
    session: &mut Session,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, session.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        match event {
            Some(event) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
                if let Event::Closed(status) = event {
                    panic!("session closed ({status:?}) while waiting for {what}");
                }
            }
            None => panic!("session ended while waiting for {what}"),
        }
    }
}

/// Collects every message until "caught up", failing at the deadline.
pub async fn messages_until_caught_up(session: &mut Session) -> Vec<proto::Message> {
    let mut messages = Vec::new();
    expect_event(session, "caught up", |e| match e {
        Event::Message(m) => {
            messages.push(m.clone());
            None
        }
        Event::CaughtUp(_) => Some(()),
        _ => None,
    })
    .await;
    messages
}

/// Collects messages of one conversation until one with `seq >= last`.
pub async fn messages_through(
    session: &mut Session,
    conversation_id: &str,
    last: u64,
) -> Vec<proto::Message> {
    let mut messages = Vec::new();
    expect_event(session, &format!("message #{last}"), |e| match e {
        Event::Message(m) if m.conversation_id == conversation_id => {
            messages.push(m.clone());
            (m.seq >= last).then_some(())
        }
        _ => None,
    })
    .await;
    messages
}

pub fn seqs(messages: &[proto::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Path of a binary built from this workspace (`cargo build --workspace --bins`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A `chat-server` child process, for tests that kill it.
pub struct ServerProcess {
    pub url: String,
    /// `http://ADDR/metrics`, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    child: Child,
}

impl ServerProcess {
    /// Starts `chat-server` on port 0 with its data in `db`.
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, &[]).await
    }

    /// Starts `chat-server` with extra flags.
    pub async fn start_with(db: &TestDb, extra: &[&str]) -> Self {
        let mut child = Command::new(workspace_bin("chat-server"))
            .args(extra)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--send-rate",
                "100000",
                "--send-burst",
                "100000",
            ])
            .arg("--database-url")
            .arg(db.url())
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chat-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let wants_metrics = extra.contains(&"--metrics-listen");
        let (addr, metrics_url) = tokio::time::timeout(DEADLINE, async {
            let mut addr = None;
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(found) = line.strip_prefix("listening on ") {
                    addr = Some(found.trim().to_owned());
                    if !wants_metrics {
                        return (addr, None);
                    }
                }
                // Printed right after "listening on".
                if let Some(found) = line.strip_prefix("metrics on ") {
                    return (addr, Some(found.trim().to_owned()));
                }
            }
            panic!("chat-server exited before listening");
        })
        .await
        .expect("chat-server did not start in time");
        let addr = addr.expect("listening line");
        // Keep reading: the server logs to stdout, and a closed pipe would lose its logs.
        let tag = addr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[chat-server {tag}] {line}");
            }
        });
        ServerProcess {
            url: format!("http://{addr}"),
            metrics_url,
            child,
        }
    }

    /// The Prometheus text of a server started with `--metrics-listen`.
    pub async fn metrics(&self) -> String {
        let url = self
            .metrics_url
            .as_deref()
            .expect("started with --metrics-listen");
        let body = http1_request(
            url.trim_end_matches("/metrics"),
            "GET /metrics HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// SIGTERM, then the exit status (failing the test if it takes past the deadline).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm().await;
        self.wait().await
    }

    /// The process id, while it has not been waited for.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("chat-server has already exited")
    }

    /// SIGKILL, then the exit status. Unlike [`ServerProcess::kill`] the handle stays,
    /// so a scenario can keep its replicas in one list and crash one by index.
    pub async fn sigkill(&mut self) -> std::process::ExitStatus {
        self.child
            .start_kill()
            .expect("send SIGKILL to chat-server");
        self.wait().await
    }

    /// SIGTERM without waiting: the replica drains (for `--shutdown-grace`) while the
    /// test watches; [`ServerProcess::wait`] collects the exit.
    pub async fn sigterm(&self) {
        self.signal("TERM").await;
    }

    /// SIGSTOP: the process freezes with its sockets open, like a long GC pause or a
    /// hung host, which peers can only detect by timeouts.
    pub async fn sigstop(&self) {
        self.signal("STOP").await;
    }

    /// SIGCONT: a process frozen by [`ServerProcess::sigstop`] resumes.
    pub async fn sigcont(&self) {
        self.signal("CONT").await;
    }

    /// The exit status, failing the test if the process outlives the deadline.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("chat-server did not exit in time")
            .expect("wait for chat-server")
    }

    // `kill(1)` rather than libc: the workspace forbids unsafe code.
    async fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -{name} {pid} failed");
    }
}

/// The generated ChatService stub, authenticated with `token`: for calls the SDK does
/// not wrap (Subscribe, as browsers use it) and for misbehaving clients. `window`
/// sets small HTTP/2 flow-control windows.
pub async fn raw_chat_stub(
    url: &str,
    token: &str,
    window: Option<u32>,
) -> proto::chat_service_client::ChatServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone + use<>,
    >,
> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).expect("url");
    if let Some(window) = window {
        endpoint = endpoint
            .initial_stream_window_size(window)
            .initial_connection_window_size(window);
    }
    let channel = endpoint.connect().await.expect("connect");
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("header");
    proto::chat_service_client::ChatServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    )
}

/// The next frame of a raw server stream with a deadline, unwrapped. Keep-alives (sent
/// when a stream is quiet) are skipped: they say nothing but "still here".
pub async fn next_frame<S, T>(
    stream: &mut S,
    unwrap: impl Fn(T) -> Option<proto::ServerFrame>,
) -> proto::server_frame::Kind
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use futures::StreamExt;
    loop {
        let item = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("stream failed");
        match unwrap(item).and_then(|f| f.kind).expect("empty frame") {
            proto::server_frame::Kind::KeepAlive(_) => continue,
            kind => return kind,
        }
    }
}

/// A gateway running inside the test process, in front of the given replica URLs.
pub struct TestGateway {
    pub url: String,
    pub running: Option<chat_gateway::Running>,
}

impl TestGateway {
    /// Starts a gateway on port 0 with fast health checks; `extra` flags override.
    pub async fn spawn(upstreams: &[&str], extra: &[&str]) -> Self {
        use clap::Parser;
        let mut args: Vec<String> = ["chat-gateway", "--listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec();
        for upstream in upstreams {
            args.extend(["--upstream".to_owned(), (*upstream).to_owned()]);
        }
        if !extra.contains(&"--health-interval") {
            args.extend(["--health-interval", "200ms"].map(String::from));
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let config =
            chat_gateway::Config::try_parse_from(args).expect("valid gateway configuration");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = chat_gateway::start(config, listener)
            .await
            .expect("gateway starts");
        TestGateway {
            url: format!("http://{}", running.addr),
            running: Some(running),
        }
    }

    pub fn upstreams(&self) -> &chat_gateway::upstream::Upstreams {
        &self.running.as_ref().expect("gateway running").upstreams
    }

    /// Waits until the gateway routes to exactly `healthy` replicas.
    pub async fn wait_for_healthy(&self, healthy: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let now = self
                .upstreams()
                .all()
                .iter()
                .filter(|u| u.is_healthy())
                .count();
            if now == healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway sees {now} healthy replicas, not {healthy}"
            );
            // Health changes arrive by polling (the gateway's checks); look again soon.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean gateway shutdown");
        }
    }
}

/// Sends `request` (its head; `Host` and `Connection: close` are added) and returns the
/// whole response as text.
pub async fn http1_request(base: &str, request: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let (head, body) = request.split_once("\r\n\r\n").unwrap_or((request, ""));
    let full = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n{body}");
    String::from_utf8_lossy(&raw_exchange(base, full.as_bytes()).await).into_owned()
}

/// Writes `bytes` on a fresh connection and reads until the server closes it.
pub async fn raw_exchange(base: &str, bytes: &[u8]) -> Vec<u8> {
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(bytes).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut response))
        .await
        .expect("the server did not answer and close in time")
        .expect("read");
    response
}
