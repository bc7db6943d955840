//! `ReconnectingSession`: a live session that outlasts its connections.
//!
//! A [`Session`] is one `Connect` stream and ends with it. A reconnecting session keeps one
//! open for as long as the application wants. When a stream fails, it waits (full-jitter
//! exponential backoff), connects to the next server address in its list, and resumes
//! from the cursors it holds, so the server replays only what came after them. The
//! application reads one stream of events across all connections: messages de-duplicated
//! by (conversation, seq), receipts that never move backwards, presence and typing, and
//! [`ConnectionState`] changes. Sends go through an outbox: one that is not acknowledged
//! when its stream dies is sent again, with the same `client_msg_id`, on the next stream,
//! so it is stored once. Only a refused token (UNAUTHENTICATED) ends the session for good.
//!
//! Two tasks do the work. The connection task owns the current `Session`: it connects,
//! forwards the events it has not forwarded before, and on a failure waits and reconnects.
//! The outbox task writes one send at a time on whichever stream is up. They share the
//! link (a `watch` of the current stream) and the outbox.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::client::{
    Client, SEND_ATTEMPTS, Target, bearer, full_jitter, new_client_msg_id, send_message,
};
use crate::cursors::Cursors;
use crate::error::Error;
use crate::proto;
use crate::session::{Event, ReceiptBook, Session, SessionHandle, SessionOptions};

/// Events buffered for the application before the connection task waits for it.
const EVENT_BUFFER: usize = 1024;
/// Sends the outbox holds before [`ReconnectingSession::send`] fails fast.
const OUTBOX_LIMIT: usize = 10_000;
/// How long one connection attempt may take, up to the server's `welcome`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of one send that the server answers with RESOURCE_EXHAUSTED. Mostly that is
/// the rate limit, which passes (an outbox drained after a long time offline runs into
/// it); but a proxy also says it of a request too large to forward, which no retry fixes.
const MAX_EXHAUSTED_ATTEMPTS: u32 = 10;
/// Attempts of one send that the server answers with UNKNOWN: as many as
/// [`Client::send_with_id`] makes.
const MAX_UNKNOWN_ATTEMPTS: u32 = SEND_ATTEMPTS;

/// How a [`ReconnectingSession`] connects and behaves.
#[derive(Clone, Debug)]
pub struct ReconnectOptions {
    /// The servers, tried in turn (e.g. `http://127.0.0.1:50051`): the first one first,
    /// and the next one after every failed attempt or lost stream.
    pub addresses: Vec<String>,
    /// How each stream behaves (delivery acks, heartbeats).
    pub session: SessionOptions,
    /// The longest wait before the first retry; it doubles with every further failure.
    pub initial_backoff: Duration,
    /// No wait between attempts (of a connection or of a send) is longer than this.
    pub max_backoff: Duration,
    /// Where to resume: the cursors of an earlier session. Empty (the default), the
    /// server starts after the user's delivered watermarks. The session sends cursors in
    /// `hello` only when they cover every conversation: when given here, or once a stream
    /// has caught up (a stream that carries cursors replays a conversation without one
    /// from its start).
    pub cursors: Cursors,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            addresses: Vec::new(),
            session: SessionOptions::default(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            cursors: Cursors::new(),
        }
    }
}

impl ReconnectOptions {
    /// The defaults, with these server addresses.
    pub fn new<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ReconnectOptions {
            addresses: addresses.into_iter().map(Into::into).collect(),
            ..ReconnectOptions::default()
        }
    }
}

/// Where the connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting to `address`. `attempt` is 1 for the first connection, and for the first
    /// attempt after a healthy stream (one that caught up) was lost; then 2, 3, ...
    Connecting {
        /// The attempt's number since the last healthy stream.
        attempt: u32,
        /// The server being tried.
        address: String,
    },
    /// The server accepted the stream (`welcome`); its replay follows, then `CaughtUp`.
    Connected {
        /// The server.
        address: String,
    },
    /// The attempt failed or the stream was lost; the next attempt starts after `retry_in`.
    Disconnected {
        /// What went wrong, as `CODE: message`.
        reason: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
}

/// What a [`ReconnectingSession`] reports, in order.
#[derive(Clone, Debug)]
pub enum ReconnectEvent {
    /// Something the server sent, shown once across all streams. `CaughtUp` comes after
    /// every (re)connection's replay. `Closed` comes once, last: `None` after
    /// [`ReconnectingSession::close`], else the status that ended the session for good
    /// (UNAUTHENTICATED: logged out, or the token expired).
    Event(Event),
    /// The connection changed state.
    State(ConnectionState),
}

