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
//! Replicas of a PostgreSQL ledger share the turns ([`CreditLedger::begin_turn`]) while some
//! CreditPolicy prices tokens: a chat's second prediction is then refused whichever replica it
//! reaches. Without token pricing two predictions in one chat shift no charge (each costs its
//! flat cost, charged at reserve), and what is left — a hang-up's abort missing its run, one of
//! the two streams cut short — harms only the caller who sent them, so the turns stay per
//! replica: sharing costs a share of a round trip per prediction (`scripts/bench-ab` measured a
//! saturated PostgreSQL-charged path with token pricing at 0.64× its throughput without). A replica first
//! takes the turn in its own process, which its proxy threads share, and only then asks the
//! others; while the database cannot be asked, and on SQLite (one replica), the turns are its
//! own ([`super::replicas`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::error::ProxyError;
use super::replicas::Replicas;
use crate::ledger::{CreditLedger, SharedTurn};

/// The chats with a prediction under way, shared by the proxy's threads, and by the replicas
/// where the ledger shares them.
#[derive(Clone)]
pub struct ChatTurns {
    // SipHash: the chat ids carry what clients send.
    busy: Arc<Mutex<HashSet<Arc<str>>>>,
    shared: Arc<Replicas>,
}

impl Default for ChatTurns {
    fn default() -> Self {
        Self {
            busy: Arc::default(),
            shared: Arc::new(Replicas::alone()),
        }
    }
}

/// A chat's turn: the chat is busy until this is dropped.
pub struct Turn {
    busy: Arc<Mutex<HashSet<Arc<str>>>>,
    chat_id: Arc<str>,
    /// The replicas' turn, ended with this one.
    shared: Option<(Arc<dyn CreditLedger>, u64)>,
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("chat_id", &self.chat_id)
            .field("shared", &self.shared.as_ref().map(|(_, turn)| turn))
            .finish()
    }
}

/// How long a chat another replica holds is waited for before it is busy: an ended turn's
/// end is written in the replica's next round, normally within milliseconds.
const BUSY_RECHECK: Duration = Duration::from_millis(250);

impl ChatTurns {
    /// Turns shared by the replicas of `ledger` where it shares them.
    pub fn shared(ledger: Arc<dyn CreditLedger>) -> Self {
        Self {
            shared: Arc::new(Replicas::sharing(
                ledger,
                "shared chat turns unavailable: each replica keeps its own",
            )),
            ..Self::default()
        }
    }

    /// The turn of the chat `chat_id` (as bound to the caller), or `ChatBusy` while another
    /// prediction holds it, in this process or, `across_replicas` where they share turns, in
    /// another replica.
    pub async fn begin(&self, chat_id: &str, across_replicas: bool) -> Result<Turn, ProxyError> {
        let mut turn = self.begin_here(chat_id)?;
        if !across_replicas {
            return Ok(turn);
        }
        let mut asked = self.shared.ask(|ledger| ledger.begin_turn(chat_id)).await;
        if asked == Some(SharedTurn::Busy) {
            // The chat's last prediction may have just ended on another replica, its turn's end
            // queued there and not written yet (a client that asks again at once, sent to
            // another replica). Asked once more a moment later before it is busy.
            tokio::time::sleep(BUSY_RECHECK).await;
            asked = match self.shared.ask(|ledger| ledger.begin_turn(chat_id)).await {
                // Not asked this time (the database slow or failing): busy a moment ago is
                // what is known, not a chat to take alone beside another replica's run.
                None => Some(SharedTurn::Busy),
                answer => answer,
            };
        }
        match asked {
            Some(SharedTurn::Taken(number)) => {
                turn.shared = self.shared.ledger().map(|ledger| (ledger.clone(), number));
            }
            Some(SharedTurn::Busy) => return Err(ProxyError::ChatBusy),
            None => {}
        }
        Ok(turn)
    }

