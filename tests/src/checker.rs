//! The ledger of a fault scenario, and the delivery guarantees checked against it.
//!
//! Senders record each attempt and how it ended; receivers record every message and
//! receipt they were shown. [`Ledger::check`] then holds the run to the promises the
//! platform makes whatever fails underneath: an acked message reaches every member
//! who should see it; nobody is shown a message twice, nor a retry stored twice; each
//! receiver sees a conversation in order and without gaps; one seq is one message; and
//! watermarks never move back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_sdk::{Event, proto};
use tonic::Code;

/// How often [`Ledger::wait_until_received`] looks again.
const POLL: Duration = Duration::from_millis(50);
/// Problems listed per kind in a failure message; the counts say how many more.
const SHOWN: usize = 5;

/// What a scenario sent and saw. Clones share one record, so every sender and
/// receiver task can hold its own.
#[derive(Clone, Default)]
pub struct Ledger {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// One per client_msg_id, in the order first attempted.
    sends: Vec<SendRecord>,
    by_id: HashMap<String, usize>,
    /// (receiver, conversation) -> the first seq that receiver must see.
    expected: BTreeMap<(String, String), u64>,
    /// In arrival order, so that each receiver's own order is kept.
    seen: Vec<Seen>,
    receipts: Vec<ReceiptSeen>,
}

struct SendRecord {
    conversation_id: String,
    client_msg_id: String,
    text: String,
    /// Every seq the server acked this message with: more than one is a duplicate.
    acks: Vec<u64>,
    failures: Vec<Code>,
}

struct Seen {
    receiver: String,
    conversation_id: String,
    seq: u64,
    client_msg_id: String,
}

struct ReceiptSeen {
    observer: String,
    conversation_id: String,
    user: String,
    delivered_seq: u64,
    read_seq: u64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// `receiver` must see every acked message of the conversation.
    pub fn expect(&self, receiver: &str, conversation_id: &str) {
        self.expect_from(receiver, conversation_id, 0);
    }

    /// `receiver` must see the acked messages from `seq` on: for one that joins, or
    /// opens its session, mid-conversation.
    pub fn expect_from(&self, receiver: &str, conversation_id: &str, seq: u64) {
        self.state()
            .expected
            .insert((receiver.to_owned(), conversation_id.to_owned()), seq);
    }

    /// A send attempt; a retry repeats its `client_msg_id`. The conversation may be
    /// left empty when not known yet (a send to a user name): the ack fills it in.
    pub fn sent(&self, conversation_id: &str, client_msg_id: &str, text: &str) {
        let mut state = self.state();
        let record = state.record(client_msg_id);
        if record.conversation_id.is_empty() {
            conversation_id.clone_into(&mut record.conversation_id);
        }
        if record.text.is_empty() {
            text.clone_into(&mut record.text);
        }
    }

    pub fn acked(&self, conversation_id: &str, client_msg_id: &str, seq: u64) {
        let mut state = self.state();
        let record = state.record(client_msg_id);
        conversation_id.clone_into(&mut record.conversation_id);
        record.acks.push(seq);
    }

    pub fn ack(&self, ack: &proto::SendAck) {
        self.acked(&ack.conversation_id, &ack.client_msg_id, ack.seq);
    }

    /// A send that ended in an error (after the SDK's own retries).
    pub fn failed(&self, client_msg_id: &str, code: Code) {
        self.state().record(client_msg_id).failures.push(code);
    }

    pub fn received(&self, receiver: &str, conversation_id: &str, seq: u64, client_msg_id: &str) {
        self.state().seen.push(Seen {
            receiver: receiver.to_owned(),
            conversation_id: conversation_id.to_owned(),
            seq,
            client_msg_id: client_msg_id.to_owned(),
        });
    }