/// A live session that reconnects on its own, to the next server address after every
/// failure, resuming from its cursors; its events read as one stream across connections.
/// Dropping it ends it, as [`ReconnectingSession::close`] does.
pub struct ReconnectingSession {
    shared: Arc<Shared>,
    events: mpsc::Receiver<ReconnectEvent>,
    stop: CancellationToken,
}

impl Drop for ReconnectingSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ReconnectingSession {
    /// Validates the options, makes the first connection attempt, and carries on in the
    /// background. Fails only if that attempt fails for a reason retrying cannot fix (see
    /// [`Error::is_retryable`]): UNAUTHENTICATED (the token is no good), an address that is
    /// not a URL, no address at all (`InvalidAddress("")`). When the first attempt fails
    /// with a retryable error (UNAVAILABLE, DEADLINE_EXCEEDED, ...), `open` returns the
    /// session all the same, and it keeps trying every address in turn, for ever; the
    /// events say how it goes.
    pub async fn open(options: ReconnectOptions, token: &str) -> Result<Self, Error> {
        let ReconnectOptions {
            addresses,
            session,
            initial_backoff,
            max_backoff,
            cursors,
        } = options;
        if addresses.is_empty() {
            return Err(Error::InvalidAddress(String::new()));
        }
        for address in &addresses {
            Endpoint::from_shared(address.clone())
                .map_err(|_| Error::InvalidAddress(address.clone()))?;
        }
        // A token that cannot be a header would fail every attempt: fail now instead.
        bearer(token)?;

        let (link, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            link,
            outbox: Mutex::new(Outbox::default()),
            outbox_changed: Notify::new(),
            seen: Mutex::new(Seen::new(cursors)),
            user: Mutex::new(None),
        });
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let stop = CancellationToken::new();
        let backoff = Backoff::new(initial_backoff, max_backoff);
        let driver = Driver {
            shared: shared.clone(),
            events: events_tx,
            stop: stop.clone(),
            addresses,
            next_address: 0,
            token: token.to_owned(),
            options: session,
            backoff,
            attempt: 1,
            generation: 0,
        };
        let first = match driver.connect().await {
            Err(error) if !error.is_retryable() => return Err(error),
            outcome => outcome,
        };
        tokio::spawn(pump(shared.clone(), stop.clone(), backoff));
        tokio::spawn(async move { driver.run(first).await });
        Ok(ReconnectingSession {
            shared,
            events,
            stop,
        })
    }

    /// The next event; `None` after the final [`Event::Closed`]. Keep reading: when the
    /// buffer is full, the stream is no longer read, and send acks wait behind it.
    pub async fn next_event(&mut self) -> Option<ReconnectEvent> {
        self.events.recv().await
    }

    /// The logged-in user, once a server has welcomed a stream.
    pub fn user(&self) -> Option<proto::User> {
        self.shared
            .user
            .lock()
            .ok()
            .and_then(|user| (*user).clone())
    }

    /// The cursors a later session should resume from: everything received so far, events
    /// still buffered for [`ReconnectingSession::next_event`] included.
    pub fn cursors(&self) -> Cursors {
        self.shared
            .seen
            .lock()
            .map(|s| s.cursors.clone())
            .unwrap_or_default()
    }

    /// An authenticated client on the current connection, for unary calls (history,
    /// conversations, an ack that must be answered); `None` while disconnected.
    pub fn client(&self) -> Option<Client> {
        self.shared
            .link
            .borrow()
            .as_ref()
            .map(|up| up.client.clone())
    }

    /// Sends `text` with a fresh `client_msg_id`; see [`SessionSender::send_with_id`].
    pub async fn send(&self, target: Target, text: &str) -> Result<proto::SendAck, Error> {
        self.sender().send(target, text).await
    }

    /// See [`SessionSender::send_with_id`].
    pub async fn send_with_id(
        &self,
        target: Target,
        client_msg_id: &str,
        text: &str,
    ) -> Result<proto::SendAck, Error> {
        self.sender()
            .send_with_id(target, client_msg_id, text)
            .await
    }

    /// A handle that sends through this session's outbox from another task, while
    /// this one reads events.
    pub fn sender(&self) -> SessionSender {
        SessionSender {
            shared: self.shared.clone(),
            stop: self.stop.clone(),
        }
    }

    /// See [`SessionSender::ack`].
    pub async fn ack(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.sender().ack(conversation_id, seq).await
    }

    /// See [`SessionSender::mark_read`].
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.sender().mark_read(conversation_id, seq).await
    }

    /// See [`SessionSender::typing`].
    pub async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), Error> {
        self.sender().typing(conversation_id, typing).await
    }

    /// Ends the session: the stream closes, no reconnection follows, and unsent messages
    /// fail with [`Error::SessionClosed`]. Events already received can still be read, then
    /// `Closed(None)`.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// What the application, the connection task and the outbox task share.
