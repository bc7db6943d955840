//! Domain types of the chat server, apart from the generated protobuf types.
//!
//! Values are validated when they are parsed at the edge (`UserName::parse`,
//! `MessageText::parse`, ...), so a value that exists is valid.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

use crate::error::ChatError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the canonical text form, as sent by clients.
            pub fn parse(s: &str, what: &'static str) -> Result<Self, ChatError> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| ChatError::InvalidArgument(format!("{what} is not a valid id")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// One device session (a bearer token). Presence is tracked per device.
    DeviceId
);
uuid_id!(
    /// A conversation (direct or group). A direct conversation's id is derived from its members.
    ConversationId
);
uuid_id!(
    /// A stored message.
    MessageId
);
uuid_id!(
    /// A place to push notifications to: a webhook or a Web Push subscription.
    PushTargetId
);

/// Namespace for deriving direct conversation ids (UUIDv5), fixed forever.
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6c1a_3d4e_2b7f_4c0e_9a51_8f3e_0d2c_7b19);

impl ConversationId {
    /// The direct conversation of two users: the same id whoever asks, so "send to riya"
    /// needs no setup call and two racing first messages meet in one conversation.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(lo.0.as_bytes());
        key[16..].copy_from_slice(hi.0.as_bytes());
        ConversationId(Uuid::new_v5(&DIRECT_NAMESPACE, &key))
    }
}

/// A point in time with microsecond precision, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// This time plus `d` (saturating).
    pub fn after(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

/// A user name: 1 to 32 characters of ASCII letters, digits, `_`, `-` and `.`, stored in
/// lower case so that "Riya" and "riya" are one account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserName(String);

impl UserName {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, ChatError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ChatError::InvalidArgument("user name is empty".into()));
        }
        if name.len() > Self::MAX_LEN {
            return Err(ChatError::InvalidArgument(format!(
                "user name is longer than {} characters",
                Self::MAX_LEN
            )));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ChatError::InvalidArgument(
                "user name may only hold letters, digits, '_', '-' and '.'".into(),
            ));
        }
        Ok(UserName(name.to_ascii_lowercase()))
    }

    /// A name read back from the store, already validated when it was written.
    pub fn from_stored(name: String) -> Self {
        UserName(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as typed: checked for length only; it is hashed, never stored.
pub struct Password(String);

impl Password {
    pub const MIN_LEN: usize = 8;
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: String) -> Result<Self, ChatError> {
        if raw.chars().count() < Self::MIN_LEN {
            return Err(ChatError::InvalidArgument(format!(
                "password must have at least {} characters",
                Self::MIN_LEN
            )));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ChatError::InvalidArgument(format!(
                "password is longer than {} bytes",
                Self::MAX_LEN
            )));
        }
        Ok(Password(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The text of a message: not blank, no U+0000 (Postgres rejects it in `text`), at most
/// the configured number of UTF-8 bytes. Protobuf strings are already valid UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: String, max_bytes: usize) -> Result<Self, ChatError> {
        if raw.trim().is_empty() {
            return Err(ChatError::InvalidArgument("message text is empty".into()));
        }
        if raw.len() > max_bytes {
            return Err(ChatError::InvalidArgument(format!(
                "message text is {} bytes, over the limit of {max_bytes}",
                raw.len()
            )));
        }
        if raw.contains('\0') {
            return Err(ChatError::InvalidArgument(
                "message text contains U+0000".into(),
            ));
        }
        Ok(MessageText(raw))
    }

    pub fn from_stored(text: String) -> Self {
        MessageText(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The client's idempotency key for a send: 1 to 64 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: String) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::InvalidArgument("client_msg_id is empty".into()));
        }
        if raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ChatError::InvalidArgument(format!(
                "client_msg_id must be 1 to {} printable ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(ClientMsgId(raw))
    }

    pub fn from_stored(id: String) -> Self {
        ClientMsgId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user as others see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRef {
    pub id: UserId,
    pub name: UserName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub id: MessageId,
    pub sender: UserRef,
    pub client_msg_id: ClientMsgId,
    pub text: MessageText,
    pub sent_at: Timestamp,
}

/// A member's receipt watermarks in one conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user: UserRef,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// The status of one message, derived from the watermarks of everyone but its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
}

impl MessageStatus {
    /// The status of message `seq` sent by `sender`, given every member's receipt: the
    /// least advanced recipient decides.
    pub fn derive(seq: u64, sender: UserId, receipts: &[Receipt]) -> Self {
        receipts
            .iter()
            .filter(|r| r.user.id != sender)
            .map(|r| {
                if r.read_seq >= seq {
                    MessageStatus::Read
                } else if r.delivered_seq >= seq {
                    MessageStatus::Delivered
                } else {
                    MessageStatus::Sent
                }
            })
            .min()
            .unwrap_or(MessageStatus::Sent)
    }
}

/// Online state of a user as shown to others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceState {
    pub user: UserRef,
    pub online: bool,
    pub last_seen: Option<Timestamp>,
}

/// Something that happened which live sessions must hear about. Events are doorbells:
/// the store stays the truth, and a session that misses one fills the gap from it.
#[derive(Clone, Debug)]
pub enum Event {
    Message(std::sync::Arc<Message>),
    Receipt(Receipt),
    Presence(PresenceState),
    Typing {
        conversation_id: ConversationId,
        user: UserRef,
        typing: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_is_symmetric_and_distinct() {
        let a = UserId(Uuid::new_v4());
        let b = UserId(Uuid::new_v4());
        let c = UserId(Uuid::new_v4());
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, c));
    }

    #[test]
    fn text_rules() {
        assert!(MessageText::parse("hi".into(), 10).is_ok());
        assert!(MessageText::parse("  ".into(), 10).is_err());
        assert!(MessageText::parse("a\0b".into(), 10).is_err());
        assert!(MessageText::parse("x".repeat(11), 10).is_err());
    }

    #[test]
    fn names_fold_case() {
        assert_eq!(
            UserName::parse("Riya").map(|n| n.0).ok(),
            Some("riya".into())
        );
        assert!(UserName::parse("ri ya").is_err());
        assert!(UserName::parse("").is_err());
    }

    #[test]
    fn status_takes_the_least_advanced_recipient() {
        let alex = UserRef {
            id: UserId(Uuid::new_v4()),
            name: UserName::from_stored("alex".into()),
        };
        let riya = UserRef {
            id: UserId(Uuid::new_v4()),
            name: UserName::from_stored("riya".into()),
        };
        let conv = ConversationId::direct(alex.id, riya.id);
        let r = |u: &UserRef, d, rd| Receipt {
            conversation_id: conv,
            user: u.clone(),
            delivered_seq: d,
            read_seq: rd,
        };
        let receipts = vec![r(&alex, 0, 0), r(&riya, 5, 3)];
        assert_eq!(
            MessageStatus::derive(3, alex.id, &receipts),
            MessageStatus::Read
        );
        assert_eq!(
            MessageStatus::derive(4, alex.id, &receipts),
            MessageStatus::Delivered
        );
        assert_eq!(
            MessageStatus::derive(6, alex.id, &receipts),
            MessageStatus::Sent
        );
    }
}
