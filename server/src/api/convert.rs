//! Conversion between domain types and the generated protobuf types: the only place
//! where the two meet.

use chat_proto::v1 as pb;
use pb::server_frame::Kind;

use crate::auth::IssuedSession;
use crate::chat::{ConversationView, SendInput, Target};
use crate::domain::{
    ClientMsgId, ConversationId, ConversationKind, Event, Message, MessageId, MessageStatus,
    MessageText, PresenceState, Receipt, Timestamp, UserId, UserName, UserRef,
};
use crate::error::{ChatError, code_name};
use crate::store::Appended;

pub(crate) fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_seconds(),
        nanos: i32::try_from(t.micros().rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

pub(crate) fn user(u: &UserRef) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        name: u.name.to_string(),
    }
}

pub(crate) fn status(s: MessageStatus) -> pb::MessageStatus {
    match s {
        MessageStatus::Sent => pb::MessageStatus::Sent,
        MessageStatus::Delivered => pb::MessageStatus::Delivered,
        MessageStatus::Read => pb::MessageStatus::Read,
    }
}

pub(crate) fn message(m: &Message, s: MessageStatus) -> pb::Message {
    pb::Message {
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq,
        id: m.id.to_string(),
        sender: Some(user(&m.sender)),
        client_msg_id: m.client_msg_id.as_str().to_owned(),
        text: m.text.as_str().to_owned(),
        sent_at: Some(timestamp(m.sent_at)),
        status: status(s).into(),
    }
}

pub(crate) fn receipt(r: &Receipt) -> pb::Receipt {
    pb::Receipt {
        conversation_id: r.conversation_id.to_string(),
        user: Some(user(&r.user)),
        delivered_seq: r.delivered_seq,
        read_seq: r.read_seq,
    }
}

pub(crate) fn presence(p: &PresenceState) -> pb::Presence {
    pb::Presence {
        user: Some(user(&p.user)),
        online: p.online,
        last_seen: p.last_seen.map(timestamp),
    }
}

pub(crate) fn send_ack(a: &Appended) -> pb::SendAck {
    pb::SendAck {
        client_msg_id: a.message.client_msg_id.as_str().to_owned(),
        conversation_id: a.message.conversation_id.to_string(),
        seq: a.message.seq,
        message_id: a.message.id.to_string(),
        sent_at: Some(timestamp(a.message.sent_at)),
        duplicate: a.duplicate,
    }
}

pub(crate) fn frame(kind: Kind) -> pb::ServerFrame {
    pb::ServerFrame { kind: Some(kind) }
}

/// The frame for a live event (messages included, with status SENT).
pub(crate) fn event_frame(event: &Event) -> pb::ServerFrame {
    frame(match event {
        Event::Message(m) => Kind::Message(message(m, MessageStatus::Sent)),
        Event::Receipt(r) => Kind::Receipt(receipt(r)),
        Event::Presence(p) => Kind::Presence(presence(p)),
        Event::Typing {
            conversation_id,
            user: u,
            typing,
        } => Kind::Typing(pb::Typing {
            conversation_id: conversation_id.to_string(),
            user: Some(user(u)),
            typing: *typing,
        }),
    })
}

pub(crate) fn error_frame(request_id: u64, e: ChatError, client_msg_id: String) -> pb::ServerFrame {
    let status = tonic::Status::from(e);
    frame(Kind::Error(pb::Error {
        request_id,
        code: code_name(status.code()).to_owned(),
        message: status.message().to_owned(),
        client_msg_id,
    }))
}

pub(crate) fn send_input(m: pb::SendMessage) -> SendInput {
    SendInput {
        client_msg_id: m.client_msg_id,
        target: m.target.map(|t| match t {
            pb::send_message::Target::ConversationId(id) => Target::Conversation(id),
            pb::send_message::Target::Recipient(name) => Target::Recipient(name),
        }),
        text: m.text,
    }
}

pub(crate) fn conversation(v: &ConversationView) -> pb::Conversation {
    let s = &v.summary;
    let peer = (s.kind == ConversationKind::Direct)
        .then(|| s.others.first())
        .flatten();
    pb::Conversation {
        id: s.id.to_string(),
        kind: match s.kind {
            ConversationKind::Direct => pb::ConversationKind::Direct,
            ConversationKind::Group => pb::ConversationKind::Group,
        }
        .into(),
        peer: peer.map(|r| user(&r.user)),
        last_seq: s.last_seq,
        unread: s.last_seq.saturating_sub(s.own.read_seq),
        last_message: s.last_message.as_ref().map(|m| {
            let mut all = s.others.clone();
            all.push(s.own.clone());
            message(m, MessageStatus::derive(m.seq, m.sender.id, &all))
        }),
        delivered_seq: s.own.delivered_seq,
        read_seq: s.own.read_seq,
        peer_receipt: peer.map(receipt),
        peer_presence: v.peer_presence.as_ref().map(presence),
        muted: v.summary.muted,
    }
}

pub(crate) fn device_session(s: IssuedSession) -> pb::DeviceSession {
    pb::DeviceSession {
        token: s.token,
        expires_at: Some(timestamp(s.session.expires_at)),
        user: Some(user(&s.session.user)),
    }
}

/// The event a frame from [`event_frame`] describes: how another replica's event is
/// read back off the bus. `None` for a frame that is not an event or does not parse.
pub(crate) fn event_from_frame(frame: pb::ServerFrame) -> Option<Event> {
    Some(match frame.kind? {
        Kind::Message(m) => Event::Message(std::sync::Arc::new(Message {
            conversation_id: uuid(&m.conversation_id).map(ConversationId)?,
            seq: m.seq,
            id: uuid(&m.id).map(MessageId)?,
            sender: user_ref(m.sender?)?,
            client_msg_id: ClientMsgId::from_stored(m.client_msg_id),
            text: MessageText::from_stored(m.text),
            sent_at: from_timestamp(m.sent_at?),
        })),
        Kind::Receipt(r) => Event::Receipt(Receipt {
            conversation_id: uuid(&r.conversation_id).map(ConversationId)?,
            user: user_ref(r.user?)?,
            delivered_seq: r.delivered_seq,
            read_seq: r.read_seq,
        }),
        Kind::Presence(p) => Event::Presence(PresenceState {
            user: user_ref(p.user?)?,
            online: p.online,
            last_seen: p.last_seen.map(from_timestamp),
        }),
        Kind::Typing(t) => Event::Typing {
            conversation_id: uuid(&t.conversation_id).map(ConversationId)?,
            user: user_ref(t.user?)?,
            typing: t.typing,
        },
        _ => return None,
    })
}

fn uuid(raw: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(raw).ok()
}

fn user_ref(u: pb::User) -> Option<UserRef> {
    Some(UserRef {
        id: UserId(uuid(&u.id)?),
        name: UserName::from_stored(u.name),
    })
}

fn from_timestamp(t: prost_types::Timestamp) -> Timestamp {
    Timestamp(t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}