    /// The turn of `chat_id` in this process.
    fn begin_here(&self, chat_id: &str) -> Result<Turn, ProxyError> {
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
            shared: None,
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
        if let Some((ledger, turn)) = self.shared.take() {
            ledger.end_turn(turn);
        }
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.chat_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{
        AdjustOutcome, AdjustRequest, BucketBalance, LedgerError, LedgerFuture, Limits,
        PolicyUsage, PrunedChunk, ReservationId, ReserveOutcome, ReserveRequest, Resolution,
        UsageFilter, UsageRecord, Window,
    };
    use jiff::Timestamp;

    #[test]
    fn a_chat_takes_one_prediction_at_a_time() {
        let turns = ChatTurns::default();
        let first = turns.begin_here("fg-a-1").expect("a free chat");
        assert!(matches!(
            turns.begin_here("fg-a-1"),
            Err(ProxyError::ChatBusy)
        ));
        let other = turns.begin_here("fg-a-2").expect("another chat is free");
        assert_eq!(turns.busy(), 2);
        drop(first);
        let again = turns
            .begin_here("fg-a-1")
            .expect("free once the turn ended");
        drop((again, other));
        assert_eq!(turns.busy(), 0);
    }

    /// A ledger that answers `begin_turn` from a script, and is asked nothing else.
    struct Scripted(Mutex<Vec<Result<Option<SharedTurn>, LedgerError>>>);

    impl CreditLedger for Scripted {
        fn begin_turn<'a>(&'a self, _chat: &'a str) -> LedgerFuture<'a, Option<SharedTurn>> {
            let next = self.0.lock().expect("script").remove(0);
            Box::pin(async move { next })
        }
        fn reserve(&self, _: ReserveRequest) -> LedgerFuture<'_, ReserveOutcome> {
            unreachable!("not asked")
        }
        fn settle<'a>(
            &'a self,
            _: ReservationId,
            _: &'a [u64],
            _: u64,
            _: Timestamp,
        ) -> LedgerFuture<'a, Resolution> {
            unreachable!("not asked")
        }
        fn refund(&self, _: ReservationId, _: Timestamp) -> LedgerFuture<'_, Resolution> {
            unreachable!("not asked")
        }
        fn adjust(&self, _: AdjustRequest) -> LedgerFuture<'_, AdjustOutcome> {
            unreachable!("not asked")
        }
        fn sweep(&self, _: Timestamp) -> LedgerFuture<'_, u64> {
            unreachable!("not asked")
        }
        fn balance<'a>(&'a self, _: &'a str, _: &'a str, _: &'a Window) -> LedgerFuture<'a, i64> {
            unreachable!("not asked")
        }
        fn policy_usage<'a>(
            &'a self,
            _: &'a str,
            _: &'a Window,
            _: Limits,
        ) -> LedgerFuture<'a, PolicyUsage> {
            unreachable!("not asked")
        }
        fn buckets<'a>(
            &'a self,
            _: &'a str,
            _: &'a Window,
            _: Option<&'a str>,
            _: u32,
        ) -> LedgerFuture<'a, Vec<BucketBalance>> {
            unreachable!("not asked")
        }
        fn usage(&self, _: UsageFilter) -> LedgerFuture<'_, Vec<UsageRecord>> {
            unreachable!("not asked")
        }
        fn prune_reservations(
            &self,
            _: Timestamp,
            _: ReservationId,
            _: u32,
        ) -> LedgerFuture<'_, PrunedChunk> {
            unreachable!("not asked")
        }
        fn prune_usage(&self, _: Timestamp, _: u32) -> LedgerFuture<'_, u64> {
            unreachable!("not asked")
        }
        fn prune_buckets(&self, _: Timestamp, _: u32) -> LedgerFuture<'_, u64> {
            unreachable!("not asked")
        }
    }

    /// A chat another replica holds, and the database not answering the second look a moment
    /// later: still busy, not taken alone beside the other replica's run. Answered the second
    /// time, the answer stands.
    #[tokio::test]
    async fn a_chat_busy_elsewhere_stays_busy_when_the_second_look_is_not_answered() {
        let turns = |script| ChatTurns::shared(Arc::new(Scripted(Mutex::new(script))));
        let unanswered = turns(vec![Ok(Some(SharedTurn::Busy)), Err(LedgerError::Stopped)]);
        assert!(matches!(
            unanswered.begin("fg-a-1", true).await,
            Err(ProxyError::ChatBusy)
        ));
        let ended = turns(vec![
            Ok(Some(SharedTurn::Busy)),
            Ok(Some(SharedTurn::Taken(7))),
        ]);
        let turn = ended.begin("fg-a-1", true).await.expect("ended meanwhile");
        assert_eq!(turn.shared.as_ref().map(|(_, n)| *n), Some(7));
    }

    #[test]
    fn the_turns_are_shared_by_clones() {
        let turns = ChatTurns::default();
        let _first = turns.begin_here("fg-a-1").expect("a free chat");
        assert!(matches!(
            turns.clone().begin_here("fg-a-1"),
            Err(ProxyError::ChatBusy)
        ));
    }
}
