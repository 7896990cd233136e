//! What replicas share besides budgets: rate allowances ([`CreditLedger::take_rate`], in
//! [`super::rates`]) and chat turns ([`CreditLedger::begin_turn`]), on a small pool of
//! connections apart from the ledger's, so that one caller's requests queueing on their row
//! cannot hold up everyone's reserves and settles.
//!
//! A turn is a row naming its replica (a random id per process) and a number of that replica's.
//! One task per replica asks for turns and ends them: whatever queued while it waited for the
//! database goes in one round trip (one statement takes every chat asked for, one deletes every
//! turn ended), so a busy replica pays a fraction of a round trip per prediction. The same task
//! renews the replica's turns every [`RENEW_EVERY`], so a turn outlives a replica that stopped,
//! or lost the database, by [`TURN_LEASE`] at most. It renews only the turns it knows are held
//! and deletes the replica's other rows, so a turn whose end was lost (a failed statement, an
//! answer nobody read) is deleted by the next renewal, or the one after when the database
//! committed it after that renewal ran (a take whose connection was lost).
//!
//! [`CreditLedger::take_rate`]: crate::ledger::CreditLedger::take_rate
//! [`CreditLedger::begin_turn`]: crate::ledger::CreditLedger::begin_turn

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_postgres::Config;

use super::pool::Pool;
use super::rates::{ROUND_LIMIT, Rates, gave_up, micros};
use crate::ledger::{LedgerError, RateTake, SharedTurn};

/// Connections per replica for what replicas share: one for each task (allowances, turns).
const POOL_SIZE: usize = 2;
/// How long a turn outlives its replica's last renewal.
const TURN_LEASE: Duration = Duration::from_secs(60);
/// How often a replica renews its turns.
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// Most turns one round trip takes or ends.
const OPS_PER_ROUND: usize = 256;

pub(super) struct Shared {
    rates: Rates,
    pool: Arc<Pool>,
    replica: Arc<str>,
    next_turn: AtomicU64,
    /// Turns to take and to end, for [`turns`].
    turns: mpsc::UnboundedSender<TurnOp>,
}

enum TurnOp {
    Begin {
        chat: String,
        turn: u64,
        reply: oneshot::Sender<Result<Answer, LedgerError>>,
    },
    End(u64),
}

impl Shared {
    /// Connects when first asked. Starts the tasks that take allowances, and take, end and
    /// renew turns, on the current runtime; they stop once this is dropped.
    pub(super) fn new(config: Config, tls: super::tls::TlsParams) -> Self {
        let pool = Arc::new(Pool::lazy(config, tls, POOL_SIZE));
        let replica: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (turns_tx, queue) = mpsc::unbounded_channel();
        tokio::spawn(turns(
            pool.clone(),
            replica.clone(),
            queue,
            turns_tx.downgrade(),
        ));
        Self {
            rates: Rates::new(pool.clone()),
            pool,
            replica,
            next_turn: AtomicU64::new(1),
            turns: turns_tx,
        }
    }

    pub(super) async fn take_rate(
        &self,
        key: &str,
        interval: Duration,
        burst: Duration,
    ) -> Result<RateTake, LedgerError> {
        self.rates.take(key, interval, burst).await
    }

    /// A turn given up on (its answer unread) is ended if it was taken.
    pub(super) async fn begin_turn(&self, chat: &str) -> Result<SharedTurn, LedgerError> {
        let turn = self.next_turn.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let chat = chat.to_owned();
        self.turns
            .send(TurnOp::Begin { chat, turn, reply })
            .map_err(|_| LedgerError::Stopped)?;
        Ok(match answer.await.map_err(|_| LedgerError::Stopped)?? {
            Answer::Taken(handed) => SharedTurn::Taken(handed.keep()),
            Answer::Busy => SharedTurn::Busy,
        })
    }