    /// `observer` was shown that `user` has received up to `delivered_seq` and read
    /// up to `read_seq`.
    pub fn receipt(
        &self,
        observer: &str,
        conversation_id: &str,
        user: &str,
        delivered_seq: u64,
        read_seq: u64,
    ) {
        self.state().receipts.push(ReceiptSeen {
            observer: observer.to_owned(),
            conversation_id: conversation_id.to_owned(),
            user: user.to_owned(),
            delivered_seq,
            read_seq,
        });
    }

    /// Records a session event seen by `who`: messages and receipts; others are
    /// ignored, so a receiver loop can pass everything it gets.
    pub fn observe(&self, who: &str, event: &Event) {
        match event {
            Event::Message(m) => self.received(who, &m.conversation_id, m.seq, &m.client_msg_id),
            Event::Receipt(r) => {
                let user = r.user.as_ref().map(|u| u.name.as_str()).unwrap_or_default();
                self.receipt(who, &r.conversation_id, user, r.delivered_seq, r.read_seq);
            }
            _ => {}
        }
    }

    pub fn check(&self) -> Report {
        self.state().check()
    }

    /// Panics with the problems found, if any.
    pub fn assert_clean(&self) {
        self.check().assert_clean();
    }

    /// Waits until every expected receiver has seen every acked message, or the
    /// deadline passes; whether it got there.
    pub async fn wait_until_received(&self, deadline: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + deadline;
        loop {
            // Bound first so that the lock is released before any await.
            let arrived = self.state().lost().is_empty();
            if arrived {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Receivers record from their own tasks; nothing to wake on but time.
            tokio::time::sleep(POLL).await;
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn record(&mut self, client_msg_id: &str) -> &mut SendRecord {
        let index = match self.by_id.get(client_msg_id) {
            Some(&index) => index,
            None => {
                self.sends.push(SendRecord {
                    conversation_id: String::new(),
                    client_msg_id: client_msg_id.to_owned(),
                    text: String::new(),
                    acks: Vec::new(),
                    failures: Vec::new(),
                });
                self.by_id
                    .insert(client_msg_id.to_owned(), self.sends.len() - 1);
                self.sends.len() - 1
            }
        };
        &mut self.sends[index]
    }

    /// (conversation, seq) -> the send acked with it (the first, if several were).
    fn acked(&self) -> BTreeMap<(&str, u64), &SendRecord> {
        let mut acked = BTreeMap::new();
        for record in &self.sends {
            for &seq in &record.acks {
                acked
                    .entry((record.conversation_id.as_str(), seq))
                    .or_insert(record);
            }
        }
        acked
    }

    fn lost(&self) -> Vec<Lost> {
        let acked = self.acked();
        let seen: HashSet<(&str, &str, u64)> = self
            .seen
            .iter()
            .map(|s| (s.receiver.as_str(), s.conversation_id.as_str(), s.seq))
            .collect();
        let mut lost = Vec::new();
        for ((receiver, conversation_id), &from) in &self.expected {
            let conversation = conversation_id.as_str();
            let acked_here = acked.range((conversation, from)..=(conversation, u64::MAX));
            for (&(_, seq), record) in acked_here {
                if !seen.contains(&(receiver.as_str(), conversation, seq)) {
                    lost.push(Lost {
                        receiver: receiver.clone(),
                        conversation_id: conversation_id.clone(),
                        seq,
                        client_msg_id: record.client_msg_id.clone(),
                        text: record.text.clone(),
                    });
                }
            }
        }
        lost
    }

    fn check(&self) -> Report {
        let mut report = Report {
            acked: self.acked().len(),
            lost: self.lost(),
            ..Report::default()
        };
        self.check_identity(&mut report);
        self.check_views(&mut report);
        self.check_watermarks(&mut report);
        for record in &self.sends {
            for &code in &record.failures {
                if !is_retryable(code) {
                    report.unretryable_failures.push(Failure {
                        client_msg_id: record.client_msg_id.clone(),
                        conversation_id: record.conversation_id.clone(),
                        code,
                    });
                }
            }
        }
        report
    }

    /// One seq holds one message and one message one seq, by the acks and by what
    /// every receiver saw.
    fn check_identity(&self, report: &mut Report) {
        let mut claims: BTreeMap<(&str, u64), BTreeSet<&str>> = BTreeMap::new();
        let mut placements: BTreeMap<(&str, &str), BTreeSet<u64>> = BTreeMap::new();
        let acks = self.sends.iter().flat_map(|r| {
            r.acks
                .iter()
                .map(move |&seq| (r.conversation_id.as_str(), seq, r.client_msg_id.as_str()))
        });
        let sightings = self
            .seen
            .iter()
            .map(|s| (s.conversation_id.as_str(), s.seq, s.client_msg_id.as_str()));
        for (conversation, seq, client_msg_id) in acks.chain(sightings) {
            // Messages stored without a client_msg_id cannot be told apart this way.
            if client_msg_id.is_empty() {
                continue;
            }
            claims
                .entry((conversation, seq))
                .or_default()
                .insert(client_msg_id);
            placements
                .entry((conversation, client_msg_id))
                .or_default()
                .insert(seq);
        }
        for ((conversation, seq), ids) in claims {
            if ids.len() > 1 {
                report.conflicts.push(Conflict {
                    conversation_id: conversation.to_owned(),
                    seq,
                    client_msg_ids: ids.into_iter().map(str::to_owned).collect(),
                });
            }
        }
        for ((conversation, client_msg_id), seqs) in placements {
            if seqs.len() > 1 {
                report.duplicates.push(Duplicate::Stored {
                    conversation_id: conversation.to_owned(),
                    client_msg_id: client_msg_id.to_owned(),
                    seqs: seqs.into_iter().collect(),
                });
            }
        }
    }

    /// Per receiver and conversation: each seq once, and after the first, each the
    /// successor of the highest before it.
    fn check_views(&self, report: &mut Report) {
        let mut views: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
        for s in &self.seen {
            views
                .entry((s.receiver.as_str(), s.conversation_id.as_str()))
                .or_default()
                .push(s.seq);
        }
        for ((receiver, conversation), seqs) in views {
            let mut times: BTreeMap<u64, usize> = BTreeMap::new();
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let count = times.entry(seq).or_default();
                *count += 1;
                // A repeat is reported once, as a duplicate, not again as disorder.
                if *count > 1 {
                    continue;
                }
                if let Some(after) = highest
                    && seq != after + 1
                {
                    report.out_of_order.push(OutOfOrder {
                        receiver: receiver.to_owned(),
                        conversation_id: conversation.to_owned(),
                        after,
                        got: seq,
                    });
                }
                highest = Some(highest.map_or(seq, |h| h.max(seq)));
            }
            for (seq, count) in times {
                if count > 1 {
                    report.duplicates.push(Duplicate::Shown {
                        receiver: receiver.to_owned(),
                        conversation_id: conversation.to_owned(),
                        seq,
                        times: count,
                    });
                }
            }
        }
    }

    /// Against the highest each observer was shown before, so that 5, 3, 4 is two
    /// regressions: the user saw the count go below 5 twice.
    fn check_watermarks(&self, report: &mut Report) {
        let mut highest: HashMap<(&str, &str, &str), (u64, u64)> = HashMap::new();
        for r in &self.receipts {
            let now = (r.delivered_seq, r.read_seq);
            let key = (
                r.observer.as_str(),
                r.conversation_id.as_str(),
                r.user.as_str(),
            );
            let high = match highest.get(&key) {
                Some(&before) => {
                    if now.0 < before.0 || now.1 < before.1 {
                        report.watermark_regressions.push(Regression {
                            observer: r.observer.clone(),
                            conversation_id: r.conversation_id.clone(),
                            user: r.user.clone(),
                            from: before,
                            to: now,
                        });
                    }
                    (before.0.max(now.0), before.1.max(now.1))
                }
                None => now,
            };
            highest.insert(key, high);
        }
    }
}

/// A failure a client would retry is what faults are expected to cause; any other
/// means the server mishandled the fault. The SDK's own rule decides which is which.
fn is_retryable(code: Code) -> bool {
    chat_sdk::Error::from(tonic::Status::new(code, "")).is_retryable()
}

/// What [`Ledger::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct messages acked to their senders.
    pub acked: usize,
    pub lost: Vec<Lost>,
    pub duplicates: Vec<Duplicate>,
    /// Seqs that stand for more than one message.
    pub conflicts: Vec<Conflict>,
    /// Gaps and steps back, per receiver and conversation.
    pub out_of_order: Vec<OutOfOrder>,
    pub watermark_regressions: Vec<Regression>,
    pub unretryable_failures: Vec<Failure>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.conflicts.is_empty()
            && self.out_of_order.is_empty()
            && self.watermark_regressions.is_empty()
            && self.unretryable_failures.is_empty()
    }

    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "delivery check failed: {self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} acked messages", self.acked)?;
        if self.is_clean() {
            return write!(f, ", no problems");
        }
        section(f, "lost", &self.lost)?;
        section(f, "duplicates", &self.duplicates)?;
        section(f, "conflicts", &self.conflicts)?;
        section(f, "out of order", &self.out_of_order)?;
        section(f, "watermark regressions", &self.watermark_regressions)?;
        section(f, "unretryable failures", &self.unretryable_failures)
    }
}

