//! A fleet of `chat-server` processes on one Postgres database and one Redis, and the
//! people who use it: each person's reconnecting session is read by a task that
//! records everything it shows into the scenario's ledger.

use std::sync::Arc;
use std::time::Duration;

use chat_sdk::{
    Client, ConnectionState, Credentials, Event, ReconnectEvent, ReconnectOptions,
    ReconnectingSession, SessionSender, Target, proto,
};
use chat_tests::{DEADLINE, Ledger, ServerProcess, StoreKind, TestDb};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

/// Heartbeats and presence fast enough that a test sees expiry in seconds.
pub(crate) const HEARTBEAT: &str = "300ms";
pub(crate) const PRESENCE_TIMEOUT: Duration = Duration::from_millis(1500);
pub(crate) const POOL_SIZE: usize = 4;

pub(crate) struct Fleet {
    pub(crate) db: Arc<TestDb>,
    extra: Vec<String>,
    pub(crate) replicas: Vec<Option<ServerProcess>>,
}

impl Fleet {
    /// `n` replicas on a fresh database, all on `redis_url`.
    pub(crate) async fn start(n: usize, redis_url: &str) -> Self {
        Self::start_with(n, redis_url, &[]).await
    }

    /// [`Fleet::start`], with extra flags for every replica.
    pub(crate) async fn start_with(n: usize, redis_url: &str, extra: &[&str]) -> Self {
        let db = Arc::new(TestDb::new(StoreKind::Postgres).await);
        let mut fleet = Fleet {
            db,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            replicas: Vec::new(),
        };
        for _ in 0..n {
            let replica = fleet.spawn(redis_url, &[]).await;
            fleet.replicas.push(Some(replica));
        }
        fleet
    }

    /// Starts one more replica (not added to the fleet) on `redis_url`.
    pub(crate) async fn spawn(&self, redis_url: &str, extra: &[&str]) -> ServerProcess {
        let presence_timeout = format!("{}ms", PRESENCE_TIMEOUT.as_millis());
        let pool = POOL_SIZE.to_string();
        let overrides: Vec<&str> = self
            .extra
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        let defaults = [
            ("--redis-url", redis_url),
            ("--redis-grace", "1s"),
            ("--heartbeat-interval", HEARTBEAT),
            ("--presence-timeout", &presence_timeout),
            ("--database-pool-size", &pool),
            ("--shutdown-grace", "5s"),
            ("--metrics-listen", "127.0.0.1:0"),
        ];
        // A flag may be given once: an override replaces the default.
        let mut args: Vec<&str> = defaults
            .iter()
            .filter(|(flag, _)| !overrides.contains(flag))
            .flat_map(|(flag, value)| [*flag, *value])
            .collect();
        args.extend(overrides);
        ServerProcess::start_with(&self.db, &args).await
    }

    pub(crate) fn url(&self, i: usize) -> String {
        self.replicas[i]
            .as_ref()
            .expect("replica is running")
            .url
            .clone()
    }

    pub(crate) fn replica(&mut self, i: usize) -> &mut ServerProcess {
        self.replicas[i].as_mut().expect("replica is running")
    }

    /// Registers `name` through replica `i`.
    pub(crate) async fn register(&self, i: usize, name: &str) -> (Client, Credentials) {
        let client = Client::connect(&self.url(i)).await.expect("connect");
        let creds = client
            .register(name, "correct horse battery", "test")
            .await
            .expect("register");
        let client = client.with_token(&creds.token).expect("token");
        (client, creds)
    }
}

/// One person's reconnecting session, read by a background task.
pub(crate) struct Person {
    pub(crate) name: String,
    pub(crate) sender: SessionSender,
    states: watch::Receiver<Vec<ConnectionState>>,
    events: Mutex<mpsc::UnboundedReceiver<Event>>,
    reader: JoinHandle<()>,
}

impl Person {
    /// Opens a reconnecting session on `addresses` and records what it shows in `ledger`.
    pub(crate) async fn connect(
        name: &str,
        creds: &Credentials,
        addresses: Vec<String>,
        ledger: &Ledger,
    ) -> Self {
        let mut options = ReconnectOptions::new(addresses);
        options.max_backoff = Duration::from_secs(1);
        let session = ReconnectingSession::open(options, &creds.token)
            .await
            .expect("open reconnecting session");
        Self::follow(name, session, ledger)
    }

    fn follow(name: &str, mut session: ReconnectingSession, ledger: &Ledger) -> Self {
        let (states_tx, states) = watch::channel(Vec::new());
        let (events_tx, events) = mpsc::unbounded_channel();
        let sender = session.sender();
        let ledger = ledger.clone();
        let who = name.to_owned();
        let reader = tokio::spawn(async move {
            while let Some(event) = session.next_event().await {
                match event {
                    ReconnectEvent::State(state) => {
                        states_tx.send_modify(|all| all.push(state));
                    }
                    ReconnectEvent::Event(event) => {
                        ledger.observe(&who, &event);
                        let _ = events_tx.send(event);
                    }
                }
            }
        });
        Person {
            name: name.to_owned(),
            sender,
            states,
            events: Mutex::new(events),
            reader,
        }
    }

    /// Sends `text` to `to`, recording the attempt and its outcome.
    pub(crate) async fn send(
        &self,
        ledger: &Ledger,
        to: &str,
        text: &str,
    ) -> Option<proto::SendAck> {
        let id = chat_sdk::new_client_msg_id();
        ledger.sent("", &id, text);
        match self
            .sender
            .send_with_id(Target::User(to.to_owned()), &id, text)
            .await
        {
            Ok(ack) => {
                ledger.ack(&ack);
                Some(ack)
            }
            Err(e) => {
                ledger.failed(&id, e.code());
                None
            }
        }
    }

    /// Waits until the session has connected `n` times in all.
    pub(crate) async fn wait_connected(&self, n: usize) {
        let mut states = self.states.clone();
        tokio::time::timeout(
            DEADLINE,
            states.wait_for(|all| {
                all.iter()
                    .filter(|s| matches!(s, ConnectionState::Connected { .. }))
                    .count()
                    >= n
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{} did not connect {n} times", self.name))
        .expect("state watch");
    }

    /// Every state change so far.
    pub(crate) fn states(&self) -> Vec<ConnectionState> {
        self.states.borrow().clone()
    }

    /// Waits for the first event `pick` accepts.
    pub(crate) async fn expect<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("{} timed out waiting for {what}", self.name))
                .unwrap_or_else(|| panic!("{}'s session ended waiting for {what}", self.name));
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    pub(crate) fn close(self) {
        self.sender.close();
        self.reader.abort();
    }
}
