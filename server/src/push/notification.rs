//! What a push says: the JSON a webhook receives and a Web Push service worker
//! decrypts. One notification covers a burst in one conversation.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The same on every retry of this notification (and on a second worker's
    /// re-delivery after a crash): receivers drop repeats by it.
    pub delivery_id: String,
    /// The recipient's user name.
    pub user: String,
    pub conversation_id: String,
    /// The newest message the notification covers.
    pub seq: u64,
    /// Unread messages in this conversation.
    pub unread: u64,
    /// Unread messages in all the recipient's conversations: the app badge.
    pub badge: u64,
    /// "alex" in content mode, "New message" when content-free.
    pub title: String,
    /// The newest message's text; absent when content-free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The newest message's sender; absent when content-free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// When the newest message was stored, Unix milliseconds.
    pub sent_at_ms: i64,
}