struct Shared {
    /// The current stream; `None` while disconnected.
    link: watch::Sender<Option<Up>>,
    outbox: Mutex<Outbox>,
    /// Rung when a send joins the outbox.
    outbox_changed: Notify,
    seen: Mutex<Seen>,
    user: Mutex<Option<proto::User>>,
}

/// The stream that is up.
#[derive(Clone)]
struct Up {
    /// Counts streams: a send lost on one waits for a later one.
    generation: u64,
    handle: SessionHandle,
    client: Client,
}

// --- de-duplication across streams ---

/// What the application has been given, across streams: the cursors (messages at or
/// below them are duplicates) and the receipt watermarks.
#[derive(Debug)]
struct Seen {
    cursors: Cursors,
    receipts: ReceiptBook,
    /// Whether the cursors cover every conversation, so `hello` may carry them.
    complete: bool,
}

impl Seen {
    fn new(cursors: Cursors) -> Self {
        Seen {
            complete: !cursors.is_empty(),
            cursors,
            receipts: ReceiptBook::default(),
        }
    }

    /// The cursors for the next stream's `hello`. Partial cursors (a first stream lost
    /// before its `caught_up`) would have every other conversation replayed from seq 1, so
    /// until the cursors are complete the stream resumes after the delivered watermarks
    /// instead, and what it repeats is dropped here.
    fn resume_from(&self) -> Cursors {
        if self.complete {
            self.cursors.clone()
        } else {
            Cursors::new()
        }
    }

    /// The part of `event` the application has not seen yet, if any.
    fn admit(&mut self, event: Event) -> Option<Event> {
        match event {
            Event::Message(m) => self
                .cursors
                .advance(&m.conversation_id, m.seq)
                .then_some(Event::Message(m)),
            Event::Receipt(r) => self.receipts.merge(r).map(Event::Receipt),
            Event::CaughtUp(replayed) => {
                for (conversation_id, seq) in replayed.iter() {
                    self.cursors.advance(conversation_id, seq);
                }
                self.complete = true;
                Some(Event::CaughtUp(replayed))
            }
            other => Some(other),
        }
    }
}

// --- backoff ---

/// Waits between attempts: full-jitter exponential backoff.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The longest wait after `failures` consecutive failures (1-based; 0 counts as 1):
    /// `initial * 2^(failures - 1)`, at most `max`.
    fn cap(&self, failures: u32) -> Duration {
        2u32.checked_pow(failures.saturating_sub(1))
            .and_then(|factor| self.initial.checked_mul(factor))
            .map_or(self.max, |cap| cap.min(self.max))
    }

    /// A random wait in `[0, cap(failures))`: "full jitter", so that clients that lost the
    /// same server at once do not all come back at once.
    fn delay(&self, failures: u32) -> Duration {
        full_jitter(self.cap(failures))
    }
}

// --- the connection task ---

struct Driver {
    shared: Arc<Shared>,
    events: mpsc::Sender<ReconnectEvent>,
    stop: CancellationToken,
    addresses: Vec<String>,
    next_address: usize,
    token: String,
    options: SessionOptions,
    backoff: Backoff,
    /// The number of the current attempt since the last healthy stream; 0 once a stream
    /// has caught up.
    attempt: u32,
    /// The number of the last stream opened.
    generation: u64,
}