fn section<T: fmt::Display>(f: &mut fmt::Formatter<'_>, title: &str, items: &[T]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n{title} ({}):", items.len())?;
    for item in items.iter().take(SHOWN) {
        write!(f, "\n  - {item}")?;
    }
    if items.len() > SHOWN {
        write!(f, "\n  - ...and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

/// An acked message an expected receiver never saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub receiver: String,
    pub conversation_id: String,
    pub seq: u64,
    pub client_msg_id: String,
    pub text: String,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} never saw {} #{} ({:?}, client_msg_id {})",
            self.receiver, self.conversation_id, self.seq, self.text, self.client_msg_id
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Duplicate {
    /// A receiver was shown the same message more than once.
    Shown {
        receiver: String,
        conversation_id: String,
        seq: u64,
        times: usize,
    },
    /// One client_msg_id stored at several seqs: a retry was not recognised.
    Stored {
        conversation_id: String,
        client_msg_id: String,
        seqs: Vec<u64>,
    },
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Duplicate::Shown {
                receiver,
                conversation_id,
                seq,
                times,
            } => write!(
                f,
                "{receiver} was shown {conversation_id} #{seq} {times} times"
            ),
            Duplicate::Stored {
                conversation_id,
                client_msg_id,
                seqs,
            } => write!(
                f,
                "client_msg_id {client_msg_id} is stored in {conversation_id} at seqs {seqs:?}"
            ),
        }
    }
}

