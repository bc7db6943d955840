//! Facts that never change once true, kept in memory so a send does not read them
//! again: which user a name belongs to, and who the two members of a direct
//! conversation are (a direct conversation is made once, with exactly its two users).
//!
//! Names are never reused and accounts never renamed, so an entry cannot go stale.
//! Group conversations are not cached: their members may change. Each map is bounded;
//! a full map starts over, which costs only re-reading what is in use.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::domain::{ConversationId, UserId, UserName, UserRef};

/// Entries per map before it starts over.
const CAPACITY: usize = 200_000;

#[derive(Default)]
pub struct Directory {
    users: Bounded<UserName, UserRef>,
    directs: Bounded<ConversationId, [UserId; 2]>,
}

impl Directory {
    pub fn user(&self, name: &UserName) -> Option<UserRef> {
        self.users.get(name)
    }

    pub fn remember_user(&self, user: &UserRef) {
        self.users.insert(user.name.clone(), user.clone());
    }

    /// The members of `conversation` if it is a direct conversation known to exist.
    pub fn direct_members(&self, conversation: ConversationId) -> Option<[UserId; 2]> {
        self.directs.get(&conversation)
    }

    /// Records the members of a conversation read from the store, if they make it a
    /// direct conversation (its id is derived from exactly these two users).
    pub fn remember_members(&self, conversation: ConversationId, members: &[UserId]) {
        if let [a, b] = members
            && ConversationId::direct(*a, *b) == conversation
        {
            self.directs.insert(conversation, [*a, *b]);
        }
    }
}

struct Bounded<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Bounded<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn insert(&self, key: K, value: V) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn only_direct_conversations_are_remembered() {
        let d = Directory::default();
        let (a, b, c) = (
            UserId(Uuid::new_v4()),
            UserId(Uuid::new_v4()),
            UserId(Uuid::new_v4()),
        );
        let direct = ConversationId::direct(a, b);
        d.remember_members(direct, &[a, b]);
        assert_eq!(d.direct_members(direct), Some([a, b]));
        let group = ConversationId(Uuid::new_v4());
        d.remember_members(group, &[a, b]);
        d.remember_members(group, &[a, b, c]);
        assert_eq!(d.direct_members(group), None);
    }
}
