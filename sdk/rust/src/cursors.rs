//! Per-conversation cursors: the highest seq the client holds in each conversation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto;

/// Where a client stands in each conversation; a new session resumes after these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursors(BTreeMap<String, u64>);

impl Cursors {
    /// No conversation known yet: the server resumes from the delivered watermarks.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cursor of one conversation (0 when unknown).
    pub fn get(&self, conversation_id: &str) -> u64 {
        self.0.get(conversation_id).copied().unwrap_or(0)
    }

    /// Records `seq` as held; true if it is new (above the cursor), false for a duplicate.
    pub fn advance(&mut self, conversation_id: &str, seq: u64) -> bool {
        let cursor = self.0.entry(conversation_id.to_owned()).or_insert(0);
        if seq <= *cursor {
            return false;
        }
        *cursor = seq;
        true
    }

    /// No conversation has a cursor.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every conversation and its cursor.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub(crate) fn to_proto(&self) -> Vec<proto::Cursor> {
        self.0
            .iter()
            .map(|(c, &seq)| proto::Cursor {
                conversation_id: c.clone(),
                seq,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_old_seqs_are_not_new() {
        let mut c = Cursors::new();
        assert!(c.advance("a", 1));
        assert!(!c.advance("a", 1), "duplicate");
        assert!(c.advance("a", 3));
        assert!(!c.advance("a", 2), "older");
        assert!(c.advance("b", 1), "conversations are independent");
        assert_eq!((c.get("a"), c.get("b"), c.get("z")), (3, 1, 0));
    }
}