/// Several messages (by client_msg_id) at one seq, e.g. two replicas that each
/// assigned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub conversation_id: String,
    pub seq: u64,
    pub client_msg_ids: Vec<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} is claimed by client_msg_ids {:?}",
            self.conversation_id, self.seq, self.client_msg_ids
        )
    }
}

/// A receiver got `got` when the highest seq it had was `after`: a gap if higher
/// than the next, a step back if lower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfOrder {
    pub receiver: String,
    pub conversation_id: String,
    pub after: u64,
    pub got: u64,
}

impl fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.got > self.after {
            "skipped to"
        } else {
            "went back to"
        };
        write!(
            f,
            "{} in {}: after #{} {what} #{}",
            self.receiver, self.conversation_id, self.after, self.got
        )
    }
}

/// Watermarks as (delivered_seq, read_seq) that moved back for an observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    pub observer: String,
    pub conversation_id: String,
    pub user: String,
    pub from: (u64, u64),
    pub to: (u64, u64),
}

impl fmt::Display for Regression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} saw {}'s (delivered, read) in {} go from {:?} to {:?}",
            self.observer, self.user, self.conversation_id, self.from, self.to
        )
    }
}

/// A send that failed with a code no client would retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub client_msg_id: String,
    pub conversation_id: String,
    pub code: Code,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "send {} to {} failed with {}",
            self.client_msg_id,
            self.conversation_id,
            chat_sdk::code_name(self.code)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::{Conflict, Duplicate, Ledger, OutOfOrder};

    /// Alice sends `count` messages to "c", acked as seqs 1..=count, with
    /// client_msg_ids m1, m2, ...; bob and carol must see them.
    fn scenario(count: u64) -> Ledger {
        let ledger = Ledger::new();
        ledger.expect("bob", "c");
        ledger.expect("carol", "c");
        for seq in 1..=count {
            let id = format!("m{seq}");
            ledger.sent("c", &id, &format!("hello {seq}"));
            ledger.acked("c", &id, seq);
        }
        ledger
    }

    fn receive(ledger: &Ledger, receiver: &str, seqs: &[u64]) {
        for &seq in seqs {
            ledger.received(receiver, "c", seq, &format!("m{seq}"));
        }
    }

    #[test]
    fn a_faithful_run_is_clean() {
        let ledger = scenario(3);
        receive(&ledger, "bob", &[1, 2, 3]);
        receive(&ledger, "carol", &[1, 2, 3]);
        ledger.receipt("alice", "c", "bob", 2, 1);
        ledger.receipt("alice", "c", "bob", 3, 3);
        ledger.failed("m4", Code::Unavailable);
        let report = ledger.check();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.acked, 3);
        ledger.assert_clean();
    }

    #[test]
    fn finds_lost_messages_and_gaps() {
        let ledger = scenario(3);
        receive(&ledger, "bob", &[1, 3]);
        receive(&ledger, "carol", &[1, 2, 3]);
        let report = ledger.check();
        assert_eq!(report.lost.len(), 1, "{report}");
        assert_eq!(
            (report.lost[0].receiver.as_str(), report.lost[0].seq),
            ("bob", 2)
        );
        assert_eq!(report.lost[0].text, "hello 2");
        assert_eq!(
            report.out_of_order,
            vec![OutOfOrder {
                receiver: "bob".into(),
                conversation_id: "c".into(),
                after: 1,
                got: 3,
            }]
        );
    }

    #[test]
    fn a_receiver_that_saw_nothing_lost_everything() {
        let ledger = scenario(2);
        receive(&ledger, "bob", &[1, 2]);
        let report = ledger.check();
        let lost: Vec<_> = report
            .lost
            .iter()
            .map(|l| (l.receiver.as_str(), l.seq))
            .collect();
        assert_eq!(lost, [("carol", 1), ("carol", 2)]);
    }

    #[test]
    fn finds_steps_back() {
        let ledger = scenario(3);
        receive(&ledger, "bob", &[2, 1, 3]);
        let report = ledger.check();
        let steps: Vec<_> = report
            .out_of_order
            .iter()
            .map(|o| (o.after, o.got))
            .collect();
        // 1 after 2 went back; 3 after the highest, 2, is in order.
        assert_eq!(steps, [(2, 1)]);
    }

    #[test]
    fn finds_messages_shown_twice() {
        let ledger = scenario(3);
        receive(&ledger, "bob", &[1, 2, 2, 3]);
        receive(&ledger, "carol", &[1, 2, 3]);
        let report = ledger.check();
        assert_eq!(
            report.duplicates,
            vec![Duplicate::Shown {
                receiver: "bob".into(),
                conversation_id: "c".into(),
                seq: 2,
                times: 2,
            }]
        );
        assert!(report.out_of_order.is_empty(), "{report}");
        assert!(report.lost.is_empty(), "{report}");
    }

    #[test]
    fn finds_a_retry_stored_twice() {
        let ledger = scenario(1);
        // The retry of m1 was stored again as #2; its ack said #1.
        ledger.received("bob", "c", 1, "m1");
        ledger.received("bob", "c", 2, "m1");
        let report = ledger.check();
        assert_eq!(
            report.duplicates,
            vec![Duplicate::Stored {
                conversation_id: "c".into(),
                client_msg_id: "m1".into(),
                seqs: vec![1, 2],
            }]
        );
    }

    #[test]
    fn finds_two_messages_at_one_seq() {
        let ledger = scenario(1);
        // Two replicas both handed out #2.
        ledger.acked("c", "x", 2);
        ledger.acked("c", "y", 2);
        let report = ledger.check();
        assert_eq!(
            report.conflicts,
            vec![Conflict {
                conversation_id: "c".into(),
                seq: 2,
                client_msg_ids: vec!["x".into(), "y".into()],
            }]
        );
    }

    #[test]
    fn a_receiver_may_start_mid_conversation() {
        let ledger = scenario(5);
        ledger.expect_from("bob", "c", 3);
        ledger.expect_from("carol", "c", 3);
        receive(&ledger, "bob", &[3, 4, 5]);
        receive(&ledger, "carol", &[4, 5]);
        let report = ledger.check();
        assert!(report.out_of_order.is_empty(), "{report}");
        let lost: Vec<_> = report
            .lost
            .iter()
            .map(|l| (l.receiver.as_str(), l.seq))
            .collect();
        assert_eq!(lost, [("carol", 3)]);
    }

    #[test]
    fn finds_watermarks_moving_back() {
        let ledger = scenario(0);
        ledger.receipt("alice", "c", "bob", 5, 3);
        ledger.receipt("alice", "c", "bob", 5, 5);
        ledger.receipt("alice", "c", "bob", 4, 5);
        ledger.receipt("alice", "c", "bob", 6, 2);
        // Other observers and users are tracked apart.
        ledger.receipt("carol", "c", "bob", 1, 1);
        ledger.receipt("alice", "c", "carol", 1, 0);
        let report = ledger.check();
        let moves: Vec<_> = report
            .watermark_regressions
            .iter()
            .map(|r| (r.from, r.to))
            .collect();
        assert_eq!(moves, [((5, 5), (4, 5)), ((5, 5), (6, 2))]);
    }

    #[test]
    fn only_unretryable_failures_are_problems() {
        let ledger = Ledger::new();
        ledger.sent("c", "a", "a");
        ledger.failed("a", Code::Unavailable);
        ledger.failed("a", Code::DeadlineExceeded);
        ledger.sent("c", "b", "b");
        ledger.failed("b", Code::Internal);
        let report = ledger.check();
        assert_eq!(report.unretryable_failures.len(), 1, "{report}");
        assert_eq!(report.unretryable_failures[0].client_msg_id, "b");
        assert_eq!(report.unretryable_failures[0].code, Code::Internal);
    }

    #[test]
    fn the_ack_names_the_conversation_of_a_send_to_a_user() {
        let ledger = Ledger::new();
        ledger.expect("bob", "c");
        ledger.sent("", "m1", "hi");
        ledger.acked("c", "m1", 1);
        assert_eq!(ledger.check().lost.len(), 1);
        ledger.received("bob", "c", 1, "m1");
        ledger.assert_clean();
    }

    #[test]
    #[should_panic(expected = "bob never saw c #2")]
    fn assert_clean_names_the_problem() {
        let ledger = scenario(2);
        receive(&ledger, "bob", &[1]);
        receive(&ledger, "carol", &[1, 2]);
        ledger.assert_clean();
    }

    #[test]
    fn the_summary_lists_the_first_few() {
        let ledger = scenario(9);
        let summary = ledger.check().to_string();
        assert!(summary.contains("lost (18):"), "{summary}");
        assert!(summary.contains("...and 13 more"), "{summary}");
    }

    #[tokio::test]
    async fn waits_until_everything_arrived() {
        let ledger = scenario(2);
        receive(&ledger, "carol", &[1, 2]);
        assert!(!ledger.wait_until_received(Duration::from_millis(100)).await);
        let late = ledger.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            receive(&late, "bob", &[1, 2]);
        });
        assert!(ledger.wait_until_received(crate::DEADLINE).await);
    }
}