    pub(super) fn end_turn(&self, turn: u64) {
        // Closed only once this is dropped: nothing is left to end then but leases.
        let _ = self.turns.send(TurnOp::End(turn));
    }

    /// Ends every turn of this replica's, at once: it stops, and no prediction of its is left.
    /// Otherwise a chat whose stream was cut at shutdown would answer `chat_busy` on the other
    /// replicas for the lease's minute.
    pub(super) async fn end_all_turns(&self) -> Result<(), LedgerError> {
        tokio::time::timeout(
            ROUND_LIMIT,
            renew_turns(&self.pool, &self.replica, &HashSet::new()),
        )
        .await
        .unwrap_or_else(|_| Err(gave_up()))
    }
}

/// What an asker for a turn is answered.
enum Answer {
    Taken(Handed),
    Busy,
}

/// A turn taken for an asker: ended when dropped, unless its asker keeps it. An answer nobody
/// read (its asker gave up) thus ends its turn.
struct Handed {
    turn: u64,
    ends: Option<mpsc::UnboundedSender<TurnOp>>,
}

impl Handed {
    fn keep(mut self) -> u64 {
        self.ends = None;
        self.turn
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Some(ends) = self.ends.take() {
            let _ = ends.send(TurnOp::End(self.turn));
        }
    }
}