impl Driver {
    /// Connects and serves streams until the session is closed or the token refused, then
    /// ends the session.
    async fn run(mut self, first: Result<(Session, Client, String), Error>) {
        let stop = self.stop.clone();
        let mut outcome = first;
        let end = loop {
            let failure = match outcome {
                Ok((session, client, address)) => {
                    match self.serve(session, client, address).await {
                        Some(failure) => failure,
                        None => break None,
                    }
                }
                Err(failure) => failure,
            };
            if stop.is_cancelled() {
                break None;
            }
            if failure.code() == Code::Unauthenticated {
                break Some(end_status(failure));
            }
            // Another server may be up when this one is not.
            self.next_address = (self.next_address + 1) % self.addresses.len();
            let retry_in = self.backoff.delay(self.attempt);
            self.emit(ReconnectEvent::State(ConnectionState::Disconnected {
                reason: failure.to_string(),
                retry_in,
            }))
            .await;
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tokio::time::sleep(retry_in) => {}
            }
            self.attempt = self.attempt.saturating_add(1);
            outcome = tokio::select! {
                _ = stop.cancelled() => break None,
                outcome = self.connect() => outcome,
            };
        };
        self.finish(end).await;
    }

    /// One attempt on the current address, up to the server's `welcome`.
    async fn connect(&self) -> Result<(Session, Client, String), Error> {
        let address = self
            .addresses
            .get(self.next_address)
            .cloned()
            .ok_or_else(|| Error::InvalidAddress(String::new()))?;
        self.emit(ReconnectEvent::State(ConnectionState::Connecting {
            attempt: self.attempt.max(1),
            address: address.clone(),
        }))
        .await;
        let cursors = self
            .shared
            .seen
            .lock()
            .map(|s| s.resume_from())
            .unwrap_or_default();
        let attempt = async {
            let client = Client::connect(&address).await?.with_token(&self.token)?;
            let session = client.open_session(cursors, self.options.clone()).await?;
            Ok::<_, Error>((session, client))
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok((session, client))) => Ok((session, client, address)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Status(tonic::Status::deadline_exceeded(format!(
                "no welcome from {address} within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            )))),
        }
    }

    /// Forwards the events of one stream until it ends. `None` when the session was
    /// closed, else why the stream was lost.
    async fn serve(
        &mut self,
        mut session: Session,
        client: Client,
        address: String,
    ) -> Option<Error> {
        let stop = self.stop.clone();
        self.generation += 1;
        let generation = self.generation;
        if let Ok(mut user) = self.shared.user.lock() {
            *user = Some(session.user().clone());
        }
        self.shared.link.send_replace(Some(Up {
            generation,
            handle: session.handle(),
            client,
        }));
        self.emit(ReconnectEvent::State(ConnectionState::Connected {
            address,
        }))
        .await;
        let failure = loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break None,
                next = session.next_event() => next,
            };
            let event = match next {
                None | Some(Event::Closed(None)) => {
                    break Some(Error::Status(tonic::Status::unavailable(
                        "the server ended the stream",
                    )));
                }
                Some(Event::Closed(Some(status))) => break Some(Error::Status(status)),
                Some(event) => event,
            };
            let caught_up = matches!(event, Event::CaughtUp(_));
            let admitted = match self.shared.seen.lock() {
                Ok(mut seen) => seen.admit(event),
                Err(_) => None,
            };
            if caught_up {
                // A healthy stream: the next failure starts the backoff over.
                self.attempt = 0;
            }
            if let Some(event) = admitted {
                self.emit(ReconnectEvent::Event(event)).await;
            }
        };
        // Recorded before the link goes down, for the outbox task (see `pump`).
        if let Some(Error::Status(status)) = &failure
            && let Ok(mut outbox) = self.shared.outbox.lock()
        {
            outbox.lost = Some((generation, status.clone()));
        }
        self.shared.link.send_replace(None);
        session.close();
        failure
    }

    /// Ends the session: unsent messages fail, and the last event says why.
    async fn finish(self, end: Option<tonic::Status>) {
        self.stop.cancel();
        self.shared.link.send_replace(None);
        let unsent = match self.shared.outbox.lock() {
            Ok(mut outbox) => {
                outbox.ended = Some(end.clone());
                std::mem::take(&mut outbox.entries)
            }
            Err(_) => VecDeque::new(),
        };
        for entry in unsent {
            reply_all(entry.waiters, Err(end_error(end.as_ref())));
        }
        // Not cut short by the stop: this is the event that says the session is over.
        let _ = self
            .events
            .send(ReconnectEvent::Event(Event::Closed(end)))
            .await;
    }

    /// Queues an event for the application, waiting while its buffer is full.
    async fn emit(&self, event: ReconnectEvent) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.events.send(event) => {}
        }
    }
}

/// The status a failure ends the session with.
fn end_status(error: Error) -> tonic::Status {
    match error {
        Error::Status(status) => status,
        other => tonic::Status::new(other.code(), other.to_string()),
    }
}

