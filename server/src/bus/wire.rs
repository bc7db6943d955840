//! What travels on a Redis channel: one byte of kind, the publishing process's id, and
//! for events the protobuf `ServerFrame` clients would see. Reusing the client frame
//! keeps one encoding of every event; the process id lets a replica skip its own
//! publishes, which it has already handed to its sessions directly.

use chat_proto::v1 as pb;
use prost::Message as _;
use uuid::Uuid;

use crate::api::convert;
use crate::domain::Event;

const EVENT: u8 = 1;
const RESYNC: u8 = 2;
const HEADER: usize = 1 + 16;

/// A payload read off the bus.
#[derive(Debug)]
pub(super) enum Payload {
    Event(Event),
    /// The publisher lost events for this channel's user: catch up from the store.
    Resync,
}

pub(super) fn encode_event(origin: Uuid, event: &Event) -> Vec<u8> {
    let frame = convert::event_frame(event);
    let mut out = Vec::with_capacity(HEADER + frame.encoded_len());
    out.push(EVENT);
    out.extend_from_slice(origin.as_bytes());
    // Writing into a Vec cannot run out of room.
    let _ = frame.encode(&mut out);
    out
}

pub(super) fn encode_resync(origin: Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.push(RESYNC);
    out.extend_from_slice(origin.as_bytes());
    out
}

/// The payload and the process that published it; `None` for bytes this version
/// does not understand (a newer replica during a rolling upgrade), which are skipped.
pub(super) fn decode(bytes: &[u8]) -> Option<(Uuid, Payload)> {
    if bytes.len() < HEADER {
        return None;
    }
    let origin = Uuid::from_slice(&bytes[1..HEADER]).ok()?;
    let payload = match bytes[0] {
        EVENT => {
            let frame = pb::ServerFrame::decode(&bytes[HEADER..]).ok()?;
            Payload::Event(convert::event_from_frame(frame)?)
        }
        RESYNC => Payload::Resync,
        _ => return None,
    };
    Some((origin, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ClientMsgId, ConversationId, Message, MessageId, MessageText, Timestamp, UserId, UserName,
        UserRef,
    };
    use std::sync::Arc;

    #[test]
    fn a_message_survives_the_trip() {
        let origin = Uuid::new_v4();
        let message = Message {
            conversation_id: ConversationId(Uuid::new_v4()),
            seq: 42,
            id: MessageId(Uuid::new_v4()),
            sender: UserRef {
                id: UserId(Uuid::new_v4()),
                name: UserName::from_stored("alex".into()),
            },
            client_msg_id: ClientMsgId::from_stored("c-1".into()),
            text: MessageText::from_stored("héllo".into()),
            sent_at: Timestamp(1_764_000_000_123_456),
        };
        let bytes = encode_event(origin, &Event::Message(Arc::new(message.clone())));
        match decode(&bytes) {
            Some((from, Payload::Event(Event::Message(m)))) => {
                assert_eq!(from, origin);
                assert_eq!(*m, message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode(&encode_resync(origin)),
            Some((_, Payload::Resync))
        ));
        assert!(decode(&[9; 20]).is_none());
        assert!(decode(b"short").is_none());
    }
}
