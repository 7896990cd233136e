//! One prediction at a time per chat.
//!
//! Flowise routes a run's stream events by its chat id alone, whatever the chatflow: a second
//! stream in the chat takes the events of the first run (whose own stream then carries no token
//! and no usage report), and a run that ends closes whatever stream the chat has then. Its abort
//! controllers are keyed by chatflow and chat and stop the latest run there. Two predictions in
//! one chat at once would therefore let a caller read one run's answer on another request,
//! charged as the other (a token-priced run on the stream of a flat-priced one), and make a
//! hang-up's abort miss the run it was for. So a chat takes one prediction at a time: a second
//! one while the first runs is refused with 409 `chat_busy` before anything is charged. A chat's
//! turn ends when its answer has been read from Flowise — for a stream, when it ended, also when
//! it was read on after its client left ([`super::drain`]) — or, for a run flowgate asked Flowise
//! to abort, a moment after that request was answered.
//!
//! The turns are per process: replicas behind one Service do not see each other's.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use super::error::ProxyError;

/// The chats with a prediction under way, shared by the proxy's threads.
#[derive(Clone, Default)]
pub struct ChatTurns {
    // SipHash: the chat ids carry what clients send.
    busy: Arc<Mutex<HashSet<Arc<str>>>>,
}

/// A chat's turn: the chat is busy until this is dropped.
#[derive(Debug)]
pub struct Turn {
    busy: Arc<Mutex<HashSet<Arc<str>>>>,
    chat_id: Arc<str>,
}

impl ChatTurns {
    /// The turn of the chat `chat_id` (as bound to the caller), or `ChatBusy` while another
    /// prediction holds it.
    pub fn begin(&self, chat_id: &str) -> Result<Turn, ProxyError> {
        let chat_id: Arc<str> = Arc::from(chat_id);
        let inserted = self
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chat_id.clone());
        if !inserted {
            return Err(ProxyError::ChatBusy);
        }
        Ok(Turn {
            busy: self.busy.clone(),
            chat_id,
        })
    }

    /// Chats with a prediction under way.
    pub fn busy(&self) -> usize {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.chat_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_takes_one_prediction_at_a_time() {
        let turns = ChatTurns::default();
        let first = turns.begin("fg-a-1").expect("a free chat");
        assert!(matches!(turns.begin("fg-a-1"), Err(ProxyError::ChatBusy)));
        let other = turns.begin("fg-a-2").expect("another chat is free");
        assert_eq!(turns.busy(), 2);
        drop(first);
        let again = turns.begin("fg-a-1").expect("free once the turn ended");
        drop((again, other));
        assert_eq!(turns.busy(), 0);
    }

    #[test]
    fn the_turns_are_shared_by_clones() {
        let turns = ChatTurns::default();
        let _first = turns.begin("fg-a-1").expect("a free chat");
        assert!(matches!(
            turns.clone().begin("fg-a-1"),
            Err(ProxyError::ChatBusy)
        ));
    }
}