/// What a send fails with once the session has ended.
fn end_error(end: Option<&tonic::Status>) -> Error {
    match end {
        Some(status) => Error::Status(status.clone()),
        None => Error::SessionClosed,
    }
}

// --- the outbox ---

type Waiter = oneshot::Sender<Result<proto::SendAck, Error>>;

#[derive(Default)]
struct Outbox {
    /// Oldest first; the first one is the one being sent.
    entries: VecDeque<Entry>,
    /// Set when the session ends: `None` inside when the application closed it.
    ended: Option<Option<tonic::Status>>,
    /// The last stream that ended with a status, and the status.
    lost: Option<(u64, tonic::Status)>,
}

struct Entry {
    message: proto::SendMessage,
    /// Everyone who sent this `client_msg_id` and waits for the answer.
    waiters: Vec<Waiter>,
    /// Answers of RESOURCE_EXHAUSTED so far.
    exhausted: u32,
    /// Answers of UNKNOWN so far.
    unknown: u32,
}

impl Entry {
    fn new(message: proto::SendMessage, waiter: Waiter) -> Self {
        Entry {
            message,
            waiters: vec![waiter],
            exhausted: 0,
            unknown: 0,
        }
    }

    /// Counts an error answer; true if the send is worth another attempt (see
    /// [`ReconnectingSession::send_with_id`]).
    fn retry_after(&mut self, code: Code) -> bool {
        match code {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => true,
            Code::ResourceExhausted => {
                self.exhausted += 1;
                self.exhausted < MAX_EXHAUSTED_ATTEMPTS
            }
            Code::Unknown => {
                self.unknown += 1;
                self.unknown < MAX_UNKNOWN_ATTEMPTS
            }
            _ => false,
        }
    }
}

impl Outbox {
    fn position(&self, client_msg_id: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.message.client_msg_id == client_msg_id)
    }

    /// Takes the send out of the outbox and gives everyone waiting the answer.
    fn settle(&mut self, client_msg_id: &str, result: Result<proto::SendAck, Error>) {
        if let Some(entry) = self
            .position(client_msg_id)
            .and_then(|i| self.entries.remove(i))
        {
            reply_all(entry.waiters, result);
        }
    }

    /// Applies the server's answer to a send: settles it, or returns true to try it again.
    fn answer(&mut self, client_msg_id: &str, result: Result<proto::SendAck, Error>) -> bool {
        let retry = match (&result, self.position(client_msg_id)) {
            (Err(error), Some(i)) => self
                .entries
                .get_mut(i)
                .is_some_and(|entry| entry.retry_after(error.code())),
            _ => false,
        };
        if !retry {
            self.settle(client_msg_id, result);
        }
        retry
    }
}

/// Gives the answer to every waiter (errors are copied as their status).
fn reply_all(waiters: Vec<Waiter>, result: Result<proto::SendAck, Error>) {
    let mut waiters = waiters.into_iter();
    let Some(first) = waiters.next() else {
        return;
    };
    for waiter in waiters {
        let copy = match &result {
            Ok(ack) => Ok(ack.clone()),
            Err(Error::Status(status)) => Err(Error::Status(status.clone())),
            Err(Error::SessionClosed) => Err(Error::SessionClosed),
            Err(other) => Err(Error::Status(tonic::Status::new(
                other.code(),
                other.to_string(),
            ))),
        };
        let _ = waiter.send(copy);
    }
    let _ = first.send(result);
}

/// The outbox task: writes the oldest unsent message on the current stream, waits for
/// its answer, and settles it or tries again, until the session ends.
async fn pump(shared: Arc<Shared>, stop: CancellationToken, backoff: Backoff) {
    let mut link = shared.link.subscribe();
    // Streams before this one are gone: a send lost on one waits for a later one.
    let mut min_generation = 0;
    let mut failures = 0;
    loop {
        let message = loop {
            let changed = shared.outbox_changed.notified();
            let head = match shared.outbox.lock() {
                Ok(outbox) => outbox.entries.front().map(|e| e.message.clone()),
                Err(_) => return,
            };
            if let Some(message) = head {
                break message;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
            }
        };
        let Some((generation, handle)) = stream_up(&mut link, &stop, min_generation).await else {
            return;
        };
        let client_msg_id = message.client_msg_id.clone();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = handle.send(message) => result,
        };
        if matches!(result, Err(Error::SessionClosed)) {
            // The stream is gone, and the send may or may not have reached the server: it
            // goes again, same key, on the next stream; this attempt does not count.
            if !stream_gone(&mut link, &stop, generation).await {
                return;
            }
            min_generation = generation + 1;
            fail_if_refused(&shared, generation, &client_msg_id);
            continue;
        }
        let retry = match shared.outbox.lock() {
            Ok(mut outbox) => outbox.answer(&client_msg_id, result),
            Err(_) => return,
        };
        if retry {
            failures += 1;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.delay(failures)) => {}
            }
        } else {
            failures = 0;
        }
    }
}