/// Takes and ends the turns asked on `queue`, a round trip for all that queued, and renews
/// `replica`'s turns every [`RENEW_EVERY`], until the queue closes. It knows which turns are
/// held (handed out and not ended), so a renewal also deletes the replica's other rows: a turn
/// whose end failed, or whose take failed after the database did it, is gone by the next
/// renewal. A failure is logged at most once per renewal period.
async fn turns(
    pool: Arc<Pool>,
    replica: Arc<str>,
    mut queue: mpsc::UnboundedReceiver<TurnOp>,
    ends: mpsc::WeakUnboundedSender<TurnOp>,
) {
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ops = Vec::new();
    let mut held: HashSet<u64> = HashSet::new();
    let mut warned: Option<Instant> = None;
    loop {
        let done = tokio::select! {
            received = queue.recv_many(&mut ops, OPS_PER_ROUND) => {
                if received == 0 {
                    return;
                }
                // A weak sender: the queue closes once the ledger is dropped.
                let ends = ends.upgrade();
                round(&pool, &replica, ops.drain(..), &mut held, ends).await
            }
            _ = renew.tick() => {
                tokio::time::timeout(ROUND_LIMIT, renew_turns(&pool, &replica, &held))
                    .await
                    .unwrap_or_else(|_| Err(gave_up()))
            }
        };
        if let Err(error) = done
            && warned.is_none_or(|at| at.elapsed() >= RENEW_EVERY)
        {
            warned = Some(Instant::now());
            tracing::warn!(%error, "sharing chat turns failed: the next renewal mends what it left");
        }
    }
}
/// One round trip: the turns ended are deleted and the chats asked for taken, in two pipelined
/// statements (in either order: a turn taken over has a new number). Every asker is answered;
/// the error is the first statement's that failed.
async fn round(
    pool: &Pool,
    replica: &str,
    ops: impl Iterator<Item = TurnOp>,
    held: &mut HashSet<u64>,
    ends: Option<mpsc::UnboundedSender<TurnOp>>,
) -> Result<(), LedgerError> {
    let mut ended: Vec<i64> = Vec::new();
    let mut asked = Vec::new();
    for op in ops {
        match op {
            TurnOp::End(turn) => {
                held.remove(&turn);
                ended.push(number(turn));
            }
            // Given up on (the database was slow, and the asker took a turn of its own): not
            // taken, or the chat would be busy on the other replicas until the renewal.
            TurnOp::Begin { reply, .. } if reply.is_closed() => {}
            TurnOp::Begin { chat, turn, reply } => asked.push((chat, turn, reply)),
        }
    }
    // In chat order, so that batches of several replicas lock their rows in one order. A chat
    // asked twice was given up on by all but its last asker (a replica holds a chat's turn for
    // one prediction at a time): the others are answered busy, unasked.
    asked.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut begins = Vec::with_capacity(asked.len());
    let mut asked = asked.into_iter().peekable();
    while let Some((chat, turn, reply)) = asked.next() {
        if asked.peek().is_some_and(|next| next.0 == chat) {
            let _ = reply.send(Ok(Answer::Busy));
        } else {
            begins.push((chat, turn, reply));
        }
    }
    let (chats, numbers): (Vec<&str>, Vec<i64>) = begins
        .iter()
        .map(|(chat, turn, _)| (chat.as_str(), number(*turn)))
        .unzip();
    let both = async {
        let mut conn = match pool.get().await {
            Ok(conn) => conn,
            Err(error) => return (Err(failed(&error.to_string())), Err(error)),
        };
        // Until both answers are read: a round given up on closes its connection (a half-open
        // one would hold every later round).
        conn.open = true;
        let end = async {
            if ended.is_empty() {
                return Ok(0);
            }
            conn.client
                .execute(&conn.st.end_turns, &[&replica, &ended])
                .await
        };
        let begin = async {
            if chats.is_empty() {
                return Ok(Vec::new());
            }
            let lease = micros(TURN_LEASE);
            conn.client
                .query(&conn.st.begin_turns, &[&chats, &replica, &numbers, &lease])
                .await
        };
        let (end, begin) = futures::join!(end, begin);
        conn.open = false;
        (
            end.map_err(LedgerError::from),
            begin.map_err(LedgerError::from),
        )
    };
    // A round given up on ends nothing and takes nothing it hands out: the next renewal
    // deletes whatever of it the database did.
    let (end, begin) = tokio::time::timeout(ROUND_LIMIT, both)
        .await
        .unwrap_or_else(|_| (Err(gave_up()), Err(gave_up())));
    let mut failure = None;
    match begin {
        Ok(rows) => {
            let taken: HashSet<i64> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            for (_, turn, reply) in begins {
                let answer = if taken.contains(&number(turn)) {
                    held.insert(turn);
                    Answer::Taken(Handed {
                        turn,
                        ends: ends.clone(),
                    })
                } else {
                    Answer::Busy
                };
                // An answer its asker no longer waits for is dropped here: a turn in it ends.
                let _ = reply.send(Ok(answer));
            }
        }
        Err(error) => {
            // Not held: if the database took some before the error (or after the round gave
            // up), the next round deletes them, or failing that the next renewal; till then
            // other replicas would answer their chats busy.
            let message = error.to_string();
            for (_, turn, reply) in begins {
                let _ = reply.send(Err(failed(&message)));
                if let Some(ends) = &ends {
                    let _ = ends.send(TurnOp::End(turn));
                }
            }
            failure = Some(error);
        }
    }
    end?;
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Renews the turns `held` by `replica` and deletes its other rows (turns whose end or take
/// failed half-way).
async fn renew_turns(pool: &Pool, replica: &str, held: &HashSet<u64>) -> Result<(), LedgerError> {
    let held: Vec<i64> = held.iter().copied().map(number).collect();
    let mut conn = pool.get().await?;
    // Until the answer is read (see `round`).
    conn.open = true;
    conn.client
        .execute(
            &conn.st.renew_turns,
            &[&replica, &held, &micros(TURN_LEASE)],
        )
        .await?;
    conn.open = false;
    Ok(())
}

/// What an asker of a failed round is answered.
fn failed(message: &str) -> LedgerError {
    LedgerError::Commit {
        message: format!("chat turns: {message}"),
        transient: true,
    }
}

/// A turn's number as PostgreSQL's `bigint` keeps it.
fn number(turn: u64) -> i64 {
    i64::try_from(turn).unwrap_or(i64::MAX)
}
