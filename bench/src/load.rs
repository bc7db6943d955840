//! The open-loop engine: pairs of devices, each sender with a schedule of intended send
//! times, and one round of load over them.
//!
//! Open loop means a sender fires at each intended time whether or not its earlier sends
//! were answered, and every latency counts from the intended time, not from when the
//! send actually left. A server that stalls therefore shows up as latency (and, past the
//! in-flight cap, as skipped sends), instead of quietly slowing the generator down to a
//! pace it can bear, which a closed loop does ("coordinated omission").
//!
//! The intended time of a message follows from its number, so nothing is kept per
//! message but one byte of its fate (sent, acked, delivered), which says at the end which
//! acknowledged messages never arrived.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_sdk::{Client, Cursors, Event, Session, SessionOptions};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::accounts::PairAccount;
use crate::connect::Dialer;
use crate::report::Recorder;
use crate::sender::{Frame, SenderDevice};

/// Connections being set up at once while the pairs open.
const CONNECTS_IN_FLIGHT: usize = 256;
/// Sends one sender may have unanswered; past it, a due send is skipped (an error).
const MAX_IN_FLIGHT: u64 = 1000;
/// After the last intended send, how long acks and deliveries may still come in.
const STRAGGLER_WAIT: Duration = Duration::from_secs(10);
/// Time between spawning the round's tasks and its first intended send.
const LEAD_IN: Duration = Duration::from_millis(200);

const SENT: u8 = 1;
const ACKED: u8 = 2;
const DELIVERED: u8 = 4;