/// A stream the server ended with INVALID_ARGUMENT refused a frame it could not decode,
/// most likely the send that was in flight (too large): sent again, it would only end the
/// next stream too, so it fails with that status instead.
fn fail_if_refused(shared: &Shared, generation: u64, client_msg_id: &str) {
    let Ok(mut outbox) = shared.outbox.lock() else {
        return;
    };
    let refused = match &outbox.lost {
        Some((lost, status)) if *lost == generation && status.code() == Code::InvalidArgument => {
            Some(status.clone())
        }
        _ => None,
    };
    if let Some(status) = refused {
        outbox.settle(client_msg_id, Err(Error::Status(status)));
    }
}

/// Waits for a stream numbered `min_generation` or later; `None` if the session ends.
async fn stream_up(
    link: &mut watch::Receiver<Option<Up>>,
    stop: &CancellationToken,
    min_generation: u64,
) -> Option<(u64, SessionHandle)> {
    tokio::select! {
        _ = stop.cancelled() => None,
        up = link.wait_for(|l| l.as_ref().is_some_and(|up| up.generation >= min_generation)) => {
            up.ok()?.as_ref().map(|up| (up.generation, up.handle.clone()))
        }
    }
}

/// Waits until stream `generation` is no longer the current one; false if the session
/// ends first.
async fn stream_gone(
    link: &mut watch::Receiver<Option<Up>>,
    stop: &CancellationToken,
    generation: u64,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        gone = link.wait_for(|l| l.as_ref().is_none_or(|up| up.generation != generation)) => {
            gone.is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(conversation_id: &str, seq: u64) -> Event {
        Event::Message(proto::Message {
            conversation_id: conversation_id.into(),
            seq,
            ..Default::default()
        })
    }

    fn receipt(delivered_seq: u64, read_seq: u64) -> Event {
        Event::Receipt(proto::Receipt {
            conversation_id: "c".into(),
            user: Some(proto::User {
                id: "u".into(),
                name: "riya".into(),
            }),
            delivered_seq,
            read_seq,
        })
    }

    fn caught_up(cursors: &[(&str, u64)]) -> Event {
        let mut c = Cursors::new();
        for (conversation_id, seq) in cursors {
            c.advance(conversation_id, *seq);
        }
        Event::CaughtUp(c)
    }

    type Shown = Option<(String, u64, u64)>;

    /// What `admit` lets through: (conversation, seq, 0) for a message, ("receipt",
    /// delivered, read) for a receipt.
    fn admitted(seen: &mut Seen, event: Event) -> Shown {
        match seen.admit(event)? {
            Event::Message(m) => Some((m.conversation_id, m.seq, 0)),
            Event::Receipt(r) => Some(("receipt".to_owned(), r.delivered_seq, r.read_seq)),
            Event::CaughtUp(_) => Some(("caught up".to_owned(), 0, 0)),
            _ => Some(("other".to_owned(), 0, 0)),
        }
    }

    fn shown(what: &str, a: u64, b: u64) -> Shown {
        Some((what.to_owned(), a, b))
    }

    #[test]
    fn the_cap_doubles_from_the_initial_wait_up_to_the_maximum() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let caps: Vec<u128> = (0..=8).map(|n| b.cap(n).as_millis()).collect();
        assert_eq!(caps, [100, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.cap(u32::MAX), Duration::from_secs(5), "no overflow");
        let flat = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(flat.cap(3), Duration::from_secs(2), "max below initial");
    }

    #[test]
    fn delays_are_random_below_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for failures in 1..=10 {
            for _ in 0..100 {
                assert!(b.delay(failures) < b.cap(failures));
            }
        }
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn messages_are_shown_once_across_streams() {
        let mut seen = Seen::new(Cursors::new());
        assert_eq!(admitted(&mut seen, message("a", 1)), shown("a", 1, 0));
        assert_eq!(admitted(&mut seen, message("a", 2)), shown("a", 2, 0));
        // The stream is lost; the next one replays some of it.
        assert_eq!(admitted(&mut seen, message("a", 1)), None, "replayed");
        assert_eq!(admitted(&mut seen, message("a", 2)), None, "replayed");
        assert_eq!(admitted(&mut seen, message("a", 3)), shown("a", 3, 0));
        assert_eq!(admitted(&mut seen, message("b", 1)), shown("b", 1, 0));
        assert_eq!((seen.cursors.get("a"), seen.cursors.get("b")), (3, 1));
    }

    #[test]
    fn cursors_go_in_hello_only_once_complete() {
        let mut seen = Seen::new(Cursors::new());
        admitted(&mut seen, message("a", 4));
        assert!(
            seen.resume_from().is_empty(),
            "lost before caught_up: partial cursors would replay other conversations from 1"
        );
        // Everything up to the server's cursors has been shown, or was a duplicate.
        assert_eq!(
            admitted(&mut seen, caught_up(&[("a", 4), ("b", 7)])),
            shown("caught up", 0, 0)
        );
        let resume = seen.resume_from();
        assert_eq!((resume.get("a"), resume.get("b")), (4, 7));
        assert_eq!(admitted(&mut seen, message("b", 7)), None);

        let mut given = Cursors::new();
        given.advance("a", 2);
        let seen = Seen::new(given);
        assert_eq!(
            seen.resume_from().get("a"),
            2,
            "given cursors are sent as they are"
        );
    }

    #[test]
    fn receipts_never_go_back_across_streams() {
        let mut seen = Seen::new(Cursors::new());
        assert_eq!(admitted(&mut seen, receipt(5, 2)), shown("receipt", 5, 2));
        // A new stream replays the snapshot, then a late, stale receipt arrives.
        assert_eq!(admitted(&mut seen, receipt(5, 2)), None);
        assert_eq!(admitted(&mut seen, receipt(3, 1)), None);
        assert_eq!(
            admitted(&mut seen, receipt(4, 3)),
            shown("receipt", 5, 3),
            "merged, never reported backwards"
        );
    }

    #[test]
    fn presence_typing_and_errors_pass_through() {
        let mut seen = Seen::new(Cursors::new());
        let typing = Event::Typing(proto::Typing::default());
        assert!(seen.admit(typing.clone()).is_some());
        assert!(seen.admit(typing).is_some(), "not de-duplicated");
        assert!(
            seen.admit(Event::Presence(proto::Presence::default()))
                .is_some()
        );
        assert!(seen.admit(Event::Error(proto::Error::default())).is_some());
    }

    fn entry() -> (Entry, oneshot::Receiver<Result<proto::SendAck, Error>>) {
        let (tx, rx) = oneshot::channel();
        let message = send_message(Target::User("riya".into()), "id-1", "hi");
        (Entry::new(message, tx), rx)
    }

    #[test]
    fn which_answers_are_tried_again() {
        let (mut e, _rx) = entry();
        for _ in 0..100 {
            assert!(e.retry_after(Code::Unavailable));
            assert!(e.retry_after(Code::DeadlineExceeded));
            assert!(e.retry_after(Code::Aborted));
        }
        let exhausted = (0..20)
            .take_while(|_| e.retry_after(Code::ResourceExhausted))
            .count();
        assert_eq!(
            exhausted as u32,
            MAX_EXHAUSTED_ATTEMPTS - 1,
            "the last attempt fails"
        );
        let unknown = (0..20).take_while(|_| e.retry_after(Code::Unknown)).count();
        assert_eq!(unknown as u32, MAX_UNKNOWN_ATTEMPTS - 1);
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(!e.retry_after(code), "{code:?}");
        }
    }

    #[test]
    fn an_answer_settles_the_send_for_every_waiter() {
        let mut outbox = Outbox::default();
        let (mut first, mut rx1) = entry();
        let (tx2, mut rx2) = oneshot::channel();
        first.waiters.push(tx2);
        outbox.entries.push_back(first);

        let unavailable = Err(Error::Status(tonic::Status::unavailable("db down")));
        assert!(outbox.answer("id-1", unavailable), "tried again");
        assert_eq!(outbox.entries.len(), 1);
        assert!(rx1.try_recv().is_err(), "no answer yet");

        let ack = proto::SendAck {
            client_msg_id: "id-1".into(),
            seq: 7,
            duplicate: true,
            ..Default::default()
        };
        assert!(!outbox.answer("id-1", Ok(ack)));
        assert!(outbox.entries.is_empty());
        for rx in [&mut rx1, &mut rx2] {
            match rx.try_recv() {
                Ok(Ok(ack)) => assert_eq!((ack.seq, ack.duplicate), (7, true)),
                other => panic!("expected the ack, got {other:?}"),
            }
        }

        let (e, mut rx) = entry();
        outbox.entries.push_back(e);
        let too_long = Err(Error::Status(tonic::Status::invalid_argument("too long")));
        assert!(!outbox.answer("id-1", too_long), "not tried again");
        assert!(outbox.entries.is_empty());
        match rx.try_recv() {
            Ok(Err(e)) => assert_eq!(e.code(), Code::InvalidArgument),
            other => panic!("expected the error, got {other:?}"),
        }
    }
}

/// Writes to a [`ReconnectingSession`] (sends through its outbox, receipts, typing)
/// from any task; cheap to clone.
#[derive(Clone)]
pub struct SessionSender {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl SessionSender {
    /// Sends `text` with a fresh `client_msg_id`; see [`SessionSender::send_with_id`].
    pub async fn send(&self, target: Target, text: &str) -> Result<proto::SendAck, Error> {
        self.send_with_id(target, &new_client_msg_id(), text).await
    }

    /// Sends `text` with the idempotency key `client_msg_id`, and waits for the server's
    /// ack. The message waits in the outbox while disconnected, and sends go out one at a
    /// time, in order. A send whose stream is lost before the ack goes again on the next
    /// stream with the same key, so the server stores it once (a retry of a stored message
    /// is answered with the original, `duplicate: true`). Answers from the server:
    ///
    /// - UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED: tried again after a backoff, for as long
    ///   as the session lasts;
    /// - RESOURCE_EXHAUSTED (the rate limit): tried again after a backoff, up to 10
    ///   attempts; UNKNOWN: up to 6, as [`Client::send_with_id`] does;
    /// - anything else (INVALID_ARGUMENT, NOT_FOUND, ...): returned at once.
    ///
    /// Fails fast with [`Error::OutboxFull`] when 10,000 sends are already waiting, and
    /// with the session's end ([`Error::SessionClosed`], or the status that ended it) if
    /// it ends first. Sending a key already in the outbox waits for that send (whatever
    /// its text). Dropping the future does not take the message out of the outbox.
    pub async fn send_with_id(
        &self,
        target: Target,
        client_msg_id: &str,
        text: &str,
    ) -> Result<proto::SendAck, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut outbox = self
                .shared
                .outbox
                .lock()
                .map_err(|_| Error::SessionClosed)?;
            if let Some(end) = &outbox.ended {
                return Err(end_error(end.as_ref()));
            }
            match outbox.position(client_msg_id) {
                Some(i) => {
                    if let Some(entry) = outbox.entries.get_mut(i) {
                        entry.waiters.push(tx);
                    }
                }
                None if outbox.entries.len() >= OUTBOX_LIMIT => {
                    return Err(Error::OutboxFull(outbox.entries.len()));
                }
                None => outbox
                    .entries
                    .push_back(Entry::new(send_message(target, client_msg_id, text), tx)),
            }
        }
        self.shared.outbox_changed.notify_one();
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    /// Acknowledges delivery up to `seq` on the current stream (done automatically with
    /// `auto_ack`). Fails with [`Error::NotConnected`] while disconnected; acks are
    /// watermarks, so a later one covers a lost one.
    pub async fn ack(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.handle()?.ack(conversation_id, seq).await
    }

    /// Marks the conversation read up to `seq` (`0`: everything so far) on the current
    /// stream. Fails with [`Error::NotConnected`] while disconnected.
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.handle()?.mark_read(conversation_id, seq).await
    }

    /// Tells the other members the user is typing (or stopped), on the current stream.
    /// Fails with [`Error::NotConnected`] while disconnected.
    pub async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), Error> {
        self.handle()?.typing(conversation_id, typing).await
    }

    fn handle(&self) -> Result<SessionHandle, Error> {
        self.shared
            .link
            .borrow()
            .as_ref()
            .map(|up| up.handle.clone())
            .ok_or(Error::NotConnected)
    }

    /// Ends the session, as [`ReconnectingSession::close`] does.
    pub fn close(&self) {
        self.stop.cancel();
    }
}