/// Runs unrecorded load at `rate` for `seconds` (round 0), and hands the pairs back.
pub(crate) async fn warm_up(
    pairs: Vec<Pair>,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Vec<Pair>> {
    if seconds <= 0.0 {
        return Ok(pairs);
    }
    println!("warming up for {seconds:.0} s at {rate:.0}/s (not recorded)");
    let (pairs, _) = run_round(pairs, rate, Duration::from_secs_f64(seconds), 0).await?;
    Ok(pairs)
}

/// A sender device and the receiver device it sends to.
pub(crate) struct Pair {
    sender: SenderDevice,
    receiver: Session,
}

/// Connects both devices of every pair. Pair `i`'s sender is device `2i` and its
/// receiver `2i + 1`, so with several servers the two usually sit on different replicas.
pub(crate) async fn open_pairs(
    dialer: &Dialer,
    accounts: Vec<PairAccount>,
) -> anyhow::Result<Vec<Pair>> {
    let started = Instant::now();
    let count = accounts.len();
    let pairs: Vec<Pair> = futures::stream::iter(accounts.into_iter().enumerate())
        .map(|(i, account)| open_pair(dialer, i, account))
        .buffered(CONNECTS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    println!(
        "opened {count} pairs ({} streams) in {:.1} s",
        2 * count,
        started.elapsed().as_secs_f64()
    );
    Ok(pairs)
}

async fn open_pair(dialer: &Dialer, i: usize, account: PairAccount) -> anyhow::Result<Pair> {
    // The receiver first: it is listening before anything is sent to it.
    let receiver = Client::from_channel(dialer.channel(2 * i + 1).await?)
        .with_token(&account.receiver.token)?
        .open_session(Cursors::new(), SessionOptions::default())
        .await
        .with_context(|| format!("opening the session of {}", account.receiver.name))?;
    let sender = SenderDevice::open(
        dialer.channel(2 * i).await?,
        &account.sender.token,
        account.conversation_id,
    )
    .await
    .with_context(|| format!("opening the stream of {}", account.sender.name))?;
    Ok(Pair { sender, receiver })
}

/// What one round of load came to.
pub(crate) struct RoundOutcome {
    pub(crate) target_rate: f64,
    pub(crate) duration: Duration,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    /// Skipped sends, refused sends, sends never answered, failed streams.
    pub(crate) errors: u64,
    /// Acknowledged (stored) but never delivered to the receiver.
    pub(crate) lost: u64,
    /// send → ack, from the intended send time, µs.
    pub(crate) ack: Histogram<u64>,
    /// send → delivered, from the intended send time, µs.
    pub(crate) delivered_latency: Histogram<u64>,
    /// The first thing that went wrong, for the operator.
    pub(crate) first_error: Option<String>,
}

impl RoundOutcome {
    /// Delivered messages per second of the round.
    pub(crate) fn achieved_rate(&self) -> f64 {
        self.delivered as f64 / self.duration.as_secs_f64()
    }
}

/// When each message of the round is due. The target rate is split evenly over the
/// senders, and each sender's phase is offset by its share of the period, so that the
/// sends of all senders interleave evenly instead of arriving in bursts.
struct Schedule {
    start: Instant,
    /// Seconds between two sends of one sender.
    period: f64,
    senders: usize,
}

impl Schedule {
    fn phase(&self, sender: usize) -> f64 {
        sender as f64 / self.senders as f64
    }

    fn intended(&self, sender: usize, k: u64) -> Instant {
        self.start + Duration::from_secs_f64((self.phase(sender) + k as f64) * self.period)
    }

    /// Messages of `sender` due within `duration`.
    fn count(&self, sender: usize, duration: Duration) -> usize {
        let n = duration.as_secs_f64() / self.period - self.phase(sender);
        if n <= 0.0 { 0 } else { n.ceil() as usize }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
}

/// What the round's tasks share.
struct Round {
    id: u32,
    schedule: Schedule,
    /// Per sender, per message number: SENT | ACKED | DELIVERED.
    fates: Vec<Vec<AtomicU8>>,
    counters: Counters,
    ack: Recorder,
    delivered: Recorder,
    first_error: OnceLock<String>,
}

impl Round {
    fn error(&self, what: impl FnOnce() -> String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.first_error.get().is_none() {
            let _ = self.first_error.set(what());
        }
    }

    /// The number of a message of this round, from its client_msg_id (`round.k`).
    fn message_number(&self, client_msg_id: &str) -> Option<usize> {
        let (round, k) = client_msg_id.split_once('.')?;
        if round.parse::<u32>().ok()? != self.id {
            return None;
        }
        k.parse().ok()
    }
}

fn client_msg_id(round: u32, k: usize) -> String {
    format!("{round}.{k}")
}

/// Runs one round: `rate` messages per second over all pairs for `duration`, then waits
/// for stragglers. Returns the pairs for the next round.
pub(crate) async fn run_round(
    pairs: Vec<Pair>,
    rate: f64,
    duration: Duration,
    id: u32,
) -> anyhow::Result<(Vec<Pair>, RoundOutcome)> {
    let senders = pairs.len();
    if senders == 0 {
        bail!("no pairs to load");
    }
    let schedule = Schedule {
        start: Instant::now() + LEAD_IN,
        period: senders as f64 / rate,
        senders,
    };
    let fates: Vec<Vec<AtomicU8>> = (0..senders)
        .map(|i| {
            (0..schedule.count(i, duration))
                .map(|_| AtomicU8::new(0))
                .collect()
        })
        .collect();
    let end = schedule.start + duration;
    let round = Arc::new(Round {
        id,
        schedule,
        fates,
        counters: Counters::default(),
        ack: Recorder::new()?,
        delivered: Recorder::new()?,
        first_error: OnceLock::new(),
    });

    let stop = CancellationToken::new();
    let mut tasks = Vec::with_capacity(senders);
    for (i, pair) in pairs.into_iter().enumerate() {
        let send = tokio::spawn(drive_sender(i, pair.sender, round.clone(), stop.clone()));
        let receive = tokio::spawn(drive_receiver(
            i,
            pair.receiver,
            round.clone(),
            stop.clone(),
        ));
        tasks.push((send, receive));
    }

    tokio::time::sleep_until(end.into()).await;
    let give_up = Instant::now() + STRAGGLER_WAIT;
    let c = &round.counters;
    while Instant::now() < give_up {
        let settled = c.in_flight.load(Ordering::Relaxed) <= 0
            && c.delivered.load(Ordering::Relaxed) >= c.acked.load(Ordering::Relaxed);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();

    let mut pairs = Vec::with_capacity(senders);
    for (send, receive) in tasks {
        pairs.push(Pair {
            sender: send.await?,
            receiver: receive.await?,
        });
    }

    let lost = round
        .fates
        .iter()
        .flatten()
        .filter(|fate| fate.load(Ordering::Relaxed) & (ACKED | DELIVERED) == ACKED)
        .count() as u64;
    // Sends still unanswered when the round gave up on them count as errors.
    let unanswered = u64::try_from(c.in_flight.load(Ordering::Relaxed)).unwrap_or(0);
    if unanswered > 0 && round.first_error.get().is_none() {
        let _ = round.first_error.set(format!(
            "{unanswered} sends unanswered after {} s",
            STRAGGLER_WAIT.as_secs()
        ));
    }
    let outcome = RoundOutcome {
        target_rate: rate,
        duration,
        sent: c.sent.load(Ordering::Relaxed),
        acked: c.acked.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed) + unanswered,
        lost,
        ack: round.ack.merged()?,
        delivered_latency: round.delivered.merged()?,
        first_error: round.first_error.get().cloned(),
    };
    Ok((pairs, outcome))
}

/// Fires sender `index`'s messages at their intended times and reads its acks.
async fn drive_sender(
    index: usize,
    mut device: SenderDevice,
    round: Arc<Round>,
    stop: CancellationToken,
) -> SenderDevice {
    let fates = &round.fates[index];
    let counters = &round.counters;
    let mut next = 0;
    let mut in_flight: u64 = 0;
    loop {
        let due = (next < fates.len()).then(|| round.schedule.intended(index, next as u64));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep_until(due) => {
                // Everything due by now goes out, however late the timer woke us.
                let now = Instant::now();
                while next < fates.len() && round.schedule.intended(index, next as u64) <= now {
                    if in_flight >= MAX_IN_FLIGHT {
                        round.error(|| format!("sender {index}: {MAX_IN_FLIGHT} sends in flight, skipping"));
                    } else if device.try_send(client_msg_id(round.id, next)) {
                        fates[next].fetch_or(SENT, Ordering::Relaxed);
                        in_flight += 1;
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                        counters.in_flight.fetch_add(1, Ordering::Relaxed);
                    } else {
                        round.error(|| format!("sender {index}: outbound queue full or closed"));
                    }
                    next += 1;
                }
            }
            frame = device.next_frame() => match frame {
                Frame::Ack(id) => {
                    let now = Instant::now();
                    let Some(k) = round.message_number(&id) else { continue };
                    let Some(fate) = fates.get(k) else { continue };
                    in_flight = in_flight.saturating_sub(1);
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if fate.fetch_or(ACKED, Ordering::Relaxed) & ACKED == 0 {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        let intended = round.schedule.intended(index, k as u64);
                        round.ack.record(index, now.saturating_duration_since(intended));
                    }
                }
                Frame::Refused(error) => {
                    if round.message_number(&error.client_msg_id).is_some() {
                        in_flight = in_flight.saturating_sub(1);
                        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    round.error(|| format!("sender {index}: {}: {}", error.code, error.message));
                }
                Frame::Ended(status) => {
                    // Whatever was in flight will never be answered on this stream.
                    let unanswered = i64::try_from(in_flight).unwrap_or(i64::MAX);
                    counters.in_flight.fetch_sub(unanswered, Ordering::Relaxed);
                    counters.errors.fetch_add(in_flight, Ordering::Relaxed);
                    round.error(|| format!("sender {index}: stream ended: {status:?}"));
                    break;
                }
            }
        }
    }
    device
}

/// Reads receiver `index`'s events and records each of this round's messages once.
async fn drive_receiver(
    index: usize,
    mut session: Session,
    round: Arc<Round>,
    stop: CancellationToken,
) -> Session {
    let fates = &round.fates[index];
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = session.next_event() => event,
        };
        match event {
            Some(Event::Message(message)) => {
                let now = Instant::now();
                let Some(k) = round.message_number(&message.client_msg_id) else {
                    continue;
                };
                let Some(fate) = fates.get(k) else { continue };
                if fate.fetch_or(DELIVERED, Ordering::Relaxed) & DELIVERED == 0 {
                    round.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    let intended = round.schedule.intended(index, k as u64);
                    round
                        .delivered
                        .record(index, now.saturating_duration_since(intended));
                }
            }
            Some(Event::Error(error)) => {
                round.error(|| format!("receiver {index}: {}: {}", error.code, error.message));
            }
            Some(Event::Closed(status)) => {
                round.error(|| format!("receiver {index}: session closed: {status:?}"));
                break;
            }
            None => {
                round.error(|| format!("receiver {index}: session ended"));
                break;
            }
            Some(_) => {}
        }
    }
    session
}

/// Sleeps until `at`, or for ever when there is nothing left to send.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
